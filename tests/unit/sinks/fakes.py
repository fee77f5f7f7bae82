"""Fakes for the sink contract: a sink that records what it was asked, and a letter sender."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

from sinks.contract import Batch, BatchLimits, Outcome, RetryPolicy, Sink
from sinks.positions import Position
from sinks.records import DeadLetter, EnrichedChange, SourcePosition

FOREVER = RetryPolicy.forever()
NO_LIMITS = BatchLimits()


def change(offset: int, partition: int = 0, sequence=None, key: bytes | None = None, op: str = "c") -> EnrichedChange:
    key = key if key is not None else f'{{"id": {offset}}}'.encode()
    return EnrichedChange(
        SourcePosition("t", partition, offset), key, b"v%d" % offset, op, sequence, 0, None, None, None, ()
    )


class FakeSink(Sink[EnrichedChange]):
    name = "fake"

    def __init__(
        self,
        outcomes: list[Callable[[Batch[EnrichedChange]], Outcome]] | None = None,
        *,
        atomic: bool = False,
        policy: RetryPolicy = FOREVER,
        limits: BatchLimits = NO_LIMITS,
        log: list[str] | None = None,
    ) -> None:
        self.outcomes = outcomes or []
        self.atomic = atomic  # type: ignore[misc]
        self.retry_policy = policy
        self.limits = limits
        self.log = log if log is not None else []
        self.stored: dict[str, Position] = {}
        self.applied: list[int] = []

    def positions(self, topics: Sequence[str]) -> dict[str, Position]:
        return dict(self.stored)

    def write(self, batch: Batch[EnrichedChange]) -> Outcome:
        outcome = self.outcomes.pop(0)(batch) if self.outcomes else Outcome()
        self.log.append("write " + ",".join(str(r.position.offset) for r in batch.records))
        applied = [r for i, r in enumerate(batch.records) if i not in outcome.rejected and i not in outcome.retry]
        if not self.atomic or outcome.complete:
            self.applied += [r.position.offset for r in applied]
        if self.atomic and outcome.complete:
            self.stored.update(batch.positions)
        return outcome

    def commit(self, positions: Mapping[str, Position], expected: Mapping[str, Position | None]) -> None:
        self.log.append("commit " + ",".join(f"{k}={p.next_offset}" for k, p in sorted(positions.items())))
        self.stored.update(positions)


class Letters:
    def __init__(self, log: list[str] | None = None) -> None:
        self.sent: list[DeadLetter] = []
        self.log = log if log is not None else []

    def send(self, letters: Sequence[DeadLetter]) -> None:
        self.log.append("letters " + ",".join(str(letter.position.offset) for letter in letters))
        self.sent += letters
