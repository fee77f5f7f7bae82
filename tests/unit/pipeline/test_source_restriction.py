"""The source's restriction: claims, stops, self-checkpoints and the resume position (no Kafka)."""

import pytest

from pipeline.sources.partition_offsets import (
    UNBOUNDED,
    PartitionOffsets,
    PartitionOffsetsTracker,
    PartitionSpec,
    ReaderRestrictions,
    ReaderSpec,
    readers,
)


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
    assert restriction == PartitionOffsets((0, 3), (5, 7), (9, 7))
    assert provider.restriction_size(spec, restriction) == 4
    unbounded = ReaderSpec("t", (PartitionSpec("t", 0, 5),))
    assert provider.restriction_size(unbounded, provider.initial_restriction(unbounded)) == 1


def test_readers_deal_partitions_round_robin():
    specs = [PartitionSpec("t", p, 0) for p in range(16)]
    one = readers(specs, 1)
    assert len(one) == 1 and [p.partition for p in one[0].partitions] == list(range(16))
    four = readers(specs, 4)
    assert [p.partition for p in four[0].partitions] == [0, 4, 8, 12]
    assert len(readers(specs, 40)) == 16  # never more readers than partitions
