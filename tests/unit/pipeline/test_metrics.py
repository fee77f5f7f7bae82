from datetime import UTC, datetime, timedelta, timezone

import pytest
from msgspec.structs import replace

from pipeline.metrics import (
    MissingContentError,
    contributions,
    engagement_pct,
    engagement_seconds,
    epoch_minute,
    is_over_100,
)
from pipeline.model import ContentRow, Contribution, EngagementChange, EngagementRow, SourcePosition

PODCAST = "27c70e8d-a7d7-4e92-8e87-9696f6b419f4"
VIDEO = "0b9f3a52-6c8e-4c31-9d57-3f0c1f0b2a11"
UNKNOWN = "ffffffff-0000-4000-8000-000000000000"
TS = datetime(2026, 11, 23, 18, 0, 23, 895123, tzinfo=UTC)
MINUTE = epoch_minute(TS)
POSITION = SourcePosition("engagement.public.engagement_events", 0, 1)

CATALOGUE = {
    PODCAST: ContentRow(PODCAST, "pod", "Pod", "podcast", 2400, datetime(2025, 1, 2, tzinfo=UTC)),
    VIDEO: ContentRow(VIDEO, "vid", "Vid", "video", 600, datetime(2025, 1, 2, tzinfo=UTC)),
}


def lookup(content_id: str) -> ContentRow | None:
    return CATALOGUE.get(content_id)


def row(**overrides) -> EngagementRow:
    base = EngagementRow(
        id=1,
        content_id=PODCAST,
        user_id="9b1deb4d-3b7d-4bad-9bdd-2b0d7b3dcb6d",
        event_type="play",
        event_ts=TS,
        duration_ms=120_000,
        device="web",
        raw_payload=None,
    )
    return replace(base, **overrides)


def change(op: str, before: EngagementRow | None = None, after: EngagementRow | None = None) -> EngagementChange:
    return EngagementChange(POSITION, None, None, op, None, before, after, 1763920823895)


def contribution(sign: int, content_id: str = PODCAST, **overrides) -> Contribution:
    content = CATALOGUE[content_id]
    base = Contribution(
        content_id=content_id,
        content_type=content.content_type,
        minute=MINUTE,
        event_type="play",
        seconds=120.0,
        pct=120.0 / content.length_seconds * 100,
        sign=sign,
    )
    return replace(base, **overrides)


# --- enrichment math -----------------------------------------------------------------------------


def test_engagement_seconds():
    assert engagement_seconds(526_117) == 526.117
    assert engagement_seconds(0) == 0.0
    assert isinstance(engagement_seconds(1000), float)
    assert engagement_seconds(None) is None


def test_engagement_pct():
    assert engagement_pct(600.0, 2400) == 25.0
    assert engagement_pct(0.0, 2400) == 0.0


@pytest.mark.parametrize(("seconds", "length"), [(None, 2400), (600.0, None), (600.0, 0), (600.0, -5), (None, None)])
def test_engagement_pct_not_computable(seconds: float | None, length: int | None):
    assert engagement_pct(seconds, length) is None


def test_engagement_pct_over_100_is_kept():
    pct = engagement_pct(3600.0, 2400)
    assert pct == 150.0
    assert is_over_100(pct)


@pytest.mark.parametrize(
    ("pct", "over"), [(None, False), (0.0, False), (100.0, False), (100.0001, True), (250.0, True)]
)
def test_is_over_100(pct: float | None, over: bool):
    assert is_over_100(pct) is over


@pytest.mark.parametrize(
    ("ts", "minute"),
    [
        (datetime(1970, 1, 1, tzinfo=UTC), 0),
        (datetime(1970, 1, 1, 0, 0, 59, 999999, tzinfo=UTC), 0),
        (datetime(1970, 1, 1, 0, 1, tzinfo=UTC), 1),
        (datetime(1969, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), -1),
        (datetime(2026, 11, 23, 18, 0, tzinfo=UTC), 29_924_280),
    ],
)
def test_epoch_minute(ts: datetime, minute: int):
    assert epoch_minute(ts) == minute


def test_epoch_minute_at_the_last_microsecond_of_a_minute():
    start = datetime(2026, 11, 23, 18, 0, tzinfo=UTC)
    assert epoch_minute(start - timedelta(microseconds=1)) == epoch_minute(start) - 1
    assert epoch_minute(start + timedelta(seconds=59, microseconds=999_999)) == epoch_minute(start)
    assert epoch_minute(start) * 60 == int(start.timestamp())


def test_epoch_minute_of_another_zone_is_the_same_instant():
    there = datetime(2026, 11, 23, 20, 0, 30, tzinfo=timezone(timedelta(hours=2)))
    assert epoch_minute(there) == 29_924_280


# --- contributions -------------------------------------------------------------------------------


@pytest.mark.parametrize("op", ["c", "r"])
def test_insert_and_snapshot_add_the_after_row(op: str):
    assert contributions(change(op, after=row()), lookup) == (contribution(+1),)


def test_insert_contribution_values():
    (added,) = contributions(change("c", after=row(duration_ms=600_000)), lookup)
    assert added == Contribution(PODCAST, "podcast", 29_924_280, "play", 600.0, 25.0, +1)


