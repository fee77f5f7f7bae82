"""The Beam pipeline on the real stack: Redis equals SQL, after kill -9 and Redis restarts too.

Each test starts from an empty Redis, so the pipeline re-reads the topics from offset 0 and the
result must equal the aggregates SQL computes over the current tables (inserts, updates, deletes).
"""

from __future__ import annotations

import random
import subprocess
import sys
import time
import uuid
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from infra.settings import REPO_ROOT, Settings
from infra.stack.kafka_admin import end_offsets
from infra.stack.local import LocalStack

from .pipeline_helpers import (
    assert_redis_matches_sql,
    env,
    flush_redis,
    run_bounded,
    run_pipeline,
    streaming,
    wait_caught_up,
    wait_topic_settled,
)

pytestmark = pytest.mark.integration

CHANGES = {
    "GENERATOR_EVENT_UPDATE_SHARE": "0.02",
    "GENERATOR_EVENT_DELETE_SHARE": "0.01",
    "GENERATOR_CONTENT_UPDATE_SHARE": "0.001",
}


def generate(settings: Settings, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "generator", *args],
        cwd=REPO_ROOT,
        env=env(settings, **CHANGES),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def test_bounded_run_equals_sql(stack: LocalStack, settings: Settings):
    assert generate(settings, "--burst", "8000", "--seed", "11").wait(120) == 0
    wait_topic_settled(settings)  # --bounded reads to the end offsets of the moment it starts
    flush_redis(settings)
    run_bounded(settings)
    checked = assert_redis_matches_sql(settings)
    assert checked["contents"] >= 20 and checked["board"] > 0


def test_any_jsonb_raw_payload_is_valid_data(stack: LocalStack, settings: Settings, db):
    """Issue 14, finding 4: arrays, strings and deeply nested payloads are valid JSONB."""
    payloads = ["[1, 2]", '"text"', "3", "null", '{"a": {"b": [true, null]}}', "[" * 1_025 + "]" * 1_025]
    [content_id] = db.execute("SELECT id FROM content ORDER BY id LIMIT 1").fetchone()
    ids = [
        db.execute(
            "INSERT INTO engagement_events (content_id, event_type, event_ts, duration_ms, device, raw_payload)"
            " VALUES (%s, 'play', now(), 1000, 'web', %s::jsonb) RETURNING id",
            (content_id, payload),
        ).fetchone()[0]
        for payload in payloads
    ]
    wait_topic_settled(settings)
    flush_redis(settings)
    run_bounded(settings)
    assert_redis_matches_sql(settings)
    ours = [letter for letter in all_dead_letters(settings) if dead_letter_event_id(letter) in ids]
    assert ours == []


def test_kill_9_three_times_loses_and_repeats_nothing(stack: LocalStack, settings: Settings, tmp_path):
    flush_redis(settings)
    rng = random.Random(7)
    with streaming(settings, tmp_path / "pipeline.log") as pipeline:
        generator = generate(settings, "--rate", "90000", "--duration", "24")  # 1,500 events/s
        for _ in range(3):
            time.sleep(rng.uniform(3.0, 7.0))
            pipeline.kill9()
            pipeline.start()
        assert generator.wait(120) == 0, generator.stdout.read() if generator.stdout else ""
        wait_caught_up(settings, timeout=180)
        assert pipeline.alive()
    assert_redis_matches_sql(settings)


def test_redis_restart_mid_run(stack: LocalStack, settings: Settings, tmp_path):
    flush_redis(settings)
    with streaming(settings, tmp_path / "pipeline.log") as pipeline:
        generator = generate(settings, "--rate", "60000", "--duration", "15")
        time.sleep(6)
        stack.redis.process.stop(30)
        time.sleep(2)  # writes fail meanwhile: the sink waits them out
        stack.redis.process.start(60)
        assert generator.wait(120) == 0
        wait_caught_up(settings, timeout=180)
        assert pipeline.alive()
    assert_redis_matches_sql(settings)


