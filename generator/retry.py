"""Keeps the generator writing through a Postgres restart: classify, back off, reconnect, report.

Every failed batch write is put in one of three classes (``classify``):

- **transient**: the connection was lost or refused, or the server is shutting down, starting up
  or out of connection slots (no SQLSTATE, class 08, 57P01/57P02/57P03, 53300), or the transaction
  lost a serialization or deadlock race (40001, 40P01). The batch is written again after an
  exponential backoff with jitter (tenacity), on a new connection, until it is in or the outage
  has lasted ``retry_give_up_s``; then the run ends with an error.
- **refused**: the rows themselves were refused (class 22 data exceptions, class 23 integrity
  violations: a CHECK such as the one bounding ``raw_payload``, a foreign key). Writing them again
  would fail again, so they are never retried: ``BatchRefusedError`` goes up to the runner, which
  in continuous mode counts the batch's events as refused, reports the reason and goes on (a run of
  ``MAX_CONSECUTIVE_REFUSED`` refused batches in a row ends it: then nothing is being written), and
  in burst mode ends the run at once, because a burst promises an exact count.
- **fatal**: anything else -- bad SQL, missing privileges, a failed login (a connection error whose
  message says so: ``PERMANENT_CONNECT_FAILURES``). Raised as it is, at once.

**No batch is written twice.** Event ids come from the server (``BIGSERIAL``), so a retried COPY
would get new ids and could not be made idempotent with ``ON CONFLICT``; the outcome is checked
instead. A failure before COMMIT was sent means the server rolled the transaction back (it never
commits an open transaction whose client is gone), so the batch is simply written again. A failure
while COMMIT was in flight (``CommitOutcomeUnknown``) is the one unknown; the writer read its
transaction id at the start, and the first thing the next attempt does, on its new connection, is
ask ``pg_xact_status``: ``committed`` means the batch is in and is counted, not written again;
``aborted`` means it is written again; ``in progress`` (the old backend has not noticed yet) is
asked again after the next backoff. Postgres documents this function for exactly this case.

Each outage is reported: one line when it starts (with the first error), one when it ends (how
long it lasted, how many attempts were repeated, and whether the last batch had committed); the
repeated attempts go into the ``BatchResult`` so the runner's periodic and final lines count them.
The clock and sleep are injected, so the unit tests never sleep.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import psycopg
from tenacity import RetryCallState, Retrying, retry_if_exception, wait_exponential_jitter

from generator.catalogue import Content
from generator.events import EventRow
from generator.writer import BatchResult, CommitOutcomeUnknown, PendingCommit, PostgresWriter
from infra.settings import GeneratorSettings

Kind = Literal["transient", "refused", "fatal"]
Report = Callable[[str], None]

# SQLSTATEs that say "not now" rather than "not this": the server going away or coming back, and
# transactions that lost a race. Class 08 (connection exceptions) is transient as a whole.
TRANSIENT_SQLSTATES = frozenset({"57P01", "57P02", "57P03", "53300", "40001", "40P01"})
# Classes of errors about the rows themselves: data exceptions and integrity violations.
REFUSED_CLASSES = frozenset({"22", "23"})
# libpq reports a failed login without a SQLSTATE, like a refused connection; these words tell them
# apart (a login that fails once fails every time: retrying it would only hide a wrong password).
PERMANENT_CONNECT_FAILURES = (
    "password authentication failed",
    "no pg_hba.conf entry",
    "does not exist",
    "permission denied",
)
MAX_CONSECUTIVE_REFUSED = 10


class BatchRefusedError(Exception):
    """Postgres refused the batch's rows (class 22 or 23): retrying would be refused again."""

    def __init__(self, events: int, cause: psycopg.Error) -> None:
        super().__init__(f"Postgres refused a batch of {events} events ({type(cause).__name__}: {first_line(cause)})")
        self.events = events
        self.cause = cause


class OutageTooLongError(Exception):
    """Postgres stayed unreachable past ``retry_give_up_s``."""


class CommitStillInProgress(Exception):  # noqa: N818 - a state to wait out, not a failure
    """pg_xact_status says the lost COMMIT's transaction is still open: ask again after a backoff."""


def first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def classify(exc: BaseException) -> Kind:
    """Whether a failed write is worth repeating (see the module docstring for each class)."""
    if isinstance(exc, CommitOutcomeUnknown | CommitStillInProgress):
        return "transient"
    if not isinstance(exc, psycopg.Error):
        return "fatal"
    sqlstate = exc.sqlstate
    if sqlstate is None:
        # No SQLSTATE: the client lost or could not open its connection (refused, reset, closed).
        if isinstance(exc, psycopg.OperationalError):
            message = str(exc).lower()
            return "fatal" if any(marker in message for marker in PERMANENT_CONNECT_FAILURES) else "transient"
        return "fatal"
    if sqlstate.startswith("08") or sqlstate in TRANSIENT_SQLSTATES:
        return "transient"
    if sqlstate[:2] in REFUSED_CLASSES:
        return "refused"
    return "fatal"


