"""The source's restriction: claims, stops, self-checkpoints, the resume position and the backlog it
reports to the runner (no Kafka)."""

import pytest

from pipeline.sources.partition_offsets import (
    UNBOUNDED,
    BacklogEstimate,
    PartitionOffsets,
    PartitionOffsetsTracker,
    PartitionSpec,
    ReaderRestrictions,
    ReaderSpec,
    offsets_left,
    readers,
)


class Ends(BacklogEstimate):
    """A fixed backlog estimate: end offsets by (topic, partition), bytes per record by topic."""

    def __init__(self, ends: dict[tuple[str, int], int], record_bytes: dict[str, float] | None = None) -> None:
        self.ends = ends
        self.record_bytes = record_bytes or {}

    def end_offset(self, topic: str, partition: int) -> int | None:
        return self.ends.get((topic, partition))

    def bytes_per_record(self, topic: str) -> float | None:
        return self.record_bytes.get(topic)


def tracker(starts=(0, 10), stops=(UNBOUNDED, UNBOUNDED)) -> PartitionOffsetsTracker:
    return PartitionOffsetsTracker(PartitionOffsets((0, 1), tuple(starts), tuple(stops)))


def test_claims_strictly_increase_per_partition():
    t = tracker()
    assert t.try_claim((0, 0)) and t.try_claim((1, 10)) and t.try_claim((0, 5))  # gaps are fine
    with pytest.raises(ValueError):
        t.try_claim((0, 5))
    with pytest.raises(ValueError):
        t.try_claim((1, 3))  # below the restriction's start


def test_checkpoint_resumes_at_the_next_offset_to_read():
    t = tracker()
    t.try_claim((0, 0))
    t.try_claim((0, 1))
    t.try_claim((1, 10))
    primary, residual = t.try_split(0)
    assert primary == PartitionOffsets((0, 1), (0, 10), (2, 11))
    assert residual == PartitionOffsets((0, 1), (2, 11), (UNBOUNDED, UNBOUNDED))
    t.check_done()  # the primary is complete
    assert t.try_claim((0, 2)) is False  # nothing more after a checkpoint


def test_abort_midway_then_resume_skips_and_repeats_nothing():
    """Run 1 claims part of a bounded range and checkpoints; run 2 starts from the residual."""
    offsets = list(range(0, 20))
    first = PartitionOffsetsTracker(PartitionOffsets((0,), (0,), (20,)))
    emitted = [o for o in offsets[:7] if first.try_claim((0, o))]
    _, residual = first.try_split(0)
    second = PartitionOffsetsTracker(residual)
    emitted += [o for o in offsets[7:] if second.try_claim((0, o))]
    assert emitted == offsets
    second.check_done()


def test_runner_initiated_splits_are_refused():
    t = tracker()
    t.try_claim((0, 0))
    assert t.try_split(0.5) is None
    assert t.current_restriction().stops == (UNBOUNDED, UNBOUNDED)


def test_bounded_stop_claim_marks_the_partition_done():
    t = PartitionOffsetsTracker(PartitionOffsets((0, 1), (0, 0), (3, 0)))
    assert t.try_claim((0, 0)) and t.try_claim((0, 1))
    with pytest.raises(ValueError, match="not read to their stop"):
        t.check_done()
    # Compaction removed offset 2: claiming the stop itself finishes the partition.
    assert t.try_claim((0, 3)) is False
    t.check_done()
    assert t.is_bounded()


def test_progress_is_finite():
    t = tracker()
    t.try_claim((0, 0))
    progress = t.current_progress()
    assert progress.fraction_completed == pytest.approx(0.5)


def test_initial_restriction_and_size():
    provider = ReaderRestrictions()
    spec = ReaderSpec("t", (PartitionSpec("t", 0, 5, 9), PartitionSpec("t", 3, 7, 7)))
    restriction = provider.initial_restriction(spec)
    assert restriction == PartitionOffsets((0, 3), (5, 7), (9, 7), "t")
    assert provider.restriction_size(spec, restriction) == 4
    unbounded = ReaderSpec("t", (PartitionSpec("t", 0, 5),))
    assert provider.restriction_size(unbounded, provider.initial_restriction(unbounded)) == 0  # no estimate


EVENTS = ReaderSpec("events", (PartitionSpec("events", 0, 100), PartitionSpec("events", 1, 40)))


def test_unbounded_size_is_the_backlog_from_the_cached_end_offsets():
    restriction = ReaderRestrictions().initial_restriction(EVENTS)
    ends = Ends({("events", 0): 105, ("events", 1): 50, ("other", 0): 10_000})
    assert ReaderRestrictions(ends).restriction_size(EVENTS, restriction) == 5 + 10
    # Dataflow reads the size as bytes: offsets weighed by the mean record size the reader measured.
    ends.record_bytes["events"] = 800.0
    assert ReaderRestrictions(ends).restriction_size(EVENTS, restriction) == 15 * 800


