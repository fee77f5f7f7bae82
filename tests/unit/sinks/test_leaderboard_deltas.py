from pipeline.model import Contribution, EnrichedChange, SourcePosition
from sinks.leaderboard_deltas import aggregate


def change(partition: int, offset: int, *contributions: Contribution) -> EnrichedChange:
    return EnrichedChange(SourcePosition("events", partition, offset), 0, contributions)


def k(content: str, minute: int, event_type: str, seconds: float | None, pct: float | None, sign: int) -> Contribution:
    return Contribution(content, "podcast", minute, event_type, seconds, pct, sign)


def test_sums_per_content_and_bucket():
    batch = [
        change(0, 5, k("a", 100, "play", 10.0, 50.0, +1)),
        change(0, 6, k("a", 100, "finish", 20.0, 110.0, +1)),
        change(1, 9, k("a", 100, "play", 10.0, 50.0, -1), k("b", 101, "play", 4.0, None, +1)),
        change(1, 10, k("a", 100, "click", None, None, +1)),
    ]
    deltas = aggregate(batch, {})
    assert deltas.partitions == {"events:0": (5, 7), "events:1": (9, 11)}
    # events, total_seconds, plays, pauses, finishes, clicks, pct_sum, pct_count, over_100
    assert deltas.content["a"].values == [2, 20.0, 0, 0, 1, 1, 110.0, 1, 1]
    assert deltas.content["b"].values == [1, 4.0, 1, 0, 0, 0, 0.0, 0, 0]
    assert deltas.buckets == {(100, "a", "podcast"): 20.0, (101, "b", "podcast"): 4.0}


def test_replayed_records_below_the_stored_position_are_dropped():
    batch = [change(0, o, k("a", 1, "play", 1.0, None, +1)) for o in range(10, 20)]
    deltas = aggregate(batch, {"events:0": 15})
    assert deltas.records == 5 and deltas.skipped_replays == 5
    assert deltas.partitions == {"events:0": (15, 20)}
    assert deltas.content["a"].values[1] == 5.0


def test_changes_without_contributions_still_move_the_position():
    deltas = aggregate([change(3, 41)], {})
    assert deltas.partitions == {"events:3": (41, 42)} and not deltas.content
