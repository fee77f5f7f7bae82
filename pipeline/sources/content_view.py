"""The content catalogue as a per-process table kept from the compacted content topic.

This is the "global table" join (Kafka Streams' GlobalKTable): every worker process reads the whole
compacted ``content`` topic from the beginning once, then keeps applying changes in a background
thread. Events are joined with a dictionary lookup, so the hot path has no Beam keyed state (each
state read is a 4-7 ms round trip on Prism, which capped a keyed join near 2,000 events/s) and no
shuffle. The catalogue is small next to the event stream (thousands of rows, not millions).

- Inserts, snapshot reads and updates replace the row; a delete or a tombstone removes it. Updates
  therefore apply to events processed after them.
- ``wait_until_current`` blocks until the view has applied everything the topic held when it was
  called: a worker calls it before its first event, so a restart never joins against a half-loaded
  catalogue.
- ``deadline_for`` gives each missing content id one deadline, from its first miss in this
  process, so that every event of that content shares one bounded wait (``pipeline.transforms``);
  ``wait_for_any`` lets the parked lane wait, briefly, for any of the rows it misses.
- ``proven_absent_at(ms)``: a deadline alone does not prove that content never came, since this
  view may be behind its topic (a starved reader thread, a slow broker), and valid data must never
  be dead-lettered. The view proves it: it reads the topic's end offsets at a time ``t``, and once
  it has applied up to them, everything published before ``t`` is in it. An event is dead-lettered
  only when its content is missing and such a ``t`` is at or past its deadline; until then it waits.

One view per (bootstrap servers, topic) per process, shared by all DoFn instances via ``shared()``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any, ClassVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, TopicPartition

from infra import telemetry
from pipeline.decode import decode_content
from pipeline.model import ContentChange, ContentRow, KafkaRecord, Skipped, SourcePosition

_log = logging.getLogger(__name__)
MAX_MISSING_IDS = 100_000


def reader_fault(spec: str | None) -> Callable[[], None] | None:
    """A fault the reader injects into itself, for the fault suite only (``PIPELINE_CONTENT_VIEW_FAULT``,
    ``PipelineSettings.content_view_fault``):
    ``raise-once-after:<s>`` makes its loop raise once, ``<s>`` seconds after it started (the view
    must read on); ``exit-after:<s>`` ends the thread then, as if it had died of something no
    ``except`` catches (the join steps must notice and start a new view)."""
    if not spec:
        return None
    kind, _, after = spec.partition(":")
    at = time.monotonic() + float(after or 0)
    fired = False

    def fault() -> None:
        nonlocal fired
        if fired or time.monotonic() < at:
            return
        fired = True
        _log.warning("content view: injecting %s", spec)
        if kind == "raise-once-after":
            raise RuntimeError(f"injected reader fault ({spec})")
        if kind == "exit-after":
            raise SystemExit(f"injected reader fault ({spec})")
        raise ValueError(f"unknown content view fault: {spec}")

    return fault


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def caught_up(applied: dict[int, int], ends: dict[int, int]) -> bool:
    """Whether every partition's next applied offset has reached its end offset in ``ends``."""
    return all(applied.get(p, 0) >= end for p, end in ends.items())


class ContentTable:
    """The catalogue as a dict, built by applying decoded content changes in topic order (pure)."""

    def __init__(self) -> None:
        self.rows: dict[str, ContentRow] = {}

    def apply(self, change: ContentChange | Skipped) -> None:
        # A tombstone (Skipped) follows the delete that already removed the row.
        if isinstance(change, ContentChange):
            if change.after is not None:
                self.rows[change.after.id] = change.after
            elif change.before is not None:
                self.rows.pop(change.before.id, None)


