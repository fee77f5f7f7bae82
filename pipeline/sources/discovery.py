"""Where each partition of a lane's topic starts (and, bounded, stops): the plan's half of the source.

Runs once when a job is planned (``pipeline.job.plan``), before anything is submitted: it reads the
topic's partitions and watermarks and clamps the sinks' stored positions to what the broker still
has, saying why (docs/delivery.md, "Out-of-range positions").
"""

from __future__ import annotations

import logging
from typing import Any

from confluent_kafka import Consumer, TopicPartition

from pipeline.sources.partition_offsets import UNBOUNDED, PartitionSpec

_log = logging.getLogger(__name__)


def end_offsets(consumer_config: dict[str, Any], topic: str, timeout: float = 10.0) -> dict[int, int]:
    """``{partition: offset the next record will get}`` for every partition of ``topic``."""
    consumer = Consumer({**consumer_config, "group.id": consumer_config.get("group.id", "discovery")})
    try:
        metadata = consumer.list_topics(topic, timeout=timeout).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise RuntimeError(f"topic {topic!r} is not available: {getattr(metadata, 'error', 'missing')}")
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout)[1]
            for p in sorted(metadata.partitions)
        }
    finally:
        consumer.close()


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
            elif start > high:
                # Past the end: the topic was deleted and created again, or the positions belong to
                # another cluster. Reading from its start would hand the sinks offsets they take
                # for replays; start at the end, and say how to re-read it.
                _log.error(
                    "%s[%d]: resume offset %d is past the partition's end offset %d (topic recreated?); "
                    "starting at the end. The sinks skip offsets below their stored positions: reset "
                    "them (docs/delivery.md, 'Out-of-range positions') to read this partition again",
                    topic,
                    partition,
                    start,
                    high,
                )
                start = high
            specs.append(PartitionSpec(topic, partition, start, high if bounded else UNBOUNDED))
        return specs
    finally:
        consumer.close()
