"""The Redis sinks under a key prefix, their pause, and the atomic swap of a copy (fakeredis's Lua)."""

from __future__ import annotations

import time

import fakeredis
import pytest

from infra.settings import LeaderboardSettings, RedisSettings
from sinks.flush import Flusher
from sinks.records import ContentChange, ContentRow, Contribution, EnrichedChange, SourcePosition
from sinks.redis_content import RedisContentSink
from sinks.redis_keys import RedisKeys
from sinks.redis_leaderboard import RedisLeaderboardSink
from sinks.redis_swap import PauseHeld, PositionsBehind, pause, release, swap

from .fakes import Letters

# Now: the buckets expire by the real clock (EXPIREAT), in fakeredis too.
MINUTE = int(time.time() // 60)
NOW_S = MINUTE * 60.0 + 12.5
COPY = RedisKeys("rebuild:t1:")
LIVE = RedisKeys("")


def event(offset: int, content: str = "a", minute: int = MINUTE, seconds: float = 2.0) -> EnrichedChange:
    k = Contribution(content, "video", minute, "play", seconds, 10.0, 1)
    return EnrichedChange(
        SourcePosition("events", 0, offset), b"k%d" % offset, None, "c", None, 1_000, None, None, None, (k,)
    )


def content_change(offset: int, content_id: str, title: str) -> ContentChange:
    row = ContentRow(content_id, "slug-" + content_id, title, "video", 600, None)
    return ContentChange(SourcePosition("content", 0, offset), b"c", None, "c", None, None, row, 1_000)


def sinks(client: fakeredis.FakeRedis, prefix: str) -> tuple[Flusher, Flusher]:
    redis_settings = RedisSettings(key_prefix=prefix)
    board = RedisLeaderboardSink(redis_settings, LeaderboardSettings(), clock=lambda: NOW_S, roll_in_background=False)
    content = RedisContentSink(redis_settings)
    flushers = []
    for sink, topic in ((board, "events"), (content, "content")):
        sink._client = client
        sink.open()
        flusher = Flusher(sink, Letters(), [topic], owns_upstream_letters=True, sleep=lambda s: None)
        flusher.load()
        flushers.append(flusher)
    return flushers[0], flushers[1]


def dump(client: fakeredis.FakeRedis, keys: RedisKeys) -> dict[str, object]:
    """Every key under the prefix (without it) and its value."""
    out: dict[str, object] = {}
    for raw in client.scan_iter(match=keys.prefix + "*"):
        key = raw.decode()
        if keys.prefix == "" and key.startswith("rebuild:"):
            continue
        kind = client.type(raw).decode()
        if kind == "hash":
            value: object = client.hgetall(raw)
        elif kind == "zset":
            value = client.zrange(raw, 0, -1, withscores=True)
        else:
            value = client.get(raw)
        out[key[len(keys.prefix) :]] = value
    return out


def test_a_prefix_puts_every_key_of_both_redis_sinks_under_it_and_nothing_else_changes():
    client = fakeredis.FakeRedis()
    live_board, live_content = sinks(client, "")
    copy_board, copy_content = sinks(client, COPY.prefix)
    for board, content in ((live_board, live_content), (copy_board, copy_content)):
        content.flush([content_change(0, "a", "A"), content_change(1, "b", "B")])
        board.flush([event(0), event(1, "b", MINUTE - 1, 3.5), event(2, "a", MINUTE - 30)])
    live, copy = dump(client, LIVE), dump(client, COPY)
    assert live == copy
    assert {"top_engagement:10min", "top_engagement:10min:video", "top_engagement:10min:from"} <= set(live)
    assert {f"engagement:minute:{MINUTE}", f"engagement:minute:{MINUTE}:video"} <= set(live)
    assert {"engagement:content:a", "content:a", "content:b", "engagement:positions:redis_leaderboard"} <= set(live)
    assert {"engagement:positions:redis_content", "top_engagement:10min:updated"} <= set(live)


def test_a_paused_sink_applies_nothing_until_the_pause_ends_and_then_everything_once():
    client = fakeredis.FakeRedis()
    board, _ = sinks(client, "")
    board.flush([event(0)])
    held = pause(client, LIVE, ttl_ms=10_000)
    with pytest.raises(PauseHeld):
        pause(client, LIVE, ttl_ms=10_000)
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        # The sink was refused: nothing of the batch, nor its positions, is in Redis yet.
        assert client.zscore("top_engagement:10min", "a") == 2.0
        assert client.hget("engagement:positions:redis_leaderboard", "events:0") == b"1"
        waits.append(seconds)
        if len(waits) == 3:
            release(client, held)

    board._sleep = sleep
    board.flush([event(1), event(2)])
    assert len(waits) == 3
    assert client.zscore("top_engagement:10min", "a") == 6.0
    assert client.hget("engagement:positions:redis_leaderboard", "events:0") == b"3"
    # A prefix's pause is its own: the copy's writers are not paused by the live one.
    pause(client, LIVE, ttl_ms=10_000)
    copy, _ = sinks(client, COPY.prefix)
    copy.flush([event(0)])
    assert client.zscore("rebuild:t1:top_engagement:10min", "a") == 2.0


def test_swap_moves_the_copy_over_the_live_keys_deletes_what_it_lacks_and_ends_the_pause():
    client = fakeredis.FakeRedis()
    live_board, live_content = sinks(client, "")
    live_content.flush([content_change(0, "a", "A"), content_change(1, "gone", "G")])
    live_board.flush([event(0), event(1, "b", MINUTE - 1, 3.5)])
    # Damage: a wrong board score, a stale bucket and content the copy does not have.
    client.zadd("top_engagement:10min", {"a": 999.0})
    client.zadd(f"engagement:minute:{MINUTE - 5}", {"zombie": 1.0})
    copy_board, copy_content = sinks(client, COPY.prefix)
    copy_content.flush([content_change(0, "a", "A"), content_change(1, "x", "X")])
    copy_board.flush([event(0), event(1, "b", MINUTE - 1, 3.5)])
    expected = dump(client, COPY)
    held = pause(client, LIVE, ttl_ms=10_000)
    done = swap(client, COPY, LIVE, 10, pause=held)
    assert done.released and done.deleted == 2  # the zombie bucket and content:gone
    assert dump(client, LIVE) == expected
    assert dump(client, COPY) == {}
    assert not client.exists(LIVE.pause)
    assert client.ttl(f"engagement:minute:{MINUTE}") > 0  # TTLs travel with the keys
    # The live sink goes on from the swapped-in positions, which equal what it expects.
    live_board.flush([event(2)])
    assert client.zscore("top_engagement:10min", "a") == 4.0


def test_swap_refuses_a_copy_behind_the_live_positions_and_changes_nothing():
    client = fakeredis.FakeRedis()
    live_board, _ = sinks(client, "")
    live_board.flush([event(0), event(1), event(2)])
    copy_board, _ = sinks(client, COPY.prefix)
    copy_board.flush([event(0)])
    before_live, before_copy = dump(client, LIVE), dump(client, COPY)
    with pytest.raises(PositionsBehind, match="events:0"):
        swap(client, COPY, LIVE, 10)
    assert dump(client, LIVE) == before_live
    assert dump(client, COPY) == before_copy


def test_a_live_sink_behind_a_swapped_in_copy_reloads_and_skips_what_the_copy_applied():
    client = fakeredis.FakeRedis()
    live_board, _ = sinks(client, "")
    live_board.flush([event(0)])
    copy_board, _ = sinks(client, COPY.prefix)
    copy_board.flush([event(0), event(1), event(2)])
    swap(client, COPY, LIVE, 10)
    # The live job's source is at offset 1 and reads 1..3: 1 and 2 are in the copy already.
    report = live_board.flush([event(1), event(2), event(3)])
    assert report.conflicts == 1 and report.replays == 2
    assert client.zscore("top_engagement:10min", "a") == 8.0
    assert client.hget("engagement:positions:redis_leaderboard", "events:0") == b"4"
