"""Reduce a batch of enriched changes to the net increments Redis must apply (pure, no I/O).

Popularity is skewed, so a batch of thousands of events touches far fewer (content, minute) pairs:
summing here turns ~10 Redis commands per event into ~10 per distinct pair, which is what lets one
Redis keep up with the source. Replays and re-sends are dropped before this (``sinks.flush``), and
the positions travel beside the deltas into the same script.

Bucket deltas are kept in two sums per (minute, content, type): what after-images add (``buckets``,
any sign: a negative ``duration_ms`` is valid data and is applied like any other), and what
before-images take back (``taken``), which the script applies only where the bucket holds the
member or the same batch adds to it (an event beyond the clock skew never got a bucket, so taking it
back later must not either: ``sinks.redis_leaderboard``).

Content types outside ``BOARD_TYPES`` count on the ``unknown`` typed board: a board per unexpected
type would be a key the window never rebuilds (it only rolls the boards it knows), so it would keep
every minute it was ever given.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sinks.records import EnrichedChange
from sinks.redis_keys import BOARD_TYPES

COUNTERS = {"play": 2, "pause": 3, "finish": 4, "click": 5}  # index into ContentDelta.values


@dataclass
class ContentDelta:
    # events, total_seconds, plays, pauses, finishes, clicks, pct_sum, pct_count, over_100
    values: list[float] = field(default_factory=lambda: [0, 0.0, 0, 0, 0, 0, 0.0, 0, 0])


@dataclass
class Deltas:
    content: dict[str, ContentDelta] = field(default_factory=dict)
    # (minute, content_id, board type) -> seconds added by after-images
    buckets: dict[tuple[int, str, str], float] = field(default_factory=dict)
    # (minute, content_id, board type) -> seconds taken back by before-images (the sign applied)
    taken: dict[tuple[int, str, str], float] = field(default_factory=dict)


_KNOWN_TYPES = frozenset(BOARD_TYPES)


def board_type(content_type: str | None) -> str:
    """The typed board an event counts on: its content's type, or ``unknown`` (no type, or one
    outside the boards the window rebuilds)."""
    return content_type if content_type in _KNOWN_TYPES else "unknown"  # type: ignore[return-value]


def aggregate(batch: Sequence[EnrichedChange]) -> Deltas:
    deltas = Deltas()
    for change in batch:
        for k in change.contributions:
            sign = k.sign
            values = deltas.content.setdefault(k.content_id, ContentDelta()).values
            values[0] += sign
            counter = COUNTERS.get(k.event_type or "")
            if counter is not None:
                values[counter] += sign
            if k.seconds is not None:
                values[1] += sign * k.seconds
                bucket = (k.minute, k.content_id, board_type(k.content_type))
                sums = deltas.buckets if sign > 0 else deltas.taken
                sums[bucket] = sums.get(bucket, 0.0) + sign * k.seconds
            if k.pct is not None:
                values[6] += sign * k.pct
                values[7] += sign
                if k.pct > 100:
                    values[8] += sign
    return deltas
