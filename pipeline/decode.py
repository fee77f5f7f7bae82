"""Decode Debezium JSON change envelopes from Kafka into the typed changes of ``pipeline.model``.

The connectors use ``JsonConverter`` with ``schemas.enable=false`` (docs/architecture.md, "Envelope
format"), so a value is the bare envelope ``{"before", "after", "source", "op", "ts_ms", ...}``.
Column encodings handled here:

* ``UUID``: a string, returned in lowercase canonical form;
* ``TIMESTAMPTZ``: an ISO-8601 string with ``Z`` or an offset (``io.debezium.time.ZonedTimestamp``),
  or, for a timestamp column captured as ``io.debezium.time.MicroTimestamp``, an integer of epoch
  **microseconds**; always returned as an aware UTC datetime;
* ``JSONB``: a JSON *string* inside the JSON, so it is decoded a second time;
* ``source.sequence``: a JSON *string* holding ``["<commit lsn of the previous transaction>",
  "<lsn>"]``, returned as a pair of ints (``sinks.records.Sequence``) that orders changes within a
  partition; a missing, partly null or unreadable sequence is ``None`` (the record then only moves
  the offset and is never taken for a re-send, ``sinks.positions``).

Anything that cannot be turned into a well-typed change raises :class:`DecodeError`, whose ``reason``
is short enough to store in a dead letter. A delete's tombstone (value ``None``) is not an error but
a :class:`~pipeline.model.Skipped`. The record key is not read: the row's ``id`` is authoritative and
the key travels on in dead letters as it came.

Two paths, one meaning. Every engagement envelope first goes through a *fast path*: ``msgspec``
decodes the JSON straight into typed structs in C (about 2 us against 14 for generic JSON parsing
and checks in Python, and without the dicts that feed the garbage collector), then the same field
parsers as below check timestamps, UUIDs and the JSONB column. Anything the fast path does not
accept as it stands (a malformed envelope, but also valid oddities such as an upper-case UUID, a
timestamp with an offset, a malformed before-image of an insert that is ignored anyway) is decoded
again by the *checked path*, which is the specification: it accepts what it accepts, and otherwise
raises :class:`DecodeError` with the reason. The fast path therefore only ever returns what the
checked path would have returned (``tests/unit/pipeline/test_decode.py`` holds them to that), and
its rejections cost nothing but time. The checked path uses exact ``type(...) is`` checks instead of
``isinstance`` (which would also let ``bool`` through as ``int``) and builds messages only when
something is wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, TypeVar

import orjson

from pipeline.column_values import (
    MISSING,
    DecodeError,
    is_canonical_uuid,
    parse_sequence,
    parse_timestamp,
    parse_uuid,
    shown,
)
from pipeline.event_wire import EVENT_COLUMNS, EventDecoder
from pipeline.model import (
    ContentChange,
    ContentRow,
    DeadLetter,
    EngagementChange,
    EngagementRow,
    KafkaRecord,
    Skipped,
)
from sinks.flush import error_text

__all__ = [
    "DecodeError",
    "decode_content",
    "decode_engagement",
    "decode_engagement_checked",
    "decode_error_letter",
    "error_reason",
    "parse_sequence",
    "parse_timestamp",
    "parse_uuid",
]

_T = TypeVar("_T")

_OPS: Final = frozenset({"c", "r", "u", "d"})
_FULL_HINT: Final = " (a before-image needs REPLICA IDENTITY FULL on the table)"


def _field_error(side: str, name: str, expected: str, value: Any) -> DecodeError:
    # A before-image with nulls where the table forbids them is what REPLICA IDENTITY DEFAULT sends
    # for a delete (only the key columns are filled in), so say so.
    hint = _FULL_HINT if side == "before" and (value is None or value is MISSING) else ""
    return DecodeError(f"{side}.{name} must be {expected}, got {shown(value)}{hint}")


def _field(side: str, name: str, parse: Callable[[Any], _T], value: Any) -> _T:
    """Run a parser that raises DecodeError, prefixing its reason with where the value sat."""
    try:
        return parse(value)
    except DecodeError as error:
        raise DecodeError(f"{side}.{name}: {error.reason}") from None


def _optional_str(side: str, name: str, value: Any) -> str | None:
    if value is None or type(value) is str:
        return value
    raise _field_error(side, name, "a string or null", value)


def _optional_int(side: str, name: str, value: Any) -> int | None:
    if value is None or type(value) is int:
        return value
    raise _field_error(side, name, "an integer or null", value)


def _raw_payload(side: str, value: Any) -> str | None:
    """The JSONB column's text as Debezium sends it, not parsed. No metric reads it, and any JSONB
    value Postgres accepts (an array, a string, 1,025 levels deep) is valid data that no JSON parser
    here should get to refuse. The sinks that keep it write it verbatim (BigQuery's JSON column)."""
    if value is None or type(value) is str:
        return value
    # A converter configured to embed JSON columns hands the value over decoded: encode it back.
    try:
        return orjson.dumps(value).decode()
    except (orjson.JSONEncodeError, TypeError):
        raise DecodeError(f"{side}.raw_payload cannot be encoded as JSON again, got {shown(value)}") from None


def _engagement_row(row: Any, side: str) -> EngagementRow:
    # Every event passes here (twice for an update), so the common case is checked inline and the
    # helpers that build messages run only for a bad value.
    if type(row) is not dict:
        raise DecodeError(f"{side} must be an object, got {shown(row)}")
    get = row.get
    row_id = get("id", MISSING)
    if type(row_id) is not int:
        raise _field_error(side, "id", "an integer", row_id)
    event_ts = get("event_ts", MISSING)
    if event_ts is MISSING or event_ts is None:
        raise _field_error(side, "event_ts", "a timestamp", event_ts)
    content_id = get("content_id")
    if content_id is not None and not (type(content_id) is str and is_canonical_uuid(content_id)):
        content_id = _field(side, "content_id", parse_uuid, content_id)
    user_id = get("user_id")
    if user_id is not None and not (type(user_id) is str and is_canonical_uuid(user_id)):
        user_id = _field(side, "user_id", parse_uuid, user_id)
    event_type = get("event_type")
    if event_type is not None and type(event_type) is not str:
        raise _field_error(side, "event_type", "a string or null", event_type)
    duration_ms = get("duration_ms")
    if duration_ms is not None and type(duration_ms) is not int:
        raise _field_error(side, "duration_ms", "an integer or null", duration_ms)
    device = get("device")
    if device is not None and type(device) is not str:
        raise _field_error(side, "device", "a string or null", device)
    extra = (
        () if EVENT_COLUMNS.issuperset(row) else tuple(sorted((k, v) for k, v in row.items() if k not in EVENT_COLUMNS))
    )
    # Positional: keyword arguments cost measurably more in a frozen dataclass's __init__.
    return EngagementRow(
        row_id,
        content_id,
        user_id,
        event_type,
        _field(side, "event_ts", parse_timestamp, event_ts),
        duration_ms,
        device,
        _raw_payload(side, get("raw_payload")),
        extra,
    )


def _content_row(row: Any, side: str) -> ContentRow:
    if type(row) is not dict:
        raise DecodeError(f"{side} must be an object, got {shown(row)}")
    get = row.get
    row_id = get("id", MISSING)
    if row_id is MISSING or row_id is None:
        raise _field_error(side, "id", "a UUID", row_id)
    publish_ts = get("publish_ts")
    return ContentRow(
        id=_field(side, "id", parse_uuid, row_id),
        slug=_optional_str(side, "slug", get("slug")),
        title=_optional_str(side, "title", get("title")),
        content_type=_optional_str(side, "content_type", get("content_type")),
        length_seconds=_optional_int(side, "length_seconds", get("length_seconds")),
        publish_ts=None if publish_ts is None else _field(side, "publish_ts", parse_timestamp, publish_ts),
    )


def _envelope(record: KafkaRecord) -> tuple[dict[str, Any], str, int] | None:
    """Load and check the envelope: ``(envelope, op, commit_ts_ms)``, or ``None`` for a tombstone."""
    if record.value is None:
        return None
    try:
        envelope = orjson.loads(record.value)
    except orjson.JSONDecodeError as error:
        raise DecodeError(f"value is not valid JSON: {error}") from None
    if type(envelope) is not dict:
        raise DecodeError(f"value must be a JSON object, got {shown(envelope)}")
    op = envelope.get("op", MISSING)
    # The type check first: a list or object op is unhashable and would break the set lookup.
    if type(op) is not str or op not in _OPS:
        raise DecodeError(f"op must be one of c, r, u, d, got {shown(op)}")
    return envelope, op, _commit_ts_ms(envelope)


def _source_sequence(envelope: dict[str, Any]) -> tuple[int, int] | None:
    source = envelope.get("source")
    if type(source) is not dict:
        return None
    return parse_sequence(source.get("sequence"))


def _commit_ts_ms(envelope: dict[str, Any]) -> int:
    # source.ts_ms is when the transaction committed; the envelope's own ts_ms is when Debezium
    # processed it, a later but still usable stand-in if a producer leaves source out.
    source = envelope.get("source")
    if source is not None:
        if type(source) is not dict:
            raise DecodeError(f"source must be an object, got {shown(source)}")
        ts_ms = source.get("ts_ms")
        if ts_ms is not None:
            if type(ts_ms) is not int:
                raise DecodeError(f"source.ts_ms must be an integer, got {shown(ts_ms)}")
            return ts_ms
    ts_ms = envelope.get("ts_ms", MISSING)
    if type(ts_ms) is int:
        return ts_ms
    if ts_ms is MISSING or ts_ms is None:
        raise DecodeError("no commit time: source.ts_ms and ts_ms are both missing")
    raise DecodeError(f"ts_ms must be an integer, got {shown(ts_ms)}")


def _images(envelope: dict[str, Any], op: str) -> tuple[Any, Any]:
    """The raw ``(before, after)`` this op needs, with the one it does not need set to ``None``."""
    before = envelope.get("before")
    after = envelope.get("after")
    if op == "c" or op == "r":
        if after is None:
            raise DecodeError(f"op {op} has no after-image")
        return None, after
    if op == "d":
        if before is None:
            raise DecodeError("op d has no before-image" + _FULL_HINT)
        return before, None
    if before is None:
        raise DecodeError("op u has no before-image" + _FULL_HINT)
    if after is None:
        raise DecodeError("op u has no after-image")
    return before, after


# Replaced (never mutated) when a row shows a new column; each worker process learns on its own.
_decoder = EventDecoder()


def _event_row_fast(row: Any, side: str, decoder: EventDecoder) -> EngagementRow:
    if row is None:
        raise DecodeError(f"no {side}-image")
    content_id, user_id = row.content_id, row.user_id
    if content_id is not None and not is_canonical_uuid(content_id):
        raise DecodeError("not canonical")
    if user_id is not None and not is_canonical_uuid(user_id):
        raise DecodeError("not canonical")
    return EngagementRow(
        row.id,
        content_id,
        user_id,
        row.event_type,
        parse_timestamp(row.event_ts),
        row.duration_ms,
        row.device,
        _raw_payload(side, row.raw_payload),
        decoder.extra_of(row),
    )


def decode_engagement(record: KafkaRecord) -> EngagementChange | Skipped:
    """Decode one record of the ``engagement_events`` topic; raises :class:`DecodeError`.

    The fast path of the module docstring; whatever it does not accept goes to the checked path.
    """
    value = record.value
    if value is None:
        return Skipped(record.position, "tombstone", record.key)
    decoder = _decoder
    try:
        envelope = decoder.decode(value)
        op = envelope.op
        before = after = None
        if op == "c" or op == "r":
            after = _event_row_fast(envelope.after, "after", decoder)
        elif op == "u":
            before = _event_row_fast(envelope.before, "before", decoder)
            after = _event_row_fast(envelope.after, "after", decoder)
        elif op == "d":
            before = _event_row_fast(envelope.before, "before", decoder)
        else:
            raise DecodeError("unknown op")
        source = envelope.source
        commit_ts_ms = source.ts_ms if source is not None and source.ts_ms is not None else envelope.ts_ms
        if commit_ts_ms is None:
            raise DecodeError("no commit time")
        sequence = None if source is None else parse_sequence(source.sequence)
    # Any failure, not only the expected ones: msgspec raises RecursionError for a value nested
    # deeper than it recurses, and the checked path is the one that decides what a record is.
    except Exception:  # noqa: BLE001
        return _checked_and_learned(record)
    return EngagementChange(record.position, record.key, value, op, sequence, before, after, commit_ts_ms)


def _checked_and_learned(record: KafkaRecord) -> EngagementChange | Skipped:
    global _decoder
    change = decode_engagement_checked(record)
    _decoder = EventDecoder.learn(_decoder, change)
    return change


def _decode_checked(record: KafkaRecord, row: Callable[[Any, str], Any], change: Callable[..., _T]) -> _T | Skipped:
    loaded = _envelope(record)
    if loaded is None:
        return Skipped(record.position, "tombstone", record.key)
    envelope, op, commit_ts_ms = loaded
    before, after = _images(envelope, op)
    return change(
        record.position,
        record.key,
        record.value,
        op,
        _source_sequence(envelope),
        None if before is None else row(before, "before"),
        None if after is None else row(after, "after"),
        commit_ts_ms,
    )


def decode_engagement_checked(record: KafkaRecord) -> EngagementChange | Skipped:
    """The checked path of the module docstring for ``engagement_events``: the specification."""
    return _decode_checked(record, _engagement_row, EngagementChange)


def decode_content(record: KafkaRecord) -> ContentChange | Skipped:
    """Decode one record of the ``content`` topic; raises :class:`DecodeError`."""
    return _decode_checked(record, _content_row, ContentChange)


def error_reason(error: BaseException) -> str:
    """What a dead letter says of ``error``: a ``DecodeError``'s reason, or any other exception's
    type and first line, bounded (``sinks.flush.error_text``)."""
    return error.reason if isinstance(error, DecodeError) else error_text(error)


def decode_error_letter(record: KafkaRecord, stage: str, error: BaseException) -> DeadLetter:
    """A dead letter for ``record``, which failed at ``stage`` with ``error``, keeping its raw bytes."""
    return DeadLetter(
        position=record.position, stage=stage, reason=error_reason(error), key=record.key, value=record.value
    )
