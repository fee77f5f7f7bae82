"""One flush of one sink, done the same way for every sink: the delivery argument lives here.

``Flusher.flush(items)`` takes what a lane delivered (changes, tombstones, upstream dead letters, in
offset order per partition) and, chunk by chunk (``Sink.limits``):

1. drops replays and Debezium re-sends against the sink's stored positions (``sinks.positions``);
2. produces the chunk's dead letters from upstream steps (deterministic ones only if this sink owns
   them for its topic) and waits for the broker to confirm them (``sinks.dead_letter``);
3. writes the records; rejected records become letters (confirmed before anything else happens),
   retryable ones are retried under the sink's ``RetryPolicy`` and, past its budget, dead-lettered;
4. stores the positions that cover the chunk: inside the last write for an atomic sink, otherwise
   with ``Sink.commit`` once every record is applied or dead-lettered.

So a position is never stored past a record that is neither applied nor confirmed on the
dead-letter topic: a ``kill -9`` anywhere means the record is read again. A ``PositionConflict``
(another write landed first) reloads the stored positions and redoes the chunk from step 1.

Positions that come back lower than this flusher stored or read for a partition (the store came back
older: a Redis failover or a restore from a snapshot) raise ``PositionsRewound`` instead, on every
load: the records in between are in no copy the store has, and the lane's source cannot seek back to
them, so the job stops and its next run reads them again from the positions stored now.

No Beam here: ``sinks.base`` runs this on a writer thread and reports the ``FlushReport`` as
metrics; tests drive it with fake sinks, an injected clock and sleep.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import msgspec

from sinks.contract import (
    Batch,
    ClaimGone,
    Fenced,
    Outcome,
    PositionConflict,
    PositionsRewound,
    Retry,
    Sink,
    SinkUnavailable,
)
from sinks.parking import park_letter
from sinks.positions import DEFAULT_TOLERANCE_MS, Position, Regression, admit
from sinks.records import DeadLetter, EnrichedChange, Parked, Skipped

T = TypeVar("T")
_log = logging.getLogger(__name__)


class LetterSender(Protocol):
    def send(self, letters: Sequence[DeadLetter]) -> None: ...


@dataclass
class FlushReport:
    written: int = 0
    replays: int = 0
    resends: int = 0
    retries: int = 0
    conflicts: int = 0
    parked_duplicates: int = 0  # returning parked events found applied already (sinks.parking)
    letters: Counter[str] = field(default_factory=Counter)  # by stage
    took_ms: int = 0
    # Marks found wrong and replaced (sinks.positions): the source's LSNs went back, or a forged one.
    regressions: list[Regression] = field(default_factory=list)


class RecordFailed(Exception):  # noqa: N818 - a state
    """A sink's write raised an exception that is none of the contract's (``sinks.contract``): a bug
    or a value the sink cannot handle, not an unavailable target. ``Flusher`` isolates the record."""

    def __init__(self, error: BaseException) -> None:
        super().__init__(error_text(error))
        self.error = error


def error_text(error: BaseException) -> str:
    first = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
    return f"{type(error).__name__}: {first}" if first else type(error).__name__


# What sinks raise to steer the driver; anything else a write raises is the records' (RecordFailed).
_SIGNALS = (ClaimGone, PositionConflict, PositionsRewound, Fenced)
# A record whose write alone fails this many times in a row is dead-lettered.
ISOLATED_TRIES = 3


class Flusher(Generic[T]):
    def __init__(
        self,
        sink: Sink[T],
        letters: LetterSender,
        topics: Sequence[str],
        *,
        owns_upstream_letters: bool,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
        wall_clock: Callable[[], float] = time.time,
        sequence_tolerance_ms: int = DEFAULT_TOLERANCE_MS,
        planned: Mapping[str, int] | None = None,
    ) -> None:
        self.sink = sink
        self._wall_clock = wall_clock
        self._tolerance_ms = sequence_tolerance_ms
        self._letters = letters
        self._topics = list(topics)
        self._owns_upstream = owns_upstream_letters
        self._clock = clock
        self._sleep = sleep
        self.stored: dict[str, Position] = {}
        # The highest next offset this flusher stored or read per partition: the store may never
        # come back below it (``rewound``). It starts from what the job's plan read for this sink
        # (``planned``), so a store that went back between the plan and this first load is caught
        # too: the lane's source starts past the records in between. Atomic sinks only: their store
        # (Redis) is the one that can come back older.
        self._seen: dict[str, int] = dict(planned or {}) if sink.atomic else {}

    def load(self) -> None:
        loaded = self._until_available("read positions", lambda: self.sink.positions(self._topics))
        behind = rewound(loaded, self._seen)
        if behind:
            error = PositionsRewound(self.sink.name, behind)
            _log.error("%s", error)
            raise error
        self.stored = loaded
        self._remember(loaded)

    def _remember(self, positions: Mapping[str, Position]) -> None:
        seen = self._seen
        for key, position in positions.items():
            if position.next_offset > seen.get(key, -1):
                seen[key] = position.next_offset

    def flush(self, items: Sequence[Any]) -> FlushReport:
        report = FlushReport()
        began = self._clock()
        for chunk in self._chunks(items):
            self._flush_isolating(chunk, report)
        report.took_ms = int((self._clock() - began) * 1000)
        return report

    def _flush_isolating(self, chunk: Sequence[Any], report: FlushReport) -> None:
        """Flush ``chunk``; if the sink's write raised something no sink should (``RecordFailed``),
        flush each half on its own, down to the one record that fails, which becomes a dead letter:
        one record must never fail the job. Halves are flushed in order and each stores its own
        positions, so the records around the poison one are applied exactly as before."""
        try:
            self._flush_with_conflicts(chunk, report)
        except RecordFailed as failed:
            if len(chunk) > 1:
                _log.warning("%s: a write of %d records raised %s; isolating", self.sink.name, len(chunk), failed)
                middle = len(chunk) // 2
                self._flush_isolating(chunk[:middle], report)
                self._flush_isolating(chunk[middle:], report)
                return
            for attempt in range(1, ISOLATED_TRIES):
                # A failure that goes away was not the record's: then it is applied the normal way.
                self._sleep(self.sink.retry_policy.delay(attempt))
                try:
                    self._flush_with_conflicts(chunk, report)
                    return
                except RecordFailed as again:
                    failed = again
            record = chunk[0]
            _log.error("%s: dead-lettering %s, its write alone raised %s", self.sink.name, record.position, failed)
            letter = self._letter(record, f"{self.sink.name} raised {failed}")
            self._flush_with_conflicts([msgspec.structs.replace(letter, for_sink=self.sink.name)], report)

    def _flush_with_conflicts(self, chunk: Sequence[Any], report: FlushReport) -> None:
        while True:
            try:
                self._flush_chunk(chunk, report)
                return
            except PositionConflict:
                report.conflicts += 1
                self.load()

    def _chunks(self, items: Sequence[Any]) -> Iterator[Sequence[Any]]:
        limits = self.sink.limits
        if not limits.max_bytes and len(items) <= limits.max_records:
            yield items
            return
        start, size = 0, 0
        for i, item in enumerate(items):
            item_size = self.sink.size_of(item) if limits.max_bytes else 0
            full = i - start >= limits.max_records or (limits.max_bytes and size + item_size > limits.max_bytes)
            if full and i > start:
                yield items[start:i]
                start, size = i, 0
            size += item_size
        if start < len(items):
            yield items[start:]

    def _flush_chunk(self, chunk: Sequence[Any], report: FlushReport) -> None:
        admitted = admit(chunk, self.stored, now_ms=int(self._wall_clock() * 1000), tolerance_ms=self._tolerance_ms)
        report.replays += admitted.replays
        report.resends += admitted.resends
        upstream: list[DeadLetter] = []
        records: list[T] = []
        parks: list[str] = []
        claims: dict[int, str] = {}  # id(record) -> origin id, for returning parked records
        claimed: set[str] = set()
        name = self.sink.name
        for item in admitted.fresh:
            kind = type(item)
            if kind is DeadLetter:
                if item.for_sink is not None:
                    if item.for_sink == name:
                        upstream.append(item)
                elif self._owns_upstream or not item.deterministic:
                    upstream.append(item)
            elif kind is Parked:
                if item.for_sink is None or item.for_sink == name:
                    upstream.append(park_letter(item, name))
                    parks.append((item.origin or item.position).record_id)
            elif kind is EnrichedChange and item.for_sink is not None:
                # Back from the parking topic: only the sink that parked it applies it.
                if item.for_sink == name:
                    claim = item.identity.record_id
                    if claim in claimed:  # parked twice (a crash): one copy per chunk may claim it
                        report.parked_duplicates += 1
                        continue
                    claimed.add(claim)
                    records.append(item)
                    claims[id(item)] = claim
            elif kind is not Skipped:
                records.append(item)
        self._send(upstream, report)
        positions = admitted.positions
        expected = {key: self.stored.get(key) for key in positions}
        stored_by_write = self._write(records, positions, expected, report, claims, parks) if records else False
        if not stored_by_write:
            if parks and self.sink.atomic:
                self._until_available("store positions", lambda: self.sink.commit(positions, expected, parks=parks))
            else:
                self._until_available("store positions", lambda: self.sink.commit(positions, expected))
        self.stored.update(positions)
        if admitted.regressions:  # reported once the positions that replace the marks are stored
            report.regressions += admitted.regressions
            for r in admitted.regressions:
                _log.warning(
                    "%s: %s: sequence mark %s replaced by %s at offset %d (%s; mark committed at %s ms, "
                    "the change at %s ms): changes below the old mark are applied, not skipped",
                    name,
                    r.partition,
                    r.mark,
                    r.sequence,
                    r.offset,
                    r.kind,
                    r.mark_commit_ts_ms,
                    r.commit_ts_ms,
                )
        self._remember(positions)

    def _write(
        self,
        records: list[T],
        positions: dict[str, Position],
        expected: dict[str, Position | None],
        report: FlushReport,
        claims: dict[int, str] | None = None,
        parks: Sequence[str] = (),
    ) -> bool:
        """Write until every record is applied or dead-lettered; True if an atomic write stored the
        positions with the data."""
        sink, policy = self.sink, self.sink.retry_policy
        pending = records
        started = self._clock()
        attempt = 0
        while pending:
            claimed = [claims[id(r)] for r in pending if id(r) in claims] if claims else []
            try:
                outcome = self._attempt(Batch(pending, positions, expected, claimed, parks))
            except ClaimGone as gone:
                # Applied already (parked twice after a crash, or applied on a replay): drop them.
                done = set(gone.record_ids)
                before = len(pending)
                pending = [r for r in pending if claims.get(id(r)) not in done]  # type: ignore[union-attr]
                report.parked_duplicates += before - len(pending)
                if not pending:
                    return False
                continue
            rejected = [self._letter(pending[i], reason) for i, reason in outcome.rejected.items()]
            self._send(rejected, report)
            if outcome.complete:
                report.written += len(pending)
                return sink.atomic
            if sink.atomic:
                # All or nothing: nothing was applied; what was not rejected goes again.
                pending_next = [r for i, r in enumerate(pending) if i not in outcome.rejected]
            else:
                report.written += len(pending) - len(outcome.rejected) - len(outcome.retry)
                pending_next = [pending[i] for i in sorted(outcome.retry)]  # keep offset order
            retry = {id(pending[i]): why for i, why in outcome.retry.items()}
            pending = pending_next
            if not retry:
                continue  # only rejections: write the rest at once
            attempt += 1
            report.retries += 1
            first = next(iter(retry.values()))
            elapsed = self._clock() - started
            wait = max((r.retry_after_s or 0.0) for r in retry.values())
            reason = None
            if policy.exhausted(elapsed):
                reason = f"gave up after {policy.budget_s:g} s of retries: {first.reason}"
            elif policy.budget_s is not None and wait > policy.budget_s - elapsed:
                # The target asks for more time than the budget has left: give up now, not after it.
                reason = f"gave up: asked to wait {wait:g} s, past the {policy.budget_s:g} s budget: {first.reason}"
            if reason is not None:
                gave_up = [self._letter(r, reason) for r in pending if id(r) in retry]
                self._send(gave_up, report)
                pending = [r for r in pending if id(r) not in retry]
                continue
            self._log_retry(attempt, len(retry), first)
            delay = policy.delay(attempt, wait)
            if policy.budget_s is not None:
                delay = min(delay, max(0.0, policy.budget_s - elapsed))  # the last try at the budget's end
            self._sleep(delay)
        return False

    def _attempt(self, batch: Batch[T]) -> Outcome:
        try:
            return self.sink.write(batch)
        except SinkUnavailable as exc:
            why = Retry(exc.reason, exc.retry_after_s)
            return Outcome(retry=dict.fromkeys(range(len(batch.records)), why))
        except _SIGNALS:
            raise
        except Exception as exc:  # a record the sink could not handle: flush isolates it
            raise RecordFailed(exc) from exc

    def _letter(self, record: Any, reason: str) -> DeadLetter:
        sequence = None if record.op == "r" else record.sequence  # snapshot reads never set a mark
        return DeadLetter(
            record.position,
            self.sink.name,
            reason,
            record.key,
            record.value,
            sequence,
            headers=self.sink.letter_headers(record),
            origin=getattr(record, "origin", None),
        )

    def _send(self, letters: list[DeadLetter], report: FlushReport) -> None:
        if letters:
            self._letters.send(letters)
            report.letters.update(letter.stage for letter in letters)

    def _until_available(self, what: str, call: Callable[[], Any]) -> Any:
        """Positions must be read and stored whatever it takes: retry transient errors forever."""
        policy = self.sink.retry_policy
        attempt = 0
        while True:
            try:
                return call()
            except SinkUnavailable as exc:
                attempt += 1
                self._log_retry(attempt, 0, Retry(f"{what}: {exc.reason}"))
                self._sleep(policy.delay(attempt, exc.retry_after_s))

    def _log_retry(self, attempt: int, records: int, why: Retry) -> None:
        if attempt in (1, 10) or attempt % 50 == 0:
            _log.warning(
                "%s: %d record(s) not written yet (attempt %d): %s", self.sink.name, records, attempt, why.reason
            )


def rewound(loaded: Mapping[str, Position], seen: Mapping[str, int]) -> dict[str, tuple[int | None, int]]:
    """``{partition: (next offset loaded, or None if absent; highest seen)}`` where the loaded positions
    are below what was stored or read before: a store that came back older, never a legitimate move
    (a conflict's other writer or a rebuild's swap only move positions forward)."""
    behind: dict[str, tuple[int | None, int]] = {}
    for key, high in seen.items():
        position = loaded.get(key)
        if position is None or position.next_offset < high:
            behind[key] = (None if position is None else position.next_offset, high)
    return behind
