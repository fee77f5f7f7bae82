"""Slots, quarters, routing, the table spec sent to BigQuery, and the view (no BigQuery needed)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from infra.settings import BigQuerySettings
from sinks.bigquery_tables import (
    OUTLIERS,
    Quarter,
    audit_table,
    changes_table,
    content_table,
    event_slot,
    period_of,
    periods_in,
    view_sql,
)

S = BigQuerySettings(project_id="p", dataset="analytics", emulator_host="")
INFRA = Path(__file__).resolve().parents[3] / "infra" / "bigquery"


def ts(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def test_slot_boundaries_at_the_half_hour():
    assert event_slot(ts("2026-12-02T10:29:59.999999")) == event_slot(ts("2026-12-02T10:00:00"))
    assert event_slot(ts("2026-12-02T10:30:00")) == event_slot(ts("2026-12-02T10:29:59.999999")) + 1
    assert event_slot(ts("2026-12-02T10:30:00")) == 1_796_207_400 // 1800


def test_slot_before_1970_rounds_towards_zero_like_bigquery_div():
    assert event_slot(ts("1969-12-31T23:59:59")) == 0  # DIV(-1, 1800) = 0
    assert event_slot(ts("1969-12-31T23:30:00")) == -1
    assert event_slot(ts("1969-12-31T23:29:59")) == -1  # UNIX_SECONDS -1801 -> DIV -1


def test_quarter_ranges_cover_each_slot_once():
    q4 = Quarter(2026, 4)
    first, end = q4.slots
    assert (first, end) == (event_slot(ts("2026-10-01T00:00:00")), event_slot(ts("2027-01-01T00:00:00")))
    assert end - first == 92 * 48  # Oct + Nov + Dec, 48 slots a day: under the 10,000-partition cap
    assert q4.next().slots[0] == end
    assert Quarter.of(ts("2026-12-31T23:59:59.999999")) == q4
    assert Quarter.of(ts("2027-01-01T00:00:00")) == Quarter(2027, 1)
    assert Quarter.parse("2026q4") == q4


def test_rows_route_to_their_quarter_and_strays_to_outliers():
    now = ts("2026-12-02T10:00:00")
    assert period_of(ts("2026-12-02T09:00:00"), now, 1) == "2026q4"
    assert period_of(ts("2024-02-01T00:00:00"), now, 1) == "2024q1"
    assert period_of(ts("2027-03-31T23:59:59"), now, 1) == "2027q1"
    assert period_of(ts("2027-04-01T00:00:00"), now, 1) == OUTLIERS
    assert period_of(ts("2100-01-01T00:00:00"), now, 1) == OUTLIERS
    assert period_of(ts("1969-12-31T23:59:59"), now, 1) == OUTLIERS
    assert period_of(ts("2027-01-01T00:00:00"), now, 0) == OUTLIERS


def test_table_spec_sent_has_range_partitioning_on_the_slot_and_clustering():
    table = changes_table(S.model_copy(update={"require_partition_filter": True}), "2026q4").to_api_repr()
    first, end = Quarter(2026, 4).slots
    assert table["tableReference"] == {
        "projectId": "p",
        "datasetId": "analytics",
        "tableId": "engagement_changes_2026q4",
    }
    assert table["rangePartitioning"] == {
        "field": "event_slot",
        "range": {"start": str(first), "end": str(end), "interval": "1"},
    }
    assert table["clustering"] == {"fields": ["content_type", "event_type"]}
    assert table["requirePartitionFilter"] is True
    assert "timePartitioning" not in table
    event_ts = next(f for f in table["schema"]["fields"] if f["name"] == "event_ts")
    assert (event_ts["type"], event_ts["mode"]) == ("TIMESTAMP", "REQUIRED")


def test_outliers_table_is_clustered_but_not_partitioned():
    table = changes_table(S, OUTLIERS).to_api_repr()
    assert "rangePartitioning" not in table
    assert table["clustering"] == {"fields": ["content_type", "event_type"]}


def test_periods_in_a_listing_sort_by_quarter_with_outliers_last():
    ids = ["engagement_changes_2027q1", "engagement_changes_outliers", "other", "engagement_changes_2026q4"]
    assert periods_in(S, [*ids, "engagement_changes_bad"]) == ["2026q4", "2027q1", OUTLIERS]


def test_view_takes_the_latest_change_per_id_by_sequence_and_drops_deletes():
    sql = view_sql(S, ["2026q4", OUTLIERS])
    assert "PARTITION BY id ORDER BY COALESCE(source_commit_lsn, -1) DESC, COALESCE(source_lsn, -1) DESC" in sql
    assert "change_rank = 1 AND op != 'd'" in sql
    assert f"FROM `p.analytics.engagement_changes_2026q4` WHERE event_slot >= {Quarter(2026, 4).slots[0]}" in sql
    assert "FROM `p.analytics.engagement_changes_outliers`\n" in sql
    assert "LEFT JOIN" in sql and "`p.analytics.content_changes`" in sql
    with pytest.raises(ValueError):
        view_sql(S, [])


@pytest.mark.parametrize(
    ("name", "table"),
    [
        ("engagement_changes.json", changes_table(S, "2026q4")),
        ("content_changes.json", content_table(S)),
        ("cdc_audit.json", audit_table(S)),
    ],
)
def test_checked_in_schemas_match_the_code(name, table):
    # infra/bigquery/ is for people who create the tables by hand: it must never drift from the code.
    on_disk = json.loads((INFRA / name).read_text())
    assert on_disk == [field.to_api_repr() for field in table.schema]
