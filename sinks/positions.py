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

A mark can also be wrong, and then "at or below the mark" would silence the partition for good: after
a point-in-time restore of Postgres or a failover to a replica, new transactions reuse LSNs below
the mark; a forged record can carry a very high sequence. So the mark also keeps the sequence applied
before it (``prev``) and the commit time of the changes up to it (``commit_ts_ms``, Debezium's
``source.ts_ms``), and a change below the mark is a *regression*, applied and made the new mark,
when it cannot be a re-send:

- its sequence lies strictly between ``prev`` and the mark: nothing was ever applied there (a
  re-send repeats a sequence that was applied), so the mark was out of order (``unseen_gap``); at
  exactly ``prev``, the keys applied there (``prev_keys``) decide, as at the mark: the other rows of
  a multi-row WAL record can come after a forged mark;
- or its commit time is later than the mark's by more than ``tolerance_ms``: a re-send is a change
  Debezium produced already, committed at or before the mark (``later_commit``). The tolerance
  absorbs commit-time jitter between concurrent commits and clock skew; a mark's commit time is
  capped at the wall clock plus the tolerance, so a forged time in the future cannot hold it.

A stored mark past 64 bits (``pg_lsn`` is an unsigned 64-bit integer) is dropped
(``implausible_mark``). Each regression is returned in ``Admitted.regressions``.
Marks stored before these fields existed have neither; they keep the old rule until the mark moves.

Encoding (``encode``/``decode``): ``"<next offset>"`` or ``"<next offset>;<commit lsn>;<lsn>;<d1>,<d2>..."``
with 16-hex-digit BLAKE2b digests of the keys at the mark, then, when known,
``";<commit ts ms>;<prev commit lsn>;<prev lsn>"`` (empty when unknown) and ``";<prev's digests>"``;
one string per partition, so a store can compare and set it in one step. ``decode(encode(p)) == p``
and ``encode(decode(s)) == s`` for every stored form, old ones included: the stores compare stored
strings exactly.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec

_NO_KEYS: frozenset[str] = frozenset()
LSN_LIMIT = 1 << 64  # pg_lsn is an unsigned 64-bit integer
DEFAULT_TOLERANCE_MS = 2_000  # PIPELINE_SEQUENCE_TOLERANCE_MS


class Mark(msgspec.Struct, frozen=True, gc=False):
    """The highest ``(commit LSN, LSN)`` applied in a partition, with the keys applied at exactly it,
    the newest commit time applied up to it, and the sequence applied before it (``None``: unknown)."""

    commit_lsn: int
    lsn: int
    keys: frozenset[str] = frozenset()
    commit_ts_ms: int | None = None
    prev: tuple[int, int] | None = None
    prev_keys: frozenset[str] = frozenset()  # digests of the keys applied at ``prev`` (empty: unknown)


class Position(msgspec.Struct, frozen=True, gc=False):
    next_offset: int
    mark: Mark | None = None


def key_digest(key: bytes | None) -> str:
    return hashlib.blake2b(key or b"", digest_size=8).hexdigest()


def _text(value: int | None) -> str:
    return "" if value is None else str(value)


def _int(text: str) -> int | None:
    return int(text) if text else None


def encode(position: Position) -> str:
    mark = position.mark
    if mark is None:
        return str(position.next_offset)
    text = f"{position.next_offset};{mark.commit_lsn};{mark.lsn};{','.join(sorted(mark.keys))}"
    if mark.commit_ts_ms is None and mark.prev is None and not mark.prev_keys:
        return text  # the form stored before commit times and prev existed
    prev = mark.prev or (None, None)
    text = f"{text};{_text(mark.commit_ts_ms)};{_text(prev[0])};{_text(prev[1])}"
    return f"{text};{','.join(sorted(mark.prev_keys))}" if mark.prev_keys else text


def decode(text: str | bytes) -> Position:
    if isinstance(text, bytes):
        text = text.decode()
    parts = text.split(";")
    if len(parts) == 1:
        return Position(int(parts[0]))
    parts += [""] * (8 - len(parts))  # 4 fields before commit times, 7 before prev's keys
    offset, commit_lsn, lsn, keys, ts, prev_commit, prev_lsn, prev_keys = parts
    prev = None if not prev_commit else (int(prev_commit), int(prev_lsn))
    mark = Mark(int(commit_lsn), int(lsn), _digests(keys), _int(ts), prev, _digests(prev_keys))
    return Position(int(offset), mark)


def _digests(text: str) -> frozenset[str]:
    return frozenset(k for k in text.split(",") if k)


class Regression(msgspec.Struct, frozen=True, gc=False):
    """A mark found wrong (see the module docstring): where, why, and what replaced it."""

    partition: str  # topic:partition
    kind: str  # unseen_gap | later_commit | implausible_mark
    offset: int
    mark: tuple[int, int]
    sequence: tuple[int, int] | None  # the new mark (None: dropped)
    mark_commit_ts_ms: int | None = None
    commit_ts_ms: int | None = None


@dataclass
class Admitted:
    """What ``admit`` made of a batch: the items to act on and the positions that cover the batch."""

    fresh: list[Any] = field(default_factory=list)
    positions: dict[str, Position] = field(default_factory=dict)  # only the partitions in the batch
    replays: int = 0
    resends: int = 0
    regressions: list[Regression] = field(default_factory=list)


def _plausible(pair: tuple[int, int]) -> bool:
    return 0 <= pair[0] < LSN_LIMIT and 0 <= pair[1] < LSN_LIMIT


