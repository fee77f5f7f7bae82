"""The Redis sink against the real Redis of the test stack, with an injected clock."""

from __future__ import annotations

import time

import pytest

from infra.settings import LeaderboardSettings, Settings
from infra.stack.local import LocalStack
from infra.stack.redis_server import client as redis_client
from pipeline.model import Contribution, EnrichedChange, SourcePosition
from sinks.redis_leaderboard import OFFSETS_KEY, RedisLeaderboardSink

pytestmark = pytest.mark.integration
MINUTE = int(time.time() // 60)  # now: buckets expire by the real clock


class Clock:
    def __init__(self, minute: int) -> None:
        self.now = minute * 60.0 + 5

    def __call__(self) -> float:
        return self.now


def change(offset: int, content: str, minute: int, seconds: float, sign: int = 1) -> EnrichedChange:
    k = Contribution(content, "video", minute, "play", seconds, seconds, sign)
    return EnrichedChange(SourcePosition("sinktest", 0, offset), 0, (k,))


@pytest.fixture
def sink(stack: LocalStack, settings: Settings):
    client = redis_client(settings.redis)
    client.flushall()
    clock = Clock(MINUTE)
    board = LeaderboardSettings(window_minutes=10, allowed_lateness_minutes=10)
    s = RedisLeaderboardSink(settings.redis, board, clock=clock, roll_in_background=False)
    s.open()
    yield s, clock, client
    s.close()


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
    s, _, client = sink
    batch = [change(o, "a", MINUTE, 1.5) for o in range(100, 110)]
    assert s.write(batch) == (10, 0)
    fresh = RedisLeaderboardSink(s._settings, s._board, clock=s._clock, roll_in_background=False)
    fresh.open()  # a restarted job: knows only what Redis stored
    assert fresh.write([*batch[5:], change(110, "a", MINUTE, 1.5)]) == (1, 5)
    assert client.zscore("top_engagement:10min", "a") == 16.5
    assert int(client.hget(OFFSETS_KEY, "sinktest:0")) == 111
    assert client.hget("engagement:content:a", "events") == b"11"


def test_a_stale_writer_is_refused_and_retries_with_what_is_left(sink):
    s, _, client = sink
    other = RedisLeaderboardSink(s._settings, s._board, clock=s._clock, roll_in_background=False)
    other.open()  # both learned position -1
    other.write([change(o, "a", MINUTE, 1.0) for o in range(0, 5)])
    # s still believes nothing is stored: the script refuses, s drops offsets 0-4, applies 5-6.
    assert s.write([change(o, "a", MINUTE, 1.0) for o in range(0, 7)]) == (2, 5)
    assert client.zscore("top_engagement:10min", "a") == 7.0


def test_an_update_moves_seconds_between_minutes_and_removes_empty_members(sink):
    s, _, client = sink
    s.write([change(0, "a", MINUTE - 1, 30.0)])
    s.write([change(1, "a", MINUTE - 1, 30.0, sign=-1), change(1, "a", MINUTE, 12.0)])
    assert client.zscore(f"engagement:minute:{MINUTE - 1}", "a") is None
    assert client.zscore("top_engagement:10min", "a") == 12.0
    metrics = client.hgetall("engagement:content:a")
    assert metrics[b"events"] == b"1" and float(metrics[b"total_seconds"]) == 12.0
