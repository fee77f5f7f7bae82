"""The backfill's consistency rules, pure: which transactions a Postgres snapshot sees, and where
the stream takes over from it in each Kafka partition.

A backfill reads the tables in one exported snapshot (``pipeline.backfill.postgres``). A change on a
Debezium topic is *in* that snapshot when its transaction (``source.txId``) is visible to it: the
rows the backfill read already hold its effect. The **boundary** of a partition is the offset of its
first change whose transaction is not visible; the stream starts there, so every change is applied
exactly once, by the backfill or by the stream.

Why a scan and not an LSN comparison: Postgres decides visibility by which transactions were still
running when the snapshot was taken (``xmin:xmax:xip``), not by commit LSN. A transaction can write
its commit record before a second one and still be running (not yet visible) when the second one
is already visible; Debezium emits both in commit-LSN order. So the boundary is found by testing
each change's ``txId`` against the snapshot, and a visible change after a non-visible one (that
microsecond race) is refused: the caller takes a new snapshot.

Debezium's ``txId`` is Postgres's 32-bit xid; ``pg_current_snapshot()`` gives 64-bit ``xid8``
(epoch in the high half). ``widen`` puts a 32-bit xid into the epoch that makes it closest to
the snapshot's ``xmax``, as Postgres does when it widens an xid (every live xid is within 2^31).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from sinks.positions import Position, admit
from sinks.records import SourcePosition

XID32 = 1 << 32
HALF = 1 << 31


class BoundaryRace(Exception):  # noqa: N818 - a state the caller handles by taking a new snapshot
    """A change visible in the snapshot follows one that is not: commit order and snapshot order
    differ at this point of the partition. Take a new snapshot and search again."""


class MarginTooSmall(Exception):  # noqa: N818 - a state
    """The first change scanned is already outside the snapshot: the boundary may lie earlier."""


@dataclass(frozen=True)
class PgSnapshot:
    """``pg_current_snapshot()``: every xid below ``xmin`` is finished, every one at or above
    ``xmax`` had not started, and ``xip`` were running."""

    xmin: int
    xmax: int
    xip: frozenset[int]

    @classmethod
    def parse(cls, text: str) -> PgSnapshot:
        """``"xmin:xmax:xip1,xip2"`` as Postgres prints a ``pg_snapshot``."""
        xmin, xmax, xip = text.strip().split(":")
        return cls(int(xmin), int(xmax), frozenset(int(x) for x in xip.split(",") if x))

    def widen(self, xid32: int) -> int:
        """The 64-bit xid of a 32-bit ``txId``: the one within 2^31 of ``xmax`` (xid arithmetic is
        modulo 2^32 and Postgres keeps every live xid within 2^31 of the newest)."""
        if not 0 <= xid32 < XID32:
            raise ValueError(f"txId {xid32} is not a 32-bit xid")
        full = ((self.xmax >> 32) << 32) | xid32
        if full > self.xmax + HALF:
            full -= XID32
        elif full < self.xmax - HALF and full + XID32 >= 0:
            full += XID32
        return full

    def visible(self, xid32: int) -> bool:
        """Whether a committed transaction's changes are in this snapshot."""
        xid = self.widen(xid32)
        if xid < self.xmin:
            return True
        return xid < self.xmax and xid not in self.xip


@dataclass(frozen=True)
class ScannedChange:
    """What the boundary search needs of one Kafka record (``sinks.positions.admit`` reads it too)."""

    position: SourcePosition
    key: bytes | None
    op: str | None  # None: a tombstone, or a value that is not a Debezium envelope
    sequence: tuple[int, int] | None
    tx_id: int | None


@dataclass(frozen=True)
class Boundary:
    """Where the stream starts one partition: ``position`` as its sinks store it (the next offset
    and the Debezium mark of what precedes it, so re-sends of earlier changes are recognised)."""

    partition_key: str
    position: Position
    scanned: int  # records looked at
    visible_after: int  # re-sends of visible changes past the boundary (skipped by the mark)


def find_boundary(
    changes: Sequence[ScannedChange], snapshot: PgSnapshot, *, start: int, end: int, partition_key: str
) -> Boundary:
    """The boundary of one partition from its records ``[start, end)`` (``changes``, in offset order).

    - A tombstone or a record without a ``txId`` belongs with the record before it (Debezium writes a
      delete's tombstone right after the delete); at the start of the scan it counts as visible.
    - A snapshot read (``op r``, Debezium's initial snapshot) is visible: it precedes all streaming.
    - After the boundary, a visible change is either a Debezium re-send of a change before it (its
      sequence is within the mark, and the stream's sinks skip it) or a race (``BoundaryRace``).
    - If the first record scanned is not visible and ``start`` is not the partition's beginning,
      the boundary could be earlier: ``MarginTooSmall`` (``start`` is then > 0 by contract).
    """
    boundary: int | None = None
    before: list[ScannedChange] = []
    previous_visible = True
    mark = None
    visible_after = 0
    for index, change in enumerate(changes):
        if change.tx_id is None or change.op is None:
            visible = previous_visible
        elif change.op == "r":
            visible = True
        else:
            visible = snapshot.visible(change.tx_id)
        if boundary is None:
            if visible:
                before.append(change)
            else:
                if index == 0 and start > 0:
                    raise MarginTooSmall(
                        f"{partition_key}: offset {change.position.offset} is already past the snapshot"
                    )
                boundary = change.position.offset
                mark = _position(before, start, boundary).mark
        elif visible and change.op is not None and change.tx_id is not None and change.op != "r":
            if mark is not None and change.sequence is not None and change.sequence <= (mark.commit_lsn, mark.lsn):
                visible_after += 1  # a re-send the mark covers
            else:
                raise BoundaryRace(
                    f"{partition_key}: offset {change.position.offset} (txId {change.tx_id}) is in the snapshot "
                    f"but follows offset {boundary}, which is not"
                )
        previous_visible = visible
    if boundary is None:
        boundary = end
    return Boundary(partition_key, _position(before, start, boundary), len(changes), visible_after)


def _position(before: Iterable[ScannedChange], start: int, boundary: int) -> Position:
    """What a sink that had applied every record before ``boundary`` would have stored: the same
    rules (``admit``) over the records scanned, so re-sends of them are skipped after the handover."""
    admitted = admit(before, {})
    positions = list(admitted.positions.values())
    mark = positions[0].mark if positions else None
    return Position(boundary, mark)


def lsn_to_int(lsn: str) -> int:
    """``"16/B374D848"`` (a ``pg_lsn``) as the integer Debezium puts in ``source.lsn``."""
    high, low = lsn.split("/")
    return (int(high, 16) << 32) | int(low, 16)


def tx_id_of(envelope: Any) -> int | None:
    """``source.txId`` of a decoded envelope, or None."""
    if type(envelope) is not dict:
        return None
    source = envelope.get("source")
    tx_id = source.get("txId") if type(source) is dict else None
    return tx_id if type(tx_id) is int else None