@dataclass(frozen=True)
class RetryPolicy:
    """Exponential backoff (``initial_s`` doubling up to ``max_backoff_s``, plus up to ``jitter_s``)
    for as long as an outage lasts, up to ``give_up_s``."""

    initial_s: float = 0.1
    max_backoff_s: float = 5.0
    jitter_s: float = 0.1
    give_up_s: float = 300.0

    @classmethod
    def from_settings(cls, settings: GeneratorSettings) -> RetryPolicy:
        return cls(
            initial_s=settings.retry_initial_s,
            max_backoff_s=settings.retry_max_backoff_s,
            # Up to one first step of jitter: generators restarted together do not retry in step.
            jitter_s=settings.retry_initial_s,
            give_up_s=settings.retry_give_up_s,
        )


class RetryingWriter:
    """``write_batch`` of a ``PostgresWriter`` that rides out outages; same signature, same result."""

    def __init__(
        self,
        writer: PostgresWriter,
        reconnect: Callable[[], psycopg.Connection],
        policy: RetryPolicy,
        report: Report,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.writer = writer
        self.reconnect = reconnect
        self.policy = policy
        self.report = report
        self.clock = clock
        self.sleep = sleep

    def write_batch(self, rows: Sequence[EventRow], catalogue: list[Content]) -> BatchResult:
        started = self.clock()
        state = _Attempts()
        retrying = Retrying(
            retry=retry_if_exception(lambda exc: classify(exc) == "transient"),
            wait=wait_exponential_jitter(
                initial=self.policy.initial_s, max=self.policy.max_backoff_s, jitter=self.policy.jitter_s
            ),
            stop=lambda retry_state: self.clock() - started >= self.policy.give_up_s,
            sleep=self.sleep,
            before_sleep=lambda retry_state: self._failed(retry_state, state, len(rows)),
            reraise=True,
        )
        try:
            result = retrying(self._attempt, rows, catalogue, state)
        except psycopg.Error as exc:
            kind = classify(exc)
            if kind == "refused":
                raise BatchRefusedError(len(rows), exc) from exc
            if kind == "transient":
                raise self._gave_up(state, started, exc) from exc
            raise
        except (CommitOutcomeUnknown, CommitStillInProgress) as exc:
            raise self._gave_up(state, started, exc) from exc
        if state.retries:
            result.retries = state.retries
            result.outage_s = self.clock() - started
            how = (
                "had committed before the connection dropped, not written again" if state.found_committed else "written"
            )
            self.report(
                f"postgres outage over after {result.outage_s:.1f} s and {state.retries} retried writes; "
                f"the batch of {len(rows)} events {how}"
            )
        return result

    def _attempt(self, rows: Sequence[EventRow], catalogue: list[Content], state: _Attempts) -> BatchResult:
        if state.broken:
            state.broken = False
            self._drop_connection()
            self.writer.conn = self.reconnect()
        if state.pending is not None:
            status = self.writer.xact_status(state.pending.xid)
            if status == "committed":
                pending, state.pending = state.pending, None
                state.found_committed = True
                self.writer.committed(pending, catalogue)
                return pending.result
            if status == "in progress":
                raise CommitStillInProgress(f"transaction {state.pending.xid} is still in progress")
            if status is None:
                raise RuntimeError(
                    f"Postgres no longer knows transaction {state.pending.xid}: cannot tell if it committed"
                )
            state.pending = None  # aborted: nothing of it is in the database
        try:
            return self.writer.write_batch(rows, catalogue)
        except CommitOutcomeUnknown as exc:
            state.pending = exc.pending
            raise

    def _failed(self, retry_state: RetryCallState, state: _Attempts, events: int) -> None:
        exc = retry_state.outcome.exception() if retry_state.outcome else None
        # Any transient failure may have left the connection unusable: the next attempt opens one.
        state.broken = not isinstance(exc, CommitStillInProgress)
        if state.retries == 0:
            self.report(
                f"postgres outage: a write of {events} events failed ({type(exc).__name__}: {first_line(exc)}); "
                f"retrying with backoff, on a new connection"
            )
        state.retries += 1

    def _drop_connection(self) -> None:
        with contextlib.suppress(psycopg.Error):  # already broken: nothing to close cleanly
            self.writer.conn.close()

    def _gave_up(self, state: _Attempts, started: float, exc: BaseException) -> OutageTooLongError:
        return OutageTooLongError(
            f"Postgres still unreachable after {self.clock() - started:.0f} s and {state.retries} retried writes "
            f"(GENERATOR_RETRY_GIVE_UP_S={self.policy.give_up_s:g}); last error: {first_line(exc)}"
        )


@dataclass
class _Attempts:
    """What one ``write_batch`` call's attempts tell each other."""

    retries: int = 0
    broken: bool = False
    pending: PendingCommit | None = None
    found_committed: bool = False
