import pickle
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from pipeline.decode import (
    DecodeError,
    decode_content,
    decode_engagement,
    decode_engagement_checked,
    decode_error_letter,
    parse_sequence,
    parse_timestamp,
    parse_uuid,
)
from pipeline.model import ContentChange, ContentRow, DeadLetter, EngagementChange, KafkaRecord, Skipped, SourcePosition

CONTENT_ID = "27c70e8d-a7d7-4e92-8e87-9696f6b419f4"
USER_ID = "9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d"
COMMIT_MS = 1763920823895
POSITION = SourcePosition("engagement.public.engagement_events", 2, 41)
CONTENT_POSITION = SourcePosition("engagement.public.content", 0, 7)


def event_row(**overrides: Any) -> dict[str, Any]:
    row = {
        "id": 2465464,
        "content_id": CONTENT_ID,
        "user_id": USER_ID,
        "event_type": "finish",
        "event_ts": "2026-11-23T18:00:23.895123Z",
        "duration_ms": 526117,
        "device": "web",
        "raw_payload": '{"session_id": "abc", "referrer": "push"}',
    }
    row.update(overrides)
    return row


def content_row(**overrides: Any) -> dict[str, Any]:
    row = {
        "id": CONTENT_ID,
        "slug": "the-long-episode",
        "title": "The Long Episode",
        "content_type": "podcast",
        "length_seconds": 2400,
        "publish_ts": "2025-01-02T03:04:05Z",
    }
    row.update(overrides)
    return row


def envelope(op: str, before: Any = None, after: Any = None, table: str = "engagement_events") -> dict[str, Any]:
    """A Debezium 3.x envelope as JsonConverter writes it with schemas.enable=false."""
    return {
        "before": before,
        "after": after,
        "source": {
            "version": "3.7.0.Final",
            "connector": "postgresql",
            "name": "engagement",
            "ts_ms": COMMIT_MS,
            "snapshot": "true" if op == "r" else "false",
            "db": "engagement_db",
            "sequence": '["24023928","24023928"]',
            "ts_us": COMMIT_MS * 1000,
            "ts_ns": COMMIT_MS * 1_000_000,
            "schema": "public",
            "table": table,
            "txId": 734,
            "lsn": 24023928,
            "xmin": None,
        },
        "transaction": None,
        "op": op,
        "ts_ms": COMMIT_MS + 6,
        "ts_us": (COMMIT_MS + 6) * 1000,
        "ts_ns": (COMMIT_MS + 6) * 1_000_000,
    }


def record(value: Any, key: bytes | None = b'{"id": 2465464}', position: SourcePosition = POSITION) -> KafkaRecord:
    raw = value if value is None or isinstance(value, bytes) else orjson.dumps(value)
    return KafkaRecord(position=position, key=key, value=raw, timestamp_ms=COMMIT_MS + 10)


def engagement(value: Any) -> EngagementChange:
    change = decode_engagement(record(value))
    assert isinstance(change, EngagementChange)
    return change


def reason_of(decode: Any, value: Any) -> str:
    with pytest.raises(DecodeError) as caught:
        decode(record(value))
    assert caught.value.reason == str(caught.value)
    return caught.value.reason


# --- ops ---------------------------------------------------------------------------------------


def test_insert_decodes_every_column():
    change = engagement(envelope("c", after=event_row()))
    assert change.position == POSITION
    assert change.op == "c"
    assert change.before is None
    assert change.commit_ts_ms == COMMIT_MS
    row = change.after
    assert row is not None
    assert row.id == 2465464
    assert row.content_id == CONTENT_ID
    assert row.user_id == USER_ID
    assert row.event_type == "finish"
    assert row.event_ts == datetime(2026, 11, 23, 18, 0, 23, 895123, tzinfo=UTC)
    assert row.duration_ms == 526117
    assert row.device == "web"
    assert row.raw_payload == '{"session_id": "abc", "referrer": "push"}'


def test_snapshot_read_is_like_an_insert():
    change = engagement(envelope("r", after=event_row()))
    assert change.op == "r"
    assert change.before is None
    assert change.after is not None and change.after.id == 2465464