class _Partition:
    """``admit``'s working state for one partition: mutable, and raw keys digested only at the end."""

    __slots__ = (
        "found",
        "key",
        "keys",
        "max_ts",
        "next_offset",
        "pair",
        "prev",
        "prev_raw",
        "prev_stored",
        "stored_keys",
        "tolerance",
        "ts",
    )

    def __init__(
        self, key: str, position: Position | None, now_ms: int, tolerance_ms: int, found: list[Regression]
    ) -> None:
        mark = None if position is None else position.mark
        self.key = key
        self.found = found
        self.tolerance = tolerance_ms
        self.max_ts = now_ms + tolerance_ms  # no commit time is believed past this
        self.next_offset = -1 if position is None else position.next_offset
        self.pair: tuple[int, int] | None = None
        self.prev: tuple[int, int] | None = None
        self.ts: int | None = None
        self.keys: set[bytes | None] = set()  # raw keys applied at ``pair`` in this batch
        self.stored_keys: frozenset[str] = frozenset()
        self.prev_raw: set[bytes | None] = set()  # the same for ``prev``
        self.prev_stored: frozenset[str] = frozenset()
        if mark is None:
            return
        pair = (mark.commit_lsn, mark.lsn)
        if not _plausible(pair):
            found.append(Regression(key, "implausible_mark", self.next_offset, pair, None, mark.commit_ts_ms))
            return
        self.pair, self.stored_keys = pair, mark.keys
        if mark.prev is not None and _plausible(mark.prev):
            self.prev, self.prev_stored = mark.prev, mark.prev_keys
        self.ts = mark.commit_ts_ms

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
                return self._below(item, sequence)
            if sequence == pair:
                key = item.key
                if key in self.keys or (self.stored_keys and key_digest(key) in self.stored_keys):
                    return True
                self.keys.add(key)
                self._saw(item)
                return False
            self.prev, self.prev_raw, self.prev_stored = pair, self.keys, self.stored_keys
        self.pair = sequence
        self.keys = {item.key}
        self.stored_keys = _NO_KEYS
        self._saw(item)
        return False

    def _saw(self, item: Any) -> None:
        # The newest commit time so far (capped when used): a database clock stepped back must not
        # make an older change's re-send look later than the mark.
        ts = getattr(item, "commit_ts_ms", None)
        if ts is not None and (self.ts is None or ts > self.ts):
            self.ts = ts

    def _mark_ts(self) -> int | None:
        return None if self.ts is None else min(self.ts, self.max_ts)

    def _below(self, item: Any, sequence: tuple[int, int]) -> bool:
        """A change below the mark: a re-send, unless it cannot be one (then a regression)."""
        prev = self.prev
        ts = getattr(item, "commit_ts_ms", None)
        if prev is not None and sequence >= prev:
            if sequence > prev:
                # Between the last two sequences applied: never applied, so not a re-send.
                self._regressed("unseen_gap", item, ts, keep_prev=True)
                return False
            # At ``prev`` exactly: the other rows of a multi-row WAL record can still come after a
            # forged mark. A key applied there is a re-send; with prev's keys known, any other is new.
            key = item.key
            if key in self.prev_raw or (self.prev_stored and key_digest(key) in self.prev_stored):
                return True
            if self.prev_raw or self.prev_stored:
                self._regressed("unseen_gap", item, ts, keep_prev=False)
                return False
        mark_ts = self._mark_ts()
        if mark_ts is None or ts is None or ts <= mark_ts + self.tolerance:
            return True
        self._regressed("later_commit", item, ts, keep_prev=False)
        return False

    def _regressed(self, kind: str, item: Any, ts: int | None, *, keep_prev: bool) -> None:
        assert self.pair is not None
        offset = item.position.offset
        self.found.append(Regression(self.key, kind, offset, self.pair, item.sequence, self._mark_ts(), ts))
        keys, stored = {item.key}, _NO_KEYS
        if item.sequence == self.prev:  # back at prev's pair: its keys are the new mark's
            keys, stored = self.prev_raw | keys, self.prev_stored
        if not keep_prev:
            # What was applied below the new mark is not known.
            self.prev, self.prev_raw, self.prev_stored = None, set(), _NO_KEYS
        self.pair = item.sequence
        self.keys = keys
        self.stored_keys = stored
        self.ts = ts

    def position(self) -> Position:
        if self.pair is None:
            return Position(self.next_offset)
        keys = self.stored_keys | {key_digest(k) for k in self.keys}
        prev_keys = (self.prev_stored | {key_digest(k) for k in self.prev_raw}) if self.prev is not None else _NO_KEYS
        mark = Mark(self.pair[0], self.pair[1], keys, self._mark_ts(), self.prev, prev_keys)
        return Position(self.next_offset, mark)


def admit(
    batch: Iterable[Any],
    stored: Mapping[str, Position],
    *,
    now_ms: int | None = None,
    tolerance_ms: int = DEFAULT_TOLERANCE_MS,
) -> Admitted:
    """Drop replays and re-sends from ``batch`` (in offset order per partition) against ``stored``.

    Every item counts towards the new positions, whatever the sink later does with it (applied,
    dead-lettered, skipped): the positions say what has been *handled*. ``now_ms`` is the wall clock
    (commit times past it plus ``tolerance_ms`` are not believed).
    """
    out = Admitted()
    fresh = out.fresh
    state: dict[str, _Partition] = {}
    now = int(time.time() * 1000) if now_ms is None else now_ms
    for item in batch:
        position = item.position
        key = position.partition_key
        partition = state.get(key)
        if partition is None:
            partition = state[key] = _Partition(key, stored.get(key), now, tolerance_ms, out.regressions)
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
