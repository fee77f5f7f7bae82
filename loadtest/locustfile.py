"""Locust load test: writer users put engagement events into Postgres, an SLA user times commit -> board.

    locust --config loadtest/locust.conf --events-per-second 3333 -u 8 -r 8 -t 60s    # make loadtest does this

- ``WriterUser`` commits batches of ``--batch-size`` generated events per transaction (the
  generator's ``EventFactory`` and ``PostgresWriter.write_batch``), then, in transactions of their
  own, the generator's shares of event updates, deletes and content edits
  (``GENERATOR_EVENT_UPDATE_SHARE``, ``..._DELETE_SHARE``, ``GENERATOR_CONTENT_UPDATE_SHARE``).
  Each transaction is a locust request of type ``SQL`` named for its kind, its response length the
  rows it changed; an exception is a failure. ``--events-per-second`` is split evenly over the
  writers, each paced by the generator's ``RatePacer`` (``loadtest.locust_pacing`` says why not
  ``constant_throughput``).
- ``SlaUser`` (one) commits a probe event for a probe content item of its own every
  ``--sla-interval`` s and reports commit returned -> visible in ``top_engagement:10min``
  (``loadtest.probes``) as an ``SLA`` request; not visible within ``--sla-ms`` is a failure.

Locust monkey-patches the process with gevent before it loads this file, so psycopg (3.1 and later
detect the patched ``select`` and wait through it instead of in C) and redis-py (plain sockets)
yield to the other users while they wait on the network: one process drives every user.
Settings come from ``infra.settings.Settings()`` (the environment), read once at start-up.
Single process only: the rate split counts the users of this process.
"""

from __future__ import annotations

import itertools
import logging
import random
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg
import psycopg.waiting
from gevent import GreenletExit
from locust import User, constant, constant_pacing, events, task
from locust.env import Environment
from locust.runners import WorkerRunner

from generator.catalogue import Content
from generator.events import EventFactory, share_count
from generator.runner import ensure_catalogue
from generator.writer import PostgresWriter, open_connection, recent_window
from infra.settings import Settings
from loadtest.locust_pacing import positive_float, positive_int, writer_count, writer_pacer
from loadtest.probes import PROBE_SECONDS, commit_probe, create_probe_content, wait_on_board
from sinks.redis_leaderboard import board_key

_log = logging.getLogger("loadtest")
SETTINGS: Settings | None = None  # read once, in on_init
_user_numbers = itertools.count()


class SlaMissedError(Exception):
    """The probe was not on the board within the SLA."""


@events.init_command_line_parser.add_listener
def add_arguments(parser: Any) -> None:
    group = parser.add_argument_group("engagement load test")
    group.add_argument(
        "--events-per-second", type=positive_float, default=3333.0, help="target events/s over all writer users"
    )
    group.add_argument("--batch-size", type=positive_int, default=100, help="events per writer transaction")
    group.add_argument("--sla-interval", type=positive_float, default=0.2, help="seconds between SLA probes")
    group.add_argument("--sla-ms", type=positive_float, default=5000.0, help="commit -> board slower is a failure")


@events.init.add_listener
def on_init(environment: Environment, **_: Any) -> None:
    global SETTINGS
    SETTINGS = Settings()
    if psycopg.waiting.wait is psycopg.waiting.wait_c:
        # wait_c would block the whole process in C: every user would write one after the other.
        raise RuntimeError("psycopg did not detect gevent: import locust before psycopg")
    if not isinstance(environment.runner, WorkerRunner):
        # Seeded once here rather than by each writer, which would each add a catalogue of their own.
        with open_connection(SETTINGS.postgres.conninfo()) as conn:
            writer = PostgresWriter(conn, SETTINGS.generator, random.Random(SETTINGS.generator.seed))
            ensure_catalogue(writer, SETTINGS.generator, writer.rng, _log.info)


def settings() -> Settings:
    if SETTINGS is None:
        raise RuntimeError("the locustfile's init hook has not run")
    return SETTINGS


class SqlUser(User):
    """A user whose work is timed calls reported as locust requests."""

    abstract = True

    def timed(self, request_type: str, name: str, action: Callable[[], int]) -> int:
        """Run ``action`` (it returns the rows it changed) and report it; an exception is a failure."""
        began = time.perf_counter()
        rows, error = 0, None
        try:
            rows = action()
        except Exception as exc:  # noqa: BLE001 - any failure of the call is the request's outcome
            error = exc
        self.environment.events.request.fire(
            request_type=request_type,
            name=name,
            response_time=(time.perf_counter() - began) * 1000,
            response_length=rows,
            exception=error,
            context={},
        )
        return rows