def test_update_carries_both_images():
    change = engagement(envelope("u", before=event_row(duration_ms=1000), after=event_row(duration_ms=2000)))
    assert change.op == "u"
    assert change.before is not None and change.before.duration_ms == 1000
    assert change.after is not None and change.after.duration_ms == 2000


def test_delete_carries_the_before_image_only():
    change = engagement(envelope("d", before=event_row()))
    assert change.op == "d"
    assert change.after is None
    assert change.before is not None and change.before.id == 2465464


def test_images_an_op_does_not_use_are_ignored():
    # Whatever a producer puts in the unused side, the change carries only what the op defines.
    assert engagement(envelope("c", before=event_row(id=1), after=event_row())).before is None
    assert engagement(envelope("d", before=event_row(), after=event_row(id=1))).after is None


def test_tombstone_is_skipped_not_an_error():
    skipped = decode_engagement(record(None))
    assert skipped == Skipped(POSITION, "tombstone", record(None).key)
    assert decode_content(record(None, position=CONTENT_POSITION)) == Skipped(
        CONTENT_POSITION, "tombstone", record(None).key
    )


# --- malformed envelopes -----------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"{not json", b"", b'{"op": "c"', b"\xff\xfe"])
def test_malformed_json(raw: bytes):
    assert "not valid JSON" in reason_of(decode_engagement, raw)


@pytest.mark.parametrize("value", [[1, 2], "c", 3, None])
def test_value_must_be_an_object(value: Any):
    raw = orjson.dumps(value)  # JSON null is not a tombstone: the record has bytes
    assert "must be a JSON object" in reason_of(decode_engagement, raw)


@pytest.mark.parametrize("op", ["x", "t", "m", "C", "", None, 1, True, ["c"], {"c": 1}])
def test_unknown_op(op: Any):
    assert "op must be one of" in reason_of(decode_engagement, envelope(op, after=event_row()))


def test_missing_op():
    value = envelope("c", after=event_row())
    del value["op"]
    assert reason_of(decode_engagement, value) == "op must be one of c, r, u, d, got missing"


@pytest.mark.parametrize("op", ["c", "r"])
def test_insert_without_after(op: str):
    assert reason_of(decode_engagement, envelope(op)) == f"op {op} has no after-image"


def test_update_without_before_names_replica_identity():
    reason = reason_of(decode_engagement, envelope("u", after=event_row()))
    assert "before-image" in reason and "REPLICA IDENTITY FULL" in reason


def test_delete_without_before_names_replica_identity():
    assert "REPLICA IDENTITY FULL" in reason_of(decode_engagement, envelope("d"))


def test_update_without_after():
    assert reason_of(decode_engagement, envelope("u", before=event_row())) == "op u has no after-image"


def test_delete_with_a_key_only_before_image_names_replica_identity():
    # What REPLICA IDENTITY DEFAULT sends for a delete: the key column, everything else null.
    key_only = dict.fromkeys(event_row(), None) | {"id": 2465464}
    reason = reason_of(decode_engagement, envelope("d", before=key_only))
    assert reason.startswith("before.event_ts must be a timestamp, got null")
    assert "REPLICA IDENTITY FULL" in reason


@pytest.mark.parametrize("row", [[1], "row", 5])
def test_row_must_be_an_object(row: Any):
    assert reason_of(decode_engagement, envelope("c", after=row)).startswith("after must be an object")


# --- rows ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("column", ["id", "event_ts"])
def test_missing_required_column(column: str):
    row = event_row()
    del row[column]
    reason = reason_of(decode_engagement, envelope("c", after=row))
    assert reason.startswith(f"after.{column} must be") and reason.endswith("got missing")


@pytest.mark.parametrize("column", ["id", "event_ts"])
def test_null_required_column(column: str):
    reason = reason_of(decode_engagement, envelope("c", after=event_row(**{column: None})))
    assert reason.startswith(f"after.{column} must be") and reason.endswith("got null")