def test_late_content_is_joined_and_bad_input_is_dead_lettered(stack: LocalStack, settings: Settings, tmp_path):
    """Envelopes put on the topics by hand: an event whose content arrives 2 s later is enriched;
    a malformed one and one whose content never comes go to the dead-letter topic with reasons."""
    late_content, never_content = str(uuid.uuid4()), str(uuid.uuid4())
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    now_ms = int(time.time() * 1000)

    def event(event_id: int, content_id: str) -> bytes:
        row = {
            "id": event_id,
            "content_id": content_id,
            "user_id": str(uuid.uuid4()),
            "event_type": "play",
            "event_ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "duration_ms": 30_000,
            "device": "web",
            "raw_payload": '{"k": 1}',
        }
        return orjson.dumps({"before": None, "after": row, "op": "c", "source": {"ts_ms": now_ms}, "ts_ms": now_ms})

    flush_redis(settings)
    # The topic holds the letters of earlier tests, and those of their records come again as the
    # pipeline re-reads the topics from offset 0: this test's letters are those about its own keys.
    since = end_offsets(settings.kafka, settings.cdc.dlq_topic)
    ours = {b'{"id": 900000001}', b'{"id": 900000002}', b'{"id": 900000003}'}
    with streaming(settings, tmp_path / "pipeline.log", PIPELINE_LATE_CONTENT_TIMEOUT_S="6"):
        time.sleep(8)
        topic = settings.cdc.engagement_topic
        producer.produce(topic, key=b'{"id": 900000001}', value=event(900000001, late_content))
        producer.produce(topic, key=b'{"id": 900000002}', value=b"{not json")
        never_value = event(900000003, never_content)
        producer.produce(topic, key=b'{"id": 900000003}', value=never_value)
        producer.flush(10)
        time.sleep(2)
        content = {
            "id": late_content,
            "slug": f"late-{late_content}",
            "title": "arrives late",
            "content_type": "video",
            "length_seconds": 60,
            "publish_ts": "2026-01-01T00:00:00Z",
        }
        producer.produce(
            settings.cdc.content_topic,
            key=orjson.dumps({"id": late_content}),
            value=orjson.dumps({"before": None, "after": content, "op": "c", "source": {"ts_ms": now_ms}}),
        )
        producer.flush(10)
        read_dead_letters(settings, expected=2, timeout=60, since=since, keys=ours)
        time.sleep(3)  # a letter written twice would show up by now
    letters = [letter for letter in all_dead_letters(settings, since=since) if letter["key"] in ours]
    by_stage = sorted((letter["stage"], letter["key"], letter["value"]) for letter in letters)
    # Exactly one letter each, with the record as it came (not an empty tombstone-like record).
    assert by_stage == [
        ("decode_engagement", b'{"id": 900000002}', b"{not json"),
        ("join_content", b'{"id": 900000003}', never_value),
    ], letters
    [malformed, missing] = sorted(letters, key=lambda letter: letter["stage"])
    assert "not valid JSON" in malformed["reason"], malformed["reason"]
    assert missing["reason"].startswith(f"content {never_content} not found within 6 s"), missing["reason"]
    assert {letter["source_topic"] for letter in letters} == {settings.cdc.engagement_topic}
    metrics = stack_redis(settings).hgetall(f"engagement:content:{late_content}")
    assert metrics.get("events") == "1" and float(metrics["total_seconds"]) == 30.0
    assert float(metrics["avg_pct"]) == 50.0


def stack_redis(settings: Settings):
    return settings.redis.client(decode_responses=True)


def read_dead_letters(
    settings: Settings,
    expected: int,
    timeout: float,
    stage: str | None = None,
    since: dict[int, int] | None = None,
    keys: set[bytes] | None = None,
) -> list[dict[str, Any]]:
    """Letters on the dead-letter topic from ``since`` (its offsets; the beginning if not given), of
    ``stage`` and about ``keys`` only if given, with their headers and bytes: until ``expected``."""
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": "tests"})
    topic = settings.cdc.dlq_topic
    partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, (since or {}).get(p, 0)) for p in partitions])
    letters: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout
    try:
        while len(letters) < expected and time.monotonic() < deadline:
            for message in consumer.consume(100, timeout=0.5):
                if message.error():
                    continue
                headers = {k: v.decode() for k, v in message.headers() or []}
                if stage is not None and headers["dlq.stage"] != stage:
                    continue
                if keys is not None and message.key() not in keys:
                    continue
                letters.append(
                    {
                        "reason": headers["dlq.reason"],
                        "stage": headers["dlq.stage"],
                        "source_topic": headers["dlq.source.topic"],
                        "offset_key": f"{headers['dlq.source.partition']}:{headers['dlq.source.offset']}",
                        "key": message.key(),
                        "value": message.value(),
                    }
                )
    finally:
        consumer.close()
    assert len(letters) >= expected, f"dead letters seen: {letters}"
    return letters


def dead_letter_event_id(letter: dict[str, Any]) -> int | None:
    """The event id in a letter's original value, if that value is a Debezium envelope."""
    try:
        value = orjson.loads(letter["value"] or b"null")
    except orjson.JSONDecodeError:
        return None
    return (value.get("after") or {}).get("id") if isinstance(value, dict) else None


def all_dead_letters(
    settings: Settings, stage: str | None = None, since: dict[int, int] | None = None
) -> list[dict[str, Any]]:
    """Every letter (of ``stage``, if given) on the dead-letter topic from ``since`` (its offsets; the
    beginning if not given) up to its end offsets now."""
    ends = end_offsets(settings.kafka, settings.cdc.dlq_topic)
    total = sum(ends.values()) - sum((since or {}).get(p, 0) for p in ends)
    letters = read_dead_letters(settings, expected=total, timeout=60, since=since) if total else []
    return [letter for letter in letters if stage is None or letter["stage"] == stage]


