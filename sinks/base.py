"""``SinkWriteFn``: the one Beam DoFn that drives every sink of the contract in ``sinks.contract``.

It buffers what its lane delivers in ``process`` and flushes in ``finish_bundle``, and also when the
buffer is full or its oldest item has waited ``max_latency_ms`` (a bundle can last longer than the
latency goal allows): the shape of Beam's ``BigQueryWriteFn`` and Quix Streams' batching sinks.
What a flush does is ``sinks.flush.Flusher``, the same for every sink.

Flushes run on one writer thread per DoFn instance, one at a time and in order, so the bundle
thread decodes and joins the next records while the target applies the previous batch. At most one
flush is in flight. While it runs, the bundle thread goes on buffering even past
``max_latency_ms``, and hands the buffer over as soon as the writer is free: under load the batches
grow by themselves, which spreads a flush's fixed cost (a script, an fsync, a request) over more
records, and at a trickle they stay small. Only a full buffer (``max_buffer``) waits for the flush
in flight, which holds the lane's source back (Prism has no back-pressure of its own; Kafka keeps
the backlog). ``finish_bundle`` waits for both, so a finished bundle is a written bundle. Nothing
transient escapes a bundle: one exception that does fails the whole streaming job on Prism, and
every lane with it.

Clients (the sink's, the dead-letter producer) are built in ``setup()``: they hold sockets and
locks that do not pickle. Beam metrics are reported on the bundle thread, from the flush's report:
updates made on a writer thread are dropped by Beam. Each is also a Prometheus metric
(``infra.telemetry``), among them the commit -> applied lag of the newest change of each flush.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Generic, TypeVar

import apache_beam as beam

from infra import telemetry
from sinks.contract import PositionsRewound, Sink
from sinks.fencing import Fence, announce_rewind, guard
from sinks.flush import Flusher, FlushReport, LetterSender
from sinks.positions import DEFAULT_TOLERANCE_MS

T = TypeVar("T")
SLOW_FLUSH_MS = 1_000
_log = logging.getLogger(__name__)


class SinkWriteFn(beam.DoFn, Generic[T]):
    """Drives one ``Sink`` for one lane; see the module docstring."""

    def __init__(
        self,
        sink_factory: Callable[[], Sink[T]],
        letters_factory: Callable[[], LetterSender],
        topics: Sequence[str],
        *,
        owns_upstream_letters: bool = True,
        max_buffer: int = 20_000,
        max_latency_ms: int = 50,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
        fence: Fence | None = None,
        sequence_tolerance_ms: int = DEFAULT_TOLERANCE_MS,
        planned: Mapping[str, int] | None = None,
    ) -> None:
        self._factory = sink_factory
        self._planned = dict(planned or {})  # the next offsets the job's plan read for this sink
        self._sequence_tolerance_ms = sequence_tolerance_ms
        self._fence = fence  # the job's fencing token (sinks.fencing); a refused write is never retried
        self._letters_factory = letters_factory
        self._topics = list(topics)
        self._owns_upstream = owns_upstream_letters
        self._max_buffer = max_buffer
        self._max_latency_s = max_latency_ms / 1000.0
        self._sleep = sleep
        self._clock = clock

    def setup(self) -> None:
        sink = guard(self._factory(), self._fence)
        sink.open()
        self._letters = self._letters_factory()
        self._flusher = Flusher(
            sink,
            self._letters,
            self._topics,
            owns_upstream_letters=self._owns_upstream,
            clock=self._clock,
            sleep=self._sleep,
            sequence_tolerance_ms=self._sequence_tolerance_ms,
            planned=self._planned,
        )
        self._flusher.load()
        name = sink.name
        records = "engagement_sink_records"
        self._written = telemetry.counter(records, (name, "records_written"), sink=name, outcome="written")
        self._replays = telemetry.counter(records, (name, "replays_skipped"), sink=name, outcome="replays_skipped")
        self._resends = telemetry.counter(records, (name, "resends_skipped"), sink=name, outcome="resends_skipped")
        self._parked_duplicates = telemetry.counter(
            records, (name, "parked_duplicates_skipped"), sink=name, outcome="parked_duplicates_skipped"
        )
        self._flushes = telemetry.counter("engagement_sink_flushes", (name, "flushes"), sink=name)
        self._retries = telemetry.counter("engagement_sink_retries", (name, "retries"), sink=name)
        self._conflicts = telemetry.counter(
            "engagement_sink_position_conflicts", (name, "position_conflicts"), sink=name
        )
        self._flush_s = telemetry.histogram("engagement_sink_flush_seconds", (name, "flush_ms"), sink=name)
        self._commit_lag_s = telemetry.histogram("engagement_sink_commit_lag_seconds", sink=name)
        self._last_flush = telemetry.gauge("engagement_sink_last_flush_timestamp_seconds", sink=name)
        self._states: dict[str, Any] = {}  # the sink's own gauges, as Beam gauges
        self._letter_counts: dict[str, telemetry.Count] = {}
        self._regressions: dict[tuple[str, str], telemetry.Count] = {}
        self._newest_commit_ms: int | None = None
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-writer")
        self._in_flight: Future[FlushReport] | None = None

    def start_bundle(self) -> None:
        self._buffer: list[Any] = []
        self._oldest = 0.0

    def process(self, element: Any) -> None:
        if not self._buffer:
            self._oldest = time.monotonic()
        # Upstream steps emit batches (lists); single items are accepted too.
        if type(element) is list:
            self._buffer.extend(element)
        else:
            self._buffer.append(element)
        full = len(self._buffer) >= self._max_buffer  # waits for the flush in flight: back-pressure
        due = time.monotonic() - self._oldest >= self._max_latency_s
        if full or (due and (self._in_flight is None or self._in_flight.done())):
            self._submit()

    def finish_bundle(self) -> None:
        self._submit()
        self._wait()

    def _submit(self) -> None:
        """Hand the buffer to the writer thread once the previous flush is done."""
        self._wait()
        if self._buffer:
            batch, self._buffer = self._buffer, []
            # The last item is the newest of its partition, close enough to the batch's newest for a lag
            # figure, without a pass over the batch on the bundle thread.
            self._newest_commit_ms = getattr(batch[-1], "commit_ts_ms", None)
            self._in_flight = self._writer.submit(self._flusher.flush, batch)

    def _wait(self) -> None:
        """Wait for the flush in flight; an error it could not handle fails the bundle here."""
        if self._in_flight is None:
            return
        future, self._in_flight = self._in_flight, None
        try:
            report = future.result()
        except PositionsRewound:
            if self._fence is not None:
                # Where the job is restarted from a checkpoint rather than a new plan (Flink), the
                # supervisor reads this and submits the job again (pipeline.supervisor).
                announce_rewind(self._fence)
            raise
        self._written.inc(report.written)
        self._replays.inc(report.replays)
        self._resends.inc(report.resends)
        self._flushes.inc()
        self._retries.inc(report.retries)
        self._conflicts.inc(report.conflicts)
        self._parked_duplicates.inc(report.parked_duplicates)
        self._flush_s.observe(report.took_ms / 1000)
        now = time.time()
        self._last_flush.set(now)
        if self._newest_commit_ms:
            self._commit_lag_s.observe(max(0.0, now - self._newest_commit_ms / 1000))
        name = self._flusher.sink.name
        for gauge, value in self._flusher.sink.gauges().items():  # Prometheus has them from the sink itself
            beam_gauge = self._states.get(gauge)
            if beam_gauge is None:
                beam_gauge = self._states[gauge] = beam.metrics.Metrics.gauge(name, gauge)
            beam_gauge.set(value)
        for regression in report.regressions:
            where = (regression.partition, regression.kind)
            regressions = self._regressions.get(where)
            if regressions is None:
                regressions = self._regressions[where] = telemetry.counter(
                    "engagement_sink_sequence_regressions",
                    (name, "sequence_regressions"),
                    sink=name,
                    partition=regression.partition,
                    kind=regression.kind,
                )
            regressions.inc()
        for stage, count in report.letters.items():
            letters = self._letter_counts.get(stage)
            if letters is None:
                letters = self._letter_counts[stage] = telemetry.counter(
                    "engagement_dead_letters", ("dead_letters", stage), stage=stage
                )
            letters.inc(count)
        if report.took_ms >= SLOW_FLUSH_MS:
            # Rare multi-second stalls are the tail of the latency figures: say where they came from.
            _log.warning("%s: a flush took %d ms", self._flusher.sink.name, report.took_ms)

    def teardown(self) -> None:
        writer = getattr(self, "_writer", None)
        if writer is not None:
            writer.shutdown(wait=True, cancel_futures=True)
        flusher = getattr(self, "_flusher", None)
        if flusher is not None:
            flusher.sink.close()
        letters = getattr(self, "_letters", None)
        if letters is not None and hasattr(letters, "close"):
            letters.close()
