"""The forged-sequence fault of ``make faults``: one record on the event topic whose Debezium
``source.sequence`` is the largest 64-bit LSN, produced to one partition under load.

Before issue 24 every sink took every later change of that partition for a re-send and skipped it,
silently: the same silence as a Postgres point-in-time restore or a failover to a replica, which
reuse LSNs below the mark (``sinks.positions``). The record is an insert of an event whose content
never arrives, so it changes no sink: it parks, then becomes one dead letter
(``PIPELINE_LATE_CONTENT_TIMEOUT_S``), and only its sequence is wrong. The suite then checks, as for
every fault, that Redis, the BigQuery view and the HTTP receiver equal SQL.
"""

from __future__ import annotations

import re
import time
import uuid
from pathlib import Path

import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from infra.settings import Settings
from infra.stack.kafka_admin import end_offsets

TOP = str((1 << 64) - 1)
NOTICE_TIMEOUT_S = 60.0
_NOTICED = re.compile(rb"(\S+): (\S+:\d+): sequence mark ")


def last_insert(settings: Settings, topic: str) -> tuple[int, bytes, dict]:
    """A partition whose last record is an insert: (partition, key, value)."""
    consumer = Consumer({**settings.kafka.client_config(), "group.id": "faults-forged-sequence"})
    try:
        for partition, end in sorted(end_offsets(settings.kafka, topic).items()):
            if end == 0:
                continue
            consumer.assign([TopicPartition(topic, partition, end - 1)])
            messages = consumer.consume(1, timeout=10)
            value = orjson.loads(messages[0].value()) if messages and messages[0].value() else None
            if value is not None and value.get("op") == "c":
                return partition, messages[0].key(), value
    finally:
        consumer.close()
    raise RuntimeError(f"no partition of {topic} ends with an insert")


def forge(key: bytes, value: dict) -> tuple[bytes, bytes]:
    """A copy of an insert as a new event (an id far above the table's) of a content that does not
    exist, with the largest sequence there is."""
    event_id = (1 << 62) + uuid.uuid4().int % (1 << 30)
    after = {**value["after"], "id": event_id, "content_id": str(uuid.uuid4())}
    source = {**value["source"], "sequence": orjson.dumps([TOP, TOP]).decode()}
    key_doc = {**orjson.loads(key), "id": event_id}
    return orjson.dumps(key_doc), orjson.dumps({**value, "after": after, "source": source})


def inject(settings: Settings, pipeline_log: Path, sinks: int, notes: list[str]) -> None:
    """Produce the forged record, then note how long each of ``sinks`` sinks took to find the mark
    wrong (its warning in the pipeline's log)."""
    topic = settings.cdc.engagement_topic
    partition, key, value = last_insert(settings, topic)
    forged_key, forged_value = forge(key, value)
    log_at = pipeline_log.stat().st_size
    producer = Producer(settings.kafka.client_config())
    producer.produce(topic, forged_value, forged_key, partition=partition)
    if producer.flush(10) != 0:
        raise RuntimeError("the forged record was not acknowledged")
    produced = time.monotonic()
    noticed: dict[str, float] = {}
    while len(noticed) < sinks and time.monotonic() - produced < NOTICE_TIMEOUT_S:
        with pipeline_log.open("rb") as text:
            text.seek(log_at)
            for sink, where in _NOTICED.findall(text.read()):
                if where.decode() == f"{topic}:{partition}":
                    noticed.setdefault(sink.decode(), time.monotonic() - produced)
        time.sleep(0.2)
    notes.append(
        f"partition {partition}: "
        + (", ".join(f"{sink} noticed in {s:.1f} s" for sink, s in sorted(noticed.items())) or "nobody noticed")
        + (f" ({len(noticed)} of {sinks} sinks)" if len(noticed) < sinks else "")
    )