@pytest.mark.parametrize(
    ("column", "value"),
    [
        ("id", "2465464"),
        ("id", 1.5),
        ("id", True),
        ("duration_ms", "526117"),
        ("duration_ms", 526.5),
        ("duration_ms", False),
        ("event_type", 3),
        ("device", ["web"]),
        ("event_ts", 1.5),
        ("event_ts", True),
        ("event_ts", "yesterday"),
        ("content_id", 42),
        ("user_id", "not-a-uuid"),
    ],
)
def test_wrong_types_are_rejected(column: str, value: Any):
    reason = reason_of(decode_engagement, envelope("c", after=event_row(**{column: value})))
    assert reason.startswith(f"after.{column}")


def test_bool_is_not_an_int():
    reason = reason_of(decode_engagement, envelope("c", after=event_row(duration_ms=True)))
    assert reason == "after.duration_ms must be an integer or null, got bool True"


def test_nullable_columns_may_be_null():
    nulls = dict.fromkeys(["content_id", "user_id", "event_type", "duration_ms", "device", "raw_payload"], None)
    row = engagement(envelope("c", after=event_row(**nulls))).after
    assert row is not None
    assert (row.content_id, row.user_id, row.event_type, row.duration_ms, row.device, row.raw_payload) == (None,) * 6


def test_unknown_columns_and_envelope_fields_are_tolerated():
    value = envelope("c", after=event_row(new_column="x", another={"a": 1}))
    value["future_field"] = {"anything": True}
    row = engagement(value).after
    assert row is not None and row.id == 2465464


def test_long_bad_values_are_shortened_in_the_reason():
    reason = reason_of(decode_engagement, envelope("c", after=event_row(device=["x" * 500])))
    assert len(reason) < 150 and reason.endswith("...")


# --- raw_payload ---------------------------------------------------------------------------------


DEEP = "[" * 1_025 + "]" * 1_025


@pytest.mark.parametrize(
    "payload",
    ['{"session_id": "abc", "tags": ["a", "b"]}', "[1, 2]", '"text"', "3", "null", DEEP],
)
def test_raw_payload_is_kept_as_the_columns_json_text(payload: str):
    # Every one is valid JSONB; none is parsed, so none can be refused (issue 14: arrays, strings,
    # and a payload deeper than JSON parsers allow were dead-lettered).
    row = engagement(envelope("c", after=event_row(raw_payload=payload))).after
    assert row is not None and row.raw_payload == payload


def test_raw_payload_null_is_none():
    row = engagement(envelope("c", after=event_row(raw_payload=None))).after
    assert row is not None and row.raw_payload is None


@pytest.mark.parametrize(
    ("embedded", "text"), [({"session_id": "abc"}, '{"session_id":"abc"}'), ([1, 2], "[1,2]"), (7, "7")]
)
def test_raw_payload_embedded_by_a_converter_is_encoded_back(embedded: Any, text: str):
    row = engagement(envelope("c", after=event_row(raw_payload=embedded))).after
    assert row is not None and row.raw_payload == text


# --- commit time ---------------------------------------------------------------------------------


def test_commit_time_falls_back_to_envelope_ts_ms():
    value = envelope("c", after=event_row())
    del value["source"]["ts_ms"]
    assert engagement(value).commit_ts_ms == COMMIT_MS + 6
    del value["source"]
    assert engagement(value).commit_ts_ms == COMMIT_MS + 6


def test_commit_time_missing_everywhere():
    value = envelope("c", after=event_row())
    del value["source"]["ts_ms"]
    del value["ts_ms"]
    assert "no commit time" in reason_of(decode_engagement, value)


@pytest.mark.parametrize("bad", ["1763920823895", True, 1.5])
def test_commit_time_wrong_type(bad: Any):
    value = envelope("c", after=event_row())
    value["source"]["ts_ms"] = bad
    assert reason_of(decode_engagement, value).startswith("source.ts_ms must be an integer")
    del value["source"]["ts_ms"]
    value["ts_ms"] = bad
    assert reason_of(decode_engagement, value).startswith("ts_ms must be an integer")


