"""The typed records that flow through the pipeline, from Kafka record to leaderboard contribution.

Plain slotted dataclasses, shared by every step and treated as immutable by convention: they are
not ``frozen`` because a frozen dataclass sets each field through ``object.__setattr__``, which
made building them the largest cost after JSON parsing on the per-record path. Positions travel
with each record
so that sinks can store, atomically with their writes, how far into each partition they have
applied (see docs/delivery.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(slots=True, unsafe_hash=True)
class SourcePosition:
    """Where a record came from; ``offset`` is the record's own offset (next to read is offset + 1)."""

    topic: str
    partition: int
    offset: int

    @property
    def partition_key(self) -> str:
        return f"{self.topic}:{self.partition}"


@dataclass(slots=True)
class KafkaRecord:
    position: SourcePosition
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


@dataclass(slots=True)
class EngagementRow:
    id: int
    content_id: str | None
    user_id: str | None
    event_type: str | None
    event_ts: datetime  # timezone-aware, UTC
    duration_ms: int | None
    device: str | None
    raw_payload: dict[str, Any] | None


@dataclass(slots=True)
class ContentRow:
    id: str
    slug: str | None
    title: str | None
    content_type: str | None
    length_seconds: int | None
    publish_ts: datetime | None


@dataclass(slots=True)
class EngagementChange:
    """One Debezium change of ``engagement_events``: op is c (insert), r (snapshot read), u, or d."""

    position: SourcePosition
    op: str
    before: EngagementRow | None
    after: EngagementRow | None
    commit_ts_ms: int


@dataclass(slots=True)
class ContentChange:
    position: SourcePosition
    op: str
    before: ContentRow | None
    after: ContentRow | None
    commit_ts_ms: int


@dataclass(slots=True)
class Skipped:
    """A record that carries nothing to apply (a delete tombstone): counted, not dead-lettered."""

    position: SourcePosition
    reason: str


@dataclass(slots=True)
class DeadLetter:
    """A record that can never be applied, with why and where it came from."""

    position: SourcePosition
    stage: str
    reason: str
    key: bytes | None
    value: bytes | None


@dataclass(slots=True)
class Contribution:
    """One signed effect of an event row on the aggregates: +1 when a row appears, -1 when it goes.

    An update is two contributions (-before, +after); a delete is one (-before).
    """

    content_id: str
    content_type: str | None
    minute: int  # event_ts floored to the minute, as minutes since the epoch
    event_type: str | None
    seconds: float | None  # engagement_seconds = duration_ms / 1000
    pct: float | None  # engagement_pct = seconds / length_seconds * 100 (None if not computable)
    sign: int


@dataclass(slots=True)
class EnrichedChange:
    """An engagement change joined to content, reduced to its contributions."""

    position: SourcePosition
    commit_ts_ms: int
    contributions: tuple[Contribution, ...]
