"""No bytes on a topic can make a step raise: every record comes out as a change, a position
marker or its own dead letter with its original bytes (issue 24, item 1). Property tests over
hostile values put where valid envelopes have theirs, and over arbitrary bytes."""

from __future__ import annotations

import copy
from typing import Any

import orjson
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.model import ContentChange, DeadLetter, EngagementChange, Parked, Skipped
from pipeline.transforms.enrich import DecodeFn, JoinContentFn
from pipeline.transforms.unpark import UnparkFn
from sinks.parking import envelope as park_envelope
from sinks.records import EnrichedChange, SourcePosition

from .test_enrich_steps import KNOWN, FakeView

CONTENT = "7b3f4b8e-1111-4222-8333-444455556666"
EVENT: dict[str, Any] = {
    "before": None,
    "after": {
        "id": 7,
        "content_id": KNOWN,
        "user_id": None,
        "event_type": "play",
        "event_ts": "2026-11-23T18:00:30Z",
        "duration_ms": 4_000,
        "device": "web",
        "raw_payload": '{"a": 1}',
    },
    "source": {"ts_ms": 5, "sequence": '["100", "101"]'},
    "op": "c",
    "ts_ms": 6,
}
CONTENT_ROW: dict[str, Any] = {
    "before": None,
    "after": {
        "id": CONTENT,
        "slug": "s",
        "title": "t",
        "content_type": "video",
        "length_seconds": 100,
        "publish_ts": "2026-01-01T00:00:00Z",
    },
    "source": {"ts_ms": 5, "sequence": '["100", "101"]'},
    "op": "c",
}
SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


class Deep(str):
    """A placeholder for a value nested ``depth`` levels, spliced into the JSON text by ``_dumps``
    (no encoder writes one that deep)."""

    def __new__(cls, depth: int) -> Deep:
        text = super().__new__(cls, f"__deep_{depth}__")
        text.depth = depth  # type: ignore[attr-defined]
        return text


def deep_text(depth: int, inner: bytes = b"0") -> bytes:
    opens = b"".join(b"[" if i % 2 else b'{"k":' for i in range(depth))
    closes = b"".join(b"]" if i % 2 else b"}" for i in reversed(range(depth)))
    return opens + inner + closes


hostile = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**200), max_value=2**200),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=40),
    st.just("9" * 5_000),
    st.just('["' + "1" * 5_000 + '", "2"]'),
    st.just('["18446744073709551616", "1"]'),
    st.just("0001-01-01T00:00:00Z"),
    st.just("9999-12-31T23:59:59.999999+14:00"),
    st.just("ABCDEF00-1111-4222-8333-444455556666"),
    st.integers(min_value=1, max_value=3_000).map(Deep),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=3),
)


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    out = [prefix] if prefix else []
    if isinstance(value, dict):
        for k, v in value.items():
            out += paths(v, (*prefix, k))
    return out


def replaced(document: dict[str, Any], path: tuple, value: Any) -> dict[str, Any]:
    doc = copy.deepcopy(document)
    target = doc
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return doc


def mutations(document: dict[str, Any]) -> st.SearchStrategy[bytes]:
    """A valid envelope with one field (anywhere in it) set to a hostile value, or the JSON text
    cut short, or the value wrapped in deep nesting; raw bytes too."""
    one_field = st.tuples(st.sampled_from(paths(document)), hostile).map(
        lambda pv: _dumps(replaced(document, pv[0], pv[1]))
    )
    valid = orjson.dumps(document)
    cut = st.integers(min_value=0, max_value=len(valid)).map(lambda n: valid[:n])
    wrapped = st.integers(min_value=1, max_value=3_000).map(lambda d: deep_text(d, valid))
    return st.one_of(one_field, cut, wrapped, st.binary(max_size=200))


def _dumps(value: Any) -> bytes:
    import json

    text = json.dumps(value).encode()  # json, not orjson: it writes integers past 64 bits
    for depth in {v.depth for v in _leaves(value) if isinstance(v, Deep)}:
        text = text.replace(f'"__deep_{depth}__"'.encode(), deep_text(depth))
    return text


def _leaves(value: Any) -> list[Any]:
    if isinstance(value, dict):
        return [leaf for v in value.values() for leaf in _leaves(v)]
    return [value]


def decoded(kind: str, value: bytes | None) -> list[Any]:
    fn = DecodeFn(kind)
    fn.setup()
    [out] = list(fn.process(("topic", [(0, 11, b"key", value, 0)])))
    return out


def check_one_item_per_record(out: list[Any], value: bytes | None, kinds: tuple[type, ...]) -> None:
    [item] = out
    assert type(item) in (*kinds, Skipped, DeadLetter)
    assert item.position.offset == 11
    if type(item) is DeadLetter:
        assert item.value == value and item.key == b"key" and item.reason


@SETTINGS
@given(mutations(EVENT))
def test_decode_of_any_event_record_is_a_change_or_its_dead_letter(value):
    check_one_item_per_record(decoded("engagement", value), value, (EngagementChange,))


@SETTINGS
@given(mutations(CONTENT_ROW))
def test_decode_of_any_content_record_is_a_change_or_its_dead_letter(value):
    check_one_item_per_record(decoded("content", value), value, (ContentChange,))


@SETTINGS
@given(mutations(EVENT))
def test_the_join_hands_on_one_item_per_decoded_change_and_never_raises(value):
    join = JoinContentFn({}, "content", 0.0, 1, view_factory=FakeView)
    join.setup()
    changes = decoded("engagement", value)
    out = [item for batch in join.process(changes) for item in batch]
    assert len(out) == 1
    assert type(out[0]) in (EnrichedChange, Parked, DeadLetter, Skipped)


@SETTINGS
@given(mutations(EVENT), st.binary(max_size=60))
def test_unpark_of_any_parking_record_is_a_change_or_its_dead_letter(value, raw):
    parked = Parked(SourcePosition("events", 3, 9), b"key", value, "c", None, KNOWN, 0, 5)
    fn = UnparkFn({}, "content", 0.0, 1, poll_s=0.001, view_factory=FakeView, clock_ms=lambda: 10)
    fn.setup()
    for record_value in (park_envelope(parked, "redis"), raw):
        [out] = list(fn.process(("parked", [(0, 11, b"k", record_value, 0)])))
        [item] = out
        assert type(item) in (EnrichedChange, Parked, DeadLetter, Skipped)
        assert item.position.offset == 11


def test_a_sequence_past_4300_digits_or_64_bits_is_no_sequence_and_the_event_is_kept():
    for sequence in ('["' + "1" * 5_000 + '", "2"]', '["18446744073709551616", "1"]'):
        [change] = decoded("engagement", _dumps(replaced(EVENT, ("source", "sequence"), sequence)))
        assert type(change) is EngagementChange and change.sequence is None


def test_a_raw_payload_nested_past_every_parser_is_a_dead_letter_with_the_reason():
    value = _dumps(replaced(EVENT, ("after", "raw_payload"), Deep(5_000)))
    [letter] = decoded("engagement", value)
    assert type(letter) is DeadLetter
    assert letter.stage == "decode_engagement" and letter.value == value
    assert letter.reason.startswith("value is not valid JSON: depth limit exceeded")