def test_source_must_be_an_object():
    value = envelope("c", after=event_row())
    value["source"] = "postgres"
    assert reason_of(decode_engagement, value).startswith("source must be an object")


# --- timestamps ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2026-11-23T18:00:23Z", datetime(2026, 11, 23, 18, 0, 23, tzinfo=UTC)),
        ("2026-11-23T18:00:23.8Z", datetime(2026, 11, 23, 18, 0, 23, 800000, tzinfo=UTC)),
        ("2026-11-23T18:00:23.895123Z", datetime(2026, 11, 23, 18, 0, 23, 895123, tzinfo=UTC)),
        # Nanoseconds are truncated, never rounded up into the next microsecond.
        ("2026-11-23T18:00:23.895123999Z", datetime(2026, 11, 23, 18, 0, 23, 895123, tzinfo=UTC)),
        ("2026-11-23T18:00:23.1234567+02:00", datetime(2026, 11, 23, 16, 0, 23, 123456, tzinfo=UTC)),
        ("2026-11-23T20:00:23+02:00", datetime(2026, 11, 23, 18, 0, 23, tzinfo=UTC)),
        ("2026-11-23T01:30:00-05:30", datetime(2026, 11, 23, 7, 0, tzinfo=UTC)),
        ("2026-11-23T18:00:23+00:00", datetime(2026, 11, 23, 18, 0, 23, tzinfo=UTC)),
    ],
)
def test_zoned_timestamp(text: str, expected: datetime):
    parsed = parse_timestamp(text)
    assert parsed == expected
    assert parsed.utcoffset() == timedelta(0)
    assert parsed.tzinfo is UTC


def test_offset_is_converted_to_utc_at_a_day_boundary():
    assert parse_timestamp("2026-01-01T01:00:00+02:00") == datetime(2025, 12, 31, 23, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("micros", "expected"),
    [
        (0, datetime(1970, 1, 1, tzinfo=UTC)),
        (1_763_920_823_895_123, datetime(2025, 11, 23, 18, 0, 23, 895123, tzinfo=UTC)),
        (-1, datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)),
    ],
)
def test_micro_timestamp(micros: int, expected: datetime):
    parsed = parse_timestamp(micros)
    assert parsed == expected and parsed.tzinfo is UTC


@pytest.mark.parametrize(
    "value",
    ["2026-11-23T18:00:23", "2026-11-23", "", "18:00:23Z", "not a date", 1.5e15, True, None, [2026], 10**30],
)
def test_bad_timestamps(value: Any):
    with pytest.raises(DecodeError):
        parse_timestamp(value)


def test_event_ts_as_micro_timestamp_and_with_offset():
    row = engagement(envelope("c", after=event_row(event_ts=1_763_920_823_895_123))).after
    assert row is not None and row.event_ts == datetime(2025, 11, 23, 18, 0, 23, 895123, tzinfo=UTC)
    row = engagement(envelope("c", after=event_row(event_ts="2026-11-23T20:00:23.895123456+02:00"))).after
    assert row is not None and row.event_ts == datetime(2026, 11, 23, 18, 0, 23, 895123, tzinfo=UTC)


# --- UUIDs ---------------------------------------------------------------------------------------


def test_uuid_canonical_passes_through():
    assert parse_uuid(CONTENT_ID) == CONTENT_ID


def test_uuid_is_lowercased():
    assert parse_uuid(CONTENT_ID.upper()) == CONTENT_ID
    row = engagement(envelope("c", after=event_row(content_id=CONTENT_ID.upper()))).after
    assert row is not None and row.content_id == CONTENT_ID


def test_uuid_none_stays_none():
    assert parse_uuid(None) is None


@pytest.mark.parametrize(
    "value",
    [
        "",
        "not-a-uuid",
        CONTENT_ID[:-1],
        CONTENT_ID + "0",
        CONTENT_ID.replace("-", ""),
        "{" + CONTENT_ID + "}",
        "27c70e8d-a7d7-4e92-8e87-9696f6b419fg",
        " " + CONTENT_ID,
        CONTENT_ID + "\n",
        42,
        b"27c70e8d",
    ],
)
def test_invalid_uuid(value: Any):
    with pytest.raises(DecodeError, match="not a UUID"):
        parse_uuid(value)


