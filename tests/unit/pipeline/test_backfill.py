"""The backfill's pure parts: snapshot visibility, the boundary search, envelopes through decode."""

from __future__ import annotations

from datetime import UTC, datetime

import orjson
import pytest

from pipeline.backfill.envelopes import CONTENT, EVENTS, SnapshotInfo, content_after, envelope, event_after, id_splits
from pipeline.backfill.snapshot import (
    XID32,
    BoundaryRace,
    MarginTooSmall,
    PgSnapshot,
    ScannedChange,
    find_boundary,
    lsn_to_int,
)
from pipeline.decode import decode_content, decode_engagement, decode_engagement_checked
from pipeline.model import KafkaRecord, SourcePosition
from sinks.positions import Position, admit

SNAP = PgSnapshot.parse("100:110:103,107")
INFO = SnapshotInfo("eng", "engagement_db", lsn_to_int("0/1A2B3C4D"), 100, 1_760_000_000_000)


# --- visibility -----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("xid", "visible"),
    [
        (5, True),
        (99, True),
        (100, True),
        (102, True),
        (103, False),
        (107, False),
        (109, True),
        (110, False),
        (500, False),
    ],
)
def test_a_transaction_is_visible_below_xmax_unless_it_was_running(xid: int, visible: bool) -> None:
    assert SNAP.visible(xid) is visible


def test_a_32_bit_txid_is_placed_in_the_snapshots_epoch() -> None:
    epoch = 3 << 32
    snap = PgSnapshot(epoch + 10, epoch + 20, frozenset({epoch + 15}))
    assert snap.widen(12) == epoch + 12
    assert snap.visible(12) and not snap.visible(15) and not snap.visible(25)
    # Just below the wrap: a txId near 2^32 belongs to the previous epoch, long finished.
    assert snap.widen(XID32 - 5) == epoch - 5
    assert snap.visible(XID32 - 5)
    # Near the end of an epoch, a small txId is the next epoch's: started after the snapshot.
    late = PgSnapshot(epoch + XID32 - 10, epoch + XID32 - 5, frozenset())
    assert late.widen(3) == epoch + XID32 + 3 and not late.visible(3)


def test_parse_an_empty_running_list() -> None:
    assert PgSnapshot.parse("742:742:") == PgSnapshot(742, 742, frozenset())


def test_lsn_text_to_int() -> None:
    assert lsn_to_int("16/B374D848") == (0x16 << 32) | 0xB374D848


# --- the boundary search ------------------------------------------------------------------------------
def change(offset: int, tx: int | None, op: str | None = "c", seq: tuple[int, int] | None = None) -> ScannedChange:
    key = f'{{"id":{offset}}}'.encode()
    if seq is None and tx is not None:
        seq = (1000 + tx, 2000 + offset)
    return ScannedChange(SourcePosition("t", 0, offset), key, op, seq, tx)


def test_the_boundary_is_the_first_change_outside_the_snapshot() -> None:
    changes = [change(10, 90), change(11, 99), change(12, 103), change(13, 110)]
    b = find_boundary(changes, SNAP, start=10, end=14, partition_key="t:0")
    assert b.position.next_offset == 12
    # The mark is what a sink applying 10 and 11 would have stored: re-sends of them are skipped later.
    mark = b.position.mark
    assert (mark.commit_lsn, mark.lsn, mark.prev) == (1099, 2011, (1090, 2010))
    assert admit([change(11, 99)], {"t:0": b.position}).replays == 1


def test_all_visible_puts_the_boundary_at_the_end() -> None:
    b = find_boundary([change(0, 1), change(1, 2)], SNAP, start=0, end=5, partition_key="t:0")
    assert b.position.next_offset == 5


def test_an_empty_partition() -> None:
    assert find_boundary([], SNAP, start=0, end=0, partition_key="t:0").position == Position(0)


def test_a_tombstone_goes_with_the_delete_before_it() -> None:
    visible_delete = [change(0, 99, "d"), change(1, None, None), change(2, 110)]
    assert find_boundary(visible_delete, SNAP, start=0, end=3, partition_key="t:0").position.next_offset == 2
    invisible_delete = [change(0, 99), change(1, 110, "d"), change(2, None, None)]
    assert find_boundary(invisible_delete, SNAP, start=0, end=3, partition_key="t:0").position.next_offset == 1


def test_a_visible_change_after_an_invisible_one_is_a_race() -> None:
    with pytest.raises(BoundaryRace):
        find_boundary([change(0, 99), change(1, 103), change(2, 104)], SNAP, start=0, end=3, partition_key="t:0")


def test_a_resend_of_a_visible_change_after_the_boundary_is_not_a_race() -> None:
    changes = [change(0, 98), change(1, 99), change(2, 110), change(3, 98)]  # 3 re-sends 0 (same sequence)
    b = find_boundary(changes, SNAP, start=0, end=4, partition_key="t:0")
    assert b.position.next_offset == 2 and b.visible_after == 1


