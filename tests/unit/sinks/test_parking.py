"""Parking in the shared flush: park letters, returning records for one sink only, claims."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import msgspec

from sinks.contract import Batch, ClaimGone, Outcome
from sinks.flush import Flusher
from sinks.parking import PARK_STAGE, decode_envelope
from sinks.positions import Position
from sinks.records import DeadLetter, EnrichedChange, Parked, SourcePosition

from .fakes import FakeSink, Letters, change

PARKING = "parked"


class ParkingSink(FakeSink):
    """An atomic fake that keeps parked ids the way the Redis sinks do: with its positions."""

    def __init__(self, **kwargs) -> None:
        super().__init__(atomic=True, **kwargs)
        self.parked: set[str] = set()
        self.claims_seen: list[tuple[str, ...]] = []

    def write(self, batch: Batch[EnrichedChange]) -> Outcome:
        self.claims_seen.append(tuple(batch.claims))
        gone = [claim for claim in batch.claims if claim not in self.parked]
        if gone:
            raise ClaimGone(gone)
        outcome = super().write(batch)
        self.parked -= set(batch.claims)
        self.parked |= set(batch.parks)
        return outcome

    def commit(
        self, positions: Mapping[str, Position], expected: Mapping[str, Position | None], parks: Sequence[str] = ()
    ) -> None:
        super().commit(positions, expected)
        self.parked |= set(parks)


def parked(offset: int, content_id: str = "c1") -> Parked:
    return Parked(SourcePosition("t", 0, offset), b"k", b"v%d" % offset, "c", (1, offset), content_id, 9_000, 5)


def returning(parking_offset: int, origin_offset: int, sink: str = "fake", sequence=None) -> EnrichedChange:
    back = change(origin_offset)
    return msgspec.structs.replace(
        back,
        position=SourcePosition(PARKING, 0, parking_offset),
        sequence=sequence,
        origin=SourcePosition("t", 0, origin_offset),
        for_sink=sink,
    )


def run(sink: FakeSink, items: list, topic: str = "t", owns: bool = True) -> tuple[Letters, object]:
    letters = Letters(sink.log)
    f = Flusher(sink, letters, [topic], owns_upstream_letters=owns)
    f.load()
    return letters, f.flush(items)


def test_a_parked_event_is_written_to_the_parking_topic_by_each_sink_with_its_name():
    sink = ParkingSink()
    letters, report = run(sink, [change(0), parked(1), change(2)], owns=False)  # not the owner: parks anyway
    [letter] = letters.sent
    assert (letter.stage, letter.position.offset, letter.key) == (PARK_STAGE, 1, b"k")
    envelope = decode_envelope(letter.value)
    assert (envelope.sink, envelope.origin, envelope.content_id, envelope.deadline_ms) == (
        "fake",
        SourcePosition("t", 0, 1),
        "c1",
        9_000,
    )
    assert (envelope.key, envelope.value, envelope.commit_ts_ms) == (b"k", b"v1", 5)
    # The park is confirmed before the write that stores the position past it, with its id.
    assert sink.log == ["letters 1", "write 0,2"]
    assert sink.applied == [0, 2] and sink.stored["t:0"].next_offset == 3
    assert sink.parked == {"t/0/1"} and report.letters == {PARK_STAGE: 1}


def test_a_batch_of_parks_alone_stores_the_parked_ids_with_its_positions():
    sink = ParkingSink()
    run(sink, [parked(4)])
    assert sink.log == ["letters 4", "commit t:0=5"] and sink.parked == {"t/0/4"}


def test_a_returning_event_is_applied_by_the_sink_that_parked_it_and_only_that_one():
    mine, other = ParkingSink(), ParkingSink()
    other.name = "other"  # type: ignore[misc]
    mine.parked, other.parked = {"t/0/1"}, {"t/0/1"}
    run(mine, [returning(0, 1)], topic=PARKING)
    run(other, [returning(0, 1)], topic=PARKING)
    assert mine.applied == [0] and mine.claims_seen == [("t/0/1",)] and mine.parked == set()
    # The other sink only moves its position in the parking topic.
    assert other.applied == [] and other.log == ["commit parked:0=1"] and other.parked == {"t/0/1"}


def test_a_returning_event_applied_already_is_dropped_and_counted():
    # kill -9 after the park letter was confirmed and before its position was stored: the event was
    # then read again and applied directly, so its id is not parked when the copy comes back.
    sink = ParkingSink()
    sink.parked = {"t/0/3"}
    _, report = run(sink, [returning(0, 1), returning(1, 3)], topic=PARKING)
    assert sink.claims_seen == [("t/0/1", "t/0/3"), ("t/0/3",)]
    assert sink.applied == [1] and report.parked_duplicates == 1  # type: ignore[attr-defined]
    assert sink.stored == {"parked:0": Position(2)} and sink.parked == set()


def test_a_timed_out_parked_event_is_dead_lettered_by_its_own_sink_only():
    letter = DeadLetter(
        SourcePosition(PARKING, 0, 7),
        "join_content",
        "content c1 not found within 10 s",
        b"k",
        b"v",
        deterministic=False,
        origin=SourcePosition("t", 3, 40),
        for_sink="fake",
    )
    mine, other = FakeSink(), FakeSink()
    other.name = "other"  # type: ignore[misc]
    sent_mine, _ = run(mine, [letter], topic=PARKING, owns=False)
    sent_other, _ = run(other, [letter], topic=PARKING, owns=True)
    assert sent_mine.sent == [letter] and sent_other.sent == []
    assert mine.stored == other.stored == {"parked:0": Position(8)}


def test_two_copies_of_one_parked_event_in_one_batch_claim_it_once():
    sink = ParkingSink()
    sink.parked = {"t/0/1"}
    _, report = run(sink, [returning(0, 1), returning(1, 1)], topic=PARKING)
    assert sink.claims_seen == [("t/0/1",)] and sink.applied == [0]
    assert report.parked_duplicates == 1  # type: ignore[attr-defined]


def test_a_returning_event_keeps_its_sequence_for_the_sink_but_sets_no_mark():
    sink = ParkingSink()
    sink.parked = {"t/0/1", "t/0/2"}
    run(sink, [returning(0, 2, sequence=(9, 90)), returning(1, 1, sequence=(5, 50))], topic=PARKING)
    # Sequences of many event partitions interleave in a parking partition: the older one is not a
    # re-send, and the stored position has no mark.
    assert sink.applied == [0, 1] and sink.stored == {"parked:0": Position(2)}


def test_an_event_parked_again_is_written_by_its_own_sink_under_its_origin():
    again = msgspec.structs.replace(
        parked(0), position=SourcePosition(PARKING, 2, 30), origin=SourcePosition("t", 0, 7), for_sink="fake"
    )
    mine, other = ParkingSink(), ParkingSink()
    other.name = "other"  # type: ignore[misc]
    sent, _ = run(mine, [again], topic=PARKING)
    sent_other, _ = run(other, [again], topic=PARKING)
    [letter] = sent.sent
    envelope = decode_envelope(letter.value)
    assert (envelope.sink, envelope.origin, envelope.deadline_ms) == ("fake", SourcePosition("t", 0, 7), 9_000)
    assert letter.sequence is None and mine.parked == {"t/0/7"} and mine.stored == {"parked:2": Position(31)}
    assert sent_other.sent == [] and other.parked == set() and other.stored == {"parked:2": Position(31)}
