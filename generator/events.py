"""Engagement events with a Zipf-like popularity, plausible durations and a tail of late events.

The hot path builds tuples in the column order of the ``COPY`` (no Faker per event: it is far too
slow for tens of thousands of rows a second); Faker names the catalogue, ``random`` does the rest.
"""

from __future__ import annotations

import itertools
import random
import uuid
from collections.abc import Sequence
from datetime import datetime, timedelta

import orjson

from generator.catalogue import Content, random_uuid
from infra.settings import GeneratorSettings

EVENT_TYPES = ("play", "pause", "finish", "click")
EVENT_TYPE_WEIGHTS = (0.45, 0.20, 0.15, 0.20)
DEVICES = ("ios", "android", "web", "smart_tv", "desktop")
DEVICE_WEIGHTS = (0.32, 0.30, 0.22, 0.08, 0.08)
REFERRERS = ("home", "search", "push", "newsletter", "social", "related")
APP_VERSIONS = ("5.12.0", "5.12.3", "5.13.0", "6.0.1")
COLUMNS = ("content_id", "user_id", "event_type", "event_ts", "duration_ms", "device", "raw_payload")

EventRow = tuple[uuid.UUID, uuid.UUID, str, datetime, int | None, str, str]


def zipf_cum_weights(count: int, s: float) -> list[float]:
    """Cumulative weights for ranks 1..count with weight 1/rank**s (for ``random.choices``)."""
    return list(itertools.accumulate(1.0 / (rank**s) for rank in range(1, count + 1)))


def duration_ms(rng: random.Random, event_type: str, length_s: int | None) -> int | None:
    """How long the user engaged before this event; NULL where the event carries no duration.

    A finish can exceed the length slightly (replays, rounding in players): the pipeline keeps
    engagement_pct above 100 and flags it rather than clamping.
    """
    length = float(length_s) if length_s else rng.lognormvariate(0.0, 0.7) * 300.0
    if event_type == "play":
        return int(rng.betavariate(2.0, 3.0) * length * 1000)
    if event_type == "finish":
        return int(rng.uniform(0.9, 1.05) * length * 1000)
    if event_type == "pause":
        return None if rng.random() < 0.4 else int(rng.betavariate(1.5, 4.0) * length * 1000)
    return None if rng.random() < 0.9 else rng.randint(0, 5000)  # click


class EventFactory:
    def __init__(self, catalogue: Sequence[Content], settings: GeneratorSettings, rng: random.Random) -> None:
        if not catalogue:
            raise ValueError("the content catalogue is empty: seed it first")
        self.rng = rng
        self.settings = settings
        # Shared with the writer, so an editorial update (new length) applies to later events.
        self.content = catalogue
        ranks = list(range(len(catalogue)))
        rng.shuffle(ranks)  # popularity independent of creation order
        self.ranked_indices = ranks
        self.cum_weights = zipf_cum_weights(len(ranks), settings.zipf_s)
        self.users = [random_uuid(rng) for _ in range(settings.users)]

    def event_ts(self, now: datetime) -> datetime:
        rng = self.rng
        if rng.random() < self.settings.late_share:
            return now - timedelta(seconds=rng.uniform(60.0, self.settings.late_max_s))
        return now - timedelta(seconds=abs(rng.gauss(0.0, self.settings.jitter_s)))

    def batch(self, count: int, now: datetime) -> list[EventRow]:
        rng = self.rng
        catalogue = self.content
        contents = [catalogue[i] for i in rng.choices(self.ranked_indices, cum_weights=self.cum_weights, k=count)]
        types = rng.choices(EVENT_TYPES, EVENT_TYPE_WEIGHTS, k=count)
        devices = rng.choices(DEVICES, DEVICE_WEIGHTS, k=count)
        rows: list[EventRow] = []
        for content, event_type, device in zip(contents, types, devices, strict=True):
            payload = {
                "session_id": f"{rng.getrandbits(64):016x}",
                "app_version": rng.choice(APP_VERSIONS),
                "referrer": rng.choice(REFERRERS),
            }
            rows.append(
                (
                    content.id,
                    rng.choice(self.users),
                    event_type,
                    self.event_ts(now),
                    duration_ms(rng, event_type, content.length_seconds),
                    device,
                    orjson.dumps(payload).decode(),
                )
            )
        return rows


def share_count(rng: random.Random, total: int, share: float) -> int:
    """``total * share`` rounded up or down at random, so small shares still happen on average."""
    expected = total * share
    whole = int(expected)
    return whole + (1 if rng.random() < expected - whole else 0)
