"""The generator's retry: which failures are repeated, the backoff, the lost COMMIT, the reports."""

from __future__ import annotations

import psycopg
import psycopg.errors as pg_errors
import pytest

from generator.retry import (
    BatchRefusedError,
    OutageTooLongError,
    RetryingWriter,
    RetryPolicy,
    classify,
)
from generator.writer import BatchResult, CommitOutcomeUnknown, PendingCommit

LOST = "consuming input failed: server closed the connection unexpectedly"


@pytest.mark.parametrize(
    ("exc", "kind"),
    [
        (psycopg.OperationalError(LOST), "transient"),
        (psycopg.OperationalError('connection failed: connection to server at "127.0.0.1" refused'), "transient"),
        (psycopg.OperationalError("connection failed: FATAL:  the database system is starting up"), "transient"),
        (pg_errors.AdminShutdown("terminating connection due to administrator command"), "transient"),
        (pg_errors.CrashShutdown("crash"), "transient"),
        (pg_errors.CannotConnectNow("the database system is shutting down"), "transient"),
        (pg_errors.ConnectionFailure("lost"), "transient"),
        (pg_errors.TooManyConnections("sorry, too many clients already"), "transient"),
        (pg_errors.SerializationFailure("race"), "transient"),
        (pg_errors.DeadlockDetected("race"), "transient"),
        (CommitOutcomeUnknown(PendingCommit("1", BatchResult()), psycopg.OperationalError(LOST)), "transient"),
        (pg_errors.CheckViolation('new row violates check constraint "raw_payload_size"'), "refused"),
        (pg_errors.ForeignKeyViolation("content_id"), "refused"),
        (pg_errors.StringDataRightTruncation("too long"), "refused"),
        (pg_errors.InvalidTextRepresentation("bad json"), "refused"),
        (pg_errors.SyntaxError("syntax error at or near"), "fatal"),
        (pg_errors.UndefinedTable("relation does not exist"), "fatal"),
        (pg_errors.InsufficientPrivilege("permission denied for table"), "fatal"),
        (pg_errors.InvalidPassword("password authentication failed"), "fatal"),
        (
            psycopg.OperationalError('connection failed: FATAL:  password authentication failed for user "x"'),
            "fatal",
        ),
        (psycopg.OperationalError('connection failed: FATAL:  database "nope" does not exist'), "fatal"),
        (pg_errors.QueryCanceled("canceling statement due to statement timeout"), "fatal"),
        (psycopg.InterfaceError("cursor already closed"), "fatal"),
        (ValueError("a bug"), "fatal"),
    ],
    ids=lambda value: type(value).__name__ if isinstance(value, BaseException) else value,
)
def test_classify(exc, kind):
    assert classify(exc) == kind


class FakeConn:
    def __init__(self, name: str) -> None:
        self.name = name
        self.closed = False

    def close(self) -> None:
        self.closed = True


class FakeWriter:
    """Each ``write_batch`` call takes the next outcome: a result to return or an exception to raise."""

    def __init__(self, outcomes, statuses=()):
        self.conn = FakeConn("first")
        self.outcomes = list(outcomes)
        self.statuses = list(statuses)
        self.writes: list[str] = []  # the connection each write went over
        self.asked: list[str] = []
        self.applied: list[PendingCommit] = []

    def write_batch(self, rows, catalogue):
        self.writes.append(self.conn.name)
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def xact_status(self, xid):
        self.asked.append(xid)
        status = self.statuses.pop(0)
        if isinstance(status, BaseException):
            raise status
        return status

    def committed(self, pending, catalogue):
        self.applied.append(pending)


class FakeTime:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make(writer, policy=None):
    time = FakeTime()
    lines: list[str] = []
    connections = iter(FakeConn(f"re{i}") for i in range(1, 100))
    retrying = RetryingWriter(
        writer,
        lambda: next(connections),
        policy or RetryPolicy(initial_s=0.1, max_backoff_s=0.5, jitter_s=0.0, give_up_s=60.0),
        lines.append,
        clock=time.clock,
        sleep=time.sleep,
    )
    return retrying, time, lines


