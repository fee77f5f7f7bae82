"""The position rules: replays, Debezium re-sends after a Connect crash, and where lanes resume."""

from sinks.positions import Mark, Position, admit, decode, encode, key_digest, parking_floors, resume_offsets
from sinks.records import Skipped, SourcePosition

from .fakes import change


def offsets(items) -> list[int]:
    return [i.position.offset for i in items]


def test_replays_below_the_stored_offset_are_dropped_and_positions_cover_the_batch():
    admitted = admit([change(o) for o in range(10, 20)], {"t:0": Position(15)})
    assert offsets(admitted.fresh) == [15, 16, 17, 18, 19]
    assert admitted.replays == 5 and admitted.resends == 0
    assert admitted.positions == {"t:0": Position(20)}


def test_a_resend_at_new_offsets_is_dropped_by_its_sequence():
    first = [change(0, sequence=(100, 110)), change(1, sequence=(100, 120)), change(2, sequence=(120, 130))]
    stored = admit(first, {}).positions
    # Connect crashed before committing its offsets: the last two changes come again at offsets 3 and 4.
    again = [change(3, sequence=(100, 120), key=first[1].key), change(4, sequence=(120, 130), key=first[2].key)]
    admitted = admit([*again, change(5, sequence=(130, 140))], stored)
    assert offsets(admitted.fresh) == [5]
    assert admitted.resends == 2
    assert admitted.positions["t:0"].next_offset == 6


def test_several_rows_at_one_lsn_are_all_applied_once():
    # A multi-row INSERT or COPY is one WAL record: its rows share one (commit LSN, LSN).
    group = [change(o, sequence=(500, 600), key=b'{"id": %d}' % o) for o in range(4)]
    admitted = admit(group[:2], {})
    assert offsets(admitted.fresh) == [0, 1]
    mark = admitted.positions["t:0"].mark
    assert mark == Mark(500, 600, frozenset({key_digest(group[0].key), key_digest(group[1].key)}))
    # The next batch continues the group (new rows) and Connect re-sends the first two at new offsets.
    resent = [change(4, sequence=(500, 600), key=group[0].key), change(5, sequence=(500, 600), key=group[1].key)]
    later = admit([*group[2:], *resent], admitted.positions)
    assert offsets(later.fresh) == [2, 3] and later.resends == 2


def test_a_primary_key_update_is_a_delete_and_a_create_at_one_lsn():
    delete = change(0, sequence=(7, 8), key=b'{"id": 1}', op="d")
    create = change(1, sequence=(7, 8), key=b'{"id": 2}', op="c")
    assert offsets(admit([delete, create], {}).fresh) == [0, 1]


def test_snapshot_reads_share_one_lsn_and_are_never_resends():
    reads = [change(o, sequence=(0, 900), op="r", key=b"same") for o in range(3)]
    admitted = admit(reads, {})
    assert offsets(admitted.fresh) == [0, 1, 2]
    assert admitted.positions["t:0"] == Position(3)  # no mark from snapshot reads


def test_records_without_a_sequence_only_move_the_offset():
    stored = {"t:0": Position(5, Mark(10, 20, frozenset({"ab"})))}
    tombstone = Skipped(SourcePosition("t", 0, 5), "tombstone", b"k")
    admitted = admit([tombstone, change(6)], stored)
    assert offsets(admitted.fresh) == [5, 6]
    assert admitted.positions["t:0"] == Position(7, Mark(10, 20, frozenset({"ab"})))


def test_partitions_have_their_own_marks():
    admitted = admit([change(0, 0, (10, 20)), change(0, 1, (5, 6))], {"t:1": Position(0, Mark(9, 9))})
    assert offsets(admitted.fresh) == [0]  # partition 1 at (5, 6) is below its mark (9, 9)
    assert admitted.resends == 1


def test_encoding_round_trips():
    for position in (Position(0), Position(42, Mark(1, 2, frozenset({"0011223344556677", "8899aabbccddeeff"})))):
        assert decode(encode(position)) == position
        assert decode(encode(position).encode()) == position
    assert encode(Position(3, Mark(1, 2, frozenset({"b", "a"})))) == "3;1;2;a,b"


def test_a_lane_resumes_at_the_lowest_position_over_its_sinks():
    a = {"t:0": Position(10), "t:1": Position(7), "other:0": Position(1)}
    b = {"t:0": Position(4), "t:1": Position(9)}
    assert resume_offsets("t", [a, b]) == {0: 4, 1: 7}
    # A sink with nothing stored for a partition reads it from the beginning.
    assert resume_offsets("t", [a, {"t:0": Position(4)}]) == {0: 4}
    assert resume_offsets("t", [a]) == {0: 10, 1: 7}


def test_only_a_sink_with_nothing_stored_anywhere_begins_the_parking_topic_at_its_end():
    ends = {0: 7, 1: 0}
    parked = [{}, {}, {"p:0": Position(3)}]
    events = [{}, {"e:0": Position(9)}, {}]
    floors = parking_floors("p", parked, events, ends)
    # A fresh sink skips what is there; one with event positions may have parked events there.
    assert floors == [{"p:0": 7, "p:1": 0}, {}, {}]
