"""A native Kafka source for Beam Python: one splittable-DoFn restriction per topic partition.

Why our own instead of ``ReadFromKafka``: the cross-language Java transform stalls on local runners
(apache/beam #25114, #22809, #31400) and needs a Java expansion service; this source is plain
Python over confluent-kafka and runs unchanged on Prism, Flink and Dataflow.

Shape (after Beam's ``periodicsequence.py`` and Bytewax's partitioned Kafka source):

- The element is a ``PartitionSpec`` (topic, partition, start, stop). The restriction is the offset
  range ``[start, stop)``: ``start`` is the *next offset to read* (resume point), ``stop`` is the end
  offset taken when the job started (bounded mode: tests, backfill) or ``UNBOUNDED``.
- ``process`` claims each offset before emitting it, reads at most ``max_records`` or
  ``max_call_ms`` per call, never blocks on an empty partition, and self-checkpoints with
  ``defer_remainder`` (yielding ``ProcessContinuation.resume()`` fails the job in Beam 2.77). Prism
  may not honour the resume delay (apache/beam #39848), so correctness never depends on it.
- The watermark is the largest record timestamp seen (it never goes backwards) and, when the
  partition is idle and read to its end, wall-clock time minus ``idle_watermark_lag``.
- Read-ahead is bounded by librdkafka's ``queued.max.messages.kbytes`` per partition consumer, so a
  slow sink cannot make the source buffer without limit.
- Offsets are not committed as the source of truth: sinks store what they applied (see
  docs/delivery.md). Each call commits the previous call's position to the consumer group, only so
  that ordinary Kafka tooling can show consumer lag.

Delivery: every offset in ``[start, stop)`` is emitted at least once per run, in order per
partition; sinks make replays idempotent.
"""

from __future__ import annotations

import logging
import sys
import time
from dataclasses import dataclass
from typing import Any

import apache_beam as beam
from apache_beam.io.restriction_trackers import OffsetRange, OffsetRestrictionTracker
from apache_beam.io.watermark_estimators import ManualWatermarkEstimator
from apache_beam.metrics import Metrics
from apache_beam.transforms.core import RestrictionProvider
from apache_beam.transforms.window import TimestampedValue
from apache_beam.utils.timestamp import Duration, Timestamp
from confluent_kafka import OFFSET_END, Consumer, KafkaError, TopicPartition

from pipeline.model import KafkaRecord, SourcePosition

UNBOUNDED = sys.maxsize
_log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class PartitionSpec:
    topic: str
    partition: int
    start: int  # next offset to read
    stop: int = UNBOUNDED  # exclusive


@dataclass(frozen=True)
class SourceTuning:
    max_records: int = 5_000
    max_call_ms: int = 100
    idle_resume_ms: int = 20
    idle_watermark_lag_s: float = 2.0
    # Per-partition read-ahead cap (librdkafka queued.max.messages.kbytes).
    max_buffer_kbytes: int = 4_096


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


class _PartitionRestrictions(RestrictionProvider):
    def initial_restriction(self, element: PartitionSpec) -> OffsetRange:
        return OffsetRange(element.start, max(element.start, element.stop))

    def create_tracker(self, restriction: OffsetRange) -> OffsetRestrictionTracker:
        return OffsetRestrictionTracker(restriction)

    def restriction_size(self, element: PartitionSpec, restriction: OffsetRange) -> int:
        # Unknown backlog for unbounded restrictions: report a constant so runners do not split.
        if restriction.stop == UNBOUNDED:
            return 1
        return max(0, restriction.stop - restriction.start)

    def truncate(self, element: PartitionSpec, restriction: OffsetRange) -> None:
        # On drain stop reading: what was not read stays in Kafka for the next run.
        return None


_WATERMARKS = ManualWatermarkEstimator.default_provider()
_RESTRICTIONS = _PartitionRestrictions()


