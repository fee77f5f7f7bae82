"""Postgres side of the backfill: one exported snapshot, the slot wait, and reading a split in it.

- ``SnapshotSession`` opens a ``REPEATABLE READ, READ ONLY`` transaction whose first statement
  exports its snapshot (``pg_export_snapshot()``) and records ``pg_current_snapshot()`` (which
  transactions it sees) and ``pg_current_wal_lsn()``. The session must stay open while anything
  reads in the snapshot: an exported snapshot lives as long as its transaction.
- ``wait_for_slot`` waits until the replication slot's ``confirmed_flush_lsn`` reaches that LSN:
  Debezium confirms an LSN only once Kafka Connect has committed what it produced before it, so from
  then on every transaction the snapshot sees is on Kafka (docs/architecture.md; the heartbeat
  moves the slot when the tables are quiet).
- ``read_split`` reads one id range with a server-side cursor (psycopg's named cursor), in a
  transaction of its own that ``SET TRANSACTION SNAPSHOT`` puts in the exported snapshot, so every
  split, in any worker, sees exactly the same rows.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import psycopg

from pipeline.backfill.envelopes import CONTENT, EVENTS, Split
from pipeline.backfill.snapshot import PgSnapshot, lsn_to_int

KNOWN_EVENT_COLUMNS = ("id", "content_id", "user_id", "event_type", "event_ts", "duration_ms", "device", "raw_payload")
# The columns the pipeline knows, then every column added to the table since (schema evolution) as
# one JSON object, so backfilled rows carry them as the stream's do (docs/operations.md).
EVENT_COLUMNS = (
    "id, content_id::text, user_id::text, event_type, event_ts, duration_ms, device, raw_payload::text,"
    f" to_jsonb({EVENTS}) - '{{{','.join(KNOWN_EVENT_COLUMNS)}}}'::text[]"
)
CONTENT_COLUMNS = "id::text, slug, title, content_type, length_seconds, publish_ts"


class SnapshotSession:
    """The exporting transaction; ``close`` ends it (and with it the snapshot)."""

    def __init__(self, conninfo: str) -> None:
        self.conn = psycopg.connect(conninfo, autocommit=True)
        self.conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        row = self.conn.execute(
            "SELECT pg_export_snapshot(), pg_current_snapshot()::text, pg_current_wal_lsn()::text,"
            " (extract(epoch FROM now()) * 1000)::bigint"
        ).fetchone()
        assert row is not None
        self.snapshot_id: str = row[0]
        self.snapshot = PgSnapshot.parse(row[1])
        self.lsn_text: str = row[2]
        self.lsn = lsn_to_int(row[2])
        self.ts_ms: int = row[3]

    def id_range(self) -> tuple[int | None, int | None]:
        row = self.conn.execute(f"SELECT min(id), max(id) FROM {EVENTS}").fetchone()
        assert row is not None
        return row[0], row[1]

    def count(self, table: str) -> int:
        row = self.conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        assert row is not None
        return int(row[0])

    def close(self) -> None:
        try:
            self.conn.execute("COMMIT")
        finally:
            self.conn.close()


def wait_for_slot(conninfo: str, slot: str, lsn_text: str, timeout_s: float) -> float:
    """Wait until Debezium has confirmed ``lsn_text`` on ``slot``; returns the seconds waited."""
    began = time.monotonic()
    with psycopg.connect(conninfo, autocommit=True) as conn:
        while True:
            row = conn.execute(
                "SELECT confirmed_flush_lsn >= %s::pg_lsn, confirmed_flush_lsn::text FROM pg_replication_slots"
                " WHERE slot_name = %s",
                (lsn_text, slot),
            ).fetchone()
            if row is None:
                raise RuntimeError(f"replication slot {slot} does not exist: is the connector registered?")
            if row[0]:
                return time.monotonic() - began
            if time.monotonic() - began > timeout_s:
                raise TimeoutError(
                    f"Debezium has not confirmed LSN {lsn_text} on slot {slot} within {timeout_s:g} s "
                    f"(confirmed: {row[1]}); is Kafka Connect running (make status)?"
                )
            time.sleep(0.2)


def _in_snapshot(conninfo: str, snapshot_id: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(conninfo, autocommit=True)
    conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
    conn.execute(f"SET TRANSACTION SNAPSHOT '{snapshot_id}'")  # an id Postgres made, never user input
    return conn


def read_split(conninfo: str, snapshot_id: str, split: Split, fetch_rows: int) -> Iterator[list[tuple[Any, ...]]]:
    """Rows of ``split`` from ``split.resume`` on, in id order, ``fetch_rows`` at a time. Content
    rows come with their ordinal (the offset) first: ``(ordinal, *row)``."""
    conn = _in_snapshot(conninfo, snapshot_id)
    try:
        with conn.cursor(name=f"backfill_{split.table}_{split.partition}") as cursor:
            if split.table == EVENTS:
                cursor.execute(
                    f"SELECT {EVENT_COLUMNS} FROM {EVENTS} WHERE id >= %s AND id < %s ORDER BY id",
                    (max(split.start, split.resume), split.stop),
                )
            else:
                cursor.execute(
                    f"SELECT row_number() OVER (ORDER BY id) - 1, {CONTENT_COLUMNS} FROM {CONTENT}"
                    " ORDER BY id OFFSET %s",
                    (split.resume,),
                )
            while True:
                rows = cursor.fetchmany(fetch_rows)
                if not rows:
                    return
                yield rows
    finally:
        conn.execute("ROLLBACK")
        conn.close()


def read_content(conninfo: str, snapshot_id: str) -> list[tuple[Any, ...]]:
    """The whole content table in the snapshot (the join's side table)."""
    conn = _in_snapshot(conninfo, snapshot_id)
    try:
        return conn.execute(f"SELECT {CONTENT_COLUMNS} FROM {CONTENT}").fetchall()
    finally:
        conn.execute("ROLLBACK")
        conn.close()
