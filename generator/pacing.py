"""Rate control for continuous mode, with the clock and sleep injected so tests never sleep.

The pacer is a credit scheme over elapsed time: at any moment the rows due are ``rate * elapsed``,
and each tick emits what is due (capped at ``max_batch``), so short hiccups are caught up and the
long-run average is exact. If the database cannot keep up, the backlog is reported, not hidden.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class RatePacer:
    rate_per_s: float
    tick_s: float = 0.1
    max_batch: int = 5_000
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    started: float = field(init=False)
    emitted: int = field(init=False, default=0)

    def __post_init__(self) -> None:
        if self.rate_per_s <= 0:
            raise ValueError("rate must be positive")
        self.started = self.clock()

    def due(self) -> int:
        return int(self.rate_per_s * (self.clock() - self.started)) - self.emitted

    def next_batch(self) -> int:
        """Block until a tick's worth of rows (at least one) is due; return how many to write now.

        Writing a tick's worth per transaction (10 commits a second by default) keeps Postgres and
        Debezium from paying per-commit overhead on every row, at a cost of at most one tick of
        delay before a row is committed; latency is measured from the commit, so it is unaffected.
        """
        wanted = max(1, min(self.max_batch, int(self.rate_per_s * self.tick_s)))
        due = self.due()
        while due < wanted:
            self.sleep(max((wanted - due) / self.rate_per_s, 0.001))
            due = self.due()
        batch = min(due, self.max_batch)
        self.emitted += batch
        return batch

    @property
    def backlog(self) -> int:
        return max(0, self.due())
