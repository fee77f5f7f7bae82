"""Offsets of a topic's partitions for the operator commands: end offsets, and the first offset at
or after a time (Kafka's ``offsets_for_times``, by record timestamp: for Debezium's records the time
Connect produced them, within a second or so of the commit).

One consumer, never subscribed and never committing, for every look-up of a command.
"""

from __future__ import annotations

from typing import Any

from confluent_kafka import Consumer, TopicPartition

TIMEOUT_S = 10.0


class OffsetLookup:
    def __init__(self, consumer_config: dict[str, Any], timeout_s: float = TIMEOUT_S) -> None:
        self._timeout = timeout_s
        self._consumer = Consumer(
            {
                **consumer_config,
                "group.id": consumer_config.get("group.id", "engagement-offsets"),
                "enable.auto.commit": False,
            }
        )

    def partitions(self, topic: str) -> list[int]:
        meta = self._consumer.list_topics(topic, timeout=self._timeout).topics.get(topic)
        if meta is None or meta.error is not None:
            raise RuntimeError(f"topic {topic!r} is not available: {getattr(meta, 'error', 'missing')}")
        return sorted(meta.partitions)

    def ends(self, topic: str) -> dict[int, int]:
        """``{partition: end offset}`` (the next offset to be written)."""
        return {
            p: self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=self._timeout)[1]
            for p in self.partitions(topic)
        }

    def at_time(self, topic: str, timestamp_ms: int) -> dict[int, int]:
        """``{partition: first offset whose timestamp is at or after timestamp_ms}``; a partition with
        no such record maps to its end offset (nothing to read from there)."""
        ends = self.ends(topic)
        asked = [TopicPartition(topic, p, timestamp_ms) for p in ends]
        found = self._consumer.offsets_for_times(asked, timeout=self._timeout)
        return {tp.partition: (tp.offset if tp.offset >= 0 else ends[tp.partition]) for tp in found}

    def close(self) -> None:
        self._consumer.close()
