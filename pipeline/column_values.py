"""Column values as Debezium encodes them, parsed into Python values (pure, no I/O).

``pipeline.decode`` uses these for every envelope; they raise :class:`DecodeError`, whose ``reason``
is short enough for a dead letter.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# Postgres always prints UUIDs in this form, so one match settles the common case; other letter
# cases are lowered and matched again.
is_canonical_uuid: Final = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}").fullmatch
MISSING: Final = object()
_MAX_SHOWN: Final = 60
MAX_LSN: Final = 2**64 - 1
# '["<20 digits>", "<20 digits>"]' with room for spaces: longer is not a sequence (and int() of a
# string past 4,300 digits raises).
_MAX_SEQUENCE_CHARS: Final = 64


class DecodeError(ValueError):
    """A record that can never be decoded; ``reason`` says why, briefly, for the dead letter."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def shown(value: Any) -> str:
    """A short description of an offending value, safe to put in a reason."""
    if value is MISSING:
        return "missing"
    if value is None:
        return "null"
    text = repr(value)
    if len(text) > _MAX_SHOWN:
        text = text[: _MAX_SHOWN - 3] + "..."
    return f"{type(value).__name__} {text}"


def parse_timestamp(value: Any) -> datetime:
    """Parse a Debezium timestamp into an aware UTC datetime.

    Accepts an ISO-8601 string with ``Z`` or a numeric offset and 0 to 9 fractional digits
    (``ZonedTimestamp``; digits past the sixth are truncated, as Python 3.11+ ``fromisoformat``
    does), or an ``int`` of epoch microseconds (``MicroTimestamp``). Integers are never read as
    milliseconds or seconds: guessing the unit by magnitude would silently misplace real dates.
    A string without an offset is rejected rather than assumed to be UTC.
    """
    value_type = type(value)
    if value_type is str:
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise DecodeError(f"timestamp is not ISO-8601: {shown(value)}") from None
        tz = parsed.tzinfo
        if tz is UTC:
            return parsed
        if tz is None:
            raise DecodeError(f"timestamp has no UTC offset: {shown(value)}")
        return parsed.astimezone(UTC)
    if value_type is int:
        try:
            return _EPOCH + timedelta(microseconds=value)
        except OverflowError:
            raise DecodeError(f"timestamp out of range: {shown(value)}") from None
    raise DecodeError(f"timestamp must be an ISO-8601 string or epoch microseconds, got {shown(value)}")


def parse_uuid(value: Any) -> str | None:
    """Return ``value`` as a lowercase canonical UUID string; ``None`` stays ``None``.

    Only the hyphenated 8-4-4-4-12 form (any letter case) is accepted, which is all Postgres emits.
    """
    if value is None:
        return None
    if type(value) is str:
        if is_canonical_uuid(value):
            return value
        lowered = value.lower()
        if is_canonical_uuid(lowered):
            return lowered
    raise DecodeError(f"not a UUID: {shown(value)}")


def parse_sequence(sequence: Any) -> tuple[int, int] | None:
    """Debezium's ``source.sequence``, ``'["<commit lsn>", "<lsn>"]'``, as two ints; ``None`` unless
    both parts are there (a null commit LSN would sort below every mark and look like a re-send).

    An LSN is a 64-bit WAL position (``pg_lsn``), so a part of more than 20 digits or above
    ``MAX_LSN`` is not one: such a sequence is ``None`` too, and can never set a mark that would
    make every later change of its partition look like a re-send."""
    if type(sequence) is not str or len(sequence) > _MAX_SEQUENCE_CHARS:
        return None
    try:
        pair = orjson.loads(sequence)
    except orjson.JSONDecodeError:
        return None
    if type(pair) is not list or len(pair) != 2:
        return None
    first, second = pair
    if type(first) is not str or type(second) is not str:
        return None
    if not (first.isascii() and first.isdigit() and second.isascii() and second.isdigit()):
        return None
    commit_lsn, lsn = int(first), int(second)
    if commit_lsn > MAX_LSN or lsn > MAX_LSN:
        return None
    return (commit_lsn, lsn)
