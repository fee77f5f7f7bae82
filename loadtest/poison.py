"""Poison records: values that broke a step of the job before issue 24, one of each kind found,
for the fault suite's ``poison-records`` fault and the integration test of the same name.

Each is put by hand on a topic the job reads (the event, content and parking topics) and must come
out as exactly one dead letter with its original bytes, without a job restart: a value nested
deeper than msgspec recurses (``RecursionError``) or orjson parses, a parking record that is no
envelope, and a parking envelope around such an event. Valid oddities (a 5,000-digit
``source.sequence``, which must be applied) are the integration test's, because their events are
not in Postgres and the fault suite compares every sink with SQL.
"""

from __future__ import annotations

import re
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import orjson
from confluent_kafka import Producer

from infra.settings import Settings
from pipeline.model import Parked, SourcePosition
from sinks.parking import envelope as park_envelope

# Event ids far above any the generator writes, so a letter of these is known to be ours.
FIRST_ID = 910_000_001


@dataclass(frozen=True)
class Poison:
    what: str
    topic: str
    key: bytes
    value: bytes
    stage: str | None  # the stage of its dead letter; None: valid, applied


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def event(event_id: int, content_id: str, now_ms: int, sequence: str | None = None, raw: bytes = b"null") -> bytes:
    row = {
        "id": event_id,
        "content_id": content_id,
        "user_id": str(uuid.uuid4()),
        "event_type": "play",
        "event_ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now_ms / 1000)),
        "duration_ms": 30_000,
        "device": "web",
        "raw_payload": "RAW",
    }
    source = {"ts_ms": now_ms} if sequence is None else {"ts_ms": now_ms, "sequence": sequence}
    text = orjson.dumps({"before": None, "after": row, "op": "c", "source": source, "ts_ms": now_ms})
    return text.replace(b'"RAW"', raw)


def content(content_id: str, now_ms: int, sequence: str | None = None, title: bytes = b'"poison"') -> bytes:
    row = {
        "id": content_id,
        "slug": f"poison-{content_id}",
        "title": "TITLE",
        "content_type": "video",
        "length_seconds": 60,
        "publish_ts": "2026-01-01T00:00:00Z",
    }
    source = {"ts_ms": now_ms} if sequence is None else {"ts_ms": now_ms, "sequence": sequence}
    return orjson.dumps({"before": None, "after": row, "op": "c", "source": source}).replace(b'"TITLE"', title)


def event_key(event_id: int) -> bytes:
    return orjson.dumps({"id": event_id})


def poison(settings: Settings, content_id: str, now_ms: int) -> list[Poison]:
    """One record of each kind that must become a dead letter; ``content_id`` is a content the
    events name (known or not: decoding fails before the join)."""
    cdc = settings.cdc
    deep_event = event(FIRST_ID + 3, content_id, now_ms, raw=nested(5_000))
    parked = Parked(
        SourcePosition(cdc.engagement_topic, 0, 10**12),
        event_key(FIRST_ID + 3),
        deep_event,
        "c",
        None,
        content_id,
        now_ms,
        now_ms,
    )
    other = str(uuid.uuid4())
    return [
        Poison("event, raw_payload 5,000 levels deep", cdc.engagement_topic, event_key(FIRST_ID),
               event(FIRST_ID, content_id, now_ms, raw=nested(5_000)), "decode_engagement"),
        Poison("event, after-image 100,000 levels deep", cdc.engagement_topic, event_key(FIRST_ID + 1),
               b'{"op": "c", "after": ' + nested(100_000) + b"}", "decode_engagement"),
        Poison("event, not JSON", cdc.engagement_topic, event_key(FIRST_ID + 2), b"\xff{not json", "decode_engagement"),
        Poison("content, title 5,000 levels deep", cdc.content_topic, orjson.dumps({"id": other}),
               content(other, now_ms, title=nested(5_000)), "decode_content"),
        Poison("parking record, not an envelope", cdc.parked_topic, b"poison-1", b"\x93\xff\x00garbage",
               "decode_parked"),
        Poison("parking envelope, event 5,000 levels deep", cdc.parked_topic, b"poison-2",
               park_envelope(parked, "redis"), "decode_parked"),
    ]  # fmt: skip


def produce(settings: Settings, records: list[Poison]) -> None:
    producer = Producer(settings.kafka.producer_config())
    for record in records:
        producer.produce(record.topic, key=record.key, value=record.value)
    if producer.flush(30) != 0:
        raise RuntimeError("poison records not acknowledged by Kafka")


_JOB_FAILED = re.compile(rb"job failed with exit code")


def log_size(pipeline_log: Path) -> int:
    return pipeline_log.stat().st_size if pipeline_log.exists() else 0


def supervisor_restarts(pipeline_log: Path, since: int = 0) -> int:
    """How many times the supervisor restarted a job that failed (``pipeline.supervisor``'s log),
    after byte ``since`` of the log (runs of a fault append to the same one)."""
    if not pipeline_log.exists():
        return 0
    with pipeline_log.open("rb") as log:
        log.seek(since)
        return len(_JOB_FAILED.findall(log.read()))


def inject(settings: Settings, notes: list[str]) -> int:
    """The fault: every poison record at once, under load; returns the dead letters they must make."""
    records = poison(settings, str(uuid.uuid4()), int(time.time() * 1000))
    produce(settings, records)
    notes.append(f"{len(records)} poison records on the event, content and parking topics")
    return sum(record.stage is not None for record in records)
