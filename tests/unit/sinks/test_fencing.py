"""Fencing tokens: the Redis sinks' Lua refuses a stale token; the other sinks are checked by the guard.

Lua runs in fakeredis (with lupa): the scripts are the sinks' own, prepended as in production.
"""

from __future__ import annotations

import fakeredis
import pytest
import redis

from infra.settings import LeaderboardSettings, PipelineSettings, RedisSettings, Settings
from sinks.contract import Fenced
from sinks.fencing import Fence, FencedSink, fence_key, guard, quick_client
from sinks.flush import Flusher
from sinks.positions import Position, decode
from sinks.records import Contribution, EnrichedChange, SourcePosition
from sinks.redis_content import RedisContentSink
from sinks.redis_leaderboard import RedisLeaderboardSink

from .fakes import FakeSink, Letters, change

KEY = fence_key("g")
MINUTE = 29_000_000


def fence(token: int) -> Fence:
    return Fence(KEY, token, RedisSettings())


def leaderboard(client: redis.Redis, token: int | None) -> RedisLeaderboardSink:
    board = LeaderboardSettings(window_minutes=10, allowed_lateness_minutes=10)
    sink = RedisLeaderboardSink(RedisSettings(), board, clock=lambda: MINUTE * 60.0, roll_in_background=False)
    sink._client = client
    sink = guard(sink, None if token is None else fence(token))
    sink.open()
    return sink


def event(offset: int, seconds: float) -> EnrichedChange:
    k = Contribution("a", "video", MINUTE, "play", seconds, seconds, 1)
    return EnrichedChange(SourcePosition("t", 0, offset), b"k%d" % offset, None, "c", None, 0, None, None, None, (k,))


@pytest.fixture
def client() -> redis.Redis:
    return fakeredis.FakeRedis()


def test_a_redis_write_with_a_stale_token_applies_nothing_and_raises_fenced(client):
    client.set(KEY, 7)
    flusher = Flusher(leaderboard(client, 6), Letters(), ["t"], owns_upstream_letters=True)
    flusher.load()
    with pytest.raises(Fenced, match="generation 7"):
        flusher.flush([event(0, 5.0), event(1, 2.0)])
    assert client.hgetall("engagement:positions:redis_leaderboard") == {}
    assert client.exists("engagement:content:a", f"engagement:minute:{MINUTE}", "top_engagement:10min") == 0


def test_a_redis_write_with_the_current_token_or_none_is_applied(client):
    client.set(KEY, 7)
    for token, offset in ((7, 0), (None, 1)):
        flusher = Flusher(leaderboard(client, token), Letters(), ["t"], owns_upstream_letters=True)
        flusher.load()
        assert flusher.flush([event(offset, 5.0)]).written == 1
    assert client.zscore("top_engagement:10min", "a") == 10.0
    assert decode(client.hget("engagement:positions:redis_leaderboard", "t:0")).next_offset == 2


def test_a_positions_only_commit_with_a_stale_token_is_refused(client):
    client.set(KEY, 3)
    sink = RedisContentSink(RedisSettings())
    sink._client = client
    guard(sink, fence(2)).open()
    with pytest.raises(Fenced):
        sink.commit({"c:0": Position(5)}, {"c:0": None})
    assert client.hget("engagement:positions:redis_content", "c:0") is None
    sink.fence = fence(3)
    sink.commit({"c:0": Position(5)}, {"c:0": None})
    assert decode(client.hget("engagement:positions:redis_content", "c:0")).next_offset == 5


def test_a_stale_position_conflict_is_still_a_conflict_not_a_fence(client):
    from sinks.contract import PositionConflict

    client.set(KEY, 3)
    sink = RedisContentSink(RedisSettings())
    sink._client = client
    guard(sink, fence(3)).open()
    with pytest.raises(PositionConflict):
        sink.commit({"c:0": Position(5)}, {"c:0": Position(4)})


def test_guard_gives_atomic_sinks_the_fence_and_wraps_the_others(client):
    atomic, other = FakeSink(atomic=True), FakeSink()
    assert guard(atomic, fence(1)) is atomic and atomic.fence == fence(1)
    assert guard(other, None) is other
    wrapped = guard(other, fence(1), client)
    assert isinstance(wrapped, FencedSink) and wrapped.name == "fake" and not wrapped.atomic


def test_a_non_atomic_sink_with_a_stale_token_writes_and_commits_nothing(client):
    client.set(KEY, 5)
    inner = FakeSink()
    sink = guard(inner, fence(4), client)
    sink.open()
    flusher = Flusher(sink, Letters(), ["t"], owns_upstream_letters=True)
    with pytest.raises(Fenced, match="generation 5"):
        flusher.flush([change(0), change(1)])
    assert inner.log == [] and inner.stored == {}


def test_a_non_atomic_sink_is_refused_at_the_commit_after_a_takeover_during_its_write(client):
    client.set(KEY, 4)
    inner = FakeSink()
    sink = guard(inner, fence(4), client)
    sink.open()

    def taken_over(batch):
        client.set(KEY, 5)
        from sinks.contract import Outcome

        return Outcome()

    inner.outcomes = [taken_over]
    with pytest.raises(Fenced):
        Flusher(sink, Letters(), ["t"], owns_upstream_letters=True).flush([change(0)])
    assert inner.log == ["write 0"] and inner.stored == {}  # the position never passed the stale write


def test_a_non_atomic_sink_writes_when_redis_cannot_say(client):
    unreachable = quick_client(RedisSettings(port=1), 0.2)
    inner = FakeSink()
    sink = guard(inner, fence(4), unreachable)
    sink.open()
    Flusher(sink, Letters(), ["t"], owns_upstream_letters=True).flush([change(0)])
    assert inner.log == ["write 0", "commit t:0=1"]


def test_the_job_reads_its_token_from_the_typed_settings(monkeypatch):
    assert Fence.of(Settings(pipeline=PipelineSettings(consumer_group="g"))) is None
    monkeypatch.setenv("PIPELINE_FENCE_TOKEN", "42")
    monkeypatch.setenv("PIPELINE_CONSUMER_GROUP", "g")
    got = Fence.of(Settings())
    assert got is not None and (got.key, got.token) == (KEY, 42)
