"""Decode and join steps in a TestPipeline, with an in-memory content view (no Kafka)."""

from datetime import UTC, datetime

import apache_beam as beam
import orjson
from apache_beam.testing.test_pipeline import TestPipeline as BeamTestPipeline
from apache_beam.testing.util import assert_that, equal_to

from pipeline.model import ContentRow, EnrichedChange, Skipped
from pipeline.transforms.enrich import DEAD_LETTER, DecodeFn, JoinContentFn

KNOWN = "11111111-1111-4111-8111-111111111111"
UNKNOWN = "22222222-2222-4222-8222-222222222222"


ROWS = {KNOWN: ContentRow(KNOWN, "s", "t", "video", 100, datetime(2026, 1, 1, tzinfo=UTC))}


class FakeView:
    rows: dict[str, ContentRow] = ROWS

    def get(self, content_id):
        return self.rows.get(content_id)

    def wait_for(self, content_id, timeout):
        return self.rows.get(content_id)

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


def test_decode_and_join_route_good_bad_and_unknown():
    records = [
        record(0, envelope(1, KNOWN, 50_000)),
        record(1, b"{broken"),
        record(2, None),  # tombstone
        record(3, envelope(3, UNKNOWN, 1_000)),
    ]
    with BeamTestPipeline() as p:
        decoded = (
            p
            | beam.Create([("events", records[:2]), ("events", records[2:])])  # the source emits batches
            | "Decode" >> beam.ParDo(DecodeFn("engagement")).with_outputs(DEAD_LETTER, main="ok")
        )
        joined = decoded.ok | "Join" >> beam.ParDo(
            JoinContentFn({}, "content", late_content_timeout_s=0.1, startup_timeout_s=1, view_factory=fake_view)
        ).with_outputs(DEAD_LETTER, main="ok")

        def summary(e: EnrichedChange):
            return (e.position.offset, [(k.content_id, k.seconds, k.pct, k.sign) for k in e.contributions])

        assert_that(
            joined.ok | beam.FlatMap(lambda batch: [summary(e) for e in batch]),
            equal_to([(0, [(KNOWN, 50.0, 50.0, 1)]), (2, [])]),
            label="enriched",
        )
        assert_that(
            decoded.dead_letter | "DecodeReasons" >> beam.Map(lambda d: (d.position.offset, d.stage)),
            equal_to([(1, "decode_engagement")]),
            label="malformed",
        )
        assert_that(
            joined.dead_letter | "JoinReasons" >> beam.Map(lambda d: (d.position.offset, UNKNOWN in d.reason)),
            equal_to([(3, True)]),
            label="unknown content",
        )


def test_tombstones_pass_as_position_markers():
    fn = DecodeFn("engagement")
    fn.setup()
    ((out,),) = list(fn.process(("events", [record(9, None)])))
    assert isinstance(out, Skipped) and out.position.offset == 9
