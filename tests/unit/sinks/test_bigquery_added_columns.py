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


def test_a_name_bigquery_would_refuse_is_made_safe_and_keeps_a_hash_of_the_original():
    assert extra_column("utm-source") == "utm_source_b39c7376"
    assert extra_column("2fa enabled") == "_2fa_enabled_ec71c338"
    assert extra_column("prix_€") == "prix___b4d677cc"
    assert len(extra_column("a" * 400)) <= 300


def test_names_stay_unique_as_bigquery_compares_them():
    # Quoted Postgres names can differ only by case or by characters that are replaced; BigQuery's
    # column names are case-insensitive.
    names = ["referrer", "Referrer", "REFERRER", "utm-source", "utm_source", "utm source", "UTM_Source", "a" * 400]
    names += ["a" * 399 + "b", "title", "Title", "event_title", "Event_Title", "event_event_title"]
    columns = [extra_column(n) for n in names]
    assert len({c.lower() for c in columns}) == len(names)
    assert extra_column("referrer") == "referrer" and extra_column("Referrer") == "Referrer_6a54c046"
    assert extra_column("id") == "event_id" and extra_column("ID").lower() != "id"


def test_reserved_words_reserved_prefixes_and_the_view_s_own_names_are_prefixed():
    assert extra_column("select") == "event_select"
    assert extra_column("order") == "event_order"
    assert extra_column("change_rank") == "event_change_rank"
    assert extra_column("_partitiontime") == "event__partitiontime"
    assert extra_column("_table_suffix") == "event__table_suffix"
    assert extra_column("_file_name") == "event__file_name"
    assert extra_column("_row_timestamp") == "event__row_timestamp"
    assert extra_column("__root__") == "event___root__"
    assert extra_column("_colidentifier_x") == "event__colidentifier_x"
    assert extra_column("_PARTITIONTIME").startswith("event__PARTITIONTIME_")
    assert extra_column("SELECT") == "SELECT_e1185214"  # not a keyword once it carries its hash
    # An actual column named like a prefixed one goes one prefix further: never the same column.
    assert extra_column("event_title") == "event_event_title"
    assert extra_column("event_referrer") == "event_referrer"


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
