"""The position rules: replays, Debezium re-sends after a Connect crash, and where lanes resume."""

import msgspec

from sinks.positions import (
    Mark,
    Position,
    Regression,
    admit,
    decode,
    encode,
    key_digest,
    parking_floors,
    resume_offsets,
)
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
    assert mark == Mark(500, 600, frozenset({key_digest(group[0].key), key_digest(group[1].key)}), 0)
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


# --- a wrong mark: LSNs that went back (restore, failover), a forged sequence, an old encoding ---
T0 = 1_800_000_000_000  # a commit time (ms); the wall clock in these tests is T0 + 60 s
NOW = T0 + 60_000
TOP = (1 << 64) - 1
TOL = 2_000


def at(offset: int, sequence, ts: int, key: bytes | None = None):
    return msgspec.structs.replace(change(offset, sequence=sequence, key=key), commit_ts_ms=ts)


def run(batch, stored):
    return admit(batch, stored, now_ms=NOW, tolerance_ms=TOL)


def test_the_mark_keeps_its_commit_time_and_the_sequence_before_it():
    admitted = run([at(0, (100, 110), T0), at(1, (120, 130), T0 + 5)], {})
    digests = frozenset({key_digest(b'{"id": 1}')}), frozenset({key_digest(b'{"id": 0}')})
    assert admitted.positions["t:0"].mark == Mark(120, 130, digests[0], T0 + 5, (100, 110), digests[1])


def test_resends_after_a_connect_crash_are_still_skipped_with_their_commit_times():
    first = [at(o, (100 + 10 * o, 110 + 10 * o), T0 + o) for o in range(4)]
    stored = run(first, {}).positions
    # Connect re-sends all four at new offsets, with the same sequences and commit times.
    again = [at(4 + o, c.sequence, c.commit_ts_ms, key=c.key) for o, c in enumerate(first)]
    admitted = run([*again, at(8, (200, 210), T0 + 10)], stored)
    assert offsets(admitted.fresh) == [8]
    assert admitted.resends == 4 and admitted.regressions == []


def test_a_change_below_the_mark_committed_later_than_it_is_a_regression_and_applied():
    stored = run([at(0, (500, 510), T0), at(1, (600, 610), T0 + 1)], {}).positions
    # A point-in-time restore: the new timeline writes from LSN 300, minutes later.
    later = T0 + 180_000
    admitted = admit([at(2, (300, 310), later), at(3, (300, 320), later + 1)], stored, now_ms=later, tolerance_ms=TOL)
    assert offsets(admitted.fresh) == [2, 3]
    assert admitted.resends == 0
    assert admitted.regressions == [Regression("t:0", "later_commit", 2, (600, 610), (300, 310), T0 + 1, later)]
    mark = admitted.positions["t:0"].mark
    assert (mark.commit_lsn, mark.lsn, mark.commit_ts_ms, mark.prev) == (300, 320, later + 1, (300, 310))
    # And a Connect crash on the new timeline is handled as before.
    again = admit([at(4, (300, 310), later, key=b'{"id": 2}')], admitted.positions, now_ms=later, tolerance_ms=TOL)
    assert again.fresh == [] and again.resends == 1


def test_the_tolerance_edge():
    stored = {"t:0": Position(10, Mark(600, 610, frozenset(), T0, (500, 510)))}
    assert run([at(10, (400, 410), T0 + TOL)], stored).resends == 1  # at the tolerance: a re-send
    admitted = run([at(10, (400, 410), T0 + TOL + 1)], stored)  # past it: a regression
    assert offsets(admitted.fresh) == [10] and [r.kind for r in admitted.regressions] == ["later_commit"]


def test_a_forged_high_sequence_does_not_silence_the_partition():
    genuine = [at(0, (100, 110), T0), at(1, (120, 130), T0 + 1)]
    stored = run([*genuine, at(2, ((1 << 64) - 1, (1 << 64) - 1), T0 + 2)], {}).positions
    assert stored["t:0"].mark.prev == (120, 130)
    # Real changes go on right after it, within the tolerance: nothing was ever applied between the
    # last genuine sequence and the forged one, so they cannot be re-sends.
    admitted = run([at(3, (140, 150), T0 + 2), at(4, (160, 170), T0 + 3)], stored)
    assert offsets(admitted.fresh) == [3, 4]
    assert [(r.kind, r.offset, r.sequence) for r in admitted.regressions] == [("unseen_gap", 3, (140, 150))]
    mark = admitted.positions["t:0"].mark
    assert (mark.commit_lsn, mark.lsn, mark.prev) == (160, 170, (140, 150))
    # A re-send of a genuine change before the forged one is still skipped.
    assert run([at(5, (120, 130), T0 + 1, key=genuine[1].key)], admitted.positions).resends == 1


