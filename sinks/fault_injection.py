"""A sink for tests and benchmarks only: it can be made slow, unavailable, or to crash on cue.

Enabled with ``PIPELINE_SINKS=redis,faulty``; never in a default configuration. It stands in for
the remote targets to come (BigQuery, HTTP): it is **not atomic** (``sinks.contract``), so its
positions are committed after each acknowledged write, and its effect is idempotent by record id.

- Effect: ``faulty:rows`` maps each ``SourcePosition.record_id`` to ``op:event id``; and
  ``faulty:deliveries`` counts how often each record id was written, so a test sees any record
  that was delivered twice (at least once shows up here; the rows stay the same).
- Behaviour, read from ``faulty:mode`` at every write: ``down`` (every write refused, retry after
  0.5 s: an outage), ``slow:<ms>`` (each write takes that long), ``crash`` (the next position
  commit kills the job process with SIGKILL, once: a ``kill -9`` between a write, its dead
  letters and its positions). Records whose event's ``device`` is ``reject`` are rejected, one by
  one, with a reason (a per-record outcome).
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Mapping

import redis

from sinks.contract import Batch, Outcome, SinkUnavailable
from sinks.positions import Position, encode
from sinks.records import EnrichedChange
from sinks.redis_store import RedisSink, lua, positions_key

MODE_KEY = "faulty:mode"
ROWS_KEY = "faulty:rows"
DELIVERIES_KEY = "faulty:deliveries"
REJECTED_DEVICE = "reject"


class FaultInjectionSink(RedisSink):
    name = "faulty"
    atomic = False

    def open(self) -> None:
        super().open()
        self._apply = self.client.register_script(lua("fault_apply.lua"))

    def write(self, batch: Batch[EnrichedChange]) -> Outcome:
        with self.available():
            mode = (self.client.get(MODE_KEY) or b"").decode()
        if mode == "down":
            raise SinkUnavailable("fault injection: the sink is down", retry_after_s=0.5)
        if mode.startswith("slow:"):
            time.sleep(int(mode[5:]) / 1000)
        outcome = Outcome()
        args: list[str] = []
        for i, change in enumerate(batch.records):
            row = change.after or change.before
            if row is not None and row.device == REJECTED_DEVICE:
                outcome.rejected[i] = f"device {REJECTED_DEVICE!r} is refused (fault injection)"
                continue
            args += [change.identity.record_id, f"{change.op}:{None if row is None else row.id}"]
        if args:
            # One script per batch: the sink should cost about what a remote sink's client does,
            # not a Redis round trip per record (docs/benchmarks.md measures a lane with it).
            with self.available():
                self._apply(keys=[ROWS_KEY, DELIVERIES_KEY], args=args, client=self.client)
        return outcome

    def commit(self, positions: Mapping[str, Position], expected: Mapping[str, Position | None]) -> None:
        with self.available():
            crash = self.client.get(MODE_KEY) == b"crash"
            if crash:
                self.client.delete(MODE_KEY)
        if crash:
            os.kill(os.getpid(), signal.SIGKILL)
        super().commit(positions, expected)


def start_at(client: redis.Redis, topic: str, offsets: Mapping[int, int]) -> None:
    """Tests and benchmarks: forget what the sink wrote and start it at ``offsets`` of ``topic``."""
    client.delete(positions_key(FaultInjectionSink.name), ROWS_KEY, DELIVERIES_KEY, MODE_KEY)
    if offsets:
        client.hset(
            positions_key(FaultInjectionSink.name),
            mapping={f"{topic}:{p}": encode(Position(offset)) for p, offset in offsets.items()},
        )
