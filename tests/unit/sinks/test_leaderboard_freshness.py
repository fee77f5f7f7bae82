"""The board's freshness hash is written by the apply script, with the data, in fakeredis's Lua."""

from __future__ import annotations

import fakeredis

from infra.settings import LeaderboardSettings, RedisSettings
from sinks.flush import Flusher
from sinks.records import Contribution, EnrichedChange, SourcePosition
from sinks.redis_leaderboard import RedisLeaderboardSink

from .fakes import Letters

MINUTE = 29_000_000
NOW_S = MINUTE * 60.0 + 12.5


def event(offset: int, commit_ts_ms: int) -> EnrichedChange:
    k = Contribution("a", "video", MINUTE, "play", 1.0, 1.0, 1)
    return EnrichedChange(
        SourcePosition("t", 0, offset), b"k%d" % offset, None, "c", None, commit_ts_ms, None, None, None, (k,)
    )


def test_each_applied_flush_sets_when_the_newest_commit_and_counts_the_changes():
    client = fakeredis.FakeRedis()
    sink = RedisLeaderboardSink(RedisSettings(), LeaderboardSettings(), clock=lambda: NOW_S, roll_in_background=False)
    sink._client = client
    sink.open()
    flusher = Flusher(sink, Letters(), ["t"], owns_upstream_letters=True)
    flusher.load()
    flusher.flush([event(0, 1_000), event(1, 3_000), event(2, 2_000)])
    assert client.hgetall("top_engagement:10min:updated") == {
        b"applied_ms": str(int(NOW_S * 1000)).encode(),
        b"commit_ts_ms": b"3000",
        b"changes": b"3",
    }
    # An older commit never moves the newest back; replays are dropped before the script and not counted.
    flusher.flush([event(2, 2_000), event(3, 500)])
    assert client.hgetall("top_engagement:10min:updated") == {
        b"applied_ms": str(int(NOW_S * 1000)).encode(),
        b"commit_ts_ms": b"3000",
        b"changes": b"4",
    }
