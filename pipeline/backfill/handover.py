"""The handover from the backfill to the stream: find each partition's boundary, store it in the sinks.

``scan_boundaries`` reads each partition of a Debezium topic from a margin before its end offset
taken *before* the snapshot (``E0``) up to its end offset *after* Debezium confirmed the snapshot's
LSN (``E1``): every change the snapshot sees is below ``E1``, and (but for the race that
``pipeline.backfill.snapshot`` refuses) every change before ``E0`` is one the snapshot sees. The
boundary rule itself is ``pipeline.backfill.snapshot.find_boundary``.

``store_positions`` hands the boundaries to each sink through its own ``commit`` (the contract's
way to store positions: the Redis hash by compare-and-set against "nothing stored", a Kafka
consumer group for BigQuery and HTTP), once the backfill's writes are done. The parking topic gets
its end offset: nothing parked there before this handover was parked for this sink's data.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition

from pipeline.backfill.snapshot import Boundary, PgSnapshot, ScannedChange, find_boundary, tx_id_of
from pipeline.column_values import parse_sequence
from sinks.contract import Sink
from sinks.positions import Position
from sinks.records import SourcePosition

_log = logging.getLogger(__name__)
_TIMEOUT_S = 10.0


def scanned(topic: str, partition: int, offset: int, key: bytes | None, value: bytes | None) -> ScannedChange:
    position = SourcePosition(topic, partition, offset)
    if value is None:
        return ScannedChange(position, key, None, None, None)
    try:
        envelope = orjson.loads(value)
    except orjson.JSONDecodeError:
        return ScannedChange(position, key, None, None, None)
    if type(envelope) is not dict:
        return ScannedChange(position, key, None, None, None)
    op = envelope.get("op")
    source = envelope.get("source")
    sequence = parse_sequence(source.get("sequence")) if type(source) is dict else None
    return ScannedChange(position, key, op if type(op) is str else None, sequence, tx_id_of(envelope))


def read_range(
    consumer_config: Mapping[str, Any], topic: str, ranges: Mapping[int, tuple[int, int]]
) -> dict[int, list[ScannedChange]]:
    """Records ``[start, end)`` of each partition, in offset order."""
    out: dict[int, list[ScannedChange]] = {p: [] for p in ranges}
    todo = {p: (s, e) for p, (s, e) in ranges.items() if e > s}
    if not todo:
        return out
    consumer = Consumer(
        {**consumer_config, "group.id": "backfill-scan", "enable.auto.commit": False, "auto.offset.reset": "error"}
    )
    try:
        consumer.assign([TopicPartition(topic, p, s) for p, (s, _) in todo.items()])
        while todo:
            messages = consumer.consume(5000, timeout=_TIMEOUT_S)
            if not messages:
                raise TimeoutError(f"{topic}: no records within {_TIMEOUT_S} s while scanning {todo}")
            for message in messages:
                error = message.error()
                if error is not None:
                    if error.code() == KafkaError._PARTITION_EOF:
                        continue
                    raise RuntimeError(f"{topic}: {error}")
                p, offset = message.partition(), message.offset()
                if p not in todo or offset >= todo[p][1]:
                    continue
                out[p].append(scanned(topic, p, offset, message.key(), message.value()))
                if offset + 1 >= todo[p][1]:
                    del todo[p]
    finally:
        consumer.close()
    return out


def scan_boundaries(
    consumer_config: Mapping[str, Any],
    topic: str,
    before: Mapping[int, int],
    after: Mapping[int, int],
    snapshot: PgSnapshot,
    margin: int,
    low: Mapping[int, int] | None = None,
) -> dict[str, Boundary]:
    """The boundary of every partition of ``topic``: ``before`` = E0, ``after`` = E1 (see the module)."""
    low = low or {}
    ranges = {p: (max(low.get(p, 0), before.get(p, 0) - margin), end) for p, end in after.items()}
    records = read_range(consumer_config, topic, ranges)
    return {
        f"{topic}:{p}": find_boundary(records[p], snapshot, start=start, end=end, partition_key=f"{topic}:{p}")
        for p, (start, end) in ranges.items()
    }


def low_offsets(consumer_config: Mapping[str, Any], topic: str) -> dict[int, int]:
    consumer = Consumer({**consumer_config, "group.id": "backfill-probe", "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=_TIMEOUT_S).topics[topic]
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=_TIMEOUT_S)[0]
            for p in sorted(meta.partitions)
        }
    finally:
        consumer.close()


def store_positions(sink: Sink[Any], positions: Mapping[str, Position]) -> None:
    """Store the handover positions through the sink's own ``commit``, against "nothing stored"."""
    sink.commit(dict(positions), dict.fromkeys(positions))


def stored_any(sink: Sink[Any], topics: Sequence[str]) -> dict[str, Position]:
    return sink.positions(list(topics))
