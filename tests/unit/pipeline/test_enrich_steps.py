"""Decode and join steps in a TestPipeline, with an in-memory content view (no Kafka)."""

from datetime import UTC, datetime

import apache_beam as beam
import orjson
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.model import ContentRow, DeadLetter, EnrichedChange, Parked, Skipped
from pipeline.sources.content_view import FirstMisses
from pipeline.transforms.enrich import DecodeFn, JoinContentFn

KNOWN = "11111111-1111-4111-8111-111111111111"
UNKNOWN = "22222222-2222-4222-8222-222222222222"


ROWS = {KNOWN: ContentRow(KNOWN, "s", "t", "video", 100, datetime(2026, 1, 1, tzinfo=UTC))}


class FakeView:
    rows: dict[str, ContentRow] = ROWS

    def __init__(self) -> None:
        self.misses = FirstMisses()
        self.deadline_for = self.misses.deadline_for
        self.proof_ms = 2**62  # current as of any time, unless a test says otherwise

    def proven_absent_at(self, at_ms: int) -> bool:
        return self.proof_ms >= at_ms

    def get(self, content_id):
        return self.rows.get(content_id)

    alive = True

    def wait_until_current(self, timeout):
        pass

    def __len__(self):
        return len(self.rows)


def fake_view():
    return FakeView()


def record(offset: int, value: bytes | None) -> tuple:
    """One row of a source batch: (partition, offset, key, value, timestamp_ms)."""
    return (0, offset, b'{"id": 1}', value, 0)


def envelope(event_id: int, content_id: str, duration_ms: int) -> bytes:
    row = {
        "id": event_id,
        "content_id": content_id,
        "user_id": None,
        "event_type": "play",
        "event_ts": "2026-11-23T18:00:30Z",
        "duration_ms": duration_ms,
        "device": "web",
        "raw_payload": None,
    }
    return orjson.dumps({"before": None, "after": row, "op": "c", "source": {"ts_ms": 5}})


def test_decode_and_join_keep_every_record_in_offset_order_with_letters_in_place():
    records = [
        record(0, envelope(1, KNOWN, 50_000)),
        record(1, b"{broken"),
        record(2, None),  # tombstone
        record(3, envelope(3, UNKNOWN, 1_000)),
    ]
    with BeamTestPipeline() as p:
        joined = (
            p
            | beam.Create([("events", records[:2]), ("events", records[2:])])  # the source emits batches
            | "Decode" >> beam.ParDo(DecodeFn("engagement"))
            | "Join"
            >> beam.ParDo(
                JoinContentFn({}, "content", late_content_timeout_s=0.1, startup_timeout_s=1, view_factory=fake_view)
            )
        )

        def summary(item):
            if isinstance(item, EnrichedChange):
                return (
                    item.position.offset,
                    "enriched",
                    tuple((k.content_id, k.seconds, k.pct) for k in item.contributions),
                )
            if isinstance(item, Parked):
                return (item.position.offset, "parked", (item.content_id, item.key, item.value[:7]))
            if isinstance(item, DeadLetter):
                # Letters keep the record's original bytes, so the dead-letter topic gets them as they came.
                return (item.position.offset, item.stage, (UNKNOWN in item.reason, item.key, item.value[:7]))
            return (item.position.offset, "skipped", item.reason)

        assert_that(
            joined | beam.FlatMap(lambda batch: [summary(e) for e in batch]),
            equal_to(
                [
                    (0, "enriched", ((KNOWN, 50.0, 50.0),)),
                    (1, "decode_engagement", (False, b'{"id": 1}', b"{broken")),
                    (2, "skipped", "tombstone"),
                    (3, "parked", (UNKNOWN, b'{"id": 1}', envelope(3, UNKNOWN, 1_000)[:7])),
                ]
            ),
        )


def test_tombstones_pass_as_position_markers():
    fn = DecodeFn("engagement")
    fn.setup()
    ((out,),) = list(fn.process(("events", [record(9, None)])))
    assert isinstance(out, Skipped) and out.position.offset == 9


