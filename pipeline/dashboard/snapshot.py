"""What the live page shows, as one JSON-ready snapshot: pure, so it is unit-tested without services.

The reader (``pipeline.dashboard.reader``) fetches the raw parts from Redis and Kafka; this module
ranks, titles and times them. Events/s is the change of the board's running count
(``top_engagement:{W}min:updated``, field ``changes``) between two reads, so it is the rate at which
the Redis sink applies changes, measured where the page gets its data. ``History`` keeps the last
``HISTORY_S`` of snapshots for the page's charts: events/s, the newest change's age, each sink's lag.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

CONTENT_TYPES = ("podcast", "newsletter", "video")
HISTORY_S: Final = 600  # the charts span the last ten minutes


@dataclass(frozen=True)
class Raw:
    """One read: ``boards`` maps a board name ("overall" or a content type) to (id, seconds) rows."""

    boards: Mapping[str, Sequence[tuple[str, float]]]
    titles: Mapping[str, str]
    updated: Mapping[str, int] | None  # applied_ms, commit_ts_ms, changes
    dead_letters: Mapping[str, int] | None  # topic -> letters on it (None: Kafka did not answer)
    now_ms: int
    errors: Sequence[str] = ()
    sink_lag: Mapping[str, int] | None = None  # sink -> changes of its topic not stored yet (None: unknown)


def events_per_s(previous: Raw | None, current: Raw) -> float | None:
    """The board's applied changes per second between two reads; None until there are two."""
    if previous is None or previous.updated is None or current.updated is None:
        return None
    seconds = (current.now_ms - previous.now_ms) / 1000
    delta = current.updated.get("changes", 0) - previous.updated.get("changes", 0)
    return None if seconds <= 0 or delta < 0 else delta / seconds


def snapshot(current: Raw, previous: Raw | None, window_minutes: int) -> dict[str, Any]:
    updated = current.updated or {}
    applied, committed = updated.get("applied_ms"), updated.get("commit_ts_ms")
    return {
        "window_minutes": window_minutes,
        "now_ms": current.now_ms,
        "boards": {
            name: [
                {"rank": rank, "content_id": cid, "title": current.titles.get(cid) or cid, "seconds": round(seconds, 3)}
                for rank, (cid, seconds) in enumerate(rows, start=1)
            ]
            for name, rows in current.boards.items()
        },
        "events_per_s": events_per_s(previous, current),
        "changes_applied": updated.get("changes"),
        # How long ago the sink last applied changes, and how old the newest change it holds is.
        "updated_age_s": None if applied is None else max(0.0, (current.now_ms - applied) / 1000),
        "newest_commit_age_s": None if committed is None else max(0.0, (current.now_ms - committed) / 1000),
        "dead_letters": None if current.dead_letters is None else dict(current.dead_letters),
        "sink_lag": None if current.sink_lag is None else dict(current.sink_lag),
        "errors": list(current.errors),
    }


class History:
    """The charts' points: one per snapshot, the last ``span_s`` of them."""

    def __init__(self, span_s: float = HISTORY_S) -> None:
        self._span_ms = span_s * 1000
        self._points: deque[tuple[int, float | None, float | None, Mapping[str, int] | None]] = deque()

    def add(self, snap: Mapping[str, Any]) -> dict[str, Any]:
        """Take ``snap`` in and return the series as the page draws them, oldest first."""
        self._points.append((snap["now_ms"], snap["events_per_s"], snap["newest_commit_age_s"], snap["sink_lag"]))
        while snap["now_ms"] - self._points[0][0] > self._span_ms:
            self._points.popleft()
        sinks = sorted({sink for *_, lags in self._points if lags for sink in lags})
        return {
            "t_ms": [t for t, *_ in self._points],
            "events_per_s": [rate for _, rate, _, _ in self._points],
            "newest_commit_age_s": [age for _, _, age, _ in self._points],
            "sink_lag": {sink: [lags.get(sink) if lags else None for *_, lags in self._points] for sink in sinks},
        }