ROWS = [("row",)] * 50


def test_a_healthy_write_is_not_touched():
    writer = FakeWriter([BatchResult(inserted=50)])
    retrying, time, lines = make(writer)
    result = retrying.write_batch(ROWS, [])
    assert (result.inserted, result.retries, time.sleeps, lines, writer.writes) == (50, 0, [], [], ["first"])


def test_an_outage_backs_off_exponentially_reconnects_and_reports_start_and_end():
    lost = psycopg.OperationalError(LOST)
    refused = psycopg.OperationalError("connection failed: Connection refused")
    # The first reconnect succeeds but the server goes again; four are refused; the last one holds.
    writer = FakeWriter([lost, lost, BatchResult(inserted=50)])
    retrying, time, lines = make(writer)
    attempts = iter([None, refused, refused, refused, refused, None])

    def reconnect():
        failure = next(attempts)
        if failure is not None:
            raise failure
        return FakeConn(f"re{len(writer.writes)}")

    retrying.reconnect = reconnect
    result = retrying.write_batch(ROWS, [])
    assert time.sleeps == [0.1, 0.2, 0.4, 0.5, 0.5, 0.5]  # doubling, capped at max_backoff_s
    assert writer.writes == ["first", "re1", "re2"]
    assert writer.conn.name == "re2"
    assert (result.inserted, result.retries, result.outage_s) == (50, 6, pytest.approx(2.2))
    assert lines == [
        f"postgres outage: a write of 50 events failed (OperationalError: {LOST}); "
        "retrying with backoff, on a new connection",
        "postgres outage over after 2.2 s and 6 retried writes; the batch of 50 events written",
    ]


def test_the_old_connection_is_closed_before_a_new_one_is_opened():
    writer = FakeWriter([pg_errors.AdminShutdown("terminating"), BatchResult(inserted=50)])
    first = writer.conn
    retrying, _, _ = make(writer)
    retrying.write_batch(ROWS, [])
    assert first.closed and writer.conn.name == "re1" and not writer.conn.closed


def lost_commit(xid: str, inserted: int = 50) -> CommitOutcomeUnknown:
    return CommitOutcomeUnknown(PendingCommit(xid, BatchResult(inserted=inserted)), psycopg.OperationalError(LOST))


def test_a_lost_commit_that_committed_is_counted_and_not_written_again():
    writer = FakeWriter([lost_commit("777")], statuses=["committed"])
    retrying, _, lines = make(writer)
    result = retrying.write_batch(ROWS, [])
    assert writer.writes == ["first"]  # one write only
    assert writer.asked == ["777"]
    assert [p.xid for p in writer.applied] == ["777"]  # its catalogue edits applied once it is known in
    assert (result.inserted, result.retries) == (50, 1)
    assert lines[-1] == (
        "postgres outage over after 0.1 s and 1 retried writes; "
        "the batch of 50 events had committed before the connection dropped, not written again"
    )


def test_a_lost_commit_that_aborted_is_written_again_once():
    writer = FakeWriter([lost_commit("778"), BatchResult(inserted=50)], statuses=["aborted"])
    retrying, _, _ = make(writer)
    result = retrying.write_batch(ROWS, [])
    assert writer.writes == ["first", "re1"]
    assert writer.asked == ["778"]
    assert writer.applied == []
    assert (result.inserted, result.retries) == (50, 1)


def test_a_lost_commit_still_in_progress_is_asked_again_on_the_same_connection():
    writer = FakeWriter([lost_commit("779")], statuses=["in progress", "in progress", "committed"])
    retrying, time, _ = make(writer)
    result = retrying.write_batch(ROWS, [])
    assert writer.asked == ["779", "779", "779"]
    assert writer.writes == ["first"]
    assert writer.conn.name == "re1"  # reconnected once, after the lost COMMIT only
    assert (result.retries, time.sleeps) == (3, [0.1, 0.2, 0.4])