def test_an_unknown_end_counts_as_no_backlog_never_as_a_huge_one():
    restriction = ReaderRestrictions().initial_restriction(EVENTS)
    only_zero = Ends({("events", 0): 105}, {"events": 800.0})
    assert ReaderRestrictions(only_zero).restriction_size(EVENTS, restriction) == 5 * 800
    assert ReaderRestrictions(Ends({}, {"events": 800.0})).restriction_size(EVENTS, restriction) == 0


def test_an_end_below_the_next_offset_counts_as_no_backlog():
    restriction = ReaderRestrictions().initial_restriction(EVENTS)
    behind = Ends({("events", 0): 90, ("events", 1): 40})  # an older end, or the one being read to
    assert ReaderRestrictions(behind).restriction_size(EVENTS, restriction) == 0
    assert offsets_left((0, 1), (100, 40), (UNBOUNDED, UNBOUNDED), {0: 90, 1: 41}.get) == 1


def test_bounded_size_stays_exact_whatever_the_estimate_says():
    spec = ReaderSpec("events", (PartitionSpec("events", 0, 100, 130),))
    misleading = Ends({("events", 0): 1_000_000}, {"events": 800.0})
    provider = ReaderRestrictions(misleading)
    assert provider.restriction_size(spec, provider.initial_restriction(spec)) == 30


def test_progress_reports_the_offsets_read_and_the_backlog_left():
    ends = Ends({("events", 0): 110, ("events", 1): 40})
    provider = ReaderRestrictions(ends)
    t = provider.create_tracker(provider.initial_restriction(EVENTS))
    assert t.try_claim((0, 100)) and t.try_claim((0, 103))
    progress = t.current_progress()
    assert (progress.completed_work, progress.remaining_work) == (4.0, 6.0)
    # Caught up: still 1 left, so an unbounded element is never reported done (a runner's checkpoint
    # request is answered only below 1).
    ends.ends[("events", 0)] = 104
    progress = t.current_progress()
    assert (progress.completed_work, progress.remaining_work) == (4.0, 1.0)
    assert progress.fraction_completed < 1


def test_bounded_progress_is_exact():
    t = PartitionOffsetsTracker(PartitionOffsets((0,), (10,), (20,), "events"), Ends({("events", 0): 99}))
    t.try_claim((0, 14))
    progress = t.current_progress()
    assert (progress.completed_work, progress.remaining_work) == (5.0, 5.0)


def test_a_large_backlog_changes_no_split_decision():
    ends = Ends({("events", 0): 10_000_000, ("events", 1): 10_000_000}, {"events": 800.0})
    provider = ReaderRestrictions(ends)
    t = provider.create_tracker(provider.initial_restriction(EVENTS))
    t.try_claim((0, 100))
    assert t.try_split(0.5) is None and t.try_split(0.001) is None  # a partition stays one reader
    assert t.current_restriction().stops == (UNBOUNDED, UNBOUNDED)


def test_the_self_checkpoint_residual_resumes_where_the_reader_stopped_and_is_sized_from_there():
    ends = Ends({("events", 0): 150, ("events", 1): 45}, {"events": 2.0})
    provider = ReaderRestrictions(ends)
    t = provider.create_tracker(provider.initial_restriction(EVENTS))
    for offset in range(100, 120):
        assert t.try_claim((0, offset))
    assert t.try_claim((1, 42))
    primary, residual = t.try_split(0)
    assert primary == PartitionOffsets((0, 1), (100, 40), (120, 43), "events")
    assert residual == PartitionOffsets((0, 1), (120, 43), (UNBOUNDED, UNBOUNDED), "events")
    # Beam sizes the deferred residual right after process() returns: the backlog from its starts.
    assert provider.restriction_size(EVENTS, residual) == ((150 - 120) + (45 - 43)) * 2
    assert provider.restriction_size(EVENTS, primary) == 20 + 3  # bounded: exact offsets
    assert t.current_progress().remaining_work == 0.0  # the primary is done


def test_readers_deal_partitions_round_robin():
    specs = [PartitionSpec("t", p, 0) for p in range(16)]
    one = readers(specs, 1)
    assert len(one) == 1 and [p.partition for p in one[0].partitions] == list(range(16))
    four = readers(specs, 4)
    assert [p.partition for p in four[0].partitions] == [0, 4, 8, 12]
    assert len(readers(specs, 40)) == 16  # never more readers than partitions
