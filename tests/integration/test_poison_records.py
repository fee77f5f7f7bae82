"""Poison records on every topic the job reads, and its content view's reader failing, while real
events flow: the job never restarts, each poison record is one dead letter with its bytes, valid
oddities are applied, and Redis equals SQL (issue 24, items 1 and 5)."""

from __future__ import annotations

import time
import uuid

import orjson
import pytest
from confluent_kafka import Producer

from infra.settings import Settings
from infra.stack.kafka import end_offsets
from infra.stack.local import LocalStack
from pipeline.model import Parked, SourcePosition
from sinks.parking import envelope as park_envelope

from .pipeline_helpers import assert_redis_matches_sql, flush_redis, streaming, wait_caught_up
from .test_pipeline import all_dead_letters, generate

pytestmark = pytest.mark.integration


def nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def event(event_id: int, content_id: str, now_ms: int, sequence: str | None = None) -> bytes:
    row = {
        "id": event_id,
        "content_id": content_id,
        "user_id": str(uuid.uuid4()),
        "event_type": "play",
        "event_ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_ms": 30_000,
        "device": "web",
        "raw_payload": "RAW",
    }
    source = {"ts_ms": now_ms} if sequence is None else {"ts_ms": now_ms, "sequence": sequence}
    return orjson.dumps({"before": None, "after": row, "op": "c", "source": source, "ts_ms": now_ms})


def content(content_id: str, now_ms: int, sequence: str | None = None, title: bytes = b'"poison test"') -> bytes:
    row = {
        "id": content_id,
        "slug": f"poison-{content_id}",
        "title": "TITLE",
        "content_type": "video",
        "length_seconds": 60,
        "publish_ts": "2026-01-01T00:00:00Z",
    }
    source = {"ts_ms": now_ms} if sequence is None else {"ts_ms": now_ms, "sequence": sequence}
    text = orjson.dumps({"before": None, "after": row, "op": "c", "source": source})
    return text.replace(b'"TITLE"', title)


def test_poison_records_on_every_topic_never_restart_the_job(stack: LocalStack, settings: Settings, tmp_path):
    now_ms = int(time.time() * 1000)
    known, known_too = str(uuid.uuid4()), str(uuid.uuid4())
    long_sequence = orjson.dumps(["1" * 5_000, "2"]).decode()
    cdc = settings.cdc
    poison = {
        # topic, key, value, the stage of its letter (None: valid, applied)
        "event with a raw_payload 5,000 levels deep": (
            cdc.engagement_topic,
            b'{"id": 910000001}',
            event(910000001, known, now_ms).replace(b'"RAW"', nested(5_000)),
            "decode_engagement",
        ),
        "event whose after-image is 100,000 levels deep": (
            cdc.engagement_topic,
            b'{"id": 910000002}',
            b'{"op": "c", "after": ' + nested(100_000) + b"}",
            "decode_engagement",
        ),
        "event with a 5,000-digit sequence (valid data: applied, no sequence)": (
            cdc.engagement_topic,
            b'{"id": 910000003}',
            event(910000003, known, now_ms, long_sequence).replace(b'"RAW"', b"null"),
            None,
        ),
        "content with a title 5,000 levels deep": (
            cdc.content_topic,
            orjson.dumps({"id": str(uuid.uuid4())}),
            content(str(uuid.uuid4()), now_ms, title=nested(5_000)),
            "decode_content",
        ),
        "content with a 5,000-digit sequence (valid data)": (
            cdc.content_topic,
            orjson.dumps({"id": known_too}),
            content(known_too, now_ms, long_sequence),
            None,
        ),
        "parking record that is not an envelope": (cdc.parked_topic, b"k1", b"\x93\xff\x00garbage", "decode_parked"),
        "parking envelope around an event 5,000 levels deep": (
            cdc.parked_topic,
            b"k2",
            park_envelope(
                Parked(
                    SourcePosition(cdc.engagement_topic, 0, 10**9),
                    b'{"id": 910000004}',
                    event(910000004, known, now_ms).replace(b'"RAW"', nested(5_000)),
                    "c",
                    None,
                    known,
                    now_ms,
                    now_ms,
                ),
                "redis",
            ),
            "decode_parked",
        ),
    }
    flush_redis(settings)
    since = end_offsets(settings.kafka, cdc.dlq_topic)
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    log = tmp_path / "pipeline.log"
    # The reader of the content view fails once, 12 s in: after the poison below has been read.
    with streaming(settings, log, PIPELINE_CONTENT_VIEW_FAULT="raise-once-after:12") as pipeline:
        time.sleep(8)
        load = generate(settings, "--rate", "30000", "--duration", "20", "--seed", "24")  # 500 events/s
        producer.produce(cdc.content_topic, key=orjson.dumps({"id": known}), value=content(known, now_ms))
        for topic, key, value, _ in poison.values():
            producer.produce(topic, key=key, value=value)
        producer.flush(10)
        time.sleep(8)
        # After the reader's failure: content it must still learn, and an event of it.
        late = str(uuid.uuid4())
        producer.produce(cdc.content_topic, key=orjson.dumps({"id": late}), value=content(late, now_ms))
        producer.flush(10)
        time.sleep(2)
        for event_id, content_id in ((910000005, known_too), (910000006, late)):
            key = orjson.dumps({"id": event_id})
            producer.produce(cdc.engagement_topic, key=key, value=event(event_id, content_id, now_ms))
        producer.flush(10)
        assert load.wait(120) == 0, load.stdout.read() if load.stdout else ""
        wait_caught_up(settings, timeout=180)
        time.sleep(3)  # a letter produced twice would be there by now
        assert pipeline.alive()
    text = log.read_text(errors="replace")
    assert text.count("job failed") == 0, text[-3000:]
    assert text.count("restarting the job") == 0 and text.count("restarting it now") == 0, text[-3000:]
    assert text.count("content view reader for") >= 1 and "failed (1 in a row); reading again" in text
    assert_redis_matches_sql(settings)
    client = settings.redis.client(decode_responses=True)
    counts = {c: client.hget(f"engagement:content:{c}", "events") for c in (known, known_too, late)}
    # known: the event with the 5,000-digit sequence; known_too and late: one event each.
    assert counts == {known: "1", known_too: "1", late: "1"}, counts
    expected = sorted((stage, key) for _, key, _, stage in poison.values() if stage is not None)
    letters = [letter for letter in all_dead_letters(settings, since=since)]
    assert sorted((letter["stage"], letter["key"]) for letter in letters) == expected, letters
    by_key = {letter["key"]: letter for letter in letters}
    for _, key, value, stage in poison.values():
        if stage is not None:
            assert by_key[key]["value"] == value
