"""The parked lane's step: back when the content is known, waits until the deadline, then a letter."""

from __future__ import annotations

from pipeline.model import ContentRow, DeadLetter, EnrichedChange, Parked, SourcePosition
from pipeline.transforms.unpark import UnparkFn
from sinks.parking import envelope as park_envelope

from .test_enrich_steps import KNOWN, ROWS, UNKNOWN, envelope

LATE = ContentRow(UNKNOWN, "s2", "t2", "podcast", 200, None)


class WaitingView:
    """A view whose ``wait_for`` advances the clock, and may see the content arrive at some time."""

    def __init__(
        self, clock: list[int], arrives_at_ms: int | None = None, proof_at: tuple[int, int] | None = None
    ) -> None:
        self.rows = dict(ROWS)
        self.clock = clock
        self.arrives_at_ms = arrives_at_ms
        self.waits: list[float] = []
        self.proof_ms = 2**62  # current as of any time, unless a test says otherwise
        self.proof_waits: list[int | None] = []
        # (when, proof_ms): the view, behind until then, proves it has read its topic up to proof_ms
        self.proof_at = proof_at
        if proof_at is not None:
            self.proof_ms = 0

    def get(self, content_id):
        return self.rows.get(content_id)

    def proven_absent_at(self, at_ms):
        return self.proof_ms >= at_ms

    def wait_for_any(self, content_ids, timeout, proof_at_ms=None):
        self.waits.append(timeout)
        self.proof_waits.append(proof_at_ms)
        if self.proof_at is not None and proof_at_ms is not None:
            when, proof_ms = self.proof_at
            if self.clock[0] + timeout * 1000 >= when and proof_ms >= proof_at_ms:
                self.clock[0], self.proof_ms = max(self.clock[0], when), proof_ms
                return False
        if self.arrives_at_ms is not None and self.clock[0] + timeout * 1000 >= self.arrives_at_ms:
            self.clock[0] = self.arrives_at_ms
            self.rows[UNKNOWN] = LATE
        else:
            self.clock[0] += int(timeout * 1000)
        return any(c in self.rows for c in content_ids)

    alive = True

    def wait_until_current(self, timeout):
        pass

    def __len__(self):
        return len(self.rows)


def parking_record(offset: int, origin_offset: int, content_id: str, deadline_ms: int, sink: str = "redis") -> tuple:
    parked = Parked(
        SourcePosition("events", 3, origin_offset),
        b'{"content_id": "x"}',
        envelope(origin_offset, content_id, 20_000),
        "c",
        None,
        content_id,
        deadline_ms,
        5,
    )
    return (1, offset, b"k", park_envelope(parked, sink), 0)


def unpark(view: WaitingView, rows: list[tuple]) -> list:
    fn = UnparkFn({}, "content", 10.0, 1, poll_s=1.0, view_factory=lambda: view, clock_ms=lambda: view.clock[0])
    fn.setup()
    (out,) = list(fn.process(("parked", rows)))
    return out


def test_an_event_whose_content_has_arrived_comes_back_for_the_sink_that_parked_it():
    view = WaitingView([1_000])
    (back,) = unpark(view, [parking_record(7, 40, KNOWN, 9_000)])
    assert isinstance(back, EnrichedChange)
    assert (back.position, back.origin, back.for_sink) == (
        SourcePosition("parked", 1, 7),
        SourcePosition("events", 3, 40),
        "redis",
    )
    assert back.identity.record_id == "events/3/40" and back.engagement_seconds == 20.0
    assert back.value == envelope(40, KNOWN, 20_000) and view.waits == []


def test_a_batch_waits_once_briefly_for_missing_content_and_goes_on_when_it_arrives():
    view = WaitingView([1_000], arrives_at_ms=1_600)
    back, known = unpark(view, [parking_record(0, 41, UNKNOWN, 9_000), parking_record(1, 45, KNOWN, 9_000)])
    assert isinstance(back, EnrichedChange) and back.content == LATE
    assert isinstance(known, EnrichedChange) and view.waits == [1.0] and view.clock == [1_600]


