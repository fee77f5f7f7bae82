"""The end offsets the readers saw: what the source's backlog estimate reads, and how the reader fills it."""

from __future__ import annotations

from apache_beam.internal import pickler
from apache_beam.utils.timestamp import Timestamp
from confluent_kafka import TopicPartition

from pipeline.sources.end_offsets import END_OFFSETS, EndOffsetCache
from pipeline.sources.kafka_partitions import ReadPartitionsFn, SourceTuning, _Reader
from pipeline.sources.partition_offsets import PartitionSpec, ReaderRestrictions, ReaderSpec


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_end_is_known_until_it_is_older_than_the_max_age():
    clock = Clock()
    cache = EndOffsetCache(max_age_s=60.0, clock=clock)
    assert cache.end_offset("events", 3) is None
    cache.record_end("events", 3, 500)
    clock.now += 60.0
    assert cache.end_offset("events", 3) == 500
    assert cache.end_offset("events", 4) is None and cache.end_offset("other", 3) is None
    clock.now += 0.5
    assert cache.end_offset("events", 3) is None  # stale: no backlog rather than an old guess
    cache.record_end("events", 3, 700)
    assert cache.end_offset("events", 3) == 700


def test_an_unknown_end_from_librdkafka_keeps_the_last_known_one():
    cache = EndOffsetCache()
    cache.record_end("events", 3, 500)
    cache.record_end("events", 3, -1001)  # OFFSET_INVALID: no fetch response yet
    cache.record_end("events", 3, None)
    assert cache.end_offset("events", 3) == 500


def test_the_record_size_is_a_moving_mean_of_the_samples():
    cache = EndOffsetCache()
    assert cache.bytes_per_record("events") is None
    cache.record_size("events", 1000.0)
    assert cache.bytes_per_record("events") == 1000.0
    cache.record_size("events", 2000.0)
    assert cache.bytes_per_record("events") == 1000.0 + EndOffsetCache.SIZE_WEIGHT * 1000.0


def test_pickled_it_is_the_process_cache_never_a_copy():
    """The restriction provider pickles with the DoFn: on the worker it must read what the reader writes."""
    provider = pickler.loads(pickler.dumps(ReaderRestrictions(EndOffsetCache())))
    assert provider._estimate is END_OFFSETS


class Marks:
    """A consumer whose cached watermarks are fixed; anything else fails the test."""

    def __init__(self, highs: dict[int, int]) -> None:
        self.highs = highs
        self.asked: list[tuple[int, bool]] = []

    def get_watermark_offsets(self, tp: TopicPartition, cached: bool) -> tuple[int, int]:
        self.asked.append((tp.partition, cached))
        return 0, self.highs[tp.partition]


class Watermark:
    def __init__(self) -> None:
        self.mark: Timestamp | None = None

    def current_watermark(self) -> Timestamp | None:
        return self.mark

    def set_watermark(self, mark: Timestamp) -> None:
        self.mark = mark


def test_the_reader_records_every_partitions_cached_end_after_a_call():
    fn = ReadPartitionsFn({}, SourceTuning(), "unit")
    fn.setup()
    fn._ends = cache = EndOffsetCache()
    consumer = Marks({0: 120, 1: 55, 2: -1001})
    # Partition 0 has nothing read yet (it holds the watermark back); the later ones are still recorded.
    reader = _Reader(consumer, {}, {1: 1_700_000_000_000})  # type: ignore[arg-type]
    watermark = Watermark()
    fn._advance_watermark(watermark, reader, "events", {0: 100, 1: 50, 2: 7})  # type: ignore[arg-type]
    assert consumer.asked == [(0, True), (1, True), (2, True)]  # librdkafka's cached marks only
    assert [cache.end_offset("events", p) for p in (0, 1, 2)] == [120, 55, None]
    assert watermark.mark is None  # still held back by partition 0
    spec = ReaderSpec("events", tuple(PartitionSpec("events", p, start) for p, start in ((0, 100), (1, 50), (2, 7))))
    provider = ReaderRestrictions(cache)
    assert provider.restriction_size(spec, provider.initial_restriction(spec)) == 20 + 5