def test_a_forged_commit_time_in_the_future_is_capped_at_the_wall_clock():
    # A forged first mark (no sequence before it is known) dated far in the future.
    forged = at(0, ((1 << 64) - 1, 0), T0 + 10**12)
    stored = run([forged], {}).positions
    assert stored["t:0"].mark.commit_ts_ms == NOW + TOL
    # Changes committed within the tolerance of that cap may be re-sends; later ones are applied.
    assert run([at(1, (50, 60), NOW + 2 * TOL)], stored).resends == 1
    later = run([at(1, (50, 60), NOW + 2 * TOL + 1)], stored)
    assert offsets(later.fresh) == [1] and later.regressions[0].kind == "later_commit"


def test_a_stored_mark_past_64_bits_is_dropped():
    stored = {"t:0": Position(7, Mark(1 << 64, 5, frozenset(), T0))}
    admitted = run([at(7, (100, 110), T0 + 1)], stored)
    assert offsets(admitted.fresh) == [7]
    assert admitted.regressions == [Regression("t:0", "implausible_mark", 7, (1 << 64, 5), None, T0)]
    assert admitted.positions["t:0"].mark.commit_lsn == 100


def test_a_mark_stored_without_a_commit_time_keeps_the_old_rule():
    stored = {"t:0": decode("9;600;610;")}
    assert run([at(9, (100, 110), NOW)], stored).resends == 1


def test_a_database_clock_stepped_back_does_not_make_an_older_change_look_later():
    # Commit times went back 10 s between two transactions; the mark keeps the newest one.
    stored = run([at(0, (100, 110), T0 + 10_000), at(1, (120, 130), T0)], {}).positions
    assert stored["t:0"].mark.commit_ts_ms == T0 + 10_000
    assert run([at(2, (100, 110), T0 + 10_000, key=b'{"id": 0}')], stored).resends == 1


def test_old_and_new_encodings_decode_and_encode_back_to_the_same_string():
    for text in (
        "3",
        "3;1;2;",
        "3;1;2;a,b",
        "3;1;2;a,b;1800000000000;0;1",
        "3;1;2;;1800000000000;;",
        "3;1;2;a;;0;1",
    ):
        assert encode(decode(text)) == text
        assert decode(encode(decode(text))) == decode(text)
    assert decode("3;1;2;a,b") == Position(3, Mark(1, 2, frozenset({"a", "b"})))
    assert decode("3;1;2;a;5;0;1") == Position(3, Mark(1, 2, frozenset({"a"}), 5, (0, 1)))


def test_the_other_rows_of_a_multi_row_wal_record_after_a_forged_mark_are_applied():
    # A COPY's rows share one (commit LSN, LSN); a forged record lands between two of them.
    rows = [b'{"id": 100}', b'{"id": 101}']
    stored = run([at(9, (600, 610), T0), at(10, (700, 710), T0, rows[0]), at(11, (TOP, TOP), T0)], {}).positions
    assert stored["t:0"].mark.prev == (700, 710)
    # The second row of the COPY comes next, at exactly the sequence before the forged mark.
    admitted = run([at(12, (700, 710), T0, rows[1]), at(13, (720, 730), T0)], stored)
    assert offsets(admitted.fresh) == [12, 13]
    assert [(r.kind, r.offset) for r in admitted.regressions] == [("unseen_gap", 12)]
    # Connect re-sends both rows of the COPY: both are skipped.
    again = run([at(14, (700, 710), T0, rows[0]), at(15, (700, 710), T0, rows[1])], admitted.positions)
    assert again.resends == 2 and again.fresh == []


def test_without_the_keys_before_the_mark_a_change_at_that_sequence_keeps_the_commit_time_rule():
    stored = {"t:0": Position(10, Mark(600, 610, frozenset({"aa"}), T0, (500, 510)))}  # prev's keys unknown
    assert run([at(10, (500, 510), T0)], stored).resends == 1
    assert offsets(run([at(10, (500, 510), T0 + TOL + 1)], stored).fresh) == [10]


def test_prev_keys_encode_as_an_eighth_field():
    position = Position(3, Mark(1, 2, frozenset({"a"}), 5, (0, 1), frozenset({"b", "c"})))
    assert encode(position) == "3;1;2;a;5;0;1;b,c"
    assert decode(encode(position)) == position