def test_what_is_still_missing_after_the_wait_is_parked_again_not_waited_for_in_order():
    view = WaitingView([1_000])
    first, second, known = unpark(
        view,
        [
            parking_record(0, 42, UNKNOWN, 9_000),
            parking_record(1, 43, UNKNOWN, 9_000),
            parking_record(2, 46, KNOWN, 9_000),
        ],
    )
    # One wait of at most poll_s for the batch, then both go round again; the known one is back.
    assert view.waits == [1.0] and isinstance(known, EnrichedChange)
    for again, (offset, origin) in ((first, (0, 42)), (second, (1, 43))):
        assert isinstance(again, Parked)
        assert (again.position, again.origin, again.for_sink) == (
            SourcePosition("parked", 1, offset),
            SourcePosition("events", 3, origin),
            "redis",
        )
        assert (again.content_id, again.deadline_ms, again.value) == (UNKNOWN, 9_000, envelope(origin, UNKNOWN, 20_000))


def test_it_never_waits_past_the_nearest_deadline():
    view = WaitingView([8_700])
    (again,) = unpark(view, [parking_record(0, 47, UNKNOWN, 9_000)])
    assert view.waits == [0.3] and isinstance(again, DeadLetter)  # the deadline passed while waiting


def test_past_its_deadline_it_is_dead_lettered_with_its_original_bytes_for_its_sink():
    view = WaitingView([9_000])
    first, second = unpark(view, [parking_record(0, 42, UNKNOWN, 9_000), parking_record(1, 43, UNKNOWN, 9_000)])
    assert view.waits == []  # nothing to wait for: both deadlines have passed
    for letter, origin in ((first, 42), (second, 43)):
        assert isinstance(letter, DeadLetter)
        assert (letter.stage, letter.for_sink, letter.origin) == (
            "join_content",
            "redis",
            SourcePosition("events", 3, origin),
        )
        assert letter.reason == f"content {UNKNOWN} not found within 10 s (content view has 1 rows)"
        assert (letter.key, letter.value) == (b'{"content_id": "x"}', envelope(origin, UNKNOWN, 20_000))
        assert letter.sequence is None


def test_past_its_deadline_it_waits_for_a_view_behind_its_topic_and_goes_round_again_if_still_unproven():
    view = WaitingView([9_500], proof_at=(12_000, 9_000))
    (again,) = unpark(view, [parking_record(0, 42, UNKNOWN, 9_000)])
    # Valid data is never dead-lettered on a deadline alone: the view has not read up to it yet.
    assert isinstance(again, Parked) and (again.deadline_ms, again.origin) == (9_000, SourcePosition("events", 3, 42))
    assert (view.waits, view.proof_waits, view.clock) == ([1.0], [9_000], [10_500])


def test_past_its_deadline_it_is_dead_lettered_once_the_view_proves_the_content_absent():
    view = WaitingView([9_500], proof_at=(9_700, 9_000))
    (letter,) = unpark(view, [parking_record(0, 42, UNKNOWN, 9_000)])
    assert isinstance(letter, DeadLetter) and letter.stage == "join_content"
    assert (view.waits, view.proof_waits, view.clock) == ([1.0], [9_000], [9_700])


def test_a_record_that_is_not_an_envelope_is_dead_lettered_not_raised():
    view = WaitingView([0])
    (letter,) = unpark(view, [(0, 5, b"k", b"\xc1garbage", 0)])
    assert isinstance(letter, DeadLetter) and letter.stage == "decode_parked"
    assert letter.reason == (
        "BadEnvelopeError: not a parking envelope: MessagePack data is malformed: invalid opcode '\\xc1' (byte 0)"
    )
    assert letter.value == b"\xc1garbage"


def test_a_returning_event_keeps_its_debezium_sequence():
    import orjson

    value = orjson.loads(envelope(44, KNOWN, 1_000))
    value["source"]["sequence"] = '["100","200"]'
    parked = Parked(SourcePosition("events", 0, 44), b"k", orjson.dumps(value), "c", (100, 200), KNOWN, 9_000, 5)
    (back,) = unpark(WaitingView([0]), [(0, 0, b"k", park_envelope(parked, "bigquery"), 0)])
    assert back.sequence == (100, 200) and back.for_sink == "bigquery"
