"""Each lane's source lag, worked out when the metrics are scraped.

``engagement_source_lag_records{lane,topic,partition}`` is a partition's end offset now minus the
next offset the lane's reader will read there. A value set by the reader after each call goes stale
exactly when it matters: a lane whose sink waits (BigQuery down) makes no more calls, so it kept its
last value, about 0, while the partition's end moved on. Here the readers only record where they
are, and the gauge is a function of the ends, which one consumer per process asks Kafka for at most
once a second (``OffsetLookup``) when a scrape reads it. If Kafka does not answer in time, the ends
the readers saw last stand (``END_OFFSETS``).
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
LOOKUP_TIMEOUT_S = 0.5  # within the job endpoint's scrape of a worker (infra.telemetry)

Key = tuple[str, str, int]  # lane, topic, partition


class Ends(Protocol):
    def ends(self, topic: str) -> dict[int, int]: ...


def _offset_lookup(consumer_config: dict[str, Any]) -> Ends:
    return OffsetLookup(consumer_config, timeout_s=LOOKUP_TIMEOUT_S)


class SourceLag:
    """The positions of this process's readers, and each one's lag when asked."""

    def __init__(
        self,
        seen: EndOffsetCache,
        lookup: Callable[[dict[str, Any]], Ends] = _offset_lookup,
        refresh_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._seen = seen
        self._make_lookup = lookup
        self._refresh_s = refresh_s
        self._clock = clock
        self._positions: dict[Key, int] = {}
        self._config: dict[str, Any] | None = None
        self._lookup: Ends | None = None
        self._ends: dict[tuple[str, int], int] = {}
        self._asked_at = -float("inf")
        self._lock = threading.Lock()

    def record(self, consumer_config: dict[str, Any], lane: str, topic: str, partition: int, position: int) -> bool:
        """The lane's reader will read ``position`` next; True the first time this key is seen."""
        key = (lane, topic, partition)
        new = key not in self._positions
        if new:
            with self._lock:
                self._config = self._config or consumer_config
        self._positions[key] = position
        return new

    def lag(self, key: Key) -> float:
        _, topic, partition = key
        end = self._end(topic, partition)
        return 0.0 if end is None else float(max(0, end - self._positions[key]))

    def _end(self, topic: str, partition: int) -> int | None:
        with self._lock:
            if self._clock() - self._asked_at >= self._refresh_s:
                self._asked_at = self._clock()
                self._ends = self._ask()
        end = self._ends.get((topic, partition))
        return end if end is not None else self._seen.end_offset(topic, partition)

    def _ask(self) -> dict[tuple[str, int], int]:
        if self._config is None:
            return {}
        try:
            if self._lookup is None:
                self._lookup = self._make_lookup(self._config)
            return {
                (topic, partition): end
                for topic in sorted({topic for _, topic, _ in self._positions})
                for partition, end in self._lookup.ends(topic).items()
                if end >= 0
            }
        except (KafkaException, RuntimeError) as exc:
            _log.debug("source lag: end offsets not read (%s); the readers' last ones stand", exc)
            return {}


SOURCE_LAG = SourceLag(END_OFFSETS)


def track(handle: telemetry.Level, consumer_config: dict[str, Any], key: Key, position: int) -> None:
    """Record the reader's position; the first time, make ``handle`` read this process's lag."""
    lane, topic, partition = key
    if SOURCE_LAG.record(consumer_config, lane, topic, partition, position):
        handle.track(functools.partial(SOURCE_LAG.lag, key))