def test_snapshot_reads_count_as_visible() -> None:
    changes = [change(0, 200, "r"), change(1, 99), change(2, 110)]
    assert find_boundary(changes, SNAP, start=0, end=3, partition_key="t:0").position.next_offset == 2


def test_a_scan_that_starts_past_the_snapshot_asks_for_a_larger_margin() -> None:
    with pytest.raises(MarginTooSmall):
        find_boundary([change(50, 110)], SNAP, start=50, end=51, partition_key="t:0")
    # From the partition's start there is nothing earlier: the boundary is 0.
    assert find_boundary([change(0, 110)], SNAP, start=0, end=1, partition_key="t:0").position.next_offset == 0


# --- envelopes through the stream's decode -------------------------------------------------------------
def test_an_event_row_decodes_like_a_debezium_snapshot_read() -> None:
    ts = datetime(2026, 12, 2, 8, 10, 1, 234567, tzinfo=UTC)
    row = (42, "6e65c53b-6556-49c8-a084-a65207f57e94", None, "play", ts, 1500, "ios", '{"a": [1, "x\\"y"]}')
    key, value = envelope(event_after(row), EVENTS, INFO)
    record = KafkaRecord(SourcePosition("eng.backfill.engagement_events", 1, 42), key, value, INFO.ts_ms)
    fast, checked = decode_engagement(record), decode_engagement_checked(record)
    assert fast == checked
    assert fast.op == "r" and fast.before is None
    assert fast.after.id == 42 and fast.after.event_ts == ts and fast.after.duration_ms == 1500
    assert fast.after.raw_payload == '{"a": [1, "x\\"y"]}'  # the JSONB text, verbatim
    assert fast.sequence == (0, INFO.lsn) and fast.commit_ts_ms == INFO.ts_ms
    assert orjson.loads(key) == {"id": 42}
    assert orjson.loads(value)["source"]["txId"] == 100


def test_columns_added_to_the_table_are_backfilled_like_the_streams() -> None:
    ts = datetime(2026, 12, 2, 8, 10, 1, tzinfo=UTC)
    row = (43, None, None, "play", ts, 3_000_000_000, "ios", None, {"referrer": "push", "score": 2})
    key, value = envelope(event_after(row), EVENTS, INFO)
    record = KafkaRecord(SourcePosition("eng.backfill.engagement_events", 1, 43), key, value, INFO.ts_ms)
    change = decode_engagement_checked(record)
    assert change.after.extra == (("referrer", "push"), ("score", 2))
    assert change.after.duration_ms == 3_000_000_000


def test_a_content_row_decodes_like_a_debezium_snapshot_read() -> None:
    published = datetime(2026, 1, 1, tzinfo=UTC)
    row = ("6E65C53B-6556-49C8-A084-A65207F57E94", "slug", "Title", "video", None, published)
    key, value = envelope(content_after(row), CONTENT, INFO)
    change = decode_content(KafkaRecord(SourcePosition("eng.backfill.content", 0, 0), key, value, 0))
    assert change.op == "r" and change.after.id == "6e65c53b-6556-49c8-a084-a65207f57e94"
    assert change.after.length_seconds is None and change.after.publish_ts == published


def test_backfilled_rows_sort_before_every_later_stream_change() -> None:
    # BigQuery's view and HTTP receivers keep an event's highest (commit LSN, LSN, offset).
    backfilled = (0, INFO.lsn)
    later = (1, 1)  # any real commit LSN is above 0
    assert backfilled < later


def test_snapshot_reads_never_set_a_resend_mark() -> None:
    key, value = envelope(event_after((7, None, None, "click", datetime.now(UTC), None, None, None)), EVENTS, INFO)
    record = decode_engagement(KafkaRecord(SourcePosition("b", 0, 7), key, value, 0))
    assert admit([record], {}).positions["b:0"] == Position(8)


# --- splits ---------------------------------------------------------------------------------------------
def test_id_splits_cover_the_range_without_gaps() -> None:
    assert id_splits(1, 10, 3) == [(1, 4), (4, 7), (7, 11)]
    assert id_splits(5, 5, 4) == [(5, 6)]
    assert id_splits(None, None, 4) == []


def test_the_backfills_progress_is_the_share_of_the_id_ranges_behind_the_stored_positions():
    from pipeline.backfill.coordinator import share_done
    from pipeline.backfill.envelopes import CONTENT, EVENTS, Split

    splits = [Split(EVENTS, 0, 1, 501, 401), Split(EVENTS, 1, 501, 1001, 501), Split(CONTENT, 0, 0, 20, 20)]
    assert share_done(splits) == (420, 1020)


def test_the_snapshots_content_view_is_always_alive_for_the_join():
    # The join replaces a streaming content view whose reader died (pipeline.transforms.enrich);
    # the backfill's view is read once and has no reader. It lacked the property, and every
    # backfill job failed in the join's start_bundle.
    from pipeline.backfill.job import SnapshotContentView

    assert SnapshotContentView({}).alive is True
