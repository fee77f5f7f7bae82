"""The end offsets the source's readers have seen, per process: what the backlog estimate reads.

librdkafka keeps, per assigned partition, the end offset (high watermark) of its last fetch
response. After each call the reader copies it here (``get_watermark_offsets(cached=True)``: no
broker round trip), with the size of a record it read, sampled once per ``consume()``.
``ReaderRestrictions.restriction_size`` and ``PartitionOffsetsTracker.current_progress``
(``pipeline.sources.partition_offsets``) read it on the runner-facing path, where a broker call per
lookup would be far too dear: Beam sizes every deferred residual, once per reader call.

One job per process, so one cache per process: keyed by ``(topic, partition)``, with the time each
end was seen. An end older than ``max_age_s`` counts as unknown, and unknown counts as no backlog:
the estimate may fall short of the truth (ends only grow) but never invents work, so a stale or
missing entry can never keep a runner's autoscaler scaling up.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class EndOffsetCache:
    """End offsets by ``(topic, partition)`` and the mean record size by topic, as readers saw them.

    Writers are the reader threads, readers the runner's sizing and progress threads; each entry is
    replaced by one assignment of an immutable tuple, so neither side takes a lock.
    """

    # Weight of a new record-size sample: about the last 20 consume() calls make the mean.
    SIZE_WEIGHT = 0.05

    def __init__(self, max_age_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._max_age_s = max_age_s
        self._clock = clock
        self._ends: dict[tuple[str, int], tuple[int, float]] = {}
        self._record_bytes: dict[str, float] = {}

    def __reduce__(self) -> tuple[Callable[[], EndOffsetCache], tuple[()]]:
        # Pickled with the DoFn's restriction provider, it names this process's cache on the worker,
        # never a copy that no reader writes to.
        return _process_cache, ()

    def record_end(self, topic: str, partition: int, end_offset: int | None) -> None:
        """librdkafka reports an unknown end as a negative offset: ignored, the last known one stays."""
        if end_offset is not None and end_offset >= 0:
            self._ends[(topic, partition)] = (end_offset, self._clock())

    def record_size(self, topic: str, bytes_per_record: float) -> None:
        previous = self._record_bytes.get(topic)
        self._record_bytes[topic] = (
            bytes_per_record if previous is None else previous + self.SIZE_WEIGHT * (bytes_per_record - previous)
        )

    def end_offset(self, topic: str, partition: int) -> int | None:
        entry = self._ends.get((topic, partition))
        if entry is None or self._clock() - entry[1] > self._max_age_s:
            return None
        return entry[0]

    def bytes_per_record(self, topic: str) -> float | None:
        return self._record_bytes.get(topic)


END_OFFSETS = EndOffsetCache()


def _process_cache() -> EndOffsetCache:
    return END_OFFSETS
