"""The source's restriction, pure and without Kafka: which offsets of which partitions a reader owns.

A reader element (``ReaderSpec``) owns some partitions of one topic; its restriction
(``PartitionOffsets``) holds, per partition, the *next offset to read* and an exclusive stop (the
end offset taken at start in bounded mode, else ``UNBOUNDED``). ``PartitionOffsetsTracker`` claims
``(partition, offset)`` positions in increasing order and splits only to self-checkpoint, so a
partition is always one sequential reader. ``pipeline.sources.kafka_partitions`` reads with it.

What is left to read, for the runner: a bounded restriction knows it exactly (its stops); an
unbounded one is estimated from end offsets a ``BacklogEstimate`` knows without asking a broker
(``pipeline.sources.end_offsets``, filled by the reader). An unknown end counts as nothing left.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Protocol

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
    # Only places the element on a Flink subtask (``pipeline.sources.flink_subtasks``); never read.
    slot: int = 0


@dataclass(frozen=True, slots=True)
class PartitionOffsets:
    """The restriction: per partition, the next offset to read and the exclusive stop."""

    partitions: tuple[int, ...]
    starts: tuple[int, ...]
    stops: tuple[int, ...]
    topic: str = ""  # for the backlog estimate only: Beam creates trackers from the restriction alone

    def is_empty(self) -> bool:
        return all(start >= stop for start, stop in zip(self.starts, self.stops, strict=True))


class BacklogEstimate(Protocol):
    """What the backlog of an unbounded partition is estimated from; ``None`` when not known."""

    def end_offset(self, topic: str, partition: int) -> int | None: ...

    def bytes_per_record(self, topic: str) -> float | None: ...


class _NoEstimate:
    def end_offset(self, topic: str, partition: int) -> int | None:
        return None

    def bytes_per_record(self, topic: str) -> float | None:
        return None


NO_ESTIMATE: BacklogEstimate = _NoEstimate()


def offsets_left(
    partitions: Sequence[int], nexts: Sequence[int], stops: Sequence[int], end_of: Callable[[int], int | None]
) -> int:
    """Offsets left to read, summed over the partitions: up to the stop of a bounded partition, up to
    ``end_of(partition)`` of an unbounded one. An unknown end, or one at or below the next offset,
    leaves nothing: the estimate never exceeds what the log is known to hold."""
    left = 0
    for partition, next_offset, stop in zip(partitions, nexts, stops, strict=True):
        limit = end_of(partition) if stop == UNBOUNDED else stop
        if limit is not None and limit > next_offset:
            left += limit - next_offset
    return left


def readers(specs: list[PartitionSpec], count: int) -> list[ReaderSpec]:
    """Deal the partitions round-robin to ``count`` readers (fewer if there are fewer partitions)."""
    count = max(1, min(count, len(specs)))
    groups: list[list[PartitionSpec]] = [[] for _ in range(count)]
    for index, spec in enumerate(sorted(specs, key=lambda s: s.partition)):
        groups[index % count].append(spec)
    return [ReaderSpec(group[0].topic, tuple(group)) for group in groups if group]


class PartitionOffsetsTracker(RestrictionTracker):
    """Claims ``(partition, offset)`` positions; splits only to self-checkpoint."""

    def __init__(self, restriction: PartitionOffsets, estimate: BacklogEstimate = NO_ESTIMATE) -> None:
        self._restriction = restriction
        self._estimate = estimate
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
        primary = PartitionOffsets(r.partitions, r.starts, tuple(self._next), r.topic)
        residual = PartitionOffsets(r.partitions, tuple(self._next), r.stops, r.topic)
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
        left = offsets_left(r.partitions, self._next, r.stops, partial(self._estimate.end_offset, r.topic))
        if not self.is_bounded():
            # Never reported done while unbounded: Beam answers a runner's checkpoint request (a split
            # at 0) only for an element whose progress is below 1 (bundle_processor._compute_split).
            left = max(left, 1)
        return RestrictionProgress(completed=float(done), remaining=float(left))

    def is_bounded(self) -> bool:
        return all(stop != UNBOUNDED for stop in self._restriction.stops)


class ReaderRestrictions(RestrictionProvider):
    def __init__(self, estimate: BacklogEstimate = NO_ESTIMATE) -> None:
        self._estimate = estimate

    def initial_restriction(self, element: ReaderSpec) -> PartitionOffsets:
        parts = element.partitions
        return PartitionOffsets(
            tuple(p.partition for p in parts),
            tuple(p.start for p in parts),
            tuple(max(p.start, p.stop) for p in parts),
            element.topic,
        )

    def create_tracker(self, restriction: PartitionOffsets) -> PartitionOffsetsTracker:
        return PartitionOffsetsTracker(restriction, self._estimate)

    def restriction_size(self, element: ReaderSpec, restriction: PartitionOffsets) -> int:
        """Bounded: the offsets left, exactly. Unbounded: the backlog in estimated bytes, because Dataflow
        takes a deferred residual's size as the source's backlog in bytes and weighs it against the
        bytes the step outputs (Beam's Java KafkaIO scales offsets by its mean record size too).
        Beam calls this with each residual, whose starts are where the reader stopped."""
        r = restriction
        left = offsets_left(r.partitions, r.starts, r.stops, partial(self._estimate.end_offset, r.topic))
        if all(stop != UNBOUNDED for stop in r.stops):
            return left
        record_bytes = self._estimate.bytes_per_record(r.topic)
        return round(left * record_bytes) if record_bytes else left

    def truncate(self, element: ReaderSpec, restriction: PartitionOffsets) -> None:
        # On drain stop reading: what was not read stays in Kafka for the next run.
        return None
