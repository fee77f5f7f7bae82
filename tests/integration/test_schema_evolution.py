"""Schema evolution with the pipeline running: a new nullable column on engagement_events and
duration_ms widened from integer to bigint flow through Debezium and the pipeline without a restart;
BigQuery gets the new column, Redis and the BigQuery view equal Postgres, nothing is dead-lettered."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition

from infra.settings import REPO_ROOT, Settings
from infra.stack.kafka_admin import end_offsets
from infra.stack.local import LocalStack
from loadtest.bigquery_truth import assert_view_matches_sql, wait_bigquery_caught_up
from sinks.bigquery_admin import run_query
from sinks.bigquery_dataset import make_client
from sinks.bigquery_tables import Quarter

from .pipeline_helpers import assert_redis_matches_sql, env, flush_redis, streaming, wait_caught_up
from .test_pipeline import CHANGES, generate

pytestmark = pytest.mark.integration
SINKS = {"PIPELINE_SINKS": "redis,bigquery"}
BIG = 3_000_000_000  # past a 32-bit integer: only fits once duration_ms is a bigint
REFERRERS = ("push", "email", "search")


@pytest.fixture
def evolving_table(db: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """The session's table back as it was afterwards, for the tests that follow."""
    try:
        yield db
    finally:
        db.execute(f"DELETE FROM engagement_events WHERE duration_ms >= {2**31}")
        db.execute("ALTER TABLE engagement_events ALTER COLUMN duration_ms TYPE integer")
        db.execute("ALTER TABLE engagement_events DROP COLUMN IF EXISTS referrer")


def generate_inserts(settings: Settings, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "generator", *args],
        cwd=REPO_ROOT,
        env=env(settings, **{**CHANGES, "GENERATOR_EVENT_UPDATE_SHARE": "0", "GENERATOR_EVENT_DELETE_SHARE": "0"}),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def letters_about(settings: Settings, since: dict[int, int], written_from: dict[int, int]) -> list[dict[str, str]]:
    """The headers of the letters produced after ``since`` (the dead-letter topic's end offsets)
    about an engagement record at or after ``written_from`` (the event topic's end offsets then).
    Letters about older records may come again meanwhile: the pipeline replays the topic from
    offset 0 (Redis was flushed), and dead letters are at least once."""
    topic, events = settings.cdc.dlq_topic, settings.cdc.engagement_topic
    ends = end_offsets(settings.kafka, topic)
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": "tests"})
    consumer.assign([TopicPartition(topic, p, since.get(p, 0)) for p in ends])
    found: list[dict[str, str]] = []
    remaining = sum(ends.values()) - sum(since.get(p, 0) for p in ends)
    deadline = time.monotonic() + 60
    try:
        while remaining > 0 and time.monotonic() < deadline:
            for message in consumer.consume(1000, timeout=0.5):
                if message.error():
                    continue
                remaining -= 1
                headers = {k: v.decode() for k, v in message.headers() or []}
                if headers.get("dlq.source.topic") != events:
                    continue
                partition, offset = int(headers["dlq.source.partition"]), int(headers["dlq.source.offset"])
                if offset >= written_from.get(partition, 0):
                    found.append(headers)
    finally:
        consumer.close()
    assert remaining <= 0, f"{remaining} letters not read within 60 s"
    return found


def insert_events(db: psycopg.Connection, count: int, *, duration_ms: int, with_referrer: bool) -> list[int]:
    columns = "content_id, user_id, event_type, event_ts, duration_ms, device, raw_payload"
    referrer = ", referrer" if with_referrer else ""
    values = ", %s" if with_referrer else ""
    ids = []
    content = [row[0] for row in db.execute("SELECT id FROM content ORDER BY id LIMIT 5").fetchall()]
    for i in range(count):
        params = [content[i % len(content)], None, "play", "now()", duration_ms, "web", '{"k": 1}']
        if with_referrer:
            params.append(REFERRERS[i % len(REFERRERS)])
        row = db.execute(
            f"INSERT INTO engagement_events ({columns}{referrer})"
            f" VALUES (%s, %s, %s, %s::timestamptz, %s, %s, %s{values}) RETURNING id",
            params,
        ).fetchone()
        assert row is not None
        ids.append(row[0])
    return ids


def test_a_new_column_and_a_widened_type_flow_without_a_restart(
    stack: LocalStack, settings: Settings, evolving_table: psycopg.Connection, tmp_path
):
    db = evolving_table
    flush_redis(settings)
    letters = end_offsets(settings.kafka, settings.cdc.dlq_topic)
    log = tmp_path / "pipeline.log"
    with streaming(settings, log, **SINKS) as pipeline:
        assert generate(settings, "--burst", "2000", "--seed", "31").wait(120) == 0
        wait_caught_up(settings, timeout=180)
        written_from = end_offsets(settings.kafka, settings.cdc.engagement_topic)
        db.execute("ALTER TABLE engagement_events ADD COLUMN referrer TEXT")
        insert_events(db, 30, duration_ms=61_000, with_referrer=True)
        db.execute("ALTER TABLE engagement_events ALTER COLUMN duration_ms TYPE bigint")
        [big_id] = insert_events(db, 1, duration_ms=BIG, with_referrer=True)
        db.execute("UPDATE engagement_events SET referrer = 'changed' WHERE id = %s", (big_id,))
        # The generator writes its usual columns, so the new one is null in its rows; it changes no
        # event here, so the 31 rows above stay as written.
        assert generate_inserts(settings, "--burst", "2000", "--seed", "32").wait(120) == 0
        wait_caught_up(settings, timeout=180)
        wait_bigquery_caught_up(settings, timeout=240)
        assert pipeline.alive()
    text = log.read_text()
    assert "job failed" not in text, text[-3000:]
    assert text.count("starting prism") == 1, text[-3000:]
    assert letters_about(settings, letters, written_from) == []  # nothing written since the ALTER

    assert_redis_matches_sql(settings)
    assert_view_matches_sql(settings)
    bq = settings.bigquery
    client = make_client(bq)
    table = client.get_table(f"{bq.dataset_ref}.{bq.changes_table}_{Quarter.of(datetime.now(UTC)).suffix}")
    assert {f.name: (f.field_type, f.mode) for f in table.schema}["referrer"] == ("STRING", "NULLABLE")
    in_view = {
        r["id"]: r["referrer"]
        for r in run_query(client, f"SELECT id, referrer FROM {bq.dataset}.{bq.view} WHERE referrer IS NOT NULL")
    }
    in_sql = dict(db.execute("SELECT id, referrer FROM engagement_events WHERE referrer IS NOT NULL").fetchall())
    assert in_view == in_sql
    assert len(in_sql) == 31 and in_sql[big_id] == "changed"
    [row] = run_query(client, f"SELECT duration_ms FROM {bq.dataset}.{bq.view} WHERE id = {big_id}")
    assert row["duration_ms"] == BIG
