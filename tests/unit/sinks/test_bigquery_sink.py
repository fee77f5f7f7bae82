"""The BigQuery sinks against a fake client: rows, insertIds, per-row outcomes, splitting, errors."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest
import requests
from google.api_core import exceptions as api

from infra.settings import BigQuerySettings, KafkaSettings
from sinks.bigquery import BigQueryChangesSink, BigQueryContentSink, classify
from sinks.bigquery_rows import audit_row, change_row, insert_id, is_retryable_row
from sinks.contract import Batch, SinkUnavailable
from sinks.kafka_positions import METADATA_MAX_BYTES, read_form, stored_form
from sinks.positions import Mark, Position
from sinks.records import ContentChange, ContentRow, EngagementRow, EnrichedChange, SourcePosition

NOW = datetime(2026, 12, 2, 10, 0, tzinfo=UTC)
S = BigQuerySettings(project_id="p", dataset="analytics", emulator_host="")
CONTENT = ContentRow("c-1", "slug-1", "Title", "podcast", 1200, NOW)


def event(id_: int, *, ts: datetime = NOW, duration: int | None = 60_000, device: str = "ios") -> EngagementRow:
    return EngagementRow(id_, "c-1", "u-1", "play", ts, duration, device, '{"k":[1,2]}')


def enriched(offset: int, op: str = "c", row: EngagementRow | None = None, sequence=(100, 200)) -> EnrichedChange:
    row = row or event(offset)
    before, after = (row, None) if op == "d" else (None, row)
    return EnrichedChange(
        SourcePosition("engagement.public.engagement_events", 3, offset),
        b'{"id": %d}' % row.id,
        b'{"payload": {"op": "%s", "before": null, "after": {"id": %d}, "source": {"lsn": 200}}}'
        % (op.encode(), row.id),
        op,
        sequence,
        1_796_205_600_123,
        before,
        after,
        CONTENT,
        (),
        60.0,
        5.0,
    )


class FakeDataset:
    def __init__(self) -> None:
        self.periods: list[str] = []
        self.forgotten = 0

    def ensure(self) -> None:
        pass

    def ensure_period(self, period: str) -> None:
        self.periods.append(period)

    def forget(self) -> None:
        self.forgotten += 1


class FakeClient:
    """insert_rows_json answers from ``script``: a callable per call (rows -> errors, or raise)."""

    def __init__(self, *script) -> None:
        self.script = list(script)
        self.calls: list[tuple[str, list[dict], list[str], dict]] = []

    def insert_rows_json(self, table, rows, *, row_ids, **kwargs):
        self.calls.append((table, list(rows), list(row_ids), kwargs))
        answer = self.script.pop(0) if self.script else (lambda rows: [])
        return answer(rows)


def sink(client: FakeClient, cls=BigQueryChangesSink, settings: BigQuerySettings = S):
    s = cls(settings, KafkaSettings(), "group", clock=lambda: NOW)
    s.client = client
    s.dataset = FakeDataset()
    s._retry = "the call's retry"
    return s


def batch(*records):
    return Batch(list(records), {}, {})


def test_change_row_carries_the_row_metrics_content_and_source():
    row = change_row(enriched(7, sequence=(100, 200)), "2026-12-02T10:00:01.000000Z")
    assert row == {
        "op": "c",
        "id": 7,
        "content_id": "c-1",
        "user_id": "u-1",
        "event_type": "play",
        "event_ts": "2026-12-02T10:00:00.000000Z",
        "event_slot": 997_892,
        "duration_ms": 60_000,
        "device": "ios",
        "raw_payload": '{"k":[1,2]}',
        "engagement_seconds": 60.0,
        "engagement_pct": 5.0,
        "over_100": False,
        "slug": "slug-1",
        "title": "Title",
        "content_type": "podcast",
        "length_seconds": 1200,
        "commit_ts": "2026-12-02T10:00:00.123000Z",
        "source_commit_lsn": 100,
        "source_lsn": 200,
        "source_topic": "engagement.public.engagement_events",
        "source_partition": 3,
        "source_offset": 7,
        "written_at": "2026-12-02T10:00:01.000000Z",
    }


def test_a_delete_is_its_before_image():
    row = change_row(enriched(8, op="d", row=event(42)), "w")
    assert (row["op"], row["id"]) == ("d", 42)


def test_insert_id_is_the_source_position_and_never_longer_than_128():
    change = enriched(12)
    assert insert_id(change.position) == "engagement.public.engagement_events/3/12"
    assert insert_id(change.position) == insert_id(enriched(12).position)
    long = SourcePosition("t" * 200, 15, 123_456_789)
    assert len(insert_id(long)) == 64
    assert insert_id(long) == insert_id(SourcePosition("t" * 200, 15, 123_456_789))
    assert insert_id(long) != insert_id(SourcePosition("t" * 200, 15, 123_456_790))


def test_audit_row_keeps_the_envelope_parts_as_json():
    row = audit_row(enriched(5), "w")
    assert (row["op"], row["after"], row["source"], row["before"], row["envelope"]) == (
        "c",
        '{"id":5}',
        '{"lsn":200}',
        None,
        None,
    )
    broken = EnrichedChange(SourcePosition("t", 0, 1), None, b"not json", "c", None, 0, None, None, None, ())
    assert audit_row(broken, "w")["envelope"] == "not json"


def test_write_sends_insert_ids_skip_invalid_rows_timeout_and_retry():
    client = FakeClient()
    outcome = sink(client).write(batch(enriched(1), enriched(2)))
    assert outcome.complete
    ((table, rows, ids, kwargs),) = client.calls
    assert table == "p.analytics.engagement_changes_2026q4"
    assert ids == ["engagement.public.engagement_events/3/1", "engagement.public.engagement_events/3/2"]
    assert [r["id"] for r in rows] == [1, 2]
    assert kwargs == {
        "skip_invalid_rows": True,
        "ignore_unknown_values": False,
        "retry": "the call's retry",
        "timeout": S.request_timeout_s,
    }


def test_rows_go_to_the_table_of_their_quarter():
    client = FakeClient()
    old = enriched(1, row=event(1, ts=datetime(2026, 1, 5, tzinfo=UTC)))
    stray = enriched(2, row=event(2, ts=datetime(2100, 1, 1, tzinfo=UTC)))
    s = sink(client)
    assert s.write(batch(old, enriched(3), stray)).complete
    assert [call[0].rsplit("_", 1)[1] for call in client.calls] == ["2026q1", "2026q4", "outliers"]
    assert s.dataset.periods == ["2026q1", "2026q4", "outliers"]


def test_per_row_insert_errors_are_rejected_or_retried_by_reason():
    def errors(rows):
        return [
            {"index": 1, "errors": [{"reason": "invalid", "location": "duration_ms", "message": "bad int"}]},
            {"index": 2, "errors": [{"reason": "backendError", "message": "try again"}]},
        ]

    outcome = sink(FakeClient(errors)).write(batch(enriched(1), enriched(2), enriched(3)))
    assert outcome.rejected == {1: "BigQuery insertErrors: invalid at duration_ms: bad int"}
    assert list(outcome.retry) == [2]
    assert outcome.retry[2].reason == "BigQuery: backendError: try again"


def test_a_request_refused_as_a_whole_is_split_until_the_bad_row_is_alone():
    def refuse_if_bad(rows):
        if any(r["device"] == "bad" for r in rows):
            raise api.BadRequest("Invalid value at rows[...]")
        return []

    client = FakeClient(*[refuse_if_bad] * 10)
    records = [enriched(i, row=event(i, device="bad" if i == 2 else "ios")) for i in range(4)]
    outcome = sink(client).write(batch(*records))
    assert outcome.rejected == {2: "BigQuery refused the row: Invalid value at rows[...]"}
    assert not outcome.retry
    assert [[r["id"] for r in call[1]] for call in client.calls] == [[0, 1, 2, 3], [0, 1], [2, 3], [2], [3]]


def test_transient_errors_make_every_record_retryable():
    def down(rows):
        raise requests.ConnectionError("connection refused")

    outcome = sink(FakeClient(down)).write(batch(enriched(1), enriched(2)))
    assert not outcome.rejected
    assert sorted(outcome.retry) == [0, 1]
    assert (
        outcome.retry[0].reason
        == "BigQuery, insert into p.analytics.engagement_changes_2026q4: ConnectionError: connection refused"
    )


def test_a_missing_table_is_recreated_on_the_next_write():
    def missing(rows):
        raise api.NotFound("Table engagement_changes_2026q4 not found")

    s = sink(FakeClient(missing))
    outcome = s.write(batch(enriched(1)))
    assert list(outcome.retry) == [0]
    assert s.dataset.forgotten == 1


def test_permission_errors_are_retried_with_a_hint_not_dead_lettered():
    def forbidden(rows):
        raise api.Forbidden("Access Denied: Table p:analytics.x", errors=[{"reason": "accessDenied"}])

    outcome = sink(FakeClient(forbidden)).write(batch(enriched(1)))
    assert not outcome.rejected
    assert outcome.retry[0].reason.endswith("(check the credentials and the roles in docs/bigquery.md)")


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (api.BadRequest("x"), "split"),
        (api.NotFound("x"), "missing"),
        (api.TooManyRequests("x"), "retry"),
        (api.InternalServerError("x"), "retry"),
        (api.ServiceUnavailable("x"), "retry"),
        (api.Forbidden("x", errors=[{"reason": "quotaExceeded"}]), "retry"),
    ],
)
def test_error_classification(exc, kind):
    assert classify(exc) == kind


def test_retryable_row_reasons():
    assert is_retryable_row([{"reason": "stopped"}])
    assert is_retryable_row([{"reason": "backendError"}, {"reason": "timeout"}])
    assert not is_retryable_row([{"reason": "invalid"}])
    assert not is_retryable_row([{"reason": "stopped"}, {"reason": "invalid"}])
    assert not is_retryable_row([])


def test_audit_rows_go_to_their_own_table_with_the_same_insert_id():
    client = FakeClient()
    s = sink(client, settings=S.model_copy(update={"audit": True}))
    assert s.write(batch(enriched(1))).complete
    assert [(c[0], c[2]) for c in client.calls] == [
        ("p.analytics.engagement_changes_2026q4", ["engagement.public.engagement_events/3/1"]),
        ("p.analytics.cdc_audit", ["engagement.public.engagement_events/3/1"]),
    ]
    assert orjson.loads(client.calls[1][1][0]["after"]) == {"id": 1}


def test_content_sink_writes_content_changes():
    client = FakeClient()
    change = ContentChange(SourcePosition("content", 0, 9), b"k", b"v", "u", (1, 2), None, CONTENT, 1_000)
    assert sink(client, BigQueryContentSink).write(batch(change)).complete
    ((table, rows, ids, _),) = client.calls
    assert (table, ids, rows[0]["id"], rows[0]["length_seconds"]) == (
        "p.analytics.content_changes",
        ["content/0/9"],
        "c-1",
        1200,
    )


def test_positions_metadata_keeps_the_mark_and_drops_digests_past_the_broker_cap():
    small = Position(10, Mark(5, 6, frozenset({"aaaaaaaaaaaaaaaa"})))
    assert read_form(10, stored_form(small)) == small
    many = Position(10, Mark(5, 6, frozenset(f"{i:016x}" for i in range(400))))
    text = stored_form(many)
    assert len(text) <= METADATA_MAX_BYTES
    assert read_form(10, text) == Position(10, Mark(5, 6))
    assert read_form(11, stored_form(small)) == Position(11)  # metadata of another offset is ignored
    assert read_form(3, "garbage;x") == Position(3)


def test_unavailable_write_is_never_raised_for_a_partial_failure():
    # One table refuses (transient), the other takes its rows: only the first table's rows retry.
    def first_down(rows):
        raise api.ServiceUnavailable("busy")

    old = enriched(1, row=event(1, ts=datetime(2026, 1, 5, tzinfo=UTC)))
    outcome = sink(FakeClient(first_down)).write(batch(old, enriched(2)))
    assert list(outcome.retry) == [0]
    assert not isinstance(outcome, SinkUnavailable)


def test_raw_payload_goes_to_bigquery_verbatim_unless_too_deep_for_its_json_type():
    from sinks.bigquery_rows import MAX_JSON_DEPTH, json_column, json_depth

    assert json_depth('[1, {"a": "[[[{"}, [[]]]') == 3  # brackets inside strings do not nest
    assert json_depth('"\\"[["') == 0
    for text in ('["x", 1]', '"text"', "3", "null", "[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH):
        assert json_column(text) == text
    deep = "[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)
    # Too deep for BigQuery's JSON: kept whole, as a JSON string holding the original text.
    assert json_column(deep) == f'"{deep}"' and json_column(None) is None
