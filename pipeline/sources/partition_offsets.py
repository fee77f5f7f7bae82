"""The source's restriction, pure and without Kafka: which offsets of which partitions a reader owns.

A reader element (``ReaderSpec``) owns some partitions of one topic; its restriction
(``PartitionOffsets``) holds, per partition, the *next offset to read* and an exclusive stop (the
end offset taken at start in bounded mode, else ``UNBOUNDED``). ``PartitionOffsetsTracker`` claims
``(partition, offset)`` positions in increasing order and splits only to self-checkpoint, so a
partition is always one sequential reader. ``pipeline.sources.kafka_partitions`` reads with it.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

from apache_beam.io.iobase import RestrictionProgress, RestrictionTracker
from apache_beam.transforms.core import RestrictionProvider

UNBOUNDED = sys.maxsize


@dataclass(frozen=True, slots=True)
class PartitionSpec:
    topic: str
    partition: int
    start: int  # next offset to read
    stop: int = UNBOUNDED  # exclusive


@dataclass(frozen=True, slots=True)
class ReaderSpec:
    """One element of the source: a topic and the partitions this reader owns."""

    topic: str
    partitions: tuple[PartitionSpec, ...]


@dataclass(frozen=True, slots=True)
class PartitionOffsets:
    """The restriction: per partition, the next offset to read and the exclusive stop."""

    partitions: tuple[int, ...]
    starts: tuple[int, ...]
    stops: tuple[int, ...]

    def is_empty(self) -> bool:
        return all(start >= stop for start, stop in zip(self.starts, self.stops, strict=True))


def readers(specs: list[PartitionSpec], count: int) -> list[ReaderSpec]:
    """Deal the partitions round-robin to ``count`` readers (fewer if there are fewer partitions)."""
    count = max(1, min(count, len(specs)))
    groups: list[list[PartitionSpec]] = [[] for _ in range(count)]
    for index, spec in enumerate(sorted(specs, key=lambda s: s.partition)):
        groups[index % count].append(spec)
    return [ReaderSpec(group[0].topic, tuple(group)) for group in groups if group]


class PartitionOffsetsTracker(RestrictionTracker):
    """Claims ``(partition, offset)`` positions; splits only to self-checkpoint."""

    def __init__(self, restriction: PartitionOffsets) -> None:
        self._restriction = restriction
        self._index = {p: i for i, p in enumerate(restriction.partitions)}
        self._next = list(restriction.starts)
        self._checkpointed = False

    def current_restriction(self) -> PartitionOffsets:
        return self._restriction

    def try_claim(self, position: tuple[int, int]) -> bool:
        partition, offset = position
        i = self._index[partition]
        if self._checkpointed:
            return False
        if offset < self._next[i]:
            raise ValueError(f"partition {partition}: offset {offset} claimed after {self._next[i] - 1}")
        stop = self._restriction.stops[i]
        if offset >= stop:
            self._next[i] = stop  # finished: the rest of the range holds nothing to read
            return False
        self._next[i] = offset + 1
        return True

    def try_split(self, fraction_of_remainder: float) -> tuple[PartitionOffsets, PartitionOffsets] | None:
        # A runner-initiated split would give offsets of one partition to a second reader.
        if fraction_of_remainder != 0 or self._checkpointed:
            return None
        r = self._restriction
        primary = PartitionOffsets(r.partitions, r.starts, tuple(self._next))
        residual = PartitionOffsets(r.partitions, tuple(self._next), r.stops)
        self._restriction = primary
        self._checkpointed = True
        return primary, residual

    def check_done(self) -> None:
        if self._checkpointed:
            return
        r = self._restriction
        unread = {p: n for p, n, stop in zip(r.partitions, self._next, r.stops, strict=True) if n < stop}
        if unread:
            raise ValueError(f"partitions not read to their stop: {unread}")

    def current_progress(self) -> RestrictionProgress:
        r = self._restriction
        done = sum(n - s for n, s in zip(self._next, r.starts, strict=True))
        left = sum(0 if stop == UNBOUNDED else max(0, stop - n) for n, stop in zip(self._next, r.stops, strict=True))
        return RestrictionProgress(completed=float(done), remaining=float(left if self.is_bounded() else 1))

    def is_bounded(self) -> bool:
        return all(stop != UNBOUNDED for stop in self._restriction.stops)


class ReaderRestrictions(RestrictionProvider):
    def initial_restriction(self, element: ReaderSpec) -> PartitionOffsets:
        parts = element.partitions
        return PartitionOffsets(
            tuple(p.partition for p in parts), tuple(p.start for p in parts), tuple(max(p.start, p.stop) for p in parts)
        )

    def create_tracker(self, restriction: PartitionOffsets) -> PartitionOffsetsTracker:
        return PartitionOffsetsTracker(restriction)

    def restriction_size(self, element: ReaderSpec, restriction: PartitionOffsets) -> int:
        # Unknown backlog for unbounded restrictions: a constant, so runners do not split.
        if any(stop == UNBOUNDED for stop in restriction.stops):
            return 1
        return sum(max(0, stop - start) for start, stop in zip(restriction.starts, restriction.stops, strict=True))

    def truncate(self, element: ReaderSpec, restriction: PartitionOffsets) -> None:
        # On drain stop reading: what was not read stays in Kafka for the next run.
        return None
