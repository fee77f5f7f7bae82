"""Writes the generator's rows into Postgres: content by multi-row INSERT, events by COPY.

Each batch -- its COPY of new events and the updates and deletes that go with it -- is one
transaction, so Debezium sees it as one commit and an interrupted run never leaves a half-written
batch or an open transaction behind (the ``transaction()`` block rolls back on any exception,
including Ctrl-C).

The writer does not retry (``generator.retry`` does), but it tells the retry what it needs to know:
a connection lost *during* COMMIT leaves the outcome unknown, so it raises ``CommitOutcomeUnknown``
carrying the transaction id it read at the start of the transaction, and ``xact_status`` asks the
server what became of it.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field

import psycopg

from generator.catalogue import Content, edit_content
from generator.events import COLUMNS, EventRow, share_count
from infra.settings import GeneratorSettings

_COPY = f"COPY engagement_events ({', '.join(COLUMNS)}) FROM STDIN"
# Updates pick among the most recent events: how many batches back they reach.
UPDATE_WINDOW_BATCHES = 10
# Latency probes (loadtest.probes) time their own events on the board: updates and deletes leave them be.
_NOT_PROBE = "e.device IS DISTINCT FROM 'probe'"


def recent_window(last_id: int, batch_rows: int) -> tuple[int, int]:
    """The ids updates and deletes pick from: the last ``UPDATE_WINDOW_BATCHES`` batches up to ``last_id``."""
    return max(1, last_id - UPDATE_WINDOW_BATCHES * max(batch_rows, 1)), last_id


@dataclass
class BatchResult:
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    content_updated: int = 0
    # Filled in by the retry (generator.retry): attempts repeated, and how long the outage lasted.
    retries: int = 0
    outage_s: float = 0.0


class UnreachableDatabaseError(RuntimeError):
    pass


@dataclass
class PendingCommit:
    """A batch whose statements all ran: what it did, and what to change in memory once it is in."""

    xid: str
    result: BatchResult
    last_id: int = 0
    edits: list[tuple[int, Content]] = field(default_factory=list)


class CommitOutcomeUnknown(Exception):  # noqa: N818 - a state, not a failure: the commit may have happened
    """The connection failed while COMMIT was in flight: the batch may or may not be in the database."""

    def __init__(self, pending: PendingCommit, cause: psycopg.Error) -> None:
        super().__init__(f"connection lost during COMMIT of transaction {pending.xid}: {cause}")
        self.pending = pending
        self.cause = cause


def open_connection(conninfo: str) -> psycopg.Connection:
    """A new autocommit connection (transactions are explicit); errors are psycopg's own."""
    return psycopg.connect(conninfo, autocommit=True)


def connect(conninfo: str) -> psycopg.Connection:
    """The first connection of a run: an unreachable database is a clear error at once."""
    try:
        return open_connection(conninfo)
    except psycopg.OperationalError as exc:
        raise UnreachableDatabaseError(f"cannot connect to Postgres ({exc}). Is the stack up? Run `make up`.") from exc


