"""Columns added to engagement_events reach the changelog and the view (sinks.bigquery_rows, _tables)."""

from __future__ import annotations

import msgspec

from infra.settings import BigQuerySettings
from sinks.bigquery_rows import change_row, column_type, extra_column, extra_columns
from sinks.bigquery_tables import CHANGES_SCHEMA, added_fields, changes_table, view_sql
from tests.unit.sinks.test_bigquery_sink import enriched, event

WRITTEN = "2026-12-06T10:00:00.000000Z"


def test_types_come_from_the_json_value():
    assert [column_type(v) for v in (None, True, 3_000_000_000, 1.5, "push", [1], {"a": 1})] == [
        None,
        "BOOL",
        "INT64",
        "FLOAT64",
        "STRING",
        "JSON",
        "JSON",
    ]


def test_a_name_the_changelog_has_already_is_prefixed():
    assert extra_column("referrer") == "referrer"
    assert extra_column("title") == "event_title"
    assert extra_column("source_offset") == "event_source_offset"


def test_a_name_bigquery_would_refuse_is_made_safe():
    assert extra_column("utm-source") == "utm_source"
    assert extra_column("2fa enabled") == "_2fa_enabled"
    assert extra_column("prix_€") == "prix__"


def test_the_row_carries_added_columns_and_their_types():
    row = msgspec.structs.replace(event(7), extra=(("referrer", "push"), ("tags", ["a"]), ("title", None)))
    change = enriched(7, row=row)
    written = change_row(change, WRITTEN)
    assert (written["referrer"], written["tags"]) == ("push", '["a"]')
    assert "event_title" not in written  # null: the column may not exist yet, and absent is null
    assert extra_columns(row) == {"referrer": "STRING", "tags": "JSON"}  # no type from a null yet


def test_tables_and_view_get_the_added_columns():
    settings = BigQuerySettings()
    table = changes_table(settings, "2026q4", {"referrer": "STRING", "score": "FLOAT64"})
    assert [f.name for f in table.schema] == [*(f.name for f in CHANGES_SCHEMA), "referrer", "score"]
    assert added_fields(table.schema) == {"referrer": "STRING", "score": "FLOAT64"}
    assert all(f.mode == "NULLABLE" for f in table.schema[len(CHANGES_SCHEMA) :])
    sql = view_sql(settings, ["2026q4", "outliers"], ["referrer", "score"])
    assert sql.count("raw_payload, referrer, score, slug") == 2  # each UNION ALL arm
    assert " e.referrer, e.score," in sql
    assert "referrer" not in view_sql(settings, ["2026q4"])
