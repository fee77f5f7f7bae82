"""Schema evolution with the pipeline running: a new nullable column on engagement_events and
duration_ms widened from integer to bigint flow through Debezium and the pipeline without a restart;
BigQuery gets the new column, Redis and the BigQuery view equal Postgres, nothing is dead-lettered."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest

from infra.settings import REPO_ROOT, Settings
from infra.stack.kafka import end_offsets
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


def dead_letter_count(settings: Settings) -> int:
    return sum(end_offsets(settings.kafka, settings.cdc.dlq_topic).values())


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
    letters = dead_letter_count(settings)
    log = tmp_path / "pipeline.log"
    with streaming(settings, log, **SINKS) as pipeline:
        assert generate(settings, "--burst", "2000", "--seed", "31").wait(120) == 0
        wait_caught_up(settings, timeout=180)
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
    assert dead_letter_count(settings) == letters

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