class PostgresWriter:
    def __init__(self, conn: psycopg.Connection, settings: GeneratorSettings, rng: random.Random) -> None:
        self.conn = conn
        self.settings = settings
        self.rng = rng
        self.last_id = 0

    def load_catalogue(self) -> list[Content]:
        rows = self.conn.execute(
            # Latency probes (loadtest) own their content items; generated events never touch them.
            "SELECT id, slug, title, content_type, length_seconds, publish_ts FROM content "
            "WHERE slug NOT LIKE 'probe-%%' ORDER BY id"
        ).fetchall()
        return [Content(*row) for row in rows]

    def insert_content(self, catalogue: Sequence[Content]) -> int:
        with self.conn.transaction(), self.conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO content (id, slug, title, content_type, length_seconds, publish_ts) "
                "VALUES (%s, %s, %s, %s, %s, %s) ON CONFLICT DO NOTHING",
                [(c.id, c.slug, c.title, c.content_type, c.length_seconds, c.publish_ts) for c in catalogue],
            )
            return cur.rowcount

    def write_batch(self, rows: Sequence[EventRow], catalogue: list[Content]) -> BatchResult:
        """COPY the events plus this batch's share of updates and deletes, in one transaction.

        Content edits reach ``catalogue`` only once the transaction has committed, so a batch that
        is rolled back (and written again) leaves the in-memory catalogue as the database has it.
        """
        s, rng = self.settings, self.rng
        committing = False
        try:
            with self.conn.transaction(), self.conn.cursor() as cur:
                # The id of this transaction, to ask pg_xact_status about it if COMMIT's reply is lost.
                pending = PendingCommit(cur.execute("SELECT pg_current_xact_id()::text").fetchone()[0], BatchResult())
                result = pending.result
                with cur.copy(_COPY) as copy:
                    for row in rows:
                        copy.write_row(row)
                result.inserted = len(rows)
                cur.execute("SELECT currval(pg_get_serial_sequence('engagement_events', 'id'))")
                last_id = pending.last_id = cur.fetchone()[0]
                window = recent_window(last_id, len(rows))
                result.updated = self.update_events(cur, share_count(rng, len(rows), s.event_update_share), window)
                result.deleted = self.delete_events(cur, share_count(rng, len(rows), s.event_delete_share), window)
                n_content = share_count(rng, len(rows), s.content_update_share)
                result.content_updated = self.edit_content(cur, n_content, catalogue, pending.edits)
                # Everything below this line is the COMMIT, sent when the block exits.
                committing = True
        except psycopg.OperationalError as exc:
            # Lost (or shut down) while COMMIT was in flight: the server may have committed.
            if committing:
                raise CommitOutcomeUnknown(pending, exc) from exc
            raise
        self.committed(pending, catalogue)
        return result

    def update_events(self, cur: psycopg.Cursor, count: int, window: tuple[int, int]) -> int:
        """Change the duration of ``count`` random events with ids in ``window``; returns the rows changed."""
        if not count:
            return 0
        ids = [self.rng.randint(*window) for _ in range(count)]
        deltas = [self.rng.randint(-30_000, 60_000) for _ in ids]
        cur.execute(
            "UPDATE engagement_events e "
            "SET duration_ms = GREATEST(0, COALESCE(e.duration_ms, 0) + d.delta) "
            f"FROM unnest(%s::bigint[], %s::int[]) AS d(id, delta) WHERE e.id = d.id AND {_NOT_PROBE}",
            (ids, deltas),
        )
        return cur.rowcount

    def delete_events(self, cur: psycopg.Cursor, count: int, window: tuple[int, int]) -> int:
        """Delete ``count`` random events with ids in ``window``; returns the rows deleted."""
        if not count:
            return 0
        ids = [self.rng.randint(*window) for _ in range(count)]
        cur.execute(f"DELETE FROM engagement_events e WHERE e.id = ANY(%s) AND {_NOT_PROBE}", (ids,))
        return cur.rowcount

    def edit_content(
        self, cur: psycopg.Cursor, count: int, catalogue: list[Content], edits: list[tuple[int, Content]]
    ) -> int:
        """``count`` editorial updates of random catalogue items; the new versions are appended to
        ``edits`` (for ``catalogue`` once committed). Returns the content rows changed."""
        changed = 0
        for _ in range(count):
            index = self.rng.randrange(len(catalogue))
            edited = edit_content(self.rng, catalogue[index])
            cur.execute(
                "UPDATE content SET title = %s, length_seconds = %s WHERE id = %s",
                (edited.title, edited.length_seconds, edited.id),
            )
            changed += cur.rowcount
            edits.append((index, edited))
        return changed

    def committed(self, pending: PendingCommit, catalogue: list[Content]) -> None:
        """What a committed batch changes in memory: the update window and the edited catalogue."""
        self.last_id = pending.last_id
        for index, edited in pending.edits:
            catalogue[index] = edited

    def xact_status(self, xid: str) -> str | None:
        """``committed``, ``aborted`` or ``in progress`` (None once the server no longer knows)."""
        return self.conn.execute("SELECT pg_xact_status(%s::xid8)", (xid,)).fetchone()[0]
