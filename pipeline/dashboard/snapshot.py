"""What the live page shows, as one JSON-ready snapshot: pure, so it is unit-tested without services.

The reader (``pipeline.dashboard.reader``) fetches the raw parts from Redis and Kafka; this module
ranks, titles and times them. Events/s is the change of the board's running count
(``top_engagement:{W}min:updated``, field ``changes``) between two reads, so it is the rate at which
the Redis sink applies changes, measured where the page gets its data.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

CONTENT_TYPES = ("podcast", "newsletter", "video")


@dataclass(frozen=True)
class Raw:
    """One read: ``boards`` maps a board name ("overall" or a content type) to (id, seconds) rows."""

    boards: Mapping[str, Sequence[tuple[str, float]]]
    titles: Mapping[str, str]
    updated: Mapping[str, int] | None  # applied_ms, commit_ts_ms, changes
    dead_letters: Mapping[str, int] | None  # topic -> letters on it (None: Kafka did not answer)
    now_ms: int
    errors: Sequence[str] = ()


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
        "errors": list(current.errors),
    }
