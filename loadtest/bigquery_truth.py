"""The BigQuery truth check: the emulator's view against Postgres, and waits for the BigQuery sinks' positions.

Runtime-neutral (no pytest): the integration tests and the fault suite (``loadtest.faults``) use it.
"""

from __future__ import annotations

import math
from typing import Any

import psycopg

from infra.settings import Settings
from loadtest.truth import wait_stored
from sinks.bigquery_admin import run_query, seed_query
from sinks.bigquery_dataset import make_client
from sinks.kafka_positions import KafkaPositions, group_id

# Ids from here up are hand-made (test_pipeline's envelopes, the sink test's rows), never in Postgres.
HAND_MADE_IDS = 800_000_000
PCT_TOLERANCE = 1e-6


def positions(settings: Settings, sink: str, topic: str) -> dict[int, int]:
    store = KafkaPositions(settings.kafka.client_config(), group_id(settings.pipeline.consumer_group, sink))
    try:
        return {int(k.rsplit(":", 1)[1]): p.next_offset for k, p in store.load([topic]).items()}
    finally:
        store.close()


def wait_bigquery_caught_up(settings: Settings, timeout: float = 180, *, parked: bool = True) -> None:
    """Until both BigQuery sinks have committed the end offsets of their topics, and those stopped;
    for the event sink, the parking topic too (the events that waited for their content), unless
    ``parked`` is False: after a bounded run, whose parked lane stops where the run began."""
    cdc = settings.cdc
    reads = [("bigquery", cdc.engagement_topic), ("bigquery_content", cdc.content_topic)]
    if parked:
        reads.append(("bigquery", cdc.parked_topic))
    wait_stored(settings, reads, lambda sink, topic: positions(settings, sink, topic), timeout, settle=2.0)


def view_rows(settings: Settings) -> dict[int, tuple[Any, ...]]:
    bq = settings.bigquery
    rows = run_query(
        make_client(bq),
        f"SELECT id, duration_ms, event_type, content_type, engagement_pct, event_ts FROM {bq.dataset}.{bq.view}",
    )
    return {
        r["id"]: (r["duration_ms"], r["event_type"], r["content_type"], r["engagement_pct"], r["event_ts"])
        for r in rows
        if r["id"] < HAND_MADE_IDS
    }


def sql_rows(settings: Settings) -> dict[int, tuple[Any, ...]]:
    with psycopg.connect(settings.postgres.conninfo()) as conn:
        return {
            row[0]: tuple(row[1:])
            for row in conn.execute(
                "SELECT e.id, e.duration_ms, e.event_type, c.content_type,"
                " CASE WHEN c.length_seconds > 0 THEN e.duration_ms / 1000.0 / c.length_seconds * 100 END::float8,"
                " e.event_ts FROM engagement_events e LEFT JOIN content c ON c.id = e.content_id"
            )
        }


def _close(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=PCT_TOLERANCE, abs_tol=PCT_TOLERANCE)
    return a == b


def seed_query_rows(settings: Settings) -> dict[str | None, float | None]:
    rows = run_query(make_client(settings.bigquery), seed_query(settings.bigquery))
    return {r["content_type"]: r["avg_engagement_pct"] for r in rows}


def seed_query_in_sql(settings: Settings) -> dict[str | None, float | None]:
    """Seed 004's query over Postgres, plus the hand-made rows other tests put on the topic (they
    are in BigQuery, never in Postgres): what the query on BigQuery must return."""
    sums: dict[str | None, float] = {}
    counts: dict[str | None, int] = {}
    with psycopg.connect(settings.postgres.conninfo()) as conn:
        for content_type, pct_sum, pct_count in conn.execute(
            "SELECT c.content_type,"
            " SUM(CASE WHEN c.length_seconds > 0 THEN e.duration_ms / 1000.0 / c.length_seconds * 100 END),"
            " COUNT(CASE WHEN c.length_seconds > 0 THEN e.duration_ms END)"
            " FROM engagement_events e LEFT JOIN content c ON c.id = e.content_id"
            " WHERE (e.event_ts AT TIME ZONE 'UTC')::date = (now() AT TIME ZONE 'UTC')::date"
            " GROUP BY c.content_type"
        ):
            sums[content_type] = float(pct_sum or 0)
            counts[content_type] = pct_count
    bq = settings.bigquery
    for row in run_query(
        make_client(bq),
        f"SELECT content_type, engagement_pct FROM {bq.dataset}.{bq.view}"
        f" WHERE id >= {HAND_MADE_IDS} AND DATE(event_ts) = CURRENT_DATE()",
    ):
        sums[row["content_type"]] = sums.get(row["content_type"], 0.0) + (row["engagement_pct"] or 0.0)
        counts[row["content_type"]] = counts.get(row["content_type"], 0) + (row["engagement_pct"] is not None)
    return {t: (sums[t] / counts[t] if counts[t] else None) for t in counts}


def assert_view_matches_sql(settings: Settings) -> int:
    """Row by row, then the aggregates the issue names, then seed 004's query: the view equals SQL."""
    view, sql = view_rows(settings), sql_rows(settings)
    missing = sorted(set(sql) - set(view))[:10]
    extra = sorted(set(view) - set(sql))[:10]
    assert not missing and not extra, f"ids only in SQL: {missing}; only in the view: {extra}"
    differ = [i for i in sql if not all(_close(a, b) for a, b in zip(view[i], sql[i], strict=True))][:5]
    assert not differ, [(i, view[i], sql[i]) for i in differ]
    assert sum(v[0] or 0 for v in view.values()) == sum(s[0] or 0 for s in sql.values())
    got, want = seed_query_rows(settings), seed_query_in_sql(settings)
    assert set(got) == set(want)
    for content_type, value in want.items():
        assert _close(got[content_type], value), (content_type, got[content_type], value)
    return len(sql)
