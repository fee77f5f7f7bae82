"""A store that comes back older (Redis failover, restore from a snapshot): the flush notices on every
load, writes nothing, and a restarted job applies the lost window exactly once (fakeredis's Lua)."""

from __future__ import annotations

from collections.abc import Mapping

import fakeredis
import pytest

from infra.settings import LeaderboardSettings, RedisSettings
from sinks.contract import REWOUND_MARKER, Batch, Outcome, PositionConflict, PositionsRewound
from sinks.flush import Flusher, rewound
from sinks.positions import Position
from sinks.records import Contribution, EnrichedChange, SourcePosition
from sinks.redis_leaderboard import RedisLeaderboardSink

from .fakes import FakeSink, Letters, change

MINUTE = 29_000_000
NOW_S = MINUTE * 60.0 + 12.5


def test_rewound_names_each_partition_below_what_was_seen_or_gone():
    seen = {"t:0": 10, "t:1": 5, "t:2": 7}
    loaded = {"t:0": Position(10), "t:1": Position(3), "t:3": Position(1)}
    assert rewound(loaded, seen) == {"t:1": (3, 5), "t:2": (None, 7)}
    assert rewound({"t:0": Position(11)}, {"t:0": 10}) == {}
    assert rewound({}, {}) == {}


class CasSink(FakeSink):
    """An atomic fake that compares and sets its positions like the Redis scripts do."""

    def write(self, batch: Batch[EnrichedChange]) -> Outcome:
        self._check(batch.expected)
        return super().write(batch)

    def commit(self, positions: Mapping[str, Position], expected: Mapping[str, Position | None], **_: object) -> None:
        self._check(expected)
        super().commit(positions, expected)

    def _check(self, expected: Mapping[str, Position | None]) -> None:
        for key, position in expected.items():
            if self.stored.get(key) != position:
                raise PositionConflict(key)


def test_a_conflict_that_reloads_older_positions_raises_and_writes_nothing():
    sink = CasSink(atomic=True)
    f = Flusher(sink, Letters(), ["t"], owns_upstream_letters=True)
    f.load()
    f.flush([change(0), change(1), change(2)])
    older = dict(sink.stored)  # the snapshot: t:0 at 3
    f.flush([change(3), change(4)])
    sink.stored = older  # Redis came back from the snapshot
    applied = list(sink.applied)
    with pytest.raises(PositionsRewound) as raised:
        f.flush([change(5)])
    assert raised.value.behind == {"t:0": (3, 5)}
    assert REWOUND_MARKER in str(raised.value)
    assert sink.applied == applied and sink.stored == older


def test_a_partition_whose_position_is_gone_is_rewound_too():
    sink = CasSink(atomic=True)
    f = Flusher(sink, Letters(), ["t"], owns_upstream_letters=True)
    f.load()
    f.flush([change(0, partition=1)])
    sink.stored = {}  # a copy from before the partition's first write (or a FLUSHALL)
    with pytest.raises(PositionsRewound) as raised:
        f.load()
    assert raised.value.behind == {"t:1": (None, 1)}


def test_a_conflict_with_a_writer_ahead_reloads_and_goes_on():
    sink = CasSink(atomic=True)
    f = Flusher(sink, Letters(), ["t"], owns_upstream_letters=True)
    f.load()
    f.flush([change(0)])
    sink.stored = {"t:0": Position(3)}  # a write whose reply was lost landed after all
    report = f.flush([change(1), change(2), change(3)])
    assert report.conflicts == 1 and report.replays == 2
    assert sink.stored == {"t:0": Position(4)}


# The same against the Redis leaderboard sink and its Lua, with Redis's keys copied and put back.


def event(offset: int, seconds: float) -> EnrichedChange:
    k = Contribution("a", "video", MINUTE, "play", seconds, None, 1)
    return EnrichedChange(SourcePosition("t", 0, offset), b"k%d" % offset, b"v", "c", None, 1, None, None, None, (k,))


def snapshot(client: fakeredis.FakeRedis) -> dict[bytes, tuple[bytes, int]]:
    return {key: (client.dump(key), max(client.pttl(key), 0)) for key in client.keys("*")}


def restore(client: fakeredis.FakeRedis, copy: dict[bytes, tuple[bytes, int]]) -> None:
    client.flushall()
    for key, (value, ttl) in copy.items():
        client.restore(key, ttl, value)


def sink_on(client: fakeredis.FakeRedis) -> RedisLeaderboardSink:
    sink = RedisLeaderboardSink(RedisSettings(), LeaderboardSettings(), clock=lambda: NOW_S, roll_in_background=False)
    sink._client = client
    sink.open()
    return sink


def test_redis_put_back_to_an_older_copy_is_noticed_and_a_restart_applies_the_window_once():
    client = fakeredis.FakeRedis()
    running = Flusher(sink_on(client), Letters(), ["t"], owns_upstream_letters=True)
    running.load()
    running.flush([event(0, 1.0), event(1, 2.0)])
    older = snapshot(client)
    running.flush([event(2, 4.0), event(3, 8.0)])  # the window the older copy lacks
    restore(client, older)
    with pytest.raises(PositionsRewound):
        running.flush([event(4, 16.0)])
    assert float(client.hget("engagement:content:a", "total_seconds")) == 3.0  # nothing written
    # The restarted job's lane starts at the stored position (2) and reads the window again.
    restarted = Flusher(sink_on(client), Letters(), ["t"], owns_upstream_letters=True)
    restarted.load()
    restarted.flush([event(2, 4.0), event(3, 8.0), event(4, 16.0)])
    assert float(client.hget("engagement:content:a", "total_seconds")) == 31.0
    assert client.hget("engagement:content:a", "events") == b"5"
    assert client.zscore("top_engagement:10min", "a") == 31.0


def test_a_store_that_went_back_between_the_plan_and_the_first_load_is_caught():
    sink = CasSink(atomic=True)
    sink.stored = {"t:0": Position(3)}  # the plan read 7: the lane's source starts at 7
    f = Flusher(sink, Letters(), ["t"], owns_upstream_letters=True, planned={"t:0": 7})
    with pytest.raises(PositionsRewound) as raised:
        f.load()
    assert raised.value.behind == {"t:0": (3, 7)}
    ahead = CasSink(atomic=True)
    ahead.stored = {"t:0": Position(9)}  # moved on (a rebuild's swap): fine
    Flusher(ahead, Letters(), ["t"], owns_upstream_letters=True, planned={"t:0": 7}).load()


def test_sinks_that_keep_positions_elsewhere_are_not_held_to_the_plan():
    sink = FakeSink()  # not atomic: BigQuery and HTTP keep their positions in Kafka
    Flusher(sink, Letters(), ["t"], owns_upstream_letters=True, planned={"t:0": 7}).load()
