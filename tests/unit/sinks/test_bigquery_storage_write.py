"""Storage Write mode: streams per partition, write-ahead of new streams, and skipping after a crash."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from google.api_core import exceptions as api

from sinks.bigquery_storage_write import (
    Stream,
    StreamAppender,
    arrow_schema,
    convertible,
    decode_streams,
    encode_streams,
    record_batch,
)
from sinks.bigquery_tables import CHANGES_SCHEMA

T = "p.analytics.engagement_changes_2026q4"


class FakeWriter:
    """A stream service: rows per stream, offsets enforced like BigQuery."""

    def __init__(self) -> None:
        self.rows: dict[str, list[dict]] = {}
        self.finalized: set[str] = set()
        self.created = 0
        self.log: list[str] = []

    def create(self, table_id: str) -> Stream:
        name = f"{table_id}/streams/{self.created}"
        self.created += 1
        self.rows[name] = []
        self.log.append(f"create {name}")
        return Stream(name, 0)

    def finalize(self, stream: Stream) -> int | None:
        self.log.append(f"finalize {stream.name}")
        if stream.name not in self.rows:
            return None
        self.finalized.add(stream.name)
        return len(self.rows[stream.name])

    def append(self, stream: Stream, rows) -> None:
        if stream.name not in self.rows:
            raise api.NotFound(f"Stream not found: {stream.name}")
        assert stream.name not in self.finalized, "Stream is FINALIZED"
        existing = self.rows[stream.name]
        assert stream.rows == len(existing), "append at an offset that is not the stream's end"
        existing.extend(rows)
        stream.rows += len(rows)
        self.log.append(f"append {len(rows)}")


def rows(*ids: int) -> list[dict]:
    return [{"id": i} for i in ids]


def test_streams_round_trip_through_their_stored_form():
    entries = [(T, "projects/p/streams/a", 12), (T, "projects/p/streams/b", 0), ("p.analytics.cdc_audit", "s/c", 3)]
    assert decode_streams(encode_streams(entries)) == entries
    assert decode_streams("") == []


def test_a_new_stream_is_recorded_before_its_first_append():
    writer, recorded = FakeWriter(), []
    appender = StreamAppender(writer)

    def record(key: str) -> None:
        recorded.append((key, appender.stored_form(key, committed_only=True)))
        writer.log.append("record")

    appender.append("t:0", T, rows(1, 2), record)
    assert writer.log == [f"create {T}/streams/0", "record", "append 2"]
    assert recorded == [("t:0", f"{T}={T}/streams/0@0")]  # the committed count, not the rows to come
    appender.committed(["t:0"])
    assert appender.stored_form("t:0") == f"{T}={T}/streams/0@2"


def test_after_a_crash_the_rows_appended_past_the_stored_count_are_skipped_once():
    writer = FakeWriter()
    first = StreamAppender(writer)
    first.append("t:0", T, rows(1, 2), lambda key: None)
    first.committed(["t:0"])
    stored = first.stored_form("t:0")  # 2 rows covered by the positions
    first.append("t:0", T, rows(3, 4, 5), lambda key: None)  # then kill -9 before commit

    again = StreamAppender(writer)
    again.resume({"t:0": stored})
    # The re-read brings rows 3, 4, 5 again, then 6: three were appended by the crashed run.
    assert again.take_skip("t:0", T, 2) == 2
    assert again.take_skip("t:0", T, 2) == 1
    again.append("t:0", T, rows(6), lambda key: None)
    assert again.take_skip("t:0", T, 5) == 0
    assert [r["id"] for stream in writer.rows.values() for r in stream] == [1, 2, 3, 4, 5, 6]  # each once


def test_a_stream_that_could_not_be_recorded_is_forgotten():
    writer = FakeWriter()
    appender = StreamAppender(writer)

    def kafka_down(key: str) -> None:
        raise ConnectionError("Kafka is down")

    with pytest.raises(ConnectionError):
        appender.append("t:0", T, rows(1), kafka_down)
    assert appender.stored_form("t:0") == ""
    appender.append("t:0", T, rows(1), lambda key: None)
    assert writer.log == [f"create {T}/streams/0", f"create {T}/streams/1", "append 1"]


def test_rows_become_arrow_and_a_wrong_typed_one_says_why():
    schema = arrow_schema(CHANGES_SCHEMA)
    good = {"op": "c", "id": 1, "event_ts": "2026-12-02T10:00:00.000000Z", "event_slot": 997_892}
    good |= {"source_topic": "t", "source_partition": 0, "source_offset": 1, "written_at": "2026-12-02T10:00:01Z"}
    batch = record_batch([good], schema)
    assert batch.num_rows == 1
    assert batch.column("event_ts")[0].as_py() == datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
    assert convertible(good, schema) is None
    bad = dict(good, duration_ms="not a number")
    assert convertible(bad, schema).startswith("BigQuery Storage Write: ")


def test_a_second_crash_before_the_first_crash_s_tail_is_covered_still_skips_it():
    writer = FakeWriter()
    run0 = StreamAppender(writer)
    run0.append("t:0", T, rows(1, 2), lambda key: None)
    run0.committed(["t:0"])
    stored = [run0.stored_form("t:0")]
    run0.append("t:0", T, rows(3, 4, 5), lambda key: None)  # crash: 3, 4, 5 uncovered

    run1 = StreamAppender(writer)
    run1.resume({"t:0": stored[-1]})
    assert run1.take_skip("t:0", T, 1) == 1  # row 3 is already there
    # Row 6 is new: a live stream is recorded first (with the old one, whose tail is not covered yet).
    run1.append("t:0", T, [], lambda key: stored.append(run1.stored_form(key, committed_only=True)))
    assert stored[-1] == f"{T}={T}/streams/0@2,{T}={T}/streams/1@0"
    # ... and the job is killed again before any commit.

    run2 = StreamAppender(writer)
    run2.resume({"t:0": stored[-1]})
    assert run2.take_skip("t:0", T, 10) == 3  # rows 3, 4, 5 from the first stream; the second is empty
    run2.append("t:0", T, rows(6), lambda key: None)
    run2.committed(["t:0"])
    assert [r["id"] for stream in writer.rows.values() for r in stream] == [1, 2, 3, 4, 5, 6]
    # Once the positions cover its tail, the old stream leaves the stored form.
    assert run2.stored_form("t:0") == f"{T}={T}/streams/2@1"


class RecordingWriter(FakeWriter):
    """What the sink appends, as rows."""

    def append(self, stream: Stream, rows) -> None:
        super().append(stream, rows.to_pylist())


class ColumnsDataset:
    """A dataset whose changelog tables get the columns a row asks for."""

    def __init__(self) -> None:
        self.added: dict[str, str] = {}

    def ensure(self) -> None:
        pass

    def ensure_period(self, period: str) -> None:
        pass

    def ensure_columns(self, wanted: dict[str, str]) -> None:
        self.added.update(wanted)


class NoPositions:
    def store(self, positions, extras=None) -> None:
        pass

    def close(self) -> None:
        pass


def test_the_values_of_a_column_added_to_engagement_events_are_appended_too():
    import msgspec

    from infra.settings import BigQuerySettings, KafkaSettings
    from sinks.bigquery import BigQueryChangesSink
    from sinks.contract import Batch

    from .test_bigquery_sink import NOW, enriched, event

    sink = BigQueryChangesSink(
        BigQuerySettings(project_id="p", dataset="analytics"), KafkaSettings(), "g", clock=lambda: NOW
    )
    sink.dataset, sink._positions = ColumnsDataset(), NoPositions()  # type: ignore[assignment]
    writer = RecordingWriter()
    sink._appender = StreamAppender(writer)  # type: ignore[arg-type]
    before = enriched(1)
    after = enriched(2, row=msgspec.structs.replace(event(2), extra=(("referrer", "search"),)))
    assert sink.write(Batch([before, after], {}, {})).complete
    [appended] = writer.rows.values()
    assert [(row["id"], row.get("referrer")) for row in appended] == [(1, None), (2, "search")]


def test_a_writer_finalizes_only_the_partitions_it_writes():
    # Two writers of one topic (shards in two worker processes): each loads every partition's
    # stored streams, and must not finalize the other's live stream.
    writer = FakeWriter()
    even, odd = StreamAppender(writer), StreamAppender(writer)
    even.append("t:0", T, rows(1), lambda key: None)
    even.committed(["t:0"])
    stored = {"t:0": even.stored_form("t:0")}
    odd.resume(stored)
    odd.append("t:1", T, rows(2), lambda key: None)
    even.append("t:0", T, rows(3), lambda key: None)  # its stream is still open
    assert [line for line in writer.log if line.startswith("finalize")] == []
    assert odd.stored_form("t:0") == stored["t:0"]  # untouched: what was stored stands
    assert [r["id"] for r in writer.rows[f"{T}/streams/0"]] == [1, 3]


def test_a_partition_s_streams_are_finalized_once_at_its_first_write():
    writer = FakeWriter()
    first = StreamAppender(writer)
    first.append("t:0", T, rows(1, 2), lambda key: None)
    first.committed(["t:0"])
    stored = first.stored_form("t:0")
    again = StreamAppender(writer)
    again.resume({"t:0": stored})
    assert writer.log[-1] == "append 2"  # resume alone finalizes nothing
    assert again.take_skip("t:0", T, 2) == 0
    again.append("t:0", T, rows(3), lambda key: None)
    assert [line for line in writer.log if line.startswith("finalize")] == [f"finalize {T}/streams/0"]
    assert [r["id"] for stream in writer.rows.values() for r in stream] == [1, 2, 3]


def test_a_stream_gone_with_an_emulator_restart_ends_with_its_rows_and_the_retry_opens_a_new_one():
    writer = FakeWriter()
    appender = StreamAppender(writer)
    appender.append("t:0", T, rows(1, 2), lambda key: None)
    gone = writer.rows.pop(f"{T}/streams/0")  # the restart forgets the stream, the table keeps its rows
    with pytest.raises(api.NotFound):
        appender.append("t:0", T, rows(3), lambda key: None)
    assert appender.take_skip("t:0", T, 1) == 0  # nothing of the failed append landed
    appender.append("t:0", T, rows(3), lambda key: None)
    assert [r["id"] for r in gone] + [r["id"] for r in writer.rows[f"{T}/streams/1"]] == [1, 2, 3]
    assert appender.stored_form("t:0") == f"{T}={T}/streams/1@1"  # the old one is fully accounted for


def test_storage_write_batches_are_bounded_by_bytes_not_by_the_insert_all_row_count():
    # A batch is split over partitions into appends: a 500-row cap made appends of a few dozen rows.
    from infra.settings import BigQuerySettings, KafkaSettings
    from sinks.bigquery import BigQueryChangesSink
    from sinks.contract import BatchLimits

    def limits(mode: str) -> BatchLimits:
        settings = BigQuerySettings(project_id="p", dataset="analytics", write_mode=mode, max_rows_per_request=500)
        return BigQueryChangesSink(settings, KafkaSettings(), "g").limits

    assert limits("insert_all") == BatchLimits(max_records=500, max_bytes=9_000_000)
    assert limits("storage_write") == BatchLimits(max_records=20_000, max_bytes=9_000_000)