def test_delete_takes_the_before_row_back():
    assert contributions(change("d", before=row()), lookup) == (contribution(-1),)


def test_update_is_minus_before_plus_after():
    result = contributions(change("u", before=row(), after=row(duration_ms=240_000)), lookup)
    assert result == (contribution(-1), contribution(+1, seconds=240.0, pct=10.0))


def test_seconds_and_pct_are_unsigned():
    (taken,) = contributions(change("d", before=row()), lookup)
    assert taken.sign == -1 and taken.seconds == 120.0 and taken.pct == 5.0


def test_update_moving_to_other_content():
    result = contributions(change("u", before=row(), after=row(content_id=VIDEO)), lookup)
    assert result == (contribution(-1), contribution(+1, VIDEO))
    assert result[1].content_type == "video" and result[1].pct == 20.0


def test_update_changing_minute():
    later = TS + timedelta(minutes=3)
    result = contributions(change("u", before=row(), after=row(event_ts=later)), lookup)
    assert result == (contribution(-1), contribution(+1, minute=MINUTE + 3))


def test_update_changing_event_type():
    result = contributions(change("u", before=row(), after=row(event_type="finish")), lookup)
    assert result == (contribution(-1), contribution(+1, event_type="finish"))


def test_update_within_the_same_minute_that_changes_nothing_counted_is_a_no_op():
    # Only the device, payload and sub-minute time changed: the -before and +after would cancel out.
    same = row(device="ios", raw_payload={"a": 1}, event_ts=TS.replace(second=59), user_id=None)
    assert contributions(change("u", before=row(), after=same), lookup) == ()


def test_update_of_an_identical_row_is_a_no_op():
    assert contributions(change("u", before=row(), after=row()), lookup) == ()


def test_update_to_null_duration():
    result = contributions(change("u", before=row(), after=row(duration_ms=None)), lookup)
    assert result == (contribution(-1), contribution(+1, seconds=None, pct=None))


def test_null_duration_and_null_length():
    catalogue = {PODCAST: replace(CATALOGUE[PODCAST], length_seconds=None)}
    (added,) = contributions(change("c", after=row()), catalogue.get)
    assert added.seconds == 120.0 and added.pct is None
    (added,) = contributions(change("c", after=row(duration_ms=None)), lookup)
    assert added.seconds is None and added.pct is None


def test_zero_length_content_has_no_pct():
    catalogue = {PODCAST: replace(CATALOGUE[PODCAST], length_seconds=0)}
    (added,) = contributions(change("c", after=row()), catalogue.get)
    assert added.pct is None and added.seconds == 120.0


def test_pct_over_100_is_kept_in_contributions():
    (added,) = contributions(change("c", after=row(content_id=VIDEO, duration_ms=900_000)), lookup)
    assert added.pct == 150.0


def test_null_content_type_travels_through():
    catalogue = {PODCAST: replace(CATALOGUE[PODCAST], content_type=None)}
    (added,) = contributions(change("c", after=row()), catalogue.get)
    assert added.content_type is None


@pytest.mark.parametrize("op", ["c", "r", "d"])
def test_row_without_content_contributes_nothing(op: str):
    orphan = row(content_id=None)
    assert contributions(change(op, before=orphan, after=orphan), lookup) == ()


def test_update_gaining_or_losing_content():
    assert contributions(change("u", before=row(content_id=None), after=row()), lookup) == (contribution(+1),)
    assert contributions(change("u", before=row(), after=row(content_id=None)), lookup) == (contribution(-1),)
    orphan = row(content_id=None)
    assert contributions(change("u", before=orphan, after=row(content_id=None, duration_ms=1)), lookup) == ()


@pytest.mark.parametrize(
    "event",
    [
        change("c", after=row(content_id=UNKNOWN)),
        change("d", before=row(content_id=UNKNOWN)),
        change("u", before=row(content_id=UNKNOWN), after=row()),
        change("u", before=row(), after=row(content_id=UNKNOWN)),
    ],
)
def test_missing_content(event: EngagementChange):
    with pytest.raises(MissingContentError) as caught:
        contributions(event, lookup)
    assert caught.value.content_id == UNKNOWN
    assert str(caught.value) == f"content {UNKNOWN} not found"
    assert isinstance(caught.value, LookupError)


def test_content_is_looked_up_at_processing_time_for_both_sides():
    # The length changed since the row was added: the before-image is subtracted with today's length.
    asked: list[str] = []
    catalogue = {PODCAST: replace(CATALOGUE[PODCAST], length_seconds=1200)}

    def counting(content_id: str) -> ContentRow | None:
        asked.append(content_id)
        return catalogue.get(content_id)

    result = contributions(change("u", before=row(), after=row(duration_ms=240_000)), counting)
    assert [c.pct for c in result] == [10.0, 20.0]
    assert asked == [PODCAST]  # one lookup when both sides share the content


def test_unknown_op_is_rejected():
    with pytest.raises(ValueError, match="unknown op"):
        contributions(change("t", after=row()), lookup)
