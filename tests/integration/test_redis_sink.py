"""The Redis leaderboard sink, driven by the shared flush, against the real Redis of the test stack."""

from __future__ import annotations

import time

import msgspec
import pytest

from infra.settings import LeaderboardSettings, Settings
from infra.stack.local import LocalStack
from sinks.flush import Flusher
from sinks.parking import PARK_STAGE
from sinks.positions import decode
from sinks.records import Contribution, EnrichedChange, Parked, SourcePosition
from sinks.redis_leaderboard import RedisLeaderboardSink

pytestmark = pytest.mark.integration
MINUTE = int(time.time() // 60)  # now: buckets expire by the real clock


class Clock:
    def __init__(self, minute: int) -> None:
        self.now = minute * 60.0 + 5

    def __call__(self) -> float:
        return self.now


class NoLetters:
    def send(self, letters):
        raise AssertionError(f"no dead letters expected: {letters}")


def change(
    offset: int, content: str, minute: int, seconds: float, sign: int = 1, sequence: tuple[int, int] | None = None
) -> EnrichedChange:
    k = Contribution(content, "video", minute, "play", seconds, seconds, sign)
    key = b'{"id": %d}' % offset
    return EnrichedChange(SourcePosition("sinktest", 0, offset), key, None, "c", sequence, 0, None, None, None, (k,))


class Writer:
    """A sink as a job drives it: opened, positions loaded, flushed through the shared driver."""

    def __init__(self, settings: Settings, clock: Clock) -> None:
        board = LeaderboardSettings(window_minutes=10, allowed_lateness_minutes=10)
        self.settings = settings
        self.sink = RedisLeaderboardSink(settings.redis, board, clock=clock, roll_in_background=False)
        self.sink.open()
        self.flusher = Flusher(self.sink, NoLetters(), ["sinktest"], owns_upstream_letters=True)
        self.flusher.load()

    def write(self, batch):
        report = self.flusher.flush(batch)
        return report.written, report.replays + report.resends

    def roll(self) -> bool:
        return self.sink.roll()


@pytest.fixture
def sink(stack: LocalStack, settings: Settings):
    client = settings.redis.client()
    client.flushall()
    clock = Clock(MINUTE)
    writer = Writer(settings, clock)
    yield writer, clock, client
    writer.sink.close()


def test_minutes_leave_the_board_when_the_window_moves(sink):
    s, clock, client = sink
    s.write([change(0, "a", MINUTE, 10.0), change(1, "b", MINUTE - 9, 4.0), change(2, "a", MINUTE - 10, 99.0)])
    assert client.zscore("top_engagement:10min", "a") == 10.0  # minute - 10 is outside the window
    assert client.zscore("top_engagement:10min", "b") == 4.0
    assert client.zscore(f"engagement:minute:{MINUTE - 10}", "a") == 99.0  # but its bucket is kept
    clock.now += 60  # one minute later, no events: the roller moves the window
    assert s.roll() is True
    assert client.zscore("top_engagement:10min", "b") is None
    assert client.zscore("top_engagement:10min:video", "a") == 10.0
    assert s.roll() is False  # idempotent within the same minute


def test_a_replayed_batch_is_applied_once(sink):
    s, clock, client = sink
    batch = [change(o, "a", MINUTE, 1.5) for o in range(100, 110)]
    assert s.write(batch) == (10, 0)
    fresh = Writer(s.settings, clock)  # a restarted job: knows only what Redis stored
    assert fresh.write([*batch[5:], change(110, "a", MINUTE, 1.5)]) == (1, 5)
    assert client.zscore("top_engagement:10min", "a") == 16.5
    assert decode(client.hget("engagement:positions:redis_leaderboard", "sinktest:0")).next_offset == 111
    assert client.hget("engagement:content:a", "events") == b"11"


def test_a_stale_writer_is_refused_and_retries_with_what_is_left(sink):
    s, clock, client = sink
    other = Writer(s.settings, clock)  # both learned that nothing is stored
    other.write([change(o, "a", MINUTE, 1.0) for o in range(0, 5)])
    # s still believes nothing is stored: the compare-and-set refuses, s reloads, drops 0-4, applies 5-6.
    assert s.write([change(o, "a", MINUTE, 1.0) for o in range(0, 7)]) == (2, 5)
    assert client.zscore("top_engagement:10min", "a") == 7.0


def test_an_update_moves_seconds_between_minutes_and_removes_empty_members_from_the_board(sink):
    s, _, client = sink
    s.write([change(0, "a", MINUTE - 1, 30.0)])
    minus, plus = change(1, "a", MINUTE - 1, 30.0, sign=-1), change(1, "a", MINUTE, 12.0)
    s.write([msgspec.structs.replace(minus, contributions=minus.contributions + plus.contributions)])
    # The bucket keeps the member at zero (it has a bucket, for what is taken back later).
    assert client.zscore(f"engagement:minute:{MINUTE - 1}", "a") == 0.0
    assert client.zscore("top_engagement:10min", "a") == 12.0
    metrics = client.hgetall("engagement:content:a")
    assert metrics[b"events"] == b"1" and float(metrics[b"total_seconds"]) == 12.0


def test_changes_debezium_sends_again_after_a_connect_crash_count_once(sink):
    s, _, client = sink
    s.write([change(0, "a", MINUTE, 2.0, sequence=(10, 11)), change(1, "a", MINUTE, 3.0, sequence=(10, 12))])
    # The same two changes at new offsets (Connect re-produced them), then a new one.
    resent = [change(2, "a", MINUTE, 2.0, sequence=(10, 11)), change(3, "a", MINUTE, 3.0, sequence=(10, 12))]
    resent = [msgspec.structs.replace(c, key=b'{"id": %d}' % (c.position.offset - 2)) for c in resent]
    assert s.write([*resent, change(4, "a", MINUTE, 4.0, sequence=(12, 13))]) == (1, 2)
    assert client.zscore("top_engagement:10min", "a") == 9.0
    assert client.hget("engagement:content:a", "events") == b"3"


class KeptLetters:
    def __init__(self) -> None:
        self.sent: list = []

    def send(self, letters):
        self.sent += letters


def test_a_parked_event_is_applied_once_whichever_way_it_comes_back(sink):
    s, _, client = sink
    letters = KeptLetters()
    main = Flusher(s.sink, letters, ["sinktest"], owns_upstream_letters=True)
    main.load()
    parked = [Parked(SourcePosition("sinktest", 0, o), b"k", b"v", "c", None, "a", 0, 0) for o in (0, 1)]
    main.flush([*parked, change(2, "b", MINUTE, 1.0)])
    assert [(letter.stage, letter.position.offset) for letter in letters.sent] == [(PARK_STAGE, 0), (PARK_STAGE, 1)]
    assert client.zrange("engagement:positions:redis_leaderboard:parked", 0, -1) == [b"sinktest/0/0", b"sinktest/0/1"]

    def back(parking_offset: int, origin_offset: int) -> EnrichedChange:
        return msgspec.structs.replace(
            change(origin_offset, "a", MINUTE, 2.0),
            position=SourcePosition("sinkparked", 0, parking_offset),
            origin=SourcePosition("sinktest", 0, origin_offset),
            for_sink=s.sink.name,
        )

    returning = Flusher(s.sink, letters, ["sinkparked"], owns_upstream_letters=True)
    returning.load()
    # Event 0 comes back twice (parked again after a crash): the second copy finds its id claimed.
    report = returning.flush([back(0, 0), back(1, 1), back(2, 0)])
    assert (report.written, report.parked_duplicates) == (2, 1)
    assert client.zscore("top_engagement:10min", "a") == 4.0
    assert client.zrange("engagement:positions:redis_leaderboard:parked", 0, -1) == []
    assert decode(client.hget("engagement:positions:redis_leaderboard", "sinkparked:0")).next_offset == 3


def test_an_event_far_in_the_future_counts_in_the_totals_only(sink):
    s, clock, client = sink
    future = MINUTE + 73 * 365 * 24 * 60  # 2100-ish
    soon = MINUTE + 30  # beyond the 5-minute skew now, within it once the clock has moved
    assert s.write([change(0, "f", future, 4.0), change(1, "f", soon, 2.0), change(2, "n", MINUTE, 1.0)]) == (3, 0)
    assert client.hget("engagement:content:f", "events") == b"2"
    assert float(client.hget("engagement:content:f", "total_seconds")) == 6.0
    # No bucket outlives the window by decades, and nothing from the future is on the board.
    assert not client.exists(f"engagement:minute:{future}") and not client.exists(f"engagement:minute:{soon}")
    assert client.zrange("top_engagement:10min", 0, -1, withscores=True) == [(b"n", 1.0)]
    assert s.sink.gauges() == {"future_buckets_skipped": 2}
    # 28 minutes later the "soon" event is within the skew; taking it back must not go negative.
    clock.now += 28 * 60
    s.write([change(3, "f", soon, 2.0, sign=-1)])
    assert client.zscore(f"engagement:minute:{soon}", "f") is None
    assert client.hget("engagement:content:f", "events") == b"1"
    # Totals have no TTL: they must not vanish while the positions stay.
    assert client.ttl("engagement:content:f") == -1 and client.ttl("engagement:content:n") == -1
