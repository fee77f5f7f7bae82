"""The sink contract on the real stack: a Connect crash counts nothing twice, a sink outage delays no
other lane, and a dead letter is on its topic before any position passes its record."""

from __future__ import annotations

import random
import time
from collections import Counter

import psycopg
import pytest

from infra.settings import Settings
from infra.stack.kafka_admin import end_offsets
from infra.stack.local import LocalStack
from sinks.fault_injection import DELIVERIES_KEY, MODE_KEY, ROWS_KEY, start_at
from sinks.redis_store import next_offsets

from .kafka_reader import Record, read_topic
from .pipeline_helpers import assert_redis_matches_sql, flush_redis, streaming, wait_caught_up
from .test_pipeline import generate, read_dead_letters

pytestmark = pytest.mark.integration


def read_to_the_end(settings: Settings) -> list[Record]:
    """Every record of the engagement topic, up to its end offsets of now."""
    ends = end_offsets(settings.kafka, settings.cdc.engagement_topic)
    return read_topic(
        settings.kafka.bootstrap_servers,
        settings.cdc.engagement_topic,
        lambda rs: Counter(r.partition for r in rs) == Counter({p: e for p, e in ends.items() if e}),
        timeout=120,
    )


def resent(settings: Settings, since: dict[int, int]) -> int:
    """Records on the engagement topic after ``since`` whose (partition, sequence, key) came before."""
    records = read_to_the_end(settings)
    seen: Counter[tuple] = Counter()
    for r in records:
        sequence = None if r.value is None else (r.value.get("source") or {}).get("sequence")
        if sequence is not None and r.offset >= since.get(r.partition, 0):
            seen[(r.partition, sequence, str(r.key))] += 1
    return sum(n - 1 for n in seen.values())


def test_kill_9_of_kafka_connect_under_load_counts_nothing_twice(stack: LocalStack, settings: Settings, tmp_path):
    flush_redis(settings)
    rng = random.Random(11)
    before = end_offsets(settings.kafka, settings.cdc.engagement_topic)
    with streaming(settings, tmp_path / "pipeline.log") as pipeline:
        generator = generate(settings, "--rate", "90000", "--duration", "40")  # 1,500 events/s
        for _ in range(2):
            time.sleep(rng.uniform(6.0, 10.0))
            stack.connect.process.kill()
            stack.connect.process.start(settings.stack.start_timeout_s)
            stack.connect.wait_running(settings.stack.start_timeout_s)
        assert generator.wait(180) == 0, generator.stdout.read() if generator.stdout else ""
        wait_caught_up(settings, timeout=240)
        assert pipeline.alive()
    # Debezium did send changes again at new offsets (otherwise this test would prove nothing) ...
    assert resent(settings, before) > 0
    # ... and Redis counts each change once: every content total, bucket and the board equal SQL.
    assert_redis_matches_sql(settings)


def start_faulty_at_the_end(settings: Settings) -> dict[int, int]:
    """The fault-injection sink starts at today's topic end (it writes only what comes next)."""
    ends = end_offsets(settings.kafka, settings.cdc.engagement_topic)
    start_at(settings.redis.client(), settings.cdc.engagement_topic, ends)
    return ends


def test_a_sink_down_for_60_s_delays_no_other_lane_and_catches_up_exactly(
    stack: LocalStack, settings: Settings, tmp_path
):
    flush_redis(settings)
    since = start_faulty_at_the_end(settings)
    client = settings.redis.client()
    client.set(MODE_KEY, "down")
    down_at = time.monotonic()
    topic = settings.cdc.engagement_topic
    with streaming(settings, tmp_path / "pipeline.log", PIPELINE_SINKS="redis,faulty") as pipeline:
        assert generate(settings, "--rate", "60000", "--duration", "25").wait(120) == 0  # 1,000 events/s
        # The leaderboards are complete and correct while the other sink is still down ...
        wait_caught_up(settings, timeout=120)
        assert_redis_matches_sql(settings)
        assert next_offsets(client, "faulty", topic) == since  # ... which has written nothing.
        assert client.hlen(ROWS_KEY) == 0
        time.sleep(max(0.0, 60 - (time.monotonic() - down_at)))
        client.delete(MODE_KEY)
        wait_caught_up(settings, timeout=180, sink="faulty")
        assert pipeline.alive()
    records = read_to_the_end(settings)
    expected = {
        f"{topic}/{r.partition}/{r.offset}"
        for r in records
        if r.value is not None and r.offset >= since.get(r.partition, 0)
    }
    deliveries = {k.decode(): int(v) for k, v in client.hgetall(DELIVERIES_KEY).items()}
    assert set(deliveries) == expected  # nothing lost
    assert Counter(deliveries.values()) == Counter({1: len(expected)})  # nothing delivered twice


def test_a_kill_9_between_a_dead_letter_and_the_positions_keeps_the_letter(
    stack: LocalStack, settings: Settings, tmp_path, db: psycopg.Connection
):
    flush_redis(settings)
    since = start_faulty_at_the_end(settings)
    client = settings.redis.client()
    log = tmp_path / "pipeline.log"
    # No restart within the test: what is on the topic after the crash was produced before it.
    with streaming(settings, log, PIPELINE_SINKS="redis,faulty", PIPELINE_RESTART_BACKOFF_INITIAL_S="600") as pipeline:
        wait_caught_up(settings, timeout=120)
        client.set(MODE_KEY, "crash")
        content_id = db.execute("SELECT id FROM content LIMIT 1").fetchone()[0]
        event_id = db.execute(
            "INSERT INTO engagement_events (content_id, user_id, event_type, event_ts, duration_ms, device)"
            " VALUES (%s, gen_random_uuid(), 'play', now(), 1000, 'reject') RETURNING id",
            (content_id,),
        ).fetchone()[0]
        deadline = time.monotonic() + 60
        while b"job failed" not in log.read_bytes():
            assert time.monotonic() < deadline, "the fault-injection sink did not crash the job"
            time.sleep(0.2)
        assert client.get(MODE_KEY) is None  # the crash happened in the commit, after the letter
        assert next_offsets(client, "faulty", settings.cdc.engagement_topic) == since  # no position passed it
        letters = [letter for letter in read_dead_letters(settings, expected=1, timeout=30, stage="faulty")]
        assert pipeline.alive()  # the supervisor waits to restart the job
    [letter] = letters
    assert letter["reason"] == "device 'reject' is refused (fault injection)"
    assert letter["key"] == f'{{"id":{event_id}}}'.encode()
    assert b'"device":"reject"' in letter["value"]
