"""Each lane's source lag, worked out when the metrics are scraped.

``engagement_source_lag_records{lane,topic,partition}`` is a partition's end offset now minus the
next offset the lane's reader will read there. A value set by the reader after each call goes stale
exactly when it matters: a lane whose sink waits (BigQuery down) makes no more calls, so it kept its
last value, about 0, while the partition's end moved on. Here the readers only record where they
are, and the gauge is a function of the ends, which one consumer per process asks Kafka for at most
once a second (``OffsetLookup``), in a thread of its own when a scrape finds them older: a scrape
reads the last answer and never waits for Kafka (the job's endpoint gives each worker a second).
If Kafka does not answer, the ends the readers saw last stand (``END_OFFSETS``).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol

from confluent_kafka import KafkaException

from infra import telemetry
from pipeline.sources.end_offsets import END_OFFSETS, EndOffsetCache
from pipeline.sources.offset_lookup import OffsetLookup

_log = logging.getLogger(__name__)
LOOKUP_TIMEOUT_S = 5.0  # per call of the background ask; a scrape never waits for it

Key = tuple[str, str, int]  # lane, topic, partition


class Ends(Protocol):
    def ends(self, topic: str) -> dict[int, int]: ...


def _offset_lookup(consumer_config: dict[str, Any]) -> Ends:
    return OffsetLookup(consumer_config, timeout_s=LOOKUP_TIMEOUT_S)


def _in_a_thread(ask: Callable[[], None]) -> None:
    threading.Thread(target=ask, name="source-lag-ends", daemon=True).start()


class SourceLag:
    """The positions of this process's readers, and each one's lag when asked."""

    def __init__(
        self,
        seen: EndOffsetCache,
        lookup: Callable[[dict[str, Any]], Ends] = _offset_lookup,
        refresh_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
        spawn: Callable[[Callable[[], None]], None] = _in_a_thread,
    ) -> None:
        self._seen = seen
        self._make_lookup = lookup
        self._refresh_s = refresh_s
        self._clock = clock
        self._spawn = spawn
        self._positions: dict[Key, int] = {}
        self._config: dict[str, Any] | None = None
        self._lookup: Ends | None = None
        self._ends: dict[tuple[str, int], int] = {}
        self._asked_at = -float("inf")
        self._asking = False
        self._lock = threading.Lock()

    def record(self, consumer_config: dict[str, Any], lane: str, topic: str, partition: int, position: int) -> bool:
        """The lane's reader will read ``position`` next; True the first time this key is seen."""
        key = (lane, topic, partition)
        if key in self._positions:
            self._positions[key] = position
            return False
        with self._lock:  # a new key: never while _refresh lists the topics
            self._config = self._config or consumer_config
            self._positions[key] = position
        return True

    def lag(self, key: Key) -> float:
        _, topic, partition = key
        self._refresh()
        end = self._ends.get((topic, partition))
        if end is None:
            end = self._seen.end_offset(topic, partition)
        return 0.0 if end is None else float(max(0, end - self._positions[key]))

    def _refresh(self) -> None:
        """Ask for the ends again if they are older than ``refresh_s``, in the background: a scrape
        never waits for Kafka (it reads what the last answer said)."""
        with self._lock:
            if self._asking or self._config is None or self._clock() - self._asked_at < self._refresh_s:
                return
            self._asking, self._asked_at = True, self._clock()
            topics = sorted({topic for _, topic, _ in self._positions})
            config = self._config
        self._spawn(lambda: self._ask(config, topics))

    def _ask(self, config: dict[str, Any], topics: list[str]) -> None:
        try:
            if self._lookup is None:
                self._lookup = self._make_lookup(config)
            self._ends = {
                (topic, partition): end
                for topic in topics
                for partition, end in self._lookup.ends(topic).items()
                if end >= 0
            }
        except (KafkaException, RuntimeError) as exc:
            _log.debug("source lag: end offsets not read (%s); the readers' last ones stand", exc)
            self._ends = {}
        finally:
            self._asking = False


SOURCE_LAG = SourceLag(END_OFFSETS)


def track(handle: telemetry.Level, consumer_config: dict[str, Any], key: Key, position: int) -> None:
    """Record the reader's position; the first time, make ``handle`` read this process's lag."""
    lane, topic, partition = key
    if SOURCE_LAG.record(consumer_config, lane, topic, partition, position):
        handle.track(functools.partial(SOURCE_LAG.lag, key))
