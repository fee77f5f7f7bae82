"""Table rows as Debezium snapshot envelopes (``op r``), and the id-range splits they are read in (pure).

The backfill hands its rows to the same ``DecodeFn`` as the stream, so each row is written in the
shape the connector produces (docs/architecture.md, "Envelope format"): ``JsonConverter`` without
schemas, UUIDs as strings, ``TIMESTAMPTZ`` as ISO-8601 UTC strings, the ``JSONB`` column as a JSON
*string* holding the column's text, and a ``source`` block. ``pipeline.decode`` then reads them like
Debezium's own snapshot reads (``tests/unit/pipeline/test_backfill_envelopes.py`` round-trips them).

``source.sequence`` is ``["0", "<snapshot LSN>"]``: Debezium's sequence is ``(commit LSN of the
previous transaction, LSN)``, and every change the stream applies after the handover has a commit
LSN above 0, so a backfilled row sorts before all of them where sinks order an event's changes by
sequence (BigQuery's view, HTTP receivers). Snapshot reads never set a re-send mark
(``sinks.positions``), so the pair only orders.

Where a row "was captured": ``SourcePosition(<prefix>.backfill.<table>, split, offset)``. For
``engagement_events`` the offset is the row id (a bigint sequence: increasing within a split); for
``content`` (UUID keys, small) it is the row's ordinal in ``ORDER BY id`` within the snapshot, one
split. The sinks store positions for these topics like for any other, so a job that fails and runs
again in the same snapshot resumes each split where every sink has it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

EVENTS = "engagement_events"
CONTENT = "content"


def backfill_topic(prefix: str, table: str) -> str:
    """The name backfilled rows are positioned under: never a Kafka topic anyone produces to."""
    return f"{prefix}.backfill.{table}"


@dataclass(frozen=True)
class SnapshotInfo:
    """What every envelope's ``source`` block says about the snapshot the rows come from."""

    server: str  # topic prefix, Debezium's ``source.name``
    db: str
    lsn: int  # pg_current_wal_lsn() right after the snapshot
    tx_id: int  # the snapshot's xmin, 32-bit, as Debezium's snapshot reads carry a txId
    ts_ms: int  # the snapshot's time: the rows' commit time for the sinks

    def source(self, table: str, last: bool) -> dict[str, Any]:
        return {
            "version": "backfill",
            "connector": "postgresql",
            "name": self.server,
            "ts_ms": self.ts_ms,
            "snapshot": "last" if last else "true",
            "db": self.db,
            "sequence": f'["0","{self.lsn}"]',
            "schema": "public",
            "table": table,
            "txId": self.tx_id,
            "lsn": self.lsn,
            "xmin": None,
        }


def iso(ts: datetime | None) -> str | None:
    """``io.debezium.time.ZonedTimestamp``: ISO-8601 in UTC with a ``Z``."""
    if ts is None:
        return None
    return ts.astimezone(UTC).isoformat().replace("+00:00", "Z")


def event_after(row: tuple[Any, ...]) -> dict[str, Any]:
    """``(id, content_id, user_id, event_type, event_ts, duration_ms, device, raw_payload text[, added])``,
    where ``added`` holds the columns added to the table later, as Postgres's ``to_jsonb`` gives them
    (a ``NUMERIC`` is a JSON number there and a string in Debezium's envelopes)."""
    row_id, content_id, user_id, event_type, event_ts, duration_ms, device, raw_payload, *rest = row
    added = dict(rest[0] or {}) if rest else {}
    return added | {
        "id": row_id,
        "content_id": None if content_id is None else str(content_id),
        "user_id": None if user_id is None else str(user_id),
        "event_type": event_type,
        "event_ts": iso(event_ts),
        "duration_ms": duration_ms,
        "device": device,
        "raw_payload": raw_payload,
    }


def content_after(row: tuple[Any, ...]) -> dict[str, Any]:
    """``(id, slug, title, content_type, length_seconds, publish_ts)``."""
    row_id, slug, title, content_type, length_seconds, publish_ts = row
    return {
        "id": str(row_id),
        "slug": slug,
        "title": title,
        "content_type": content_type,
        "length_seconds": length_seconds,
        "publish_ts": iso(publish_ts),
    }


def envelope(after: dict[str, Any], table: str, info: SnapshotInfo, *, last: bool = False) -> tuple[bytes, bytes]:
    """``(key, value)`` as Debezium's converter writes a snapshot read of ``after``."""
    key = orjson.dumps({"id": after["id"]})
    value = orjson.dumps(
        {"before": None, "after": after, "source": info.source(table, last), "op": "r", "ts_ms": info.ts_ms}
    )
    return key, value


@dataclass(frozen=True)
class Split:
    """One id range of a table: rows with ``start <= id < stop`` (events), read from ``resume`` on.
    ``partition`` is the split's number, the partition of its backfill topic."""

    table: str
    partition: int
    start: int
    stop: int
    resume: int


def id_splits(low: int | None, high: int | None, count: int) -> list[tuple[int, int]]:
    """``count`` contiguous ranges ``[start, stop)`` covering ids ``low..high`` (inclusive), the
    last taking the remainder; none for an empty table."""
    if low is None or high is None:
        return []
    span = high - low + 1
    count = max(1, min(count, span))
    step = span // count
    bounds = [low + i * step for i in range(count)] + [high + 1]
    return [(bounds[i], bounds[i + 1]) for i in range(count)]