class ReadPartitionFn(beam.DoFn):
    """Reads one partition per element; see the module docstring for the contract."""

    def __init__(self, consumer_config: dict[str, Any], tuning: SourceTuning) -> None:
        self._config = consumer_config
        self._tuning = tuning
        self._records = Metrics.counter("source", "records")
        self._idle_calls = Metrics.counter("source", "idle_calls")

    def setup(self) -> None:
        self._consumers: dict[tuple[str, int], Consumer] = {}
        self._positions: dict[tuple[str, int], int] = {}
        self._lag: dict[tuple[str, int], Any] = {}

    def teardown(self) -> None:
        for consumer in getattr(self, "_consumers", {}).values():
            consumer.close()

    def _consumer(self, topic: str, partition: int, start: int) -> Consumer:
        key = (topic, partition)
        consumer = self._consumers.get(key)
        if consumer is None:
            consumer = Consumer(
                {
                    **self._config,
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "auto.offset.reset": "earliest",
                    "fetch.wait.max.ms": 10,
                    "queued.max.messages.kbytes": self._tuning.max_buffer_kbytes,
                    # EOF events tell a bounded read it has reached its stop even when compaction
                    # removed the last offsets before it.
                    "enable.partition.eof": True,
                }
            )
            self._consumers[key] = consumer
            self._lag[key] = Metrics.gauge("source", f"lag_{topic}_{partition}")
        if self._positions.get(key) != start:
            # A residual may resume on another DoFn instance, or after a failed bundle: the
            # restriction, not the consumer, knows the next offset.
            consumer.assign([TopicPartition(topic, partition, start)])
            self._positions[key] = start
        elif start > 0:
            # The position reached by the previous call is durable (its bundle committed before
            # this residual ran): report it to the group for lag monitoring only.
            consumer.commit(offsets=[TopicPartition(topic, partition, start)], asynchronous=True)
        return consumer

    @beam.DoFn.unbounded_per_element()
    def process(
        self,
        element: PartitionSpec,
        tracker: OffsetRestrictionTracker = beam.DoFn.RestrictionParam(_RESTRICTIONS),  # noqa: B008
        watermark: ManualWatermarkEstimator = beam.DoFn.WatermarkEstimatorParam(_WATERMARKS),  # noqa: B008
    ) -> Any:
        restriction = tracker.current_restriction()
        if restriction.start >= restriction.stop:
            return
        topic, partition = element.topic, element.partition
        consumer = self._consumer(topic, partition, restriction.start)
        deadline = time.monotonic() + self._tuning.max_call_ms / 1000.0
        budget = self._tuning.max_records
        newest_ms = -1
        next_offset = restriction.start
        end_reached_at = -1
        while budget > 0 and time.monotonic() < deadline:
            messages = consumer.consume(min(budget, 1000), timeout=0)
            if not messages:
                break
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        end_reached_at = message.offset()
                    else:
                        # librdkafka retries transient broker errors itself; log the rest and go on.
                        _log.warning("%s[%d]: consumer error %s", topic, partition, error)
                    continue
                offset = message.offset()
                if not tracker.try_claim(offset):
                    self._positions[(topic, partition)] = offset
                    return  # reached the bounded stop
                _, timestamp_ms = message.timestamp()
                newest_ms = max(newest_ms, timestamp_ms)
                next_offset = offset + 1
                budget -= 1
                yield TimestampedValue(
                    KafkaRecord(SourcePosition(topic, partition, offset), message.key(), message.value(), timestamp_ms),
                    Timestamp(micros=timestamp_ms * 1000),
                )
        self._positions[(topic, partition)] = next_offset
        read = self._tuning.max_records - budget
        self._records.inc(read)
        _, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), cached=True)
        if high is not None and high >= 0:
            self._lag[(topic, partition)].set(max(0, high - next_offset))
        self._advance_watermark(watermark, newest_ms, caught_up=high is not None and next_offset >= high)
        if restriction.stop != UNBOUNDED and max(next_offset, end_reached_at) >= restriction.stop:
            # Bounded and read to the stop: claiming the stop itself marks the restriction done.
            tracker.try_claim(restriction.stop)
            return
        if read:
            tracker.defer_remainder(Duration(micros=0))
        else:
            self._idle_calls.inc()
            tracker.defer_remainder(Duration(micros=self._tuning.idle_resume_ms * 1000))

    def _advance_watermark(self, watermark: ManualWatermarkEstimator, newest_ms: int, *, caught_up: bool) -> None:
        current = watermark.current_watermark()
        candidate = Timestamp(micros=newest_ms * 1000) if newest_ms >= 0 else None
        if caught_up:
            idle = Timestamp.now() - Duration(self._tuning.idle_watermark_lag_s)
            candidate = idle if candidate is None else max(candidate, idle)
        if candidate is not None and (current is None or candidate > current):
            watermark.set_watermark(candidate)


class ReadKafkaPartitions(beam.PTransform):
    """``PBegin -> PCollection[KafkaRecord]`` for the given partition specs."""

    def __init__(self, specs: list[PartitionSpec], consumer_config: dict[str, Any], tuning: SourceTuning) -> None:
        super().__init__()
        self._specs = specs
        self._config = consumer_config
        self._tuning = tuning

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        return (
            pbegin
            | "Partitions" >> beam.Create(self._specs)
            | "ReadPartition" >> beam.ParDo(ReadPartitionFn(self._config, self._tuning))
        )


__all__ = ["OFFSET_END", "UNBOUNDED", "PartitionSpec", "ReadKafkaPartitions", "SourceTuning", "discover_partitions"]
