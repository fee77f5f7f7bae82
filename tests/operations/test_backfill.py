"""Backfill from Postgres, then the stream: exactly SQL, nothing applied twice, while writes go on.

The sinks start empty (a fresh consumer group, a fresh BigQuery dataset, an empty Redis); Postgres
holds a history of inserts, updates and deletes; the generator keeps writing during the backfill, so
the boundary falls in the middle of live changes. After the backfill the streaming pipeline runs
from the stored boundary, and Redis and the BigQuery view must equal SQL exactly.
"""

from __future__ import annotations

import subprocess
import time
import uuid
from collections import Counter
from datetime import UTC, datetime

import pytest

from infra.settings import Settings
from infra.stack.local import LocalStack
from loadtest.bigquery_truth import HAND_MADE_IDS, assert_view_matches_sql, wait_bigquery_caught_up
from pipeline.backfill.envelopes import EVENTS, backfill_topic
from sinks.bigquery_admin import run_query
from sinks.bigquery_dataset import make_client
from sinks.bigquery_tables import Quarter
from sinks.redis_store import next_offsets
from tests.integration.pipeline_helpers import (
    assert_redis_matches_sql,
    flush_redis,
    run_pipeline,
    streaming,
    wait_caught_up,
)
from tests.integration.test_pipeline import generate

pytestmark = pytest.mark.integration


def run_backfill(settings: Settings, extra: dict[str, str], timeout: float) -> subprocess.CompletedProcess[str]:
    return run_pipeline(settings, "backfill", timeout=timeout, **extra)


def test_backfill_then_stream_equals_sql_with_nothing_twice(stack: LocalStack, settings: Settings, tmp_path):
    run = uuid.uuid4().hex[:6]
    extra = {
        "PIPELINE_CONSUMER_GROUP": f"backfill-{run}",
        "PIPELINE_SINKS": "redis,bigquery",
        "BIGQUERY_DATASET": f"backfill_{run}",
        "BACKFILL_SPLITS": "3",
        "CDC_SLOT_NAME": settings.cdc.slot_name,
    }
    s = settings.model_copy(
        update={
            "pipeline": settings.pipeline.model_copy(
                update={"consumer_group": extra["PIPELINE_CONSUMER_GROUP"], "sinks": extra["PIPELINE_SINKS"]}
            ),
            "bigquery": settings.bigquery.model_copy(update={"dataset": extra["BIGQUERY_DATASET"]}),
        }
    )
    assert generate(settings, "--burst", "20000", "--seed", "31").wait(180) == 0  # history, with u and d
    flush_redis(settings)  # a lost Redis: no data, no positions
    writer = generate(settings, "--rate", "30000", "--duration", "90")  # 500 events/s during the backfill
    time.sleep(3)
    began = time.monotonic()
    backfill = run_backfill(settings, extra, timeout=600)
    took = time.monotonic() - began
    assert backfill.returncode == 0, backfill.stdout[-4000:] + backfill.stderr[-4000:]
    print(backfill.stdout[-2000:], f"(backfill process: {took:.1f} s)")
    assert "handing over to the stream" in backfill.stdout
    assert writer.poll() is None, "the generator must still be writing when the backfill hands over"
    handed_over = next_offsets(settings.redis.client(), "redis_leaderboard", settings.cdc.engagement_topic)
    assert len(handed_over) == settings.cdc.engagement_partitions

    # A second backfill into the same sinks is refused: they follow the stream now.
    again = run_backfill(settings, extra, timeout=120)
    assert again.returncode == 1 and "already has positions" in again.stderr, again.stderr[-2000:]

    with streaming(s, tmp_path / "pipeline.log", **extra):
        assert writer.wait(180) == 0, writer.stdout.read() if writer.stdout else ""
        wait_caught_up(s, timeout=240)
        wait_bigquery_caught_up(s, timeout=300)
    checked = assert_redis_matches_sql(s)  # totals equal SQL: no insert counted twice or missed
    assert checked["contents"] >= 20
    assert assert_view_matches_sql(s) > 20_000

    # The changelog: each backfilled id once, and no stream insert of an id the backfill read.
    bq = s.bigquery
    table = f"{bq.dataset}.{bq.changes_table}_{Quarter.of(datetime.now(UTC)).suffix}"
    rows = run_query(make_client(bq), f"SELECT id, op, source_topic FROM {table}")
    rows = [r for r in rows if r["id"] < HAND_MADE_IDS]
    backfilled = Counter(r["id"] for r in rows if r["source_topic"] == backfill_topic(s.cdc.topic_prefix, EVENTS))
    stream_ops = Counter(r["op"] for r in rows if r["source_topic"] == s.cdc.engagement_topic)
    inserted_by_stream = {r["id"] for r in rows if r["source_topic"] == s.cdc.engagement_topic and r["op"] == "c"}
    assert backfilled and max(backfilled.values()) == 1, backfilled.most_common(3)
    assert not set(backfilled) & inserted_by_stream, sorted(set(backfilled) & inserted_by_stream)[:5]
    # The seam was live: the stream carried inserts, and changes of rows the backfill had read.
    changed_after = {r["id"] for r in rows if r["source_topic"] == s.cdc.engagement_topic and r["op"] in "ud"}
    assert stream_ops["c"] > 1_000 and changed_after & set(backfilled), stream_ops
