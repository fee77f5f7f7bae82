"""Columns added to engagement_events, and widened ones, decode without a restart (pipeline.decode)."""

import pytest

import pipeline.decode as decode
from pipeline.decode import decode_engagement, decode_engagement_checked
from pipeline.model import EngagementChange, KafkaRecord
from tests.unit.pipeline.test_decode import envelope, event_row, record


@pytest.fixture(autouse=True)
def fresh_decoder(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(decode, "_decoder", decode.EventDecoder())


def test_a_new_column_is_carried_and_then_decoded_on_the_fast_path():
    first = decode_engagement(record(envelope("c", after=event_row(referrer="push", score=1.5))))
    assert isinstance(first, EngagementChange)
    assert first.after is not None
    assert first.after.extra == (("referrer", "push"), ("score", 1.5))
    # The decoder learned both columns: the next row with them no longer needs the checked path.
    assert decode._decoder.extra == ("referrer", "score")
    calls: list[KafkaRecord] = []
    real_checked = decode.decode_engagement_checked
    decode.decode_engagement_checked = lambda r: calls.append(r) or real_checked(r)  # type: ignore[assignment]
    try:
        second = decode_engagement(record(envelope("c", after=event_row(id=7, referrer=None, score=2.0))))
    finally:
        decode.decode_engagement_checked = real_checked  # type: ignore[assignment]
    assert calls == []
    assert isinstance(second, EngagementChange)
    assert second.after is not None
    assert second.after.extra == (("referrer", None), ("score", 2.0))


def test_an_update_carries_the_new_column_in_both_images_like_the_checked_path():
    value = envelope("u", before=event_row(referrer=None), after=event_row(referrer="email", tags=["a", "b"]))
    fast = decode_engagement(record(value))
    assert fast == decode_engagement_checked(record(value))
    assert isinstance(fast, EngagementChange)
    assert fast.before is not None and fast.after is not None
    assert fast.before.extra == (("referrer", None),)
    assert fast.after.extra == (("referrer", "email"), ("tags", ["a", "b"]))


def test_rows_without_a_learned_column_have_no_extra():
    decode_engagement(record(envelope("c", after=event_row(referrer="push"))))
    change = decode_engagement(record(envelope("c", after=event_row())))
    assert isinstance(change, EngagementChange)
    assert change.after is not None
    assert change.after.extra == ()


def test_a_value_past_32_bits_after_int_to_bigint():
    change = decode_engagement(record(envelope("c", after=event_row(duration_ms=3_000_000_000_123))))
    assert isinstance(change, EngagementChange)
    assert change.after is not None
    assert change.after.duration_ms == 3_000_000_000_123
    assert decode._decoder.extra == ()  # no column was added: the fast path took it