class FirstMisses:
    """One deadline per missing content id: its first miss plus the timeout (pure, no clock)."""

    def __init__(self, max_ids: int = MAX_MISSING_IDS) -> None:
        self._deadlines: dict[str, int] = {}  # content id -> deadline, ms since the epoch
        self._max_ids = max_ids

    def deadline_for(self, content_id: str, now_ms: int, timeout_ms: int) -> int:
        """When events of ``content_id``, missed at ``now_ms``, stop waiting for it. Bounded to
        ``max_ids`` ids: the oldest are forgotten first (they then wait once more)."""
        deadline = self._deadlines.get(content_id)
        if deadline is None:
            deadline = self._deadlines[content_id] = now_ms + timeout_ms
            if len(self._deadlines) > self._max_ids:
                # Dict order is insertion order; a race between bundle threads only forgets early.
                self._deadlines.pop(next(iter(self._deadlines)), None)
        return deadline

    def arrived(self, content_id: str) -> None:
        """The content is in the view now: a later miss (after a delete) waits afresh."""
        if self._deadlines:
            self._deadlines.pop(content_id, None)


class ContentView:
    _registry: ClassVar[dict[tuple[str, str], ContentView]] = {}
    _registry_lock: ClassVar[threading.Lock] = threading.Lock()

    RESTART_BACKOFF_MAX_S: ClassVar[float] = 5.0

    def __init__(self, consumer_config: dict[str, Any], topic: str, fault: str | None = None) -> None:
        self._config = {**consumer_config, "enable.auto.commit": False, "enable.partition.eof": False}
        self._topic = topic
        self._table = ContentTable()
        self._rows = self._table.rows
        self._applied: dict[int, int] = {}  # partition -> next offset applied
        self._changed = threading.Condition()
        self._stop = threading.Event()
        self.malformed = 0
        self.misses = FirstMisses()
        self._loaded = False
        self._proof_ms = 0  # everything the topic held at this time (ms since the epoch) is applied
        self._proof_wanted = threading.Event()
        self._probe: tuple[int, dict[int, int]] | None = None  # (time, end offsets then) being caught up
        self._restarts_metric = telemetry.counter("engagement_content_view_reader_restarts", topic=topic)
        self._last_poll = telemetry.gauge("engagement_content_view_last_poll_timestamp_seconds", topic=topic)
        self._fault = reader_fault(fault)
        self._thread = threading.Thread(target=self._run, name=f"content-view-{topic}", daemon=True)
        self._thread.start()

    @classmethod
    def shared(cls, consumer_config: dict[str, Any], topic: str, fault: str | None = None) -> ContentView:
        """This process's view of ``topic``; a new one if there is none or its reader died."""
        key = (str(consumer_config.get("bootstrap.servers")), topic)
        with cls._registry_lock:
            view = cls._registry.get(key)
            if view is None or not view.alive:
                if view is not None:
                    _log.error("content view reader for %s is dead; starting a new view", topic)
                    fault = None  # injected once per process
                view = cls._registry[key] = cls(consumer_config, topic, fault)
            return view

    # --- reading --------------------------------------------------------------------------------
    def get(self, content_id: str) -> ContentRow | None:
        return self._rows.get(content_id)

    def __len__(self) -> int:
        return len(self._rows)

    def deadline_for(self, content_id: str, now_ms: int, timeout_ms: int) -> int:
        return self.misses.deadline_for(content_id, now_ms, timeout_ms)

    def proven_absent_at(self, at_ms: int) -> bool:
        """True if the view holds everything its topic held at ``at_ms`` (so a row missing now was
        not published by then); otherwise False, and the reader thread is asked for a fresh proof."""
        if self._proof_ms >= at_ms:
            return True
        self._proof_wanted.set()
        return False

    def wait_for_any(self, content_ids: set[str], timeout: float, proof_at_ms: int | None = None) -> bool:
        """Wait up to ``timeout`` seconds until any of ``content_ids`` is in the view, or, if
        ``proof_at_ms`` is given, until ``proven_absent_at(proof_at_ms)``."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not any(content_id in self._rows for content_id in content_ids):
                if proof_at_ms is not None and self.proven_absent_at(proof_at_ms):
                    return False
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.05))
        return True

    def wait_until_current(self, timeout: float) -> None:
        """Block until the view holds everything the topic held at the first call: the same proof
        as ``proven_absent_at``, by the reader thread.

        Only the first call waits: from then on the view follows the topic, and new DoFn instances
        (Prism makes one per concurrent bundle) must not pay a metadata round trip each.
        """
        if self._loaded:
            return
        asked_ms = _now_ms()
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self.proven_absent_at(asked_ms):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    ends = None if self._probe is None else self._probe[1]
                    raise TimeoutError(
                        f"content view of {self._topic} not current after {timeout} s: "
                        f"applied {self._applied}, end offsets {ends}"
                    )
                self._changed.wait(min(remaining, 0.1))
        self._loaded = True

    def close(self) -> None:
        self._stop.set()

    # --- the background reader -------------------------------------------------------------------
    @property
    def alive(self) -> bool:
        """Whether the reader thread runs; the join steps replace a view whose reader died."""
        return self._thread.is_alive()

    def _run(self) -> None:
        """Read for ever; if reading fails, start again where the view is (``_applied``), after a
        back-off: a reader that died would leave every event parked and re-parked until restarted."""
        failures = 0
        while not self._stop.is_set():
            try:
                self._read()
                return
            except Exception:  # noqa: BLE001 - whatever stopped the reader, it must read again
                failures += 1
                self._restarts_metric.inc()
                _log.exception("content view reader for %s failed (%d in a row); reading again", self._topic, failures)
                self._stop.wait(min(self.RESTART_BACKOFF_MAX_S, 0.1 * 2**failures))

    def _read(self) -> None:
        consumer = Consumer({**self._config, "group.id": self._config.get("group.id", "content-view")})
        try:
            partitions = consumer.list_topics(self._topic, timeout=30).topics[self._topic].partitions
            consumer.assign(
                [TopicPartition(self._topic, p, self._applied.get(p, OFFSET_BEGINNING)) for p in partitions]
            )
            while not self._stop.is_set():
                self._last_poll.set(time.time())
                if self._fault is not None:
                    self._fault()
                if self._probe is None and self._proof_wanted.is_set():
                    self._start_probe(consumer, list(partitions))
                messages = consumer.consume(1000, timeout=0.05)
                with self._changed:
                    for message in messages:
                        if message.error() is not None:
                            if message.error().code() != KafkaError._PARTITION_EOF:
                                _log.warning("content view: %s", message.error())
                            continue
                        self._apply(message)
                    proved = self._probe is not None and caught_up(self._applied, self._probe[1])
                    if proved:
                        self._proof_ms = max(self._proof_ms, self._probe[0])  # type: ignore[index]
                        self._probe = None
                    if messages or proved:
                        self._changed.notify_all()
        finally:
            consumer.close()

    def _start_probe(self, consumer: Consumer, partitions: list[int]) -> None:
        """Note the time, then the topic's end offsets (so anything published before that time is
        below them); the proof holds once the view has applied up to them."""
        self._proof_wanted.clear()
        taken_ms = _now_ms()
        try:
            ends = {}
            for p in partitions:
                low, high = consumer.get_watermark_offsets(TopicPartition(self._topic, p), timeout=5, cached=False)
                if high > low:
                    ends[p] = high
        except KafkaException as error:  # the broker is away: ask again on the next round
            _log.warning("content view: end offsets of %s unavailable (%s)", self._topic, error)
            self._proof_wanted.set()
            time.sleep(0.5)
            return
        self._probe = (taken_ms, ends)

    def _apply(self, message: Any) -> None:
        position = SourcePosition(self._topic, message.partition(), message.offset())
        self._applied[position.partition] = position.offset + 1
        record = KafkaRecord(position, message.key(), message.value(), message.timestamp()[1])
        try:
            change = decode_content(record)
            self._table.apply(change)
            if type(change) is ContentChange and change.after is not None:
                self.misses.arrived(change.after.id)
        # Any exception, not only DecodeError: one record must not stop the reader (and, through
        # it, every join). The pipeline's content lane dead-letters it with its reason; the view
        # only skips it.
        except Exception:  # noqa: BLE001
            self.malformed += 1
