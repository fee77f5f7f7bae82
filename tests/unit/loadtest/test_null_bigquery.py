"""The null BigQuery (loadtest.null_bigquery) answers the sinks' own clients, and counts what they sent."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from google.api_core import exceptions as api

from infra.settings import BigQuerySettings
from loadtest.bench_bigquery import sample_rows
from loadtest.null_bigquery import NullBigQuery
from sinks.bigquery_dataset import Dataset, make_client
from sinks.bigquery_storage_write import StorageWriter, Stream, arrow_schema, make_write_client, record_batch
from sinks.bigquery_tables import CHANGES_SCHEMA, changes_table_id


@pytest.fixture
def endpoint() -> Iterator[NullBigQuery]:
    with NullBigQuery(port=0) as null:
        yield null


@pytest.fixture
def settings(endpoint: NullBigQuery) -> BigQuerySettings:
    return BigQuerySettings(emulator_host=endpoint.url, project_id="p", dataset="analytics")


@pytest.fixture
def table_id(settings: BigQuerySettings) -> str:
    dataset = Dataset(make_client(settings), settings)
    dataset.ensure()
    return changes_table_id(settings, dataset.upcoming()[0])


def test_the_sinks_dataset_setup_runs_against_it(endpoint: NullBigQuery, settings: BigQuerySettings) -> None:
    client = make_client(settings)
    dataset = Dataset(client, settings)
    dataset.ensure()
    dataset.ensure_columns({"referrer": "STRING"})
    names = sorted(t.table_id for t in client.list_tables(settings.dataset_ref))
    quarters = dataset.upcoming()
    assert names == sorted(["content_changes", "engagement_events", *(f"engagement_changes_{q}" for q in quarters)])
    table = client.get_table(changes_table_id(settings, quarters[0]))
    assert [f.name for f in table.schema] == [*(f.name for f in CHANGES_SCHEMA), "referrer"]
    assert "referrer" in client.get_table(f"{settings.dataset_ref}.engagement_events").view_query
    # A second writer's setup meets existing resources (409 then get) and changes nothing.
    Dataset(make_client(settings), settings).ensure()
    assert endpoint.counts.snapshot()["insert_all"] == {"requests": 0, "rows": 0, "bytes": 0}


def test_insert_all_is_accepted_counted_and_discarded(
    endpoint: NullBigQuery, settings: BigQuerySettings, table_id: str
) -> None:
    client = make_client(settings)
    rows, ids = sample_rows(3, 100)
    assert client.insert_rows_json(table_id, rows, row_ids=ids, skip_invalid_rows=True) == []
    assert client.insert_rows_json(table_id, rows[:1], row_ids=ids[:1]) == []
    counts = endpoint.counts.snapshot()
    assert counts["insert_all"]["requests"] == 2
    assert counts["insert_all"]["rows"] == 4
    assert counts["insert_all"]["bytes"] > 0
    assert counts["first_row_at"] <= counts["last_row_at"]
    assert counts["append_rows"]["rows"] == 0


def test_insert_all_into_an_unknown_table_is_not_found(endpoint: NullBigQuery, settings: BigQuerySettings) -> None:
    client = make_client(settings)
    rows, ids = sample_rows(1, 0)
    with pytest.raises(api.NotFound):
        client.insert_rows_json(f"{settings.dataset_ref}.nowhere", rows, row_ids=ids)
    assert endpoint.counts.snapshot()["insert_all"]["rows"] == 0


def test_append_rows_at_the_streams_offsets_are_counted(
    endpoint: NullBigQuery, settings: BigQuerySettings, table_id: str
) -> None:
    writer = StorageWriter(make_write_client(settings), timeout_s=10, retry_deadline_s=10)
    schema = arrow_schema(CHANGES_SCHEMA)
    stream = writer.create(table_id)
    for base, n in ((0, 5), (5, 7)):
        writer.append(stream, record_batch(sample_rows(n, base)[0], schema))
    assert stream.rows == 12
    counts = endpoint.counts.snapshot()["append_rows"]
    assert (counts["requests"], counts["rows"]) == (2, 12)
    assert counts["bytes"] > 0
    assert writer.finalize(stream) == 12
    assert writer.finalize(Stream(stream.name + "-gone", 0)) is None


def test_an_append_past_the_streams_end_is_refused(
    endpoint: NullBigQuery, settings: BigQuerySettings, table_id: str
) -> None:
    writer = StorageWriter(make_write_client(settings), timeout_s=10, retry_deadline_s=10)
    batch = record_batch(sample_rows(2, 0)[0], arrow_schema(CHANGES_SCHEMA))
    stream = writer.create(table_id)
    with pytest.raises(api.OutOfRange):
        writer.append(Stream(stream.name, 5), batch)
    writer.append(stream, batch)
    # Behind the end: the same append again, which StorageWriter takes as applied (ALREADY_EXISTS).
    writer.append(Stream(stream.name, 0), batch)
    assert endpoint.counts.snapshot()["append_rows"]["rows"] == 2
    assert writer.finalize(stream) == 2
