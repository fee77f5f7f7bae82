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
- Backlog for the runner: after each call the reader copies librdkafka's cached end offsets (and
  one record's size per ``consume()``) into ``pipeline.sources.end_offsets``; Beam sizes the
  deferred residual from them (``ReaderRestrictions.restriction_size``), which Dataflow reads as the
  source's backlog in bytes. No broker call is made for it.
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
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import apache_beam as beam
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp
from confluent_kafka import Consumer, KafkaError, Message, TopicPartition

from infra import telemetry
from pipeline.model import KafkaRecord, SourcePosition
from pipeline.sources import lag
from pipeline.sources.discovery import discover_partitions
from pipeline.sources.end_offsets import END_OFFSETS
from pipeline.sources.flink_subtasks import spread
from pipeline.sources.partition_offsets import (
    UNBOUNDED,
    PartitionOffsets,
    PartitionOffsetsTracker,
    PartitionSpec,
    ReaderRestrictions,
    ReaderSpec,
    readers,
)

__all__ = [
    "UNBOUNDED",
    "PartitionSpec",
    "ReadKafkaPartitions",
    "RecordBatch",
    "SourceTuning",
    "discover_partitions",
    "records",
]

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SourceTuning:
    readers: int = 1
    # The runner's parallelism when it places readers by their hash (Flink): the readers are spread
    # evenly over that many subtasks (``pipeline.sources.flink_subtasks``); 1 elsewhere.
    subtasks: int = 1
    max_records: int = 20_000
    max_call_ms: int = 1_000
    # A call returns when no record arrived for this long (the sinks flush when the bundle ends).
    quiet_ms: int = 10
    # A call that has read nothing yet waits this long for a first record; it returns the moment
    # one arrives, so a record is not left waiting for a deferred residual to come back.
    idle_wait_ms: int = 1_000
    idle_resume_ms: int = 50
    idle_watermark_lag_s: float = 2.0
    max_buffer_kbytes: int = 16_384


def _take(consumer: Consumer, limit: int, wait_s: float) -> list[Message]:
    """Up to ``limit`` messages: those the consumer holds already, at once; only when it holds none,
    wait up to ``wait_s`` for the first. ``consume(n, timeout)`` waits for n messages or the
    timeout, which would hold each record back until a batch fills or the wait ends: batches
    stay as large as what arrives while the last one is handled, and grow with the load."""
    messages = consumer.consume(limit, timeout=0)
    if messages:
        return messages
    messages = consumer.consume(1, timeout=wait_s)
    if messages and limit > 1:
        messages += consumer.consume(limit - 1, timeout=0)
    return messages


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
_RESTRICTIONS = ReaderRestrictions(END_OFFSETS)