class WriterUser(SqlUser):
    """Batches of generated events, and now and then an update, a delete or a content edit."""

    def on_start(self) -> None:
        s = settings()
        options = self.environment.parsed_options
        self.conninfo = s.postgres.conninfo()
        self.shares = s.generator
        seed = s.generator.seed
        rng = random.Random(None if seed is None else seed + next(_user_numbers))
        # The COPY alone: the updates, deletes and edits go in transactions of their own, timed apart.
        inserts_only = s.generator.model_copy(
            update={"event_update_share": 0.0, "event_delete_share": 0.0, "content_update_share": 0.0}
        )
        self.writer = PostgresWriter(open_connection(self.conninfo), inserts_only, rng)
        self.catalogue: list[Content] = self.writer.load_catalogue()
        self.factory = EventFactory(self.catalogue, s.generator, rng)
        self.batch_size: int = options.batch_size
        writers = writer_count(self.environment.runner.target_user_count, SlaUser.fixed_count)
        self.pacer = writer_pacer(options.events_per_second, writers, self.batch_size)

    def on_stop(self) -> None:
        self.writer.conn.close()

    # The pacer waits inside the task, so locust's stop lets a writer finish the batch it has begun.
    wait_time = constant(0)

    @task
    def write(self) -> None:
        count = self.pacer.next_batch()
        if self.writer.conn.closed or self.writer.conn.broken:
            self.writer.conn = open_connection(self.conninfo)
        rows = self.factory.batch(count, datetime.now(UTC))
        if not self.timed("SQL", "insert events", lambda: self.writer.write_batch(rows, self.catalogue).inserted):
            return
        window = recent_window(self.writer.last_id, len(rows))
        rng, shares = self.writer.rng, self.shares
        if n := share_count(rng, len(rows), shares.event_update_share):
            self.timed("SQL", "update event", lambda: self.in_transaction(self.writer.update_events, n, window))
        if n := share_count(rng, len(rows), shares.event_delete_share):
            self.timed("SQL", "delete event", lambda: self.in_transaction(self.writer.delete_events, n, window))
        if n := share_count(rng, len(rows), shares.content_update_share):
            self.timed("SQL", "edit content", lambda: self.edit(n))

    def in_transaction(
        self, step: Callable[[psycopg.Cursor, int, tuple[int, int]], int], n: int, window: tuple[int, int]
    ) -> int:
        with self.writer.conn.transaction(), self.writer.conn.cursor() as cur:
            return step(cur, n, window)

    def edit(self, n: int) -> int:
        edits: list[tuple[int, Content]] = []
        with self.writer.conn.transaction(), self.writer.conn.cursor() as cur:
            changed = self.writer.edit_content(cur, n, self.catalogue, edits)
        # Committed: later events use the new lengths, as in the generator.
        for index, edited in edits:
            self.catalogue[index] = edited
        return changed


class SlaUser(SqlUser):
    """One probe at a time: commit, then poll the board until the probe's second is on it."""

    fixed_count = 1

    def on_start(self) -> None:
        s = settings()
        options = self.environment.parsed_options
        self.sla_s: float = options.sla_ms / 1000
        self.pace = constant_pacing(options.sla_interval)
        self.conn = open_connection(s.postgres.conninfo())
        self.redis = s.redis.client()
        self.board = board_key(s.leaderboard.window_minutes)
        self.content_id = str(uuid.uuid4())
        create_probe_content(self.conn, self.content_id)
        time.sleep(1.0)  # for the content to reach the pipeline's view, so the probe is never parked
        self.expected = float(self.redis.zscore(self.board, self.content_id) or 0.0)

    def on_stop(self) -> None:
        self.conn.close()
        self.redis.close()

    def wait_time(self) -> float:
        return self.pace(self)

    @task
    def probe(self) -> None:
        began = time.perf_counter()
        error: Exception | None = None
        stopped: GreenletExit | None = None
        try:
            commit_probe(self.conn, self.content_id)
            committed = time.perf_counter()
            # Still expected after a miss: the next probe waits for this one too.
            self.expected += PROBE_SECONDS
            try:
                seen = wait_on_board(self.redis, self.board, self.content_id, self.expected, self.sla_s, 0.002)
            except GreenletExit as exit_:
                # Killed while a committed probe is on its way (once seen in a test run: one probe
                # more in Postgres than in the report). It is in Postgres, so it is waited for and
                # reported; then the user stops. The wait is bounded by the SLA.
                stopped = exit_
                seen = wait_on_board(self.redis, self.board, self.content_id, self.expected, self.sla_s, 0.002)
            if seen is None:
                error = SlaMissedError(f"not on {self.board} within {self.sla_s:g} s of its commit")
            began = committed
        except Exception as exc:  # noqa: BLE001 - a failed commit or Redis call is a failed request
            error = exc
        self.environment.events.request.fire(
            request_type="SLA",
            name=f"commit -> {self.board}",
            response_time=(time.perf_counter() - began) * 1000,
            response_length=1 if error is None else 0,
            exception=error,
            context={},
        )
        if stopped is not None:
            raise stopped
