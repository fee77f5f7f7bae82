"""Rows for BigQuery's insertAll, their insertIds, and what an insert error means (pure).

Values are sent as JSON: timestamps as RFC 3339 strings with microseconds (the emulator reads a
number as microseconds and BigQuery as seconds, a string means the same to both), ``JSON`` columns
as serialized JSON text (what insertAll expects for that type).
"""

from __future__ import annotations

import functools
import hashlib
import re
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson

from sinks.bigquery_tables import CHANGES_SCHEMA, event_slot
from sinks.records import ContentChange, EngagementRow, EnrichedChange, SourcePosition

MAX_INSERT_ID: Final = 128
# BigQuery refuses a JSON value nested deeper than 500 levels; Postgres's JSONB allows more.
MAX_JSON_DEPTH: Final = 500
_JSON_STRINGS: Final = re.compile(rb'"(?:[^"\\]|\\.)*"')
_JSON_BRACKETS: Final = re.compile(rb"[\[\]{}]")
# Per-row insertErrors reasons that say "this row was fine, send it again": the request stopped
# because of another row (skipInvalidRows=false), or the backend failed for this row.
RETRYABLE_ROW_REASONS: Final = frozenset(
    {"stopped", "backendError", "internalError", "timeout", "quotaExceeded", "rateLimitExceeded", "tableUnavailable"}
)


# Names the changelog or the view has already (case-insensitive, as BigQuery compares them):
# the view adds change_rank to every row it ranks.
_TAKEN: Final = frozenset(field.name.lower() for field in CHANGES_SCHEMA) | {"change_rank"}
# GoogleSQL's reserved keywords: the view names added columns without quotes.
_RESERVED_TEXT: Final = """
all and any array as asc assert_rows_modified at between by case cast collate contains create cross
cube current default define desc distinct else end enum escape except exclude exists extract false
fetch following for from full group grouping groups hash having if ignore in inner intersect
interval into is join lateral left like limit lookup merge natural new no not null nulls of on or
order outer over partition preceding proto qualify range recursive respect right rollup rows select
set some struct tablesample then to treat true unbounded union unnest using when where window with
within
"""
_RESERVED_WORDS: Final = frozenset(_RESERVED_TEXT.split())
# Prefixes BigQuery refuses in a column name (case-insensitive).
_RESERVED_PREFIXES: Final = (
    "_partition",
    "_table_",
    "_file_",
    "_row_timestamp",
    "__root__",
    "_colidentifier",
    "_change_sequence_number",
    "_change_type",
    "_change_timestamp",
)
_UNSAFE_COLUMN_CHARS: Final = re.compile(r"[^A-Za-z0-9_]")
MAX_COLUMN_NAME: Final = 300  # BigQuery's limit
_PREFIX: Final = "event_"


def _needs_prefix(name: str) -> bool:
    """A name the changelog must not use as is: taken, reserved, or one our prefix could produce
    (``event_title`` is where ``title`` goes, so a column really named ``event_title`` goes further)."""
    core = name.lower()
    while core.startswith(_PREFIX):
        core = core[len(_PREFIX) :]
    return core in _TAKEN or core in _RESERVED_WORDS or core.startswith(_RESERVED_PREFIXES) or not core


@functools.lru_cache(maxsize=1024)
def extra_column(name: str) -> str:
    """The changelog column for a column added to ``engagement_events``: a name BigQuery accepts,
    and one no other Postgres column maps to, compared as BigQuery does (case-insensitively).

    - A lowercase name of letters, digits and ``_`` (every unquoted Postgres name) is kept.
    - Any other (a quoted name: other characters, capitals) has them replaced by ``_`` (and a
      leading digit gets one in front), then ``_`` and 8 hex digits of a hash of the original name:
      ``utm-source``, ``utm_source`` and ``UTM_Source`` are three columns.
    - A name the changelog has already (``title``, ``op``, ``change_rank``...), a reserved word
      (``select``), a reserved prefix (``_PARTITIONTIME``), or a name our prefix makes
      (``event_title``) gets ``event_`` in front.

    Pure and deterministic, so every worker and every restart picks the same column
    (docs/operations.md, "Schema evolution")."""
    safe = _UNSAFE_COLUMN_CHARS.sub("_", name)
    if not safe or safe[0].isdigit():
        safe = f"_{safe}"
    if safe != name or name != name.lower() or len(safe) > MAX_COLUMN_NAME - len(_PREFIX):
        digest = hashlib.blake2b(name.encode(), digest_size=4).hexdigest()
        safe = f"{safe[: MAX_COLUMN_NAME - len(_PREFIX) - 9]}_{digest}"
    return f"{_PREFIX}{safe}" if _needs_prefix(safe) else safe


