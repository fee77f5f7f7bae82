"""An offset the broker no longer has, in the middle of a run: logged, counted, and read on from."""

from __future__ import annotations

import logging

from confluent_kafka import TopicPartition

from pipeline.sources.kafka_partitions import UNBOUNDED, ReadPartitionsFn, SourceTuning, _Reader
from pipeline.sources.partition_offsets import PartitionOffsets, PartitionOffsetsTracker


class FakeConsumer:
    def __init__(self, low: int, high: int) -> None:
        self.marks = (low, high)
        self.seeks: list[tuple[int, int]] = []

    def get_watermark_offsets(self, tp, timeout, cached):
        assert cached is False  # a cached low mark is what was out of date
        return self.marks

    def seek(self, tp: TopicPartition) -> None:
        self.seeks.append((tp.partition, tp.offset))


def setup(low: int, high: int, position: int):
    fn = ReadPartitionsFn({}, SourceTuning(), "unit")
    consumer = FakeConsumer(low, high)
    reader = _Reader(consumer, {3: position}, {})  # type: ignore[arg-type]
    tracker = PartitionOffsetsTracker(PartitionOffsets((3,), (position,), (UNBOUNDED,)))
    return fn, consumer, reader, tracker


def test_offsets_deleted_by_retention_are_claimed_and_the_read_goes_on_from_the_earliest(caplog):
    fn, consumer, reader, tracker = setup(low=500, high=900, position=120)
    positions = {3: 120}
    with caplog.at_level(logging.ERROR):
        assert fn._out_of_range(reader, "events", 3, positions, tracker) is True
    assert positions == {3: 500} and consumer.seeks == [(3, 500)]
    assert tracker.try_claim((3, 500))  # the gap 120..499 is claimed: 500 is next
    assert caplog.messages == [
        "events[3]: offsets 120 to 499 were deleted by retention before this lane read them; going on from 500"
    ]


def test_an_offset_past_the_end_is_reported_and_the_partition_left_alone(caplog):
    fn, consumer, reader, tracker = setup(low=0, high=40, position=120)
    positions = {3: 120}
    with caplog.at_level(logging.ERROR):
        assert fn._out_of_range(reader, "events", 3, positions, tracker) is True
    assert positions == {3: 120} and consumer.seeks == []
    assert "offset 120 is past the end offset 40 (topic recreated?)" in caplog.messages[0]
