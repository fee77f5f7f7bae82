"""The contract every sink implements, and the one Beam DoFn that drives them all.

A sink is *positioned*: ``write(batch)`` applies a batch and, atomically with it, records for each
source partition the next offset it has applied; records at or below that position are skipped, so
a replay after a crash applies nothing twice. ``positions()`` returns what is stored; the source
resumes every partition from the lowest position over all sinks (``pipeline.job.plan``).

``SinkWriteFn`` buffers in ``process`` and flushes in ``finish_bundle`` (and when the buffer is
full or its oldest item has waited ``max_latency_ms``), the shape of Beam's ``BigQueryWriteFn`` and
Quix Streams' batching sinks. Flushes run on one writer thread per DoFn instance, one at a time and
in order, so the bundle thread decodes and joins the next records while the destination applies the
previous batch (waiting on Redis took a quarter of the bundle thread's time when it was
synchronous). At most one flush is in flight: the next one waits for it, which is the back-pressure
on the source, and ``finish_bundle`` waits for both, so a finished bundle is a written bundle and
dead letters leave within the bundle that read their records. A flush that fails
with a transient error (``SinkUnavailable``: connection refused, timeout, a server restarting) is
retried with capped exponential backoff *forever*, inside the bundle: one exception escaping a
bundle fails the whole streaming job on Prism, and giving up would lose data. Because writes are
idempotent per position, retrying a flush whose first attempt was applied is harmless. Records a
sink can never apply go to the dead-letter output instead (``PermanentRecordError``).

Clients are built in ``setup()`` (they hold sockets and locks that do not pickle), not in
``__init__``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.pvalue import TaggedOutput
from apache_beam.transforms.window import GlobalWindows
from tenacity import RetryCallState, Retrying, retry_if_exception_type, wait_exponential_jitter

from pipeline.model import DeadLetter, SourcePosition

T = TypeVar("T")
DEAD_LETTER = "dead_letter"
SLOW_FLUSH_MS = 1_000
_log = logging.getLogger(__name__)


class SinkUnavailable(Exception):  # noqa: N818 - reads as a state, like ConnectionRefused
    """The destination cannot take writes right now; the same write may succeed later."""


class PermanentRecordError(Exception):
    """These records can never be written; they go to the dead-letter topic with the reason."""

    def __init__(self, reason: str, positions: Sequence[SourcePosition]) -> None:
        super().__init__(reason)
        self.reason = reason
        self.positions = list(positions)


class PositionedSink(Protocol[T]):
    name: str

    def open(self) -> None: ...

    def write(self, batch: Sequence[T]) -> None:
        """Apply ``batch`` and store its positions atomically; skip what is already applied."""

    def positions(self) -> dict[str, int]:
        """``{"topic:partition": next offset to apply}`` as stored by this sink."""

    def close(self) -> None: ...


@dataclass(frozen=True)
class _Flushed:
    """What a flush on the writer thread did, for the bundle thread to report."""

    letters: list[DeadLetter]
    written: int
    retries: int
    took_ms: int


def position_of(item: Any) -> SourcePosition:
    return item.position


class SinkWriteFn(beam.DoFn, Generic[T]):
    """Drives one ``PositionedSink``; see the module docstring."""

    def __init__(
        self,
        sink_factory: Callable[[], PositionedSink[T]],
        max_buffer: int = 20_000,
        max_latency_ms: int = 50,
        max_backoff_s: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._factory = sink_factory
        self._max_buffer = max_buffer
        self._max_latency_s = max_latency_ms / 1000.0
        self._max_backoff_s = max_backoff_s
        self._sleep = sleep

    def setup(self) -> None:
        self._sink = self._factory()
        self._sink.open()
        name = self._sink.name
        self._written = Metrics.counter(name, "records_written")
        self._flushes = Metrics.counter(name, "flushes")
        self._retries = Metrics.counter(name, "retries")
        self._dead = Metrics.counter(name, "dead_lettered")
        self._flush_ms = Metrics.distribution(name, "flush_ms")
        self._retrying = Retrying(
            retry=retry_if_exception_type(SinkUnavailable),
            wait=wait_exponential_jitter(initial=0.05, max=self._max_backoff_s),
            sleep=self._sleep,
            before_sleep=self._log_retry,
            reraise=True,
        )
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-writer")
        self._in_flight: Future[_Flushed] | None = None
        self._attempts_failed = 0  # written by the writer thread during a flush only

    def _log_retry(self, state: RetryCallState) -> None:
        self._attempts_failed += 1
        if state.attempt_number in (1, 10) or state.attempt_number % 50 == 0:
            _log.warning(
                "%s unavailable (attempt %d), retrying: %s",
                self._sink.name,
                state.attempt_number,
                state.outcome.exception() if state.outcome else "",
            )

    def start_bundle(self) -> None:
        self._buffer: list[T] = []
        self._oldest = 0.0

    def process(self, element: T | list[T]) -> Iterator[TaggedOutput]:
        if not self._buffer:
            self._oldest = time.monotonic()
        # Upstream steps emit batches; single items are accepted too.
        if type(element) is list:
            self._buffer.extend(element)
        else:
            self._buffer.append(element)
        # Flush by size, or by age: a bundle can last longer than the latency goal allows.
        if len(self._buffer) >= self._max_buffer or time.monotonic() - self._oldest >= self._max_latency_s:
            for letter in self._submit():
                yield TaggedOutput(DEAD_LETTER, letter)

    def finish_bundle(self) -> Iterator[TaggedOutput]:
        # Outputs of finish_bundle carry no element window: give them the global one.
        for letter in self._submit() + self._wait():
            yield TaggedOutput(DEAD_LETTER, GlobalWindows.windowed_value(letter))

    def _submit(self) -> list[DeadLetter]:
        """Hand the buffer to the writer thread once the previous flush is done; return its letters."""
        letters = self._wait()
        if self._buffer:
            batch, self._buffer = self._buffer, []
            self._in_flight = self._writer.submit(self._flush, batch)
        return letters

    def _wait(self) -> list[DeadLetter]:
        """Wait for the flush in flight; an error it could not handle fails the bundle here."""
        if self._in_flight is None:
            return []
        future, self._in_flight = self._in_flight, None
        flushed = future.result()
        # Beam's metrics belong to the bundle thread (a writer thread's updates would be dropped).
        self._written.inc(flushed.written)
        self._flushes.inc()
        self._retries.inc(flushed.retries)
        self._dead.inc(len(flushed.letters))
        self._flush_ms.update(flushed.took_ms)
        return flushed.letters

    def _flush(self, batch: list[T]) -> _Flushed:
        letters: list[DeadLetter] = []
        self._attempts_failed = 0
        began = time.monotonic()
        try:
            self._retrying(self._sink.write, batch)
        except PermanentRecordError as error:
            bad = set(error.positions)
            good = [item for item in batch if position_of(item) not in bad]
            for item in batch:
                if position_of(item) in bad:
                    letters.append(DeadLetter(position_of(item), self._sink.name, error.reason, None, None))
            if good:
                self._retrying(self._sink.write, good)
            batch = good
        took_ms = int((time.monotonic() - began) * 1000)
        if took_ms >= SLOW_FLUSH_MS:
            # Rare multi-second stalls are the tail of the latency figures: say where they came from.
            _log.warning("%s: a flush of %d records took %d ms", self._sink.name, len(batch), took_ms)
        return _Flushed(letters, len(batch), self._attempts_failed, took_ms)

    def teardown(self) -> None:
        writer = getattr(self, "_writer", None)
        if writer is not None:
            writer.shutdown(wait=True, cancel_futures=True)
        sink = getattr(self, "_sink", None)
        if sink is not None:
            sink.close()