def column_type(value: Any) -> str | None:
    """The BigQuery type of an added column, from its first non-null value. Debezium's JSON without
    schemas says no more than this (docs/operations.md, "Schema evolution"); ``None`` for null."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "BOOL"
    if isinstance(value, int):
        return "INT64"
    if isinstance(value, float):
        return "FLOAT64"
    if isinstance(value, str):
        return "STRING"
    return "JSON"


def extra_columns(row: EngagementRow) -> dict[str, str]:
    """``{column: type}`` of the added columns ``row`` has a value for."""
    columns = {}
    for name, value in row.extra:
        kind = column_type(value)
        if kind is not None:
            columns[extra_column(name)] = kind
    return columns


def _extra_value(value: Any) -> Any:
    return orjson.dumps(value).decode() if isinstance(value, dict | list) else value


def insert_id(position: SourcePosition) -> str:
    """The row's insertId: its source position, the same on every replay; hashed if a long topic
    name would pass BigQuery's 128 characters."""
    record_id = position.record_id
    if len(record_id) <= MAX_INSERT_ID:
        return record_id
    return hashlib.blake2b(record_id.encode(), digest_size=32).hexdigest()


def json_depth(text: str) -> int:
    """How deep a valid JSON text nests arrays and objects (strings do not count)."""
    depth = deepest = 0
    for bracket in _JSON_BRACKETS.findall(_JSON_STRINGS.sub(b"", text.encode())):
        depth += 1 if bracket in b"[{" else -1
        deepest = max(deepest, depth)
    return deepest


def json_column(text: str | None) -> str | None:
    """A JSONB column's text for a BigQuery ``JSON`` column: verbatim, unless it nests deeper than
    BigQuery accepts; then it is stored as a JSON string holding the original text (valid data is
    never refused). Docs: docs/bigquery.md, "raw_payload"."""
    # A text of n characters nests at most n / 2 levels: the scan only runs on long ones.
    if text is None or len(text) <= 2 * MAX_JSON_DEPTH or json_depth(text) <= MAX_JSON_DEPTH:
        return text
    return orjson.dumps(text).decode()


_INT64_MAX: Final = 2**63 - 1
_RANGE: Final = "0001-01-01 to 9999-12-31 UTC"
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)


def timestamp(ts: datetime | None) -> str | None:
    """RFC 3339 in UTC with microseconds and a four-digit year. (``strftime("%Y")`` writes year 5 as
    ``5`` on glibc, which BigQuery refuses: years 1-999 are valid TIMESTAMPs, 0001-01-01 to
    9999-12-31 UTC, the same range as Python's.) ``ValueError`` for one that leaves it in UTC."""
    if ts is None:
        return None
    try:
        utc = ts.astimezone(UTC)
    except (OverflowError, ValueError):
        raise ValueError(f"timestamp {ts.isoformat()} is outside BigQuery's range ({_RANGE})") from None
    return utc.isoformat(timespec="microseconds")[:-6] + "Z"


def millis(ms: int | None) -> str | None:
    """Epoch milliseconds (Debezium's ``source.ts_ms``) as a timestamp; ``ValueError`` out of range."""
    if not ms:
        return None
    try:
        return timestamp(_EPOCH + timedelta(milliseconds=ms))  # exact, unlike ms / 1000 as a float
    except (OverflowError, OSError, ValueError):
        raise ValueError(f"commit time {ms} ms is outside BigQuery's range ({_RANGE})") from None


def _int64(value: int) -> int | None:
    """An LSN as BigQuery's INT64 holds it. ``pg_lsn`` is unsigned 64-bit, but no real LSN reaches
    2**63 (eight exbibytes of WAL): one that does is forged, and is stored as NULL (it then sorts
    below every real change of its event in the view) rather than refused by every insert."""
    return value if value <= _INT64_MAX else None