def test_a_join_letter_of_a_snapshot_read_sets_no_mark():
    value = orjson.loads(envelope(5, UNKNOWN, 1_000))
    value["op"] = "r"
    value["source"]["sequence"] = '["0","900"]'
    decode = DecodeFn("engagement")
    decode.setup()
    ((change,),) = list(decode.process(("events", [record(5, orjson.dumps(value))])))
    assert change.sequence == (0, 900)
    join = JoinContentFn({}, "content", late_content_timeout_s=0.0, startup_timeout_s=1, view_factory=fake_view)
    join.setup()
    ((letter,),) = list(join.process([change]))
    assert isinstance(letter, DeadLetter) and letter.stage == "join_content"
    # Every snapshot row carries the snapshot's LSN: a mark from it would drop later streamed changes.
    assert letter.sequence is None and letter.deterministic is False


def join_at(clock: list[int], timeout_s: float = 10.0) -> JoinContentFn:
    join = JoinContentFn(
        {},
        "content",
        late_content_timeout_s=timeout_s,
        startup_timeout_s=1,
        view_factory=fake_view,
        clock_ms=lambda: clock[0],
    )
    join.setup()
    return join


def decoded(offset: int, content_id: str):
    decode = DecodeFn("engagement")
    decode.setup()
    ((change,),) = list(decode.process(("events", [record(offset, envelope(offset, content_id, 1_000))])))
    return change


def test_events_of_one_missing_content_share_one_deadline_and_then_go_to_the_dead_letter_topic():
    clock = [1_000_000]
    join = join_at(clock)
    ((first,),) = list(join.process([decoded(0, UNKNOWN)]))
    clock[0] += 4_000
    ((second,),) = list(join.process([decoded(1, UNKNOWN)]))
    assert isinstance(first, Parked) and isinstance(second, Parked)
    # One bounded wait per content id, not per event: the second event waits 6 s, not 10.
    assert first.deadline_ms == second.deadline_ms == 1_010_000
    assert (first.content_id, first.sequence, first.commit_ts_ms) == (UNKNOWN, None, 5)
    clock[0] = 1_010_000
    ((late,),) = list(join.process([decoded(2, UNKNOWN)]))
    assert isinstance(late, DeadLetter) and late.stage == "join_content"
    assert late.reason == f"content {UNKNOWN} not found within 10 s (content view has 1 rows)"
    assert (late.position.offset, late.value) == (2, envelope(2, UNKNOWN, 1_000))


def test_past_the_deadline_a_view_behind_its_topic_parks_the_event_again_until_it_proves_the_content_absent():
    clock = [1_000_000]
    join = join_at(clock)
    ((first,),) = list(join.process([decoded(0, UNKNOWN)]))
    clock[0] = 1_015_000
    join._view.proof_ms = 1_009_999  # the view has read its topic only up to just before the deadline
    ((behind,),) = list(join.process([decoded(1, UNKNOWN)]))
    assert isinstance(behind, Parked) and behind.deadline_ms == first.deadline_ms == 1_010_000
    join._view.proof_ms = 1_010_000
    ((letter,),) = list(join.process([decoded(2, UNKNOWN)]))
    assert isinstance(letter, DeadLetter) and letter.stage == "join_content"


def test_a_known_content_is_joined_while_another_is_missing():
    join = join_at([0])
    (out,) = list(join.process([decoded(0, UNKNOWN), decoded(1, KNOWN)]))
    assert [type(item) for item in out] == [Parked, EnrichedChange]


def test_the_join_replaces_a_view_whose_reader_died_at_its_next_bundle():
    views: list[FakeView] = []

    def factory():
        views.append(FakeView())
        return views[-1]

    join = JoinContentFn({}, "content", late_content_timeout_s=1.0, startup_timeout_s=1, view_factory=factory)
    join.setup()
    join.start_bundle()
    assert len(views) == 1  # alive: kept
    views[0].alive = False
    join.start_bundle()
    assert len(views) == 2 and join._view is views[1]
