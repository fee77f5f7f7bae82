"""The reader placement replays Flink's and Beam's hashing; the expected values were computed with
the Java classes themselves (jshell on .stack/lib/flink: MathUtils.murmurHash, Guava's
murmur3_128().hashBytes(..).asInt(), KeyGroupRangeAssignment)."""

import dataclasses

import mmh3
import pytest

from pipeline.sources.flink_subtasks import encode, flink_murmur_hash, key_hash, spread, subtask
from pipeline.sources.partition_offsets import PartitionSpec, ReaderSpec, readers


@pytest.mark.parametrize(
    ("code", "expected"), [(0, 593689054), (12345, 638799361), (-7, 206585249), (-(1 << 31), 1718298732)]
)
def test_flinks_murmur_hash_of_an_int(code, expected):
    assert flink_murmur_hash(code) == expected


def test_the_key_group_of_a_java_integer_key():
    assert flink_murmur_hash(5) % 128 == 126  # KeyGroupRangeAssignment.assignToKeyGroup(5, 128)


def test_beams_flink_key_hash_is_guavas_murmur3_128_as_int_of_the_length_prefixed_bytes():
    # FlinkKey.of(b"abc", LengthPrefixCoder(ByteArrayCoder)) hashes [3, 'a', 'b', 'c'].
    assert key_hash(b"abc") == 1626570335
    assert int.from_bytes(mmh3.hash_bytes(b"hello world, a longer key!")[:4], "little", signed=True) == 1361371751


def test_subtask_of_a_key_group():
    # computeOperatorIndexForKeyGroup(128, 3, 100) == 2
    assert 100 * 3 // 128 == 2
    for parallelism in (1, 2, 3, 16):
        assert 0 <= subtask(b"anything", parallelism) < parallelism


def _specs(count: int) -> list[PartitionSpec]:
    return [PartitionSpec("cdc.public.engagement_events", p, 1000 + p) for p in range(count)]


@pytest.mark.parametrize(("partitions", "count", "parallelism"), [(16, 2, 2), (16, 16, 2), (16, 4, 4), (16, 16, 3)])
def test_spread_puts_reader_j_on_subtask_j_mod_parallelism(partitions, count, parallelism):
    placed = spread(readers(_specs(partitions), count), parallelism)
    assert [subtask(encode(r), parallelism) for r in placed] == [j % parallelism for j in range(len(placed))]


def test_spread_changes_nothing_but_the_slot():
    before = readers(_specs(16), 4)
    after = spread(before, 2)
    assert [dataclasses.replace(r, slot=0) for r in after] == before


def test_one_subtask_needs_no_spread():
    before = readers(_specs(16), 2)
    assert spread(before, 1) == before
    assert all(r.slot == 0 for r in spread(before, 1))


def test_the_encoding_is_beams_fast_primitives_coder_of_the_pickled_element():
    element = ReaderSpec("t", (PartitionSpec("t", 0, 0),), slot=3)
    assert encode(element)[:1] == b"\xff"  # FastPrimitivesCoder's "unknown type": a pickle follows
    assert encode(element) == encode(ReaderSpec("t", (PartitionSpec("t", 0, 0),), slot=3))
    assert encode(element) != encode(ReaderSpec("t", (PartitionSpec("t", 0, 0),), slot=4))
