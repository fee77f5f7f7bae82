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
from infra.stack.kafka_admin import end_offsets
from infra.stack.local import LocalStack
from loadtest import poison
from loadtest.poison import Poison

from .pipeline_helpers import assert_redis_matches_sql, flush_redis, streaming, wait_caught_up
from .test_pipeline import all_dead_letters, generate

pytestmark = pytest.mark.integration


def test_poison_records_on_every_topic_never_restart_the_job(stack: LocalStack, settings: Settings, tmp_path):
    now_ms = int(time.time() * 1000)
    known, known_too = str(uuid.uuid4()), str(uuid.uuid4())
    long_sequence = orjson.dumps(["1" * 5_000, "2"]).decode()
    cdc = settings.cdc
    records = [
        *poison.poison(settings, known, now_ms),
        # Valid data with a sequence no LSN can be: applied, as a change without a sequence.
        Poison("event, 5,000-digit sequence", cdc.engagement_topic, poison.event_key(910_000_100),
               poison.event(910_000_100, known, now_ms, long_sequence), None),
        Poison("content, 5,000-digit sequence", cdc.content_topic, orjson.dumps({"id": known_too}),
               poison.content(known_too, now_ms, long_sequence), None),
    ]  # fmt: skip
    flush_redis(settings)
    since = end_offsets(settings.kafka, cdc.dlq_topic)
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    log = tmp_path / "pipeline.log"
    # The reader of the content view fails once, 12 s in: after the poison below has been read.
    with streaming(settings, log, PIPELINE_CONTENT_VIEW_FAULT="raise-once-after:12") as pipeline:
        time.sleep(8)
        load = generate(settings, "--rate", "30000", "--duration", "20", "--seed", "24")  # 500 events/s
        producer.produce(cdc.content_topic, key=orjson.dumps({"id": known}), value=poison.content(known, now_ms))
        for record in records:
            producer.produce(record.topic, key=record.key, value=record.value)
        producer.flush(10)
        time.sleep(8)
        # After the reader's failure: content it must still learn, and an event of it.
        late = str(uuid.uuid4())
        producer.produce(cdc.content_topic, key=orjson.dumps({"id": late}), value=poison.content(late, now_ms))
        producer.flush(10)
        time.sleep(2)
        for event_id, content_id in ((910000005, known_too), (910000006, late)):
            key = orjson.dumps({"id": event_id})
            producer.produce(cdc.engagement_topic, key=key, value=poison.event(event_id, content_id, now_ms))
        producer.flush(10)
        assert load.wait(120) == 0, load.stdout.read() if load.stdout else ""
        wait_caught_up(settings, timeout=180)
        time.sleep(3)  # a letter produced twice would be there by now
        assert pipeline.alive()
    text = log.read_text(errors="replace")
    assert poison.supervisor_restarts(log) == 0, text[-3000:]
    assert "restarting the job" not in text and "restarting it now" not in text, text[-3000:]
    assert text.count("content view reader for") >= 1 and "failed (1 in a row); reading again" in text
    assert_redis_matches_sql(settings)
    client = settings.redis.client(decode_responses=True)
    counts = {c: client.hget(f"engagement:content:{c}", "events") for c in (known, known_too, late)}
    # known: the event with the 5,000-digit sequence; known_too and late: one event each.
    assert counts == {known: "1", known_too: "1", late: "1"}, counts
    expected = sorted((r.stage, r.key) for r in records if r.stage is not None)
    # Only this test's: a start from offset 0 (the flushed Redis) dead-letters again the bad records
    # earlier tests put on the topics (letters are at least once).
    ours = {r.key for r in records}
    letters = [letter for letter in all_dead_letters(settings, since=since) if letter["key"] in ours]
    assert sorted((letter["stage"], letter["key"]) for letter in letters) == expected, letters
    by_key = {letter["key"]: letter for letter in letters}
    for r in records:
        if r.stage is not None:
            assert by_key[r.key]["value"] == r.value, r.what
