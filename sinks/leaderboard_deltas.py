"""Reduce a batch of enriched changes to the net increments Redis must apply (pure, no I/O).

Popularity is skewed, so a batch of thousands of events touches far fewer (content, minute) pairs:
summing here turns ~10 Redis commands per event into ~10 per distinct pair, which is what lets one
Redis keep up with the source. Replays and re-sends are dropped before this (``sinks.flush``), and
the positions travel beside the deltas into the same script.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from sinks.records import EnrichedChange

COUNTERS = {"play": 2, "pause": 3, "finish": 4, "click": 5}  # index into ContentDelta.values


@dataclass
class ContentDelta:
    # events, total_seconds, plays, pauses, finishes, clicks, pct_sum, pct_count, over_100
    values: list[float] = field(default_factory=lambda: [0, 0.0, 0, 0, 0, 0, 0.0, 0, 0])


@dataclass
class Deltas:
    content: dict[str, ContentDelta] = field(default_factory=dict)
    # (minute, content_id, content_type) -> seconds
    buckets: dict[tuple[int, str, str], float] = field(default_factory=dict)


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
                bucket = (k.minute, k.content_id, k.content_type or "unknown")
                deltas.buckets[bucket] = deltas.buckets.get(bucket, 0.0) + sign * k.seconds
            if k.pct is not None:
                values[6] += sign * k.pct
                values[7] += sign
                if k.pct > 100:
                    values[8] += sign
    return deltas
