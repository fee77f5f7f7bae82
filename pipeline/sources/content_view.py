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

One view per (bootstrap servers, topic) per process, shared by all DoFn instances via ``shared()``.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, ClassVar

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, TopicPartition

from pipeline.decode import DecodeError, decode_content
from pipeline.model import ContentChange, ContentRow, KafkaRecord, Skipped, SourcePosition

_log = logging.getLogger(__name__)
MAX_MISSING_IDS = 100_000


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

    def __init__(self, consumer_config: dict[str, Any], topic: str) -> None:
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
        self._thread = threading.Thread(target=self._run, name=f"content-view-{topic}", daemon=True)
        self._thread.start()

    @classmethod
    def shared(cls, consumer_config: dict[str, Any], topic: str) -> ContentView:
        key = (str(consumer_config.get("bootstrap.servers")), topic)
        with cls._registry_lock:
            view = cls._registry.get(key)
            if view is None or not view._thread.is_alive():
                view = cls._registry[key] = cls(consumer_config, topic)
            return view

    # --- reading --------------------------------------------------------------------------------
    def get(self, content_id: str) -> ContentRow | None:
        return self._rows.get(content_id)

    def __len__(self) -> int:
        return len(self._rows)

    def deadline_for(self, content_id: str, now_ms: int, timeout_ms: int) -> int:
        return self.misses.deadline_for(content_id, now_ms, timeout_ms)

    def wait_for_any(self, content_ids: set[str], timeout: float) -> bool:
        """Wait up to ``timeout`` seconds until any of ``content_ids`` is in the view."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while not any(content_id in self._rows for content_id in content_ids):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._changed.wait(min(remaining, 0.05))
        return True

    def wait_until_current(self, timeout: float) -> None:
        """Block until every record the topic held at the first call has been applied.

        Only the first call waits: from then on the view follows the topic, and new DoFn instances
        (Prism makes one per concurrent bundle) must not pay a metadata round trip each.
        """
        if self._loaded:
            return
        targets = self._end_offsets()
        deadline = time.monotonic() + timeout
        with self._changed:
            while any(self._applied.get(p, 0) < end for p, end in targets.items()):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    behind = {p: (self._applied.get(p, 0), end) for p, end in targets.items()}
                    raise TimeoutError(f"content view of {self._topic} not current after {timeout} s: {behind}")
                self._changed.wait(min(remaining, 0.1))
        self._loaded = True

    def close(self) -> None:
        self._stop.set()

    # --- the background reader -------------------------------------------------------------------
    def _end_offsets(self) -> dict[int, int]:
        probe = Consumer({**self._config, "group.id": self._config.get("group.id", "content-view")})
        try:
            partitions = probe.list_topics(self._topic, timeout=10).topics[self._topic].partitions
            ends = {}
            for p in partitions:
                low, high = probe.get_watermark_offsets(TopicPartition(self._topic, p), timeout=10)
                if high > low:
                    ends[p] = high
            return ends
        finally:
            probe.close()

    def _run(self) -> None:
        consumer = Consumer({**self._config, "group.id": self._config.get("group.id", "content-view")})
        try:
            partitions = consumer.list_topics(self._topic, timeout=30).topics[self._topic].partitions
            consumer.assign([TopicPartition(self._topic, p, OFFSET_BEGINNING) for p in partitions])
            while not self._stop.is_set():
                messages = consumer.consume(1000, timeout=0.05)
                if not messages:
                    continue
                with self._changed:
                    for message in messages:
                        if message.error() is not None:
                            if message.error().code() != KafkaError._PARTITION_EOF:
                                _log.warning("content view: %s", message.error())
                            continue
                        self._apply(message)
                    self._changed.notify_all()
        except Exception:  # noqa: BLE001 - the thread must log why it died; shared() starts a new one
            _log.exception("content view reader for %s stopped", self._topic)
        finally:
            consumer.close()

    def _apply(self, message: Any) -> None:
        position = SourcePosition(self._topic, message.partition(), message.offset())
        self._applied[position.partition] = position.offset + 1
        record = KafkaRecord(position, message.key(), message.value(), message.timestamp()[1])
        try:
            change = decode_content(record)
        except DecodeError:
            # The pipeline's content branch dead-letters it with its reason; the view only skips it.
            self.malformed += 1
            return
        self._table.apply(change)
        if type(change) is ContentChange and change.after is not None:
            self.misses.arrived(change.after.id)