class ReadPartitionsFn(beam.DoFn):
    """Reads the partitions of one ``ReaderSpec``; see the module docstring for the contract."""

    def __init__(self, consumer_config: dict[str, Any], tuning: SourceTuning, lane: str) -> None:
        self._config = consumer_config
        self._tuning = tuning
        self._lane = lane  # lanes read the same partitions: each has its own lag
        self._records = telemetry.counter("engagement_source_records", ("source", "records"))
        self._idle_calls = telemetry.counter("engagement_source_idle_calls", ("source", "idle_calls"))
        self._resets = telemetry.counter("engagement_source_offset_out_of_range", ("source", "offset_out_of_range"))
        self._ends = END_OFFSETS

    def setup(self) -> None:
        self._consumer_config = {
            **self._config,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            # Never move silently: an out-of-range offset in the middle of a run (retention deleted
            # records this lane had not read yet) comes back as an error, which _out_of_range logs,
            # counts and resolves.
            "auto.offset.reset": "error",
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

    def _out_of_range(
        self, reader: _Reader, topic: str, partition: int, positions: dict[int, int], tracker: PartitionOffsetsTracker
    ) -> bool:
        """The broker no longer has ``positions[partition]``: log it, count it, and go on from the
        earliest retained offset (claiming the gap, so the sinks' positions pass it). False if the
        tracker was checkpointed meanwhile (the residual will meet the same error)."""
        self._resets.inc()
        position = positions[partition]
        low, high = reader.consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10, cached=False)
        # Below the earliest retained offset: go on from there. Past the end: nothing sensible to read.
        target = low
        if position >= low:
            _log.error(
                "%s[%d]: offset %d is past the end offset %d (topic recreated?); this partition is not read "
                "until the job restarts (docs/delivery.md, 'Out-of-range positions')",
                topic,
                partition,
                position,
                high,
            )
            return True
        _log.error(
            "%s[%d]: offsets %d to %d were deleted by retention before this lane read them; going on from %d",
            topic,
            partition,
            position,
            target - 1,
            target,
        )
        if not tracker.try_claim((partition, target - 1)):
            return False
        positions[partition] = target
        reader.consumer.seek(TopicPartition(topic, partition, target))
        return True

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
        sampled_bytes = samples = 0
        while budget > 0 and len(finished) < len(stops) and time.monotonic() < deadline:
            if read == 0 and tuning.idle_wait_ms > 0:
                wait_s = min(tuning.idle_wait_ms / 1000.0, max(0.0, deadline - time.monotonic()))
            else:
                wait_s = tuning.quiet_ms / 1000.0
            messages = _take(reader.consumer, min(budget, 1000), wait_s)
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
                    elif error.code() == KafkaError._AUTO_OFFSET_RESET:
                        reseek |= not self._out_of_range(reader, topic, partition, positions, tracker)
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
                # One record's size per consume(), not per record: enough for the backlog estimate.
                _, _, key, value, _ = rows[-1]
                sampled_bytes += len(key or b"") + len(value or b"")
                samples += 1
                # One element per consume() call, made only of tuples, ints and bytes: Beam's fast
                # coder encodes these natively wherever a runner does not fuse the reader with the
                # steps after it (Prism does fuse them).
                yield TimestampedValue((topic, rows), Timestamp(micros=(oldest_ms or 0) * 1000))
        reader.assigned = {} if reseek else positions
        self._records.inc(read)
        if samples:
            self._ends.record_size(topic, sampled_bytes / samples)
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
        held = False
        for partition, position in positions.items():
            _, high = reader.consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
            self._ends.record_end(topic, partition, high)  # what the residual's size is estimated from
            caught_up = high is not None and high >= 0 and position >= high
            behind = 0 if high is None or high < 0 else max(0, high - position)
            gauge = self._lag.get((topic, partition))
            if gauge is None:
                gauge = self._lag[(topic, partition)] = telemetry.gauge(
                    "engagement_source_lag_records",
                    ("source", f"lag_{self._lane}_{topic}_{partition}"),
                    lane=self._lane,
                    topic=topic,
                    partition=str(partition),
                )
            gauge.set(behind)  # the Beam twin; Prometheus reads the lag when scraped
            lag.track(gauge, self._config, (self._lane, topic, partition), position)
            newest = reader.newest_ms.get(partition)
            mark = idle if caught_up else (Timestamp(micros=newest * 1000) if newest is not None else None)
            if mark is None:
                held = True  # a partition with nothing read yet holds the watermark back
                continue
            candidate = mark if candidate is None else min(candidate, mark)
        if held:
            return
        current = watermark.current_watermark()
        if candidate is not None and (current is None or candidate > current):
            watermark.set_watermark(candidate)


RecordBatch = tuple[str, list[tuple[int, int, bytes | None, bytes | None, int]]]
"""``(topic, [(partition, offset, key, value, timestamp_ms), ...])``: see ``records()``."""


def records(batch: RecordBatch) -> list[KafkaRecord]:
    topic, rows = batch
    return [KafkaRecord(SourcePosition(topic, p, o), k, v, ts) for p, o, k, v, ts in rows]


class ReadKafkaPartitions(beam.PTransform):
    """``PBegin -> PCollection[RecordBatch]`` for the given partitions, in ``tuning.readers`` readers;
    ``lane`` names the reading lane in the lag metric."""

    def __init__(
        self, specs: list[PartitionSpec], consumer_config: dict[str, Any], tuning: SourceTuning, lane: str
    ) -> None:
        super().__init__()
        self._readers = spread(readers(specs, tuning.readers), tuning.subtasks)
        self._config = consumer_config
        self._tuning = tuning
        self._lane = lane

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pbegin
            | "Readers" >> beam.Create(self._readers)
            | "ReadPartitions" >> beam.ParDo(ReadPartitionsFn(self._config, self._tuning, self._lane))
        )