def test_a_second_instance_refuses_to_start(stack: LocalStack, settings: Settings, tmp_path):
    with streaming(settings, tmp_path / "first.log"):
        time.sleep(3)
        second = run_pipeline(settings, timeout=60)
    assert second.returncode == 1
    assert "another pipeline instance" in second.stderr and "PIPELINE_CONSUMER_GROUP" in second.stderr


def test_events_of_missing_content_are_parked_without_holding_the_board(
    stack: LocalStack, settings: Settings, tmp_path
):
    """1,000 events for 10 content ids that never come are parked; meanwhile an event of known
    content committed in Postgres reaches the board, long before the parked ones' deadline; then
    every one of the 1,000 is dead-lettered with its bytes, once, and Redis equals SQL."""
    import psycopg

    timeout_s = 20.0
    missing = [str(uuid.uuid4()) for _ in range(10)]
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    now_ms = int(time.time() * 1000)
    values: dict[bytes, bytes] = {}
    for i in range(1_000):
        row = {
            "id": 800_000_000 + i,
            "content_id": missing[i % 10],
            "user_id": None,
            "event_type": "play",
            "event_ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "duration_ms": 1_000,
            "device": "web",
            "raw_payload": None,
        }
        key = orjson.dumps({"content_id": missing[i % 10], "id": row["id"]})
        values[key] = orjson.dumps({"before": None, "after": row, "op": "c", "source": {"ts_ms": now_ms}})
    flush_redis(settings)
    probe_content = str(uuid.uuid4())
    with streaming(settings, tmp_path / "pipeline.log", PIPELINE_LATE_CONTENT_TIMEOUT_S=str(timeout_s)):
        wait_caught_up(settings)
        for key, value in values.items():
            producer.produce(settings.cdc.engagement_topic, key=key, value=value)
        producer.flush(10)
        parked_at = time.monotonic()
        with psycopg.connect(settings.postgres.conninfo(), autocommit=True) as conn:
            conn.execute(
                "INSERT INTO content VALUES (%s, %s, 'probe', 'video', 60, now())", (probe_content, probe_content)
            )
            conn.execute(
                "INSERT INTO engagement_events (content_id, event_type, event_ts, duration_ms, device) "
                "VALUES (%s, 'play', now(), 30000, 'web')",
                (probe_content,),
            )
        committed = time.monotonic()
        board = stack_redis(settings)
        while board.zscore("top_engagement:10min", probe_content) is None:
            assert time.monotonic() - committed < timeout_s, "the board was held up by the parked events"
            time.sleep(0.01)
        seen = time.monotonic()
        print(f"commit -> board for known content, 1,000 events parked: {(seen - committed) * 1000:.0f} ms")
        # Not one parked event has timed out yet: the board did not wait for them.
        assert seen - parked_at < timeout_s
        read_dead_letters(settings, expected=1_000, timeout=timeout_s + 90, stage="join_content")
        time.sleep(3)  # a letter written twice would show up by now
        # Earlier tests of the session share the topic: keep the letters of these events.
        letters = [letter for letter in all_dead_letters(settings, "join_content") if letter["key"] in values]
    assert len(letters) == 1_000
    assert {(letter["key"], letter["value"]) for letter in letters} == set(values.items())
    assert {letter["source_topic"] for letter in letters} == {settings.cdc.engagement_topic}
    reasons = {letter["reason"].split(" not found")[0] for letter in letters}
    assert reasons == {f"content {content}" for content in missing}
    assert_redis_matches_sql(settings)

    # Starting over (Redis flushed: everything is read again) letters each event once more, once:
    # the envelopes of its rounds on the parking topic belong to the earlier state, and are skipped.
    flush_redis(settings)
    since = end_offsets(settings.kafka, settings.cdc.dlq_topic)
    with streaming(settings, tmp_path / "again.log", PIPELINE_LATE_CONTENT_TIMEOUT_S="2"):
        read_dead_letters(settings, expected=1_000, timeout=90, since=since, keys=set(values))
        wait_caught_up(settings)
    again = [letter for letter in all_dead_letters(settings, since=since) if letter["key"] in values]
    assert sorted(letter["key"] for letter in again) == sorted(values)


def test_a_stored_position_past_the_end_is_reported_not_a_crash_loop(stack: LocalStack, settings: Settings):
    from sinks.positions import Position, encode

    flush_redis(settings)
    run_bounded(settings)
    client = settings.redis.client()
    field = f"{settings.cdc.engagement_topic}:0"
    stored = client.hget("engagement:positions:redis_leaderboard", field)
    assert stored is not None
    client.hset("engagement:positions:redis_leaderboard", field, encode(Position(10_000_000)))
    output = run_bounded(settings)
    assert "resume offset 10000000 is past the partition's end offset" in output
    flush_redis(settings)