# --- content -------------------------------------------------------------------------------------


def content(value: Any) -> ContentChange:
    change = decode_content(record(value, key=b'{"id": "' + CONTENT_ID.encode() + b'"}', position=CONTENT_POSITION))
    assert isinstance(change, ContentChange)
    return change


def test_content_insert():
    change = content(envelope("c", after=content_row(), table="content"))
    assert change.position == CONTENT_POSITION and change.op == "c" and change.commit_ts_ms == COMMIT_MS
    assert change.before is None
    assert change.after == ContentRow(
        id=CONTENT_ID,
        slug="the-long-episode",
        title="The Long Episode",
        content_type="podcast",
        length_seconds=2400,
        publish_ts=datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC),
    )


def test_content_snapshot_update_delete():
    assert content(envelope("r", after=content_row(), table="content")).after is not None
    change = content(envelope("u", before=content_row(), after=content_row(length_seconds=2500), table="content"))
    assert change.before is not None and change.before.length_seconds == 2400
    assert change.after is not None and change.after.length_seconds == 2500
    change = content(envelope("d", before=content_row(), table="content"))
    assert change.after is None and change.before is not None and change.before.id == CONTENT_ID


def test_content_nullable_columns():
    row = content(envelope("c", after=content_row(content_type=None, length_seconds=None, publish_ts=None))).after
    assert row is not None and (row.content_type, row.length_seconds, row.publish_ts) == (None, None, None)


def test_content_id_is_normalised_and_validated():
    row = content(envelope("c", after=content_row(id=CONTENT_ID.upper()))).after
    assert row is not None and row.id == CONTENT_ID
    assert reason_of(decode_content, envelope("c", after=content_row(id="nope"))).startswith("after.id: not a UUID")
    assert reason_of(decode_content, envelope("c", after=content_row(id=None))) == "after.id must be a UUID, got null"


@pytest.mark.parametrize(
    ("column", "value"),
    [("length_seconds", "2400"), ("length_seconds", True), ("content_type", 1), ("publish_ts", "soon"), ("slug", 1)],
)
def test_content_wrong_types(column: str, value: Any):
    assert reason_of(decode_content, envelope("c", after=content_row(**{column: value}))).startswith(f"after.{column}")


def test_content_update_without_before_names_replica_identity():
    assert "REPLICA IDENTITY FULL" in reason_of(decode_content, envelope("u", after=content_row()))


def test_content_unknown_columns_tolerated():
    row = content(envelope("c", after=content_row(tags=["a"]), table="content")).after
    assert row is not None and row.slug == "the-long-episode"


# --- dead letters --------------------------------------------------------------------------------


def test_dead_letter_from_a_decode_error():
    bad = record(b"{oops", key=b'{"id": 9}')
    with pytest.raises(DecodeError) as caught:
        decode_engagement(bad)
    letter = decode_error_letter(bad, "decode", caught.value)
    assert letter == DeadLetter(POSITION, "decode", caught.value.reason, b'{"id": 9}', b"{oops")


def test_dead_letter_from_any_exception():
    bad = record(b"{}")
    assert decode_error_letter(bad, "enrich", KeyError("x")).reason == "KeyError: 'x'"
    assert decode_error_letter(bad, "enrich", RuntimeError()).reason == "RuntimeError"


def test_decode_error_survives_pickling():
    # Beam may ship exceptions and their reasons between workers.
    error = pickle.loads(pickle.dumps(DecodeError("after.id must be an integer, got null")))
    assert isinstance(error, DecodeError) and error.reason == "after.id must be an integer, got null"


# --- throughput guard ----------------------------------------------------------------------------


