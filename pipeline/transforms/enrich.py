"""The steps between the source and the sinks: decode envelopes, join content, reduce to contributions.

Each step is a ``DoFn`` over the pure functions of ``pipeline.decode`` and ``pipeline.metrics``.
Bad input never raises out of a step: it is replaced, in place in the stream, by a ``DeadLetter``
with its reason and original bytes (malformed envelope, content still unknown at its deadline). An
event whose content is not known yet is handed on as ``Parked``, and the lane reads on: its sinks
write it to the parking topic, and the parked lane (``pipeline.transforms.unpark``) brings it back.
Letters
travel on with the records to the lane's sink, which produces them to the dead-letter topic and
waits for the broker before it stores a position past them (``sinks.flush``): a separate
dead-letter step could lose a letter on ``kill -9`` after the sink had moved on. Tombstones go on
as ``Skipped`` position markers and are counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import apache_beam as beam

from infra import telemetry
from pipeline.decode import decode_content, decode_engagement, decode_error_letter, error_reason
from pipeline.metrics import MissingContentError, contributions, engagement_pct, engagement_seconds
from pipeline.model import ContentRow, DeadLetter, EngagementChange, EnrichedChange, Parked, Skipped
from pipeline.sources.content_view import ContentView
from pipeline.sources.kafka_partitions import RecordBatch, records


class DecodeFn(beam.DoFn):
    """``RecordBatch -> list[change | Skipped | DeadLetter]``, in offset order. ``kind`` is
    ``"engagement"`` or ``"content"``. Elements are batches, as the source emits them, to pay Beam's
    per-element cost once per batch."""

    def __init__(self, kind: str) -> None:
        if kind not in ("engagement", "content"):
            raise ValueError(kind)
        self._kind = kind
        self._decoded = telemetry.counter(
            "engagement_decode", ("decode", f"{kind}_decoded"), kind=kind, outcome="decoded"
        )
        self._tombstones = telemetry.counter(
            "engagement_decode", ("decode", f"{kind}_tombstones"), kind=kind, outcome="tombstone"
        )
        self._malformed = telemetry.counter(
            "engagement_decode", ("decode", f"{kind}_malformed"), kind=kind, outcome="malformed"
        )

    def setup(self) -> None:
        self._decode = decode_engagement if self._kind == "engagement" else decode_content

    def process(self, batch: RecordBatch) -> Iterator[list[Any]]:
        decode, stage = self._decode, f"decode_{self._kind}"
        changes: list[Any] = []
        tombstones = malformed = 0
        for record in records(batch):
            try:
                change = decode(record)
            # Any exception, not only DecodeError: one record must never fail the bundle (and, on
            # Prism, the whole job with every lane); it becomes its own dead letter instead.
            except Exception as error:  # noqa: BLE001
                malformed += 1
                changes.append(decode_error_letter(record, stage, error))
                continue
            # Tombstones (Skipped) go on too, so the sinks store their position: a partition that
            # ends in a tombstone would otherwise look one record behind forever.
            tombstones += type(change) is Skipped
            changes.append(change)
        self._tombstones.inc(tombstones)
        self._malformed.inc(malformed)
        self._decoded.inc(len(changes) - tombstones - malformed)
        if changes:
            yield changes


def enrich(change: EngagementChange, lookup: Callable[[str], ContentRow | None]) -> EnrichedChange:
    """The change joined to its content; raises ``MissingContentError`` for the first unknown id."""
    parts = contributions(change, lookup)
    row = change.after or change.before
    content = None if row is None or row.content_id is None else lookup(row.content_id)
    seconds = None if row is None else engagement_seconds(row.duration_ms)
    length = None if content is None else content.length_seconds
    return EnrichedChange(
        change.position,
        change.key,
        change.value,
        change.op,
        change.sequence,
        change.commit_ts_ms,
        change.before,
        change.after,
        content,
        parts,
        seconds,
        engagement_pct(seconds, length),
    )


def missing_letter(change: EngagementChange, content_id: str, timeout_s: float, view_rows: int) -> DeadLetter:
    """The letter for an event whose content did not arrive within ``timeout_s`` of its first miss."""
    reason = f"content {content_id} not found within {timeout_s:g} s (content view has {view_rows} rows)"
    # A snapshot read's sequence is the snapshot's LSN for every row: it must not set a mark.
    sequence = None if change.op == "r" else change.sequence
    return DeadLetter(change.position, "join_content", reason, change.key, change.value, sequence, deterministic=False)


def failure_letter(change: EngagementChange, stage: str, error: BaseException) -> DeadLetter:
    """The letter for a decoded change that a step could not handle (an exception other than the
    ones it expects): its original bytes and the exception, so that no record can fail the job."""
    sequence = None if change.op == "r" else change.sequence
    return DeadLetter(change.position, stage, error_reason(error), change.key, change.value, sequence)


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class ContentJoinFn(beam.DoFn):
    """Base of the steps that join against this worker's content view (``JoinContentFn`` and the
    parked lane's ``UnparkFn``): the view's settings, and ``setup`` waiting until it is current."""

    def __init__(
        self,
        consumer_config: dict[str, Any],
        content_topic: str,
        late_content_timeout_s: float,
        startup_timeout_s: float,
        view_factory: Callable[[], ContentView] | None = None,
        clock_ms: Callable[[], int] = _now_ms,
        view_fault: str | None = None,
    ) -> None:
        self._view_factory = view_factory
        self._view_fault = view_fault
        self._config = consumer_config
        self._topic = content_topic
        self._late_timeout = late_content_timeout_s
        self._startup_timeout = startup_timeout_s
        self._clock_ms = clock_ms

    def setup(self) -> None:
        self._view = self._current_view()

    def _shared_view(self) -> ContentView:
        return ContentView.shared(self._config, self._topic, self._view_fault)

    def _current_view(self) -> ContentView:
        """This worker's view, current; a new one if the reader of the one held died (a view with
        a dead reader never learns of new content: every event would be parked for ever)."""
        # Tests hand in a view of their own; workers share one per process.
        view = (self._view_factory or self._shared_view)()
        view.wait_until_current(self._startup_timeout)
        return view

    def start_bundle(self) -> None:
        if not self._view.alive:
            self._view = self._current_view()


class JoinContentFn(ContentJoinFn):
    """``list[EngagementChange] -> list[EnrichedChange | Parked | DeadLetter]`` against this worker's
    content view; never waits.

    An event whose content is not in the view is handed on as ``Parked`` with a deadline: one per
    content id (``ContentView.deadline_for``, the first miss plus ``late_content_timeout_s``), so
    all events of one missing content share one bounded wait, and other content is not held up.
    Past the deadline, further events of that content go to the dead-letter topic at once, once the
    view proves it had read its topic up to the deadline (``ContentView.proven_absent_at``).
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._joined = telemetry.counter("engagement_join", ("join", "joined"), outcome="joined")
        self._parked = telemetry.counter("engagement_join", ("join", "parked"), outcome="parked")
        self._missing = telemetry.counter("engagement_join", ("join", "content_missing"), outcome="content_missing")
        self._failed = telemetry.counter("engagement_join", ("join", "failed"), outcome="failed")

    def process(self, changes: list[EngagementChange | Skipped | DeadLetter]) -> Iterator[list[Any]]:
        enriched: list[Any] = []
        lookup = self._view.get
        parked = missing = joined = failed = 0
        for change in changes:
            if type(change) is not EngagementChange:
                enriched.append(change)  # position markers and letters go on as they are
                continue
            joined += 1
            try:
                enriched.append(enrich(change, lookup))
            except MissingContentError as unknown:
                item = self._park(change, unknown.content_id)
                parked += type(item) is Parked
                missing += type(item) is DeadLetter
                enriched.append(item)
            except Exception as error:  # noqa: BLE001 - one change's failure is its dead letter, not the job's
                failed += 1
                enriched.append(failure_letter(change, "join", error))
        self._joined.inc(joined - parked - missing - failed)
        self._parked.inc(parked)
        self._missing.inc(missing)
        self._failed.inc(failed)
        if enriched:
            yield enriched

    def _park(self, change: EngagementChange, content_id: str) -> Parked | DeadLetter:
        now = self._clock_ms()
        deadline = self._view.deadline_for(content_id, now, int(self._late_timeout * 1000))
        # Past the deadline, the view must also prove it was current then (ContentView.proven_absent_at):
        # a view that is behind parks the event once more rather than dead-letter valid data.
        if deadline <= now and self._view.proven_absent_at(deadline):
            return missing_letter(change, content_id, self._late_timeout, len(self._view))
        sequence = None if change.op == "r" else change.sequence
        return Parked(
            change.position, change.key, change.value, change.op, sequence, content_id, deadline, change.commit_ts_ms
        )
