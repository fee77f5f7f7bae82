"""BigQuery edges that must never stall a lane: early years, commit times out of range, added
columns BigQuery refuses, and a schema or view update that fails half-way (no BigQuery needed)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import msgspec
import pytest
from google.api_core import exceptions as api
from google.cloud import bigquery

from sinks.bigquery_dataset import Dataset
from sinks.bigquery_rows import change_row, millis, timestamp
from sinks.bigquery_tables import OUTLIERS, added_fields, changes_table_id, period_of

from .test_bigquery_sink import NOW, FakeClient, S, batch, enriched, event, sink

WRITTEN = "2026-12-02T10:00:01.000000Z"


@pytest.mark.parametrize(
    ("ts", "text"),
    [
        (datetime(1, 1, 1, tzinfo=UTC), "0001-01-01T00:00:00.000000Z"),
        (datetime(5, 3, 4, 5, 6, 7, 8, tzinfo=UTC), "0005-03-04T05:06:07.000008Z"),
        (datetime(999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC), "0999-12-31T23:59:59.999999Z"),
        (datetime(1000, 1, 1, tzinfo=UTC), "1000-01-01T00:00:00.000000Z"),
        (datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC), "9999-12-31T23:59:59.999999Z"),
    ],
)
def test_every_year_python_and_bigquery_share_is_written_with_four_digits(ts, text):
    assert timestamp(ts) == text


def test_an_event_of_year_5_lands_in_the_outliers_table_with_its_timestamp():
    row = change_row(enriched(1, row=event(1, ts=datetime(5, 6, 7, tzinfo=UTC))), WRITTEN)
    assert row["event_ts"] == "0005-06-07T00:00:00.000000Z"
    assert period_of(datetime(5, 6, 7, tzinfo=UTC), NOW, 2) == OUTLIERS


def test_a_timestamp_that_leaves_the_range_in_utc_or_a_commit_time_past_it_is_a_value_error():
    with pytest.raises(ValueError, match="outside BigQuery's range"):
        timestamp(datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1))))
    for ms in (10**20, -(10**20), 253_402_300_800_000):  # the last: 10000-01-01
        with pytest.raises(ValueError, match="outside BigQuery's range"):
            millis(ms)
    assert millis(253_402_300_799_999) == "9999-12-31T23:59:59.999000Z"


def test_a_change_whose_commit_time_bigquery_cannot_hold_is_a_dead_letter_and_the_rest_is_written():
    client = FakeClient()
    s = sink(client)
    forged = msgspec.structs.replace(enriched(2), commit_ts_ms=10**20)
    outcome = s.write(batch(enriched(1), forged, enriched(3)))
    assert list(outcome.rejected) == [1] and "outside BigQuery's range" in outcome.rejected[1]
    assert outcome.retry == {}
    [(_, rows, _, _)] = client.calls
    assert [r["id"] for r in rows] == [1, 3]


def test_added_columns_bigquery_refuses_are_a_dead_letter_not_a_stalled_lane():
    client = FakeClient()
    s = sink(client)

    def refuse(wanted):
        raise api.BadRequest("Invalid field name")

    s.dataset.ensure_columns = refuse
    odd = msgspec.structs.replace(event(2), extra=(("weird", 1),))
    outcome = s.write(batch(enriched(1), enriched(2, row=odd)))
    assert list(outcome.rejected) == [1] and "refused the added columns ['weird']" in outcome.rejected[1]
    assert outcome.retry == {}


class Table:
    def __init__(self, table_id: str, schema=(), view_query=None) -> None:
        self.table_id = table_id.rsplit(".", 1)[-1]
        self.reference = table_id
        self.schema = list(schema)
        self.view_query = view_query


class SchemaClient:
    """Tables in a dict; ``fail`` names the calls that raise once (a BigQuery that refuses, or is away)."""

    def __init__(self, fail: set[str]) -> None:
        self.tables: dict[str, Table] = {}
        self.fail = set(fail)

    def _maybe_fail(self, what: str) -> None:
        if what in self.fail:
            self.fail.discard(what)
            raise api.ServiceUnavailable(what)

    def create_dataset(self, dataset, exists_ok):
        pass

    def create_table(self, table, exists_ok=False):
        table_id = f"{table.project}.{table.dataset_id}.{table.table_id}"
        if table_id in self.tables and not exists_ok:
            raise api.Conflict(table_id)
        self.tables.setdefault(table_id, Table(table_id, table.schema, table.view_query))

    def get_table(self, ref):
        table_id = ref if isinstance(ref, str) else f"{ref.project}.{ref.dataset_id}.{ref.table_id}"
        if table_id not in self.tables:
            raise api.NotFound(table_id)
        return self.tables[table_id]

    def update_table(self, table, fields):
        self._maybe_fail("view" if fields == ["view_query"] else "schema")

    def list_tables(self, dataset):
        return list(self.tables.values())


@pytest.mark.parametrize("failing", ["schema", "view"])
def test_added_columns_are_marked_done_only_once_tables_and_view_have_them(failing):
    client = SchemaClient(fail=set())
    dataset = Dataset(client, S, clock=lambda: NOW)  # type: ignore[arg-type]
    dataset.ensure()
    client.fail = {failing}
    with pytest.raises(api.ServiceUnavailable):
        dataset.ensure_columns({"referrer": "STRING"})
    # Tried again with the next row (not taken as done), and then the view names the column.
    dataset.ensure_columns({"referrer": "STRING"})
    view = client.get_table(f"{S.dataset_ref}.{S.view}")
    assert " e.referrer," in view.view_query
    changelogs = [t for t in client.tables.values() if t.reference.startswith(changes_table_id(S, ""))]
    assert changelogs and all(added_fields(t.schema) == {"referrer": "STRING"} for t in changelogs)
    assert all(isinstance(f, bigquery.SchemaField) for t in changelogs for f in t.schema)


def test_an_lsn_past_int64_is_stored_as_null_and_a_duration_past_it_is_a_dead_letter():
    top = (1 << 64) - 1  # the forged mark of the fault suite: pg_lsn's largest, past BigQuery's INT64
    row = change_row(enriched(1, sequence=(top, top)), WRITTEN)
    assert (row["source_commit_lsn"], row["source_lsn"]) == (None, None)
    row = change_row(enriched(1, sequence=(2**63 - 1, 5)), WRITTEN)
    assert (row["source_commit_lsn"], row["source_lsn"]) == (2**63 - 1, 5)
    client = FakeClient()
    huge = enriched(2, row=event(2, duration=2**63))
    outcome = sink(client).write(batch(enriched(1), huge, enriched(3)))
    assert outcome.rejected == {1: "duration_ms 9223372036854775808 is outside BigQuery's INT64"}
    [(_, rows, _, _)] = client.calls
    assert [r["id"] for r in rows] == [1, 3]
    # A value of another type goes on to BigQuery as it is: its refusal names the column.
    assert (
        change_row(enriched(4, row=msgspec.structs.replace(event(4), duration_ms="x")), WRITTEN)["duration_ms"] == "x"
    )