def _int64_or_refuse(name: str, value: int | None) -> int | None:
    """A column value past INT64 (no Postgres column of this table holds one; a hand-made envelope
    can) makes the record a dead letter with the reason, rather than an insert refused for ever."""
    # Only integers: a value of another type is BigQuery's to refuse, with its own reason.
    if type(value) is int and not -_INT64_MAX - 1 <= value <= _INT64_MAX:
        raise ValueError(f"{name} {value} is outside BigQuery's INT64")
    return value


def _source(position: SourcePosition, sequence: tuple[int, int] | None, commit_ts_ms: int, written_at: str) -> dict:
    return {
        "commit_ts": millis(commit_ts_ms),
        "source_commit_lsn": None if sequence is None else _int64(sequence[0]),
        "source_lsn": None if sequence is None else _int64(sequence[1]),
        "source_topic": position.topic,
        "source_partition": position.partition,
        "source_offset": position.offset,
        "written_at": written_at,
    }


def change_row(change: EnrichedChange, written_at: str) -> dict[str, Any]:
    """One changelog row: the after-image (the before-image of a delete), metrics, content, source."""
    row = change.row
    if row is None:
        raise ValueError(f"{change.position.record_id}: op {change.op!r} has no row image")
    content = change.content
    pct = change.engagement_pct
    return {
        "op": change.op,
        "id": row.id,
        "content_id": row.content_id,
        "user_id": row.user_id,
        "event_type": row.event_type,
        "event_ts": timestamp(row.event_ts),
        "event_slot": event_slot(row.event_ts),
        "duration_ms": _int64_or_refuse("duration_ms", row.duration_ms),
        "device": row.device,
        "raw_payload": json_column(row.raw_payload),
        "engagement_seconds": change.engagement_seconds,
        "engagement_pct": pct,
        "over_100": pct is not None and pct > 100,
        "slug": None if content is None else content.slug,
        "title": None if content is None else content.title,
        "content_type": None if content is None else content.content_type,
        "length_seconds": None if content is None else content.length_seconds,
        **_source(change.identity, change.sequence, change.commit_ts_ms, written_at),
        # A null is left out: BigQuery fills an absent NULLABLE column with NULL, and a column whose
        # every value so far was null has not been added to the table yet ("no such field").
        **{extra_column(name): _extra_value(value) for name, value in row.extra if value is not None},
    }


def content_row(change: ContentChange, written_at: str) -> dict[str, Any]:
    row = change.before if change.op == "d" else change.after
    if row is None:
        raise ValueError(f"{change.position.record_id}: op {change.op!r} has no row image")
    return {
        "op": change.op,
        "id": row.id,
        "slug": row.slug,
        "title": row.title,
        "content_type": row.content_type,
        "length_seconds": row.length_seconds,
        "publish_ts": timestamp(row.publish_ts),
        **_source(change.position, change.sequence, change.commit_ts_ms, written_at),
    }


def audit_row(change: EnrichedChange | ContentChange, written_at: str) -> dict[str, Any]:
    """The envelope as it arrived: op, before, after and source as JSON text (seed 001's raw history)."""
    value = change.value or b""
    try:
        envelope = orjson.loads(value)
        payload = envelope.get("payload", envelope) if isinstance(envelope, dict) else None
    except orjson.JSONDecodeError:
        payload = None
    row: dict[str, Any] = {"op": change.op, "before": None, "after": None, "source": None, "envelope": None}
    if isinstance(payload, dict):
        for part in ("before", "after", "source"):
            if payload.get(part) is not None:
                row[part] = orjson.dumps(payload[part]).decode()
    else:
        row["envelope"] = value.decode("utf-8", errors="replace")
    row["key"] = None if change.key is None else change.key.decode("utf-8", errors="replace")
    position = getattr(change, "origin", None) or change.position  # where a parked change was captured
    return {**row, **_source(position, change.sequence, change.commit_ts_ms, written_at)}


def describe(errors: list[dict[str, Any]]) -> str:
    """One line for a row's insertErrors: reason, column and message of each."""
    parts = []
    for error in errors:
        where = f" at {error['location']}" if error.get("location") else ""
        parts.append(f"{error.get('reason') or 'error'}{where}: {error.get('message', '').strip()}")
    return "; ".join(parts) or "rejected without a reason"


def is_retryable_row(errors: list[dict[str, Any]]) -> bool:
    """A row is sent again only if every error it has says it was not at fault (see above)."""
    return bool(errors) and all(error.get("reason") in RETRYABLE_ROW_REASONS for error in errors)