def test_the_status_check_itself_failing_is_retried_and_asks_again():
    writer = FakeWriter(
        [lost_commit("780"), BatchResult(inserted=50)],
        statuses=[psycopg.OperationalError(LOST), "aborted"],
    )
    retrying, _, _ = make(writer)
    result = retrying.write_batch(ROWS, [])
    assert writer.asked == ["780", "780"]
    assert writer.writes == ["first", "re2"]
    assert result.inserted == 50


def test_a_transaction_the_server_forgot_is_a_clear_error():
    writer = FakeWriter([lost_commit("781")], statuses=[None])
    retrying, _, _ = make(writer)
    with pytest.raises(RuntimeError, match="no longer knows transaction 781"):
        retrying.write_batch(ROWS, [])


def test_refused_rows_are_not_retried():
    check = pg_errors.CheckViolation('new row for relation "engagement_events" violates check constraint "size"')
    writer = FakeWriter([check])
    retrying, time, lines = make(writer)
    with pytest.raises(BatchRefusedError) as info:
        retrying.write_batch(ROWS, [])
    assert info.value.events == 50 and info.value.cause is check
    assert str(info.value) == (
        "Postgres refused a batch of 50 events (CheckViolation: "
        'new row for relation "engagement_events" violates check constraint "size")'
    )
    assert (writer.writes, time.sleeps, lines) == (["first"], [], [])


@pytest.mark.parametrize(
    "exc",
    [pg_errors.SyntaxError("syntax error"), pg_errors.InsufficientPrivilege("permission denied"), ValueError("bug")],
)
def test_fatal_errors_are_raised_at_once_as_they_are(exc):
    writer = FakeWriter([exc])
    retrying, time, _ = make(writer)
    with pytest.raises(type(exc)) as info:
        retrying.write_batch(ROWS, [])
    assert info.value is exc and writer.writes == ["first"] and time.sleeps == []


def test_a_failed_login_during_an_outage_stops_the_retries():
    writer = FakeWriter([psycopg.OperationalError(LOST)])
    retrying, time, _ = make(writer)
    auth = psycopg.OperationalError('connection failed: FATAL:  password authentication failed for user "e"')

    def reconnect():
        raise auth

    retrying.reconnect = reconnect
    with pytest.raises(psycopg.OperationalError) as info:
        retrying.write_batch(ROWS, [])
    assert info.value is auth and time.sleeps == [0.1]


def test_an_outage_longer_than_the_budget_ends_with_a_clear_error():
    writer = FakeWriter([psycopg.OperationalError(LOST)])
    policy = RetryPolicy(initial_s=1.0, max_backoff_s=4.0, jitter_s=0.0, give_up_s=10.0)
    retrying, time, _ = make(writer, policy)

    def reconnect():
        raise psycopg.OperationalError("connection failed: Connection refused")

    retrying.reconnect = reconnect
    with pytest.raises(OutageTooLongError) as info:
        retrying.write_batch(ROWS, [])
    assert time.sleeps == [1.0, 2.0, 4.0, 4.0]  # 11 s: the attempt after the last sleep is the last
    assert str(info.value) == (
        "Postgres still unreachable after 11 s and 4 retried writes (GENERATOR_RETRY_GIVE_UP_S=10); "
        "last error: connection failed: Connection refused"
    )


def test_jitter_stays_within_its_bound():
    writer = FakeWriter([psycopg.OperationalError(LOST)] * 5 + [BatchResult(inserted=1)])
    policy = RetryPolicy(initial_s=0.1, max_backoff_s=10.0, jitter_s=0.1, give_up_s=60.0)
    retrying, time, _ = make(writer, policy)
    retrying.write_batch(ROWS, [])
    for base, slept in zip([0.1, 0.2, 0.4, 0.8, 1.6], time.sleeps, strict=True):
        assert base <= slept <= base + 0.1