def test_decodes_many_envelopes():
    # No timing assertion: this only guards against an accidentally quadratic or pathological path.
    values = [
        orjson.dumps(envelope("u", before=event_row(id=i), after=event_row(id=i, duration_ms=i))) for i in range(20_000)
    ]
    decoded = [decode_engagement(KafkaRecord(POSITION, None, v, 0)) for v in values]
    assert len(decoded) == 20_000
    last = decoded[-1]
    assert isinstance(last, EngagementChange) and last.after is not None and last.after.duration_ms == 19_999


# --- the fast path returns what the checked path returns --------------------------------------------

FAST_PATH_CASES: list[Any] = [
    envelope("c", after=event_row()),
    envelope("r", after=event_row()),
    envelope("u", before=event_row(duration_ms=1), after=event_row()),
    envelope("d", before=event_row()),
    envelope("c", before={"not": "a row"}, after=event_row()),  # ignored before-image
    envelope("c", after=event_row(content_id=CONTENT_ID.upper())),
    envelope("c", after=event_row(user_id=USER_ID.upper())),
    envelope("c", after=event_row(content_id="not-a-uuid")),
    envelope("c", after=event_row(event_ts="2026-11-23T20:00:23.895123+02:00")),
    envelope("c", after=event_row(event_ts=1_763_920_823_895_123)),
    envelope("c", after=event_row(event_ts="2026-11-23 18:00:23")),
    envelope("c", after=event_row(event_ts=None)),
    envelope("c", after=event_row(raw_payload={"already": "decoded"})),
    envelope("c", after=event_row(raw_payload=None)),
    envelope("c", after=event_row(raw_payload="[1, 2]")),
    envelope("c", after=event_row(raw_payload="{broken")),
    envelope("c", after=event_row(duration_ms=True)),
    envelope("c", after=event_row(duration_ms=1.5)),
    envelope("c", after=event_row(id="7")),
    envelope("c", after=event_row(extra_column="tolerated")),
    envelope("c", after={k: v for k, v in event_row().items() if k != "device"}),
    envelope("c", after={k: v for k, v in event_row().items() if k != "event_ts"}),
    envelope("c"),
    envelope("u", after=event_row()),
    envelope("x", after=event_row()),
    {**envelope("c", after=event_row()), "source": None},
    {**envelope("c", after=event_row()), "source": None, "ts_ms": None},
    {**envelope("c", after=event_row()), "source": "text"},
    {**envelope("c", after=event_row()), "op": 1},
    [1, 2],
    b"{not json",
    None,
]


def outcome(decode: Any, value: Any) -> Any:
    try:
        return decode(record(value))
    except DecodeError as error:
        return ("DecodeError", error.reason)


@pytest.mark.parametrize("value", FAST_PATH_CASES)
def test_fast_path_agrees_with_the_checked_path(value: Any):
    assert outcome(decode_engagement, value) == outcome(decode_engagement_checked, value)


def test_canonical_envelopes_take_the_fast_path(monkeypatch: pytest.MonkeyPatch):
    def refuse(_: KafkaRecord) -> None:
        raise AssertionError("took the checked path")

    monkeypatch.setattr("pipeline.decode.decode_engagement_checked", refuse)
    for op, before, after in (("c", None, event_row()), ("u", event_row(), event_row()), ("d", event_row(), None)):
        assert isinstance(decode_engagement(record(envelope(op, before, after))), EngagementChange)


# --- source.sequence ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('["26657288","26657392"]', (26657288, 26657392)),
        ('[null,"26657392"]', None),  # would sort below every mark and look like a re-send
        ('["\u00b2","5"]', None),  # str.isdigit() is true for it, int() is not
        ('["1"]', None),
        ("not json", None),
        (None, None),
        (12, None),
    ],
)
def test_sequence_is_two_ints_or_nothing(raw, expected):
    assert parse_sequence(raw) == expected


def test_both_paths_read_the_sequence():
    value = envelope("c", after=event_row())
    value["source"]["sequence"] = '["100","200"]'
    assert engagement(value).sequence == (100, 200)
    assert decode_engagement_checked(record(value)).sequence == (100, 200)
