"""A native Kafka source for Beam Python: a splittable DoFn whose restriction is a set of partition offsets.

Why our own instead of ``ReadFromKafka``: the cross-language Java transform stalls on local runners
(apache/beam #25114, #22809, #31400) and needs a Java expansion service; this source is plain
Python over confluent-kafka and runs unchanged on Prism, Flink and Dataflow.

Shape (after Beam's ``periodicsequence.py`` and Bytewax's partitioned Kafka source):

- The partitions of a topic are dealt round-robin to ``readers`` elements (``ReaderSpec``). Each
  element's restriction (``PartitionOffsets``) holds, for every one of its partitions, the *next
  offset to read* (the resume point) and a stop: the end offset taken when the job started (bounded
  mode: tests, backfill) or ``UNBOUNDED``. Each batch claims, per partition, its highest offset before it is
  emitted (``try_claim((partition, offset))``); claiming a partition's stop marks it finished.
- Why several partitions per element: on Prism every deferred residual goes back to the runner and
  comes back in a later bundle, and under load that round trip grew to hundreds of milliseconds per
  residual. With one element per partition the 16 partitions of the event topic took turns, which
  alone broke the latency goal. One reader per topic locally (``PIPELINE_READERS=1``) reads all
  partitions through one consumer; on Flink or Dataflow set it to the partition count to spread
  the partitions over workers. Either way a partition belongs to exactly one reader.
- ``process`` reads for at most ``max_call_ms`` or ``max_records``, waits up to ``idle_wait_ms``
  for a first record (returning it at once), returns early when its partitions go quiet after
  that, and self-checkpoints with ``defer_remainder`` (yielding ``ProcessContinuation.resume()``
  fails the job in Beam 2.77). Prism may not honour the resume
  delay (apache/beam #39848), so correctness never depends on it. Runner-initiated splits are
  refused: a partition is one sequential reader.
- The watermark is the oldest, over the reader's partitions, of the newest record timestamp seen
  (or, for a partition read to its end, wall-clock time minus ``idle_watermark_lag_s``); it never
  goes backwards.
- Read-ahead is bounded by librdkafka's ``queued.max.messages.kbytes``, so a slow sink cannot make
  the source buffer without limit.
- Offsets are not committed as the source of truth: sinks store what they applied (see
  docs/delivery.md). Each call commits the positions the previous call reached to the consumer
  group, only so that ordinary Kafka tooling can show consumer lag.

Delivery: every offset between a partition's start and stop is emitted at least once per run, in
order per partition; sinks make replays idempotent.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import apache_beam as beam
from apache_beam.io.iobase import RestrictionProgress, RestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp
from confluent_kafka import Consumer, KafkaError, TopicPartition

from pipeline.model import KafkaRecord, SourcePosition

UNBOUNDED = sys.maxsize
_log = logging.getLogger(__name__)


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


@dataclass(frozen=True)
class SourceTuning:
    readers: int = 1
    max_records: int = 20_000
    max_call_ms: int = 1_000
    # A call returns when no record arrived for this long (the sinks flush when the bundle ends).
    quiet_ms: int = 10
    # A call that has read nothing yet waits this long for a first record; it returns the moment
    # one arrives, so a record is not left waiting for a deferred residual to come back.
    idle_wait_ms: int = 250
    idle_resume_ms: int = 50
    idle_watermark_lag_s: float = 2.0
    max_buffer_kbytes: int = 16_384


def discover_partitions(
    consumer_config: dict[str, Any],
    topic: str,
    resume: dict[int, int] | None = None,
    *,
    bounded: bool = False,
    timeout: float = 10.0,
) -> list[PartitionSpec]:
    """One spec per partition: start at the stored resume point (or the earliest offset), stop at
    today's end offset when ``bounded``. A resume point below the earliest offset means retention
    deleted unread data: start at the earliest and say so."""
    resume = resume or {}
    consumer = Consumer({**consumer_config, "group.id": consumer_config.get("group.id", "discovery")})
    try:
        metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise RuntimeError(f"topic {topic!r} is not available: {getattr(metadata, 'error', 'missing')}")
        specs = []
        for partition in sorted(metadata.partitions):
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout)
            start = resume.get(partition, low)
            if start < low:
                _log.warning(
                    "%s[%d]: resume offset %d is below the earliest retained offset %d; "
                    "records in between were deleted by retention",
                    topic,
                    partition,
                    start,
                    low,
                )
                start = low
            specs.append(PartitionSpec(topic, partition, start, high if bounded else UNBOUNDED))
        return specs
    finally:
        consumer.close()


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


class _ReaderRestrictions(RestrictionProvider):
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


@dataclass
class _Reader:
    """A consumer and what the source knows about its partitions, kept across calls."""

    consumer: Consumer
    assigned: dict[int, int]  # partition -> next offset the consumer will return
    newest_ms: dict[int, int]  # partition -> newest record timestamp seen


class _ReaderPool:
    """One consumer per reader per process, shared by every DoFn instance.

    Prism creates several instances of the DoFn (one per concurrent bundle processor) and a residual
    moves between them; a consumer per instance would reconnect and drop its prefetched records each
    time. Only one residual of a reader exists at a time, so a pooled consumer is never used by two
    threads at once.
    """

    _lock = threading.Lock()
    _readers: ClassVar[dict[tuple[str, str, tuple[int, ...]], _Reader]] = {}

    @classmethod
    def get(cls, config: dict[str, Any], topic: str, partitions: tuple[int, ...]) -> _Reader:
        key = (str(sorted(config.items())), topic, partitions)
        with cls._lock:
            reader = cls._readers.get(key)
            if reader is None:
                reader = cls._readers[key] = _Reader(Consumer(config), {}, {})
            return reader


_WATERMARKS = ManualWatermarkEstimator.default_provider()
_RESTRICTIONS = _ReaderRestrictions()


class ReadPartitionsFn(beam.DoFn):
    """Reads the partitions of one ``ReaderSpec``; see the module docstring for the contract."""

    def __init__(self, consumer_config: dict[str, Any], tuning: SourceTuning) -> None:
        self._config = consumer_config
        self._tuning = tuning
        self._records = Metrics.counter("source", "records")
        self._idle_calls = Metrics.counter("source", "idle_calls")

    def setup(self) -> None:
        self._consumer_config = {
            **self._config,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            # Long-poll: the broker answers as soon as a record arrives, so this only bounds idle
            # fetches (many consumers at 10 ms kept the broker at half a core doing nothing).
            "fetch.wait.max.ms": 500,
            "queued.max.messages.kbytes": self._tuning.max_buffer_kbytes,
            # EOF events tell a bounded read it reached its stop even when compaction removed the
            # last offsets before it.
            "enable.partition.eof": True,
        }
        self._lag: dict[tuple[str, int], Any] = {}

    def _reader(self, topic: str, restriction: PartitionOffsets) -> _Reader:
        reader = _ReaderPool.get(self._consumer_config, topic, restriction.partitions)
        wanted = dict(zip(restriction.partitions, restriction.starts, strict=True))
        if reader.assigned != wanted:
            # First call, or a retried bundle: the restriction, not the consumer, knows where to read.
            reader.consumer.assign(
                [
                    TopicPartition(topic, p, start)
                    for p, start, stop in zip(
                        restriction.partitions, restriction.starts, restriction.stops, strict=True
                    )
                    if start < stop
                ]
            )
            reader.assigned = wanted
        elif any(start > 0 for start in restriction.starts):
            # What the previous call reached is durable (its bundle completed before this residual
            # ran): report it to the group, for lag monitoring only.
            reader.consumer.commit(
                offsets=[TopicPartition(topic, p, s) for p, s in wanted.items() if s > 0], asynchronous=True
            )
        return reader

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        element: ReaderSpec,
        tracker: PartitionOffsetsTracker = beam.DoFn.RestrictionParam(_RESTRICTIONS),  # noqa: B008
        watermark: ManualWatermarkEstimator = beam.DoFn.WatermarkEstimatorParam(_WATERMARKS),  # noqa: B008
    ) -> Iterator[TimestampedValue]:
        """Yields ``RecordBatch`` elements (in offset order per partition), one per consume()."""
        restriction = tracker.current_restriction()
        if restriction.is_empty():
            return
        topic = element.topic
        reader = self._reader(topic, restriction)
        stops = dict(zip(restriction.partitions, restriction.stops, strict=True))
        positions = dict(reader.assigned)
        finished = {p for p in restriction.partitions if positions[p] >= stops[p]}
        tuning = self._tuning
        deadline = time.monotonic() + tuning.max_call_ms / 1000.0
        budget = tuning.max_records
        read = 0
        reseek = False
        while budget > 0 and len(finished) < len(stops) and time.monotonic() < deadline:
            if read == 0 and tuning.idle_wait_ms > 0:
                # consume(n) waits for n messages or the timeout: ask for one, then for the rest.
                wait_s = min(tuning.idle_wait_ms / 1000.0, max(0.0, deadline - time.monotonic()))
                messages = reader.consumer.consume(1, timeout=wait_s)
                if messages:
                    messages += reader.consumer.consume(min(budget, 1000) - 1, timeout=tuning.quiet_ms / 1000.0)
            else:
                messages = reader.consumer.consume(min(budget, 1000), timeout=tuning.quiet_ms / 1000.0)
            if not messages:
                break  # quiet: let the bundle end, so the sinks flush what they hold
            rows: list[tuple[int, int, bytes | None, bytes | None, int]] = []
            # Highest offset seen per partition in this consume(): claimed once per partition below,
            # not per record (the tracker takes a lock per claim).
            last: dict[int, int] = {}
            reached: set[int] = set()
            oldest_ms = None
            newest_ms = reader.newest_ms
            for message in messages:
                partition = message.partition()
                error = message.error()
                if error is not None:
                    if (
                        error.code() == KafkaError._PARTITION_EOF
                        and partition not in finished
                        and message.offset() >= stops.get(partition, 0)
                    ):
                        reached.add(partition)
                    elif error.code() != KafkaError._PARTITION_EOF:
                        # librdkafka retries transient broker errors itself; log the rest, go on.
                        _log.warning("%s[%d]: consumer error %s", topic, partition, error)
                    continue
                offset = message.offset()
                if partition in finished or partition in reached:
                    continue
                if offset >= stops[partition]:
                    reached.add(partition)  # the bounded stop
                    continue
                last[partition] = offset
                _, timestamp_ms = message.timestamp()
                if timestamp_ms > newest_ms.get(partition, -1):
                    newest_ms[partition] = timestamp_ms
                if oldest_ms is None or timestamp_ms < oldest_ms:
                    oldest_ms = timestamp_ms
                rows.append((partition, offset, message.key(), message.value(), timestamp_ms))
            refused = {p for p, offset in last.items() if not tracker.try_claim((p, offset))}
            for partition in reached:
                tracker.try_claim((partition, stops[partition]))  # marks the partition done
            finished |= reached
            if refused:
                # Only a checkpoint taken meanwhile refuses a claim: what was not claimed belongs
                # to the residual, which reads it again (the consumer has read past it: re-seek).
                rows = [row for row in rows if row[0] not in refused]
                finished |= refused
                reseek = True
            for partition, offset in last.items():
                if partition not in refused:
                    positions[partition] = offset + 1
            budget -= len(rows)
            read += len(rows)
            if rows:
                # One element per consume() call, made only of tuples, ints and bytes: Beam's fast
                # coder encodes these natively wherever a runner does not fuse the reader with the
                # steps after it (Prism does fuse them).
                yield TimestampedValue((topic, rows), Timestamp(micros=(oldest_ms or 0) * 1000))
        reader.assigned = {} if reseek else positions
        self._records.inc(read)
        self._advance_watermark(watermark, reader, topic, positions)
        if len(finished) == len(stops):
            return  # bounded and read to every stop
        if read:
            tracker.defer_remainder(Duration(micros=0))
        else:
            self._idle_calls.inc()
            tracker.defer_remainder(Duration(micros=tuning.idle_resume_ms * 1000))

    def _advance_watermark(
        self, watermark: ManualWatermarkEstimator, reader: _Reader, topic: str, positions: dict[int, int]
    ) -> None:
        idle = Timestamp.now() - Duration(self._tuning.idle_watermark_lag_s)
        candidate: Timestamp | None = None
        for partition, position in positions.items():
            _, high = reader.consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            caught_up = high is not None and high >= 0 and position >= high
            behind = 0 if high is None or high < 0 else max(0, high - position)
            gauge = self._lag.get((topic, partition))
            if gauge is None:
                gauge = self._lag[(topic, partition)] = Metrics.gauge("source", f"lag_{topic}_{partition}")
            gauge.set(behind)
            newest = reader.newest_ms.get(partition)
            mark = idle if caught_up else (Timestamp(micros=newest * 1000) if newest is not None else None)
            if mark is None:
                return  # a partition with nothing read yet holds the watermark back
            candidate = mark if candidate is None else min(candidate, mark)
        current = watermark.current_watermark()
        if candidate is not None and (current is None or candidate > current):
            watermark.set_watermark(candidate)


RecordBatch = tuple[str, list[tuple[int, int, bytes | None, bytes | None, int]]]
"""``(topic, [(partition, offset, key, value, timestamp_ms), ...])``: see ``records()``."""


def records(batch: RecordBatch) -> list[KafkaRecord]:
    topic, rows = batch
    return [KafkaRecord(SourcePosition(topic, p, o), k, v, ts) for p, o, k, v, ts in rows]


class ReadKafkaPartitions(beam.PTransform):
    """``PBegin -> PCollection[RecordBatch]`` for the given partitions, in ``tuning.readers`` readers."""

    def __init__(self, specs: list[PartitionSpec], consumer_config: dict[str, Any], tuning: SourceTuning) -> None:
        super().__init__()
        self._readers = readers(specs, tuning.readers)
        self._config = consumer_config
        self._tuning = tuning

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pbegin
            | "Readers" >> beam.Create(self._readers)
            | "ReadPartitions" >> beam.ParDo(ReadPartitionsFn(self._config, self._tuning))
        )
