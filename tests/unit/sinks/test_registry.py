"""PIPELINE_SINKS: which sinks run, in which lanes, and which lane produces upstream letters."""

import pytest

from sinks.registry import lanes


def names(setting: str) -> list[tuple[str, tuple[str, ...], bool]]:
    return [(lane.topic, tuple(s.name for s in lane.sinks), lane.owns_upstream_letters) for lane in lanes(setting)]


def test_the_default_is_one_lane_per_topic_for_redis():
    assert names("redis") == [
        ("engagement", ("redis_leaderboard",), True),
        ("content", ("redis_content",), True),
    ]


def test_commas_make_lanes_and_plus_shares_one():
    assert names("redis,faulty") == [
        ("engagement", ("redis_leaderboard",), True),
        ("content", ("redis_content",), True),
        ("engagement", ("faulty",), False),
    ]
    assert names("faulty+redis") == [
        ("engagement", ("faulty", "redis_leaderboard"), True),
        ("content", ("redis_content",), True),
    ]


@pytest.mark.parametrize(("setting", "message"), [("redis,kafka", "unknown sink"), ("redis,redis", "named twice")])
def test_mistakes_are_refused_with_a_reason(setting, message):
    with pytest.raises(ValueError, match=message):
        lanes(setting)
