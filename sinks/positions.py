"""Positions: how far into each partition a sink has applied, and which records it must skip (pure).

A sink stores, per ``topic:partition``, a :class:`Position`: the next offset to apply and the
high-water mark of Debezium's ``source.sequence`` over what it applied. ``admit`` uses both:

- **Replays** (offset below the stored next offset) were applied before: a restarted job reads
  from the lowest position over a lane's sinks, and a retried flush may overlap a write that landed.
- **Re-sends** (a new offset, but a sequence at or below the mark) are Debezium producing changes
  again after a Kafka Connect crash: Connect had produced them but not committed its source
  offsets, so they come back at new offsets. Debezium's PostgreSQL connector emits changes in
  increasing ``(commit LSN, LSN)`` order within a partition, so a change that does not move past the
  mark has been seen. This is state per partition, not per row: Materialize deduplicates Debezium
  topics the same way in its "ordered" mode.

Edge cases, each with a unit test:

- Several changes can share one LSN: a multi-row ``INSERT``/``COPY`` is one WAL record, and a
  primary-key update is a delete and a create at one LSN. Those are different rows, so the mark
  keeps, for its exact ``(commit LSN, LSN)``, digests of the record keys applied there: a record at
  the mark's pair is a re-send only if its key was applied at that pair already.
- Snapshot reads (``op r``) all carry the snapshot's LSN; they are never treated as re-sends and do
  not move the mark. (A crash in the middle of the initial snapshot makes Debezium start the
  snapshot again: that repeats rows, see docs/delivery.md.)
- Records without a sequence (tombstones, dead letters from decode, envelopes not from Debezium)
  only move the offset.

Encoding (``encode``/``decode``): ``"<next offset>"`` or ``"<next offset>;<commit lsn>;<lsn>;<d1>,<d2>..."``
with 16-hex-digit BLAKE2b digests of the keys at the mark; one string per partition, so a store can
compare and set it in one step.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec


class Mark(msgspec.Struct, frozen=True, gc=False):
    """The highest ``(commit LSN, LSN)`` applied in a partition, with the keys applied at exactly it."""

    commit_lsn: int
    lsn: int
    keys: frozenset[str] = frozenset()


class Position(msgspec.Struct, frozen=True, gc=False):
    next_offset: int
    mark: Mark | None = None


def key_digest(key: bytes | None) -> str:
    return hashlib.blake2b(key or b"", digest_size=8).hexdigest()


def encode(position: Position) -> str:
    mark = position.mark
    if mark is None:
        return str(position.next_offset)
    return f"{position.next_offset};{mark.commit_lsn};{mark.lsn};{','.join(sorted(mark.keys))}"


def decode(text: str | bytes) -> Position:
    if isinstance(text, bytes):
        text = text.decode()
    parts = text.split(";")
    if len(parts) == 1:
        return Position(int(parts[0]))
    offset, commit_lsn, lsn, keys = parts
    return Position(int(offset), Mark(int(commit_lsn), int(lsn), frozenset(k for k in keys.split(",") if k)))


@dataclass
class Admitted:
    """What ``admit`` made of a batch: the items to act on and the positions that cover the batch."""

    fresh: list[Any] = field(default_factory=list)
    positions: dict[str, Position] = field(default_factory=dict)  # only the partitions in the batch
    replays: int = 0
    resends: int = 0


class _Partition:
    """``admit``'s working state for one partition: mutable, and raw keys digested only at the end."""

    __slots__ = ("keys", "next_offset", "pair", "stored_keys")

    def __init__(self, position: Position | None) -> None:
        mark = None if position is None else position.mark
        self.next_offset = -1 if position is None else position.next_offset
        self.pair: tuple[int, int] | None = None if mark is None else (mark.commit_lsn, mark.lsn)
        self.keys: set[bytes | None] = set()  # raw keys applied at ``pair`` in this batch
        self.stored_keys: frozenset[str] = frozenset() if mark is None else mark.keys

    def is_resend(self, item: Any) -> bool:
        sequence = item.sequence
        # A change back from the parking topic keeps its Debezium sequence for the sinks (BigQuery's
        # view and HTTP receivers order an event's changes by it), but in the parking topic's
        # partitions sequences from many event partitions interleave: they must not set a mark.
        if sequence is None or item.op == "r" or getattr(item, "origin", None) is not None:
            return False
        pair = self.pair
        if pair is not None:
            if sequence < pair:
                return True
            if sequence == pair:
                key = item.key
                if key in self.keys or (self.stored_keys and key_digest(key) in self.stored_keys):
                    return True
                self.keys.add(key)
                return False
        self.pair = sequence
        self.keys = {item.key}
        self.stored_keys = frozenset()
        return False

    def position(self) -> Position:
        if self.pair is None:
            return Position(self.next_offset)
        keys = self.stored_keys | {key_digest(k) for k in self.keys}
        return Position(self.next_offset, Mark(self.pair[0], self.pair[1], keys))


def admit(batch: Iterable[Any], stored: Mapping[str, Position]) -> Admitted:
    """Drop replays and re-sends from ``batch`` (in offset order per partition) against ``stored``.

    Every item counts towards the new positions, whatever the sink later does with it (applied,
    dead-lettered, skipped): the positions say what has been *handled*.
    """
    out = Admitted()
    fresh = out.fresh
    state: dict[str, _Partition] = {}
    for item in batch:
        position = item.position
        key = position.partition_key
        partition = state.get(key)
        if partition is None:
            partition = state[key] = _Partition(stored.get(key))
        if position.offset < partition.next_offset:
            out.replays += 1
            continue
        partition.next_offset = position.offset + 1
        if partition.is_resend(item):
            out.resends += 1
        else:
            fresh.append(item)
    out.positions = {key: partition.position() for key, partition in state.items()}
    return out


def resume_offsets(topic: str, stored: Sequence[Mapping[str, Position]]) -> dict[int, int]:
    """Where a lane's source starts each partition of ``topic``: the lowest next offset over the
    lane's sinks. A partition some sink has no position for starts from the beginning (absent)."""
    prefix = f"{topic}:"
    partitions: set[int] = set()
    for positions in stored:
        partitions |= {int(k[len(prefix) :]) for k in positions if k.startswith(prefix)}
    resume: dict[int, int] = {}
    for partition in partitions:
        key = f"{prefix}{partition}"
        if all(key in positions for positions in stored):
            resume[partition] = min(positions[key].next_offset for positions in stored)
    return resume


def parking_floors(
    topic: str,
    parked: Sequence[Mapping[str, Position]],
    events: Sequence[Mapping[str, Position]],
    ends: Mapping[int, int],
) -> list[dict[str, int]]:
    """Per sink of a parked lane: where its reading of the parking ``topic`` begins (``ends``, the
    topic's end offsets now) if the sink has stored no position at all, neither there (``parked``) nor
    on the event topic (``events``); otherwise nothing.

    Why: a sink with nothing stored starts over (a new consumer group, a flushed Redis, a rebuild or a
    replay under a prefix of its own), so its event lane reads its topic from the start and parks
    again every event that still waits for its content. The envelopes already on the parking topic
    belong to an earlier state of the sink, or to another run; read again, each past its deadline
    would be one more dead letter for the same event (one per round it went, about one per second
    of its wait, on every start-over).
    """
    floors: list[dict[str, int]] = []
    for stored_parked, stored_events in zip(parked, events, strict=True):
        fresh = not stored_parked and not stored_events
        floors.append({f"{topic}:{p}": end for p, end in ends.items()} if fresh else {})
    return floors
