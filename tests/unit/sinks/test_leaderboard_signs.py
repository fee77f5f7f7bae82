"""Negative durations and unexpected content types on the boards, in the apply and roll scripts
(fakeredis's Lua): the board follows SQL whatever the sign, and every typed board rolls."""

from __future__ import annotations

import time

import fakeredis
import pytest
from prometheus_client import REGISTRY

from infra.settings import LeaderboardSettings, RedisSettings
from sinks.flush import Flusher
from sinks.records import Contribution, EnrichedChange, SourcePosition
from sinks.redis_leaderboard import RedisLeaderboardSink

from .fakes import Letters

MINUTE = int(time.time() // 60)  # buckets expire by the real clock
BOARD = "top_engagement:10min"


class Clock:
    def __init__(self) -> None:
        self.now = MINUTE * 60.0 + 12.5

    def __call__(self) -> float:
        return self.now


class Board:
    def __init__(self) -> None:
        self.client = fakeredis.FakeRedis()
        self.clock = Clock()
        self.sink = RedisLeaderboardSink(
            RedisSettings(), LeaderboardSettings(), clock=self.clock, roll_in_background=False
        )
        self.sink._client = self.client
        self.sink.open()
        self.flusher = Flusher(self.sink, Letters(), ["t"], owns_upstream_letters=True)
        self.flusher.load()
        self.offset = 0

    def write(self, *changes: tuple[Contribution, ...]) -> None:
        batch = []
        for contributions in changes:
            position = SourcePosition("t", 0, self.offset)
            batch.append(EnrichedChange(position, b"k", b"v", "c", None, 1, None, None, None, contributions))
            self.offset += 1
        self.flusher.flush(batch)

    def score(self, key: str, member: str = "a") -> float | None:
        return self.client.zscore(key, member)


def add(seconds: float, minute: int = MINUTE, content_type: str | None = "video") -> tuple[Contribution, ...]:
    return (Contribution("a", content_type, minute, "play", seconds, None, 1),)


def take(seconds: float, minute: int = MINUTE, content_type: str | None = "video") -> tuple[Contribution, ...]:
    return (Contribution("a", content_type, minute, "play", seconds, None, -1),)


@pytest.mark.parametrize("batches", [[(-5.0, -0.001, 2.0)], [(-5.0,), (-0.001,), (2.0,)]])
def test_a_window_whose_seconds_sum_below_zero_is_on_the_board_as_in_sql(batches):
    board = Board()
    for seconds in batches:
        board.write(*(add(s) for s in seconds))
    assert board.score(f"engagement:minute:{MINUTE}") == pytest.approx(-3.001)
    assert board.score(BOARD) == pytest.approx(-3.001)
    assert board.score(f"{BOARD}:video") == pytest.approx(-3.001)
    assert float(board.client.hget("engagement:content:a", "total_seconds")) == pytest.approx(-3.001)
    board.clock.now += 60  # the window moves: the board is rebuilt from the buckets
    assert board.sink.roll()
    assert board.score(BOARD) == pytest.approx(-3.001)


def test_taking_back_an_event_whose_bucket_summed_to_zero_still_counts():
    board = Board()
    board.write(add(5.0), add(-5.0))  # the bucket sums to zero, and keeps the member
    assert board.score(f"engagement:minute:{MINUTE}") == 0.0 and board.score(BOARD) is None
    board.write(take(5.0))  # the +5 event is deleted: SQL now has -5
    assert board.score(f"engagement:minute:{MINUTE}") == -5.0 and board.score(BOARD) == -5.0
    board.write(take(-5.0))  # and the -5 one: nothing left
    assert board.score(f"engagement:minute:{MINUTE}") == 0.0 and board.score(BOARD) is None


def test_an_insert_and_its_delete_in_one_batch_cancel_out():
    board = Board()
    board.write(add(-4.0), take(-4.0))
    assert board.score(BOARD) is None and board.score(f"engagement:minute:{MINUTE}") == 0.0


def test_an_update_of_a_negative_event_moves_its_seconds():
    board = Board()
    board.write(add(-4.0))
    board.write(take(-4.0) + add(3.0))
    assert board.score(BOARD) == 3.0


def test_taking_back_an_event_that_was_beyond_the_clock_skew_skips_its_bucket_whatever_its_sign():
    def skipped() -> float:
        labels = {"sink": RedisLeaderboardSink.name}
        return REGISTRY.get_sample_value("engagement_leaderboard_future_buckets_skipped_total", labels) or 0.0

    before = skipped()
    board = Board()
    soon = MINUTE + 30  # beyond the 5-minute skew now
    board.write(add(-2.0, minute=soon), add(2.0, minute=soon))
    assert not board.client.exists(f"engagement:minute:{soon}")
    board.clock.now += 28 * 60  # within the skew now
    board.write(take(-2.0, minute=soon))
    assert not board.client.exists(f"engagement:minute:{soon}")
    assert board.sink.gauges() == {"future_buckets_skipped": 1}
    assert skipped() - before == 1


def test_a_content_type_outside_the_boards_counts_on_unknown_and_rolls_out_of_the_window():
    board = Board()
    board.write(add(7.0, content_type="audiobook"))
    assert board.score(f"{BOARD}:unknown") == 7.0 and board.score(BOARD) == 7.0
    assert not board.client.exists(f"{BOARD}:audiobook", f"engagement:minute:{MINUTE}:audiobook")
    board.clock.now += 10 * 60  # the minute leaves the 10-minute window
    assert board.sink.roll()
    assert board.client.zcard(f"{BOARD}:unknown") == 0 and board.client.zcard(BOARD) == 0
