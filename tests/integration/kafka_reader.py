"""Drain CDC topics with a deadline: the canonical shape of a CDC test (debezium-examples)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition


@dataclass(frozen=True)
class Record:
    partition: int
    offset: int
    key: Any
    value: Any  # None for a tombstone, and for a value that is not JSON (see ``raw``)
    raw: bytes | None = None

    @property
    def op(self) -> str:
        if self.value is None:
            return "tombstone" if self.raw is None else "malformed"
        return self.value["op"]


def read_topic(
    bootstrap: str,
    topic: str,
    until: Callable[[list[Record]], bool],
    timeout: float = 60.0,
    settle: float = 0.0,
) -> list[Record]:
    """Read every partition from the start until ``until(records)`` holds (then ``settle`` more
    seconds, to catch duplicates); fail with what was seen if the deadline passes first."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "tests", "enable.auto.commit": False})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        records: list[Record] = []
        deadline = time.monotonic() + timeout
        satisfied_at: float | None = None
        while time.monotonic() < deadline:
            for message in consumer.consume(1000, timeout=0.2):
                if message.error():
                    if message.error().code() != KafkaError._PARTITION_EOF:
                        raise RuntimeError(message.error())
                    continue
                records.append(
                    Record(
                        message.partition(),
                        message.offset(),
                        _json(message.key()),
                        _json(message.value()),
                        message.value(),
                    )
                )
            if satisfied_at is None and until(records):
                satisfied_at = time.monotonic()
            if satisfied_at is not None and time.monotonic() - satisfied_at >= settle:
                return records
        raise AssertionError(f"{topic}: condition not met within {timeout} s; saw {len(records)} records")
    finally:
        consumer.close()


def by_key(records: list[Record], key_field: str, key_value: Any) -> list[Record]:
    return [r for r in records if r.key and r.key.get(key_field) == key_value]


def _json(data: bytes | None) -> Any:
    """Parsed JSON, or None for no bytes and for bytes some test produced as garbage on purpose."""
    if not data:
        return None
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
