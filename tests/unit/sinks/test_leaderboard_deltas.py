import pytest

from sinks.leaderboard_deltas import aggregate, board_type
from sinks.records import Contribution, EnrichedChange, SourcePosition


def change(partition: int, offset: int, *contributions: Contribution) -> EnrichedChange:
    return EnrichedChange(
        SourcePosition("events", partition, offset), None, None, "c", None, 0, None, None, None, contributions
    )


def k(content: str, minute: int, event_type: str, seconds: float | None, pct: float | None, sign: int) -> Contribution:
    return Contribution(content, "podcast", minute, event_type, seconds, pct, sign)


def test_sums_per_content_and_bucket():
    batch = [
        change(0, 5, k("a", 100, "play", 10.0, 50.0, +1)),
        change(0, 6, k("a", 100, "finish", 20.0, 110.0, +1)),
        change(1, 9, k("a", 100, "play", 10.0, 50.0, -1), k("b", 101, "play", 4.0, None, +1)),
        change(1, 10, k("a", 100, "click", None, None, +1)),
    ]
    deltas = aggregate(batch)
    # events, total_seconds, plays, pauses, finishes, clicks, pct_sum, pct_count, over_100
    assert deltas.content["a"].values == [2, 20.0, 0, 0, 1, 1, 110.0, 1, 1]
    assert deltas.content["b"].values == [1, 4.0, 1, 0, 0, 0, 0.0, 0, 0]
    # What after-images add and what before-images take back, apart (the script treats them apart).
    assert deltas.buckets == {(100, "a", "podcast"): 30.0, (101, "b", "podcast"): 4.0}
    assert deltas.taken == {(100, "a", "podcast"): -10.0}


def test_negative_durations_add_like_any_other():
    batch = [change(0, o, k("a", 100, "play", s, None, +1)) for o, s in enumerate((-5.0, -0.001, 2.0))]
    deltas = aggregate(batch)
    assert deltas.buckets == {(100, "a", "podcast"): pytest.approx(-3.001)} and deltas.taken == {}


def test_a_content_type_outside_the_boards_counts_on_the_unknown_board():
    odd = Contribution("a", "audiobook", 100, "play", 1.0, None, 1)
    none = Contribution("b", None, 100, "play", 1.0, None, 1)
    deltas = aggregate([change(0, 0, odd, none)])
    assert set(deltas.buckets) == {(100, "a", "unknown"), (100, "b", "unknown")}
    assert [board_type(t) for t in ("podcast", "newsletter", "video", None, "audiobook")] == [
        "podcast",
        "newsletter",
        "video",
        "unknown",
        "unknown",
    ]


def test_changes_without_contributions_add_nothing():
    deltas = aggregate([change(3, 41)])
    assert not deltas.content and not deltas.buckets
