"""The typed records that flow through the pipeline, from Kafka record to leaderboard contribution.

``msgspec.Struct`` classes, shared by every step and treated as immutable by convention. Millions
of them are built per minute, so they are chosen for that: a Struct is built in C (a frozen
dataclass sets every field through ``object.__setattr__``), and ``gc=False`` keeps them out of the
cyclic garbage collector, whose passes over millions of young tracked objects cost more than JSON
parsing did (none of these can be part of a reference cycle: they hold only scalars, strings,
tuples of Structs and, for ``raw_payload``, a decoded JSON object). ``msgspec.structs.replace``
copies one with changes. Positions travel with each record so that sinks can store, atomically
with their writes, how far into each partition they have applied (see docs/delivery.md).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec


class SourcePosition(msgspec.Struct, frozen=True, gc=False):
    """Where a record came from; ``offset`` is the record's own offset (next to read is offset + 1)."""

    topic: str
    partition: int
    offset: int

    @property
    def partition_key(self) -> str:
        return f"{self.topic}:{self.partition}"


class KafkaRecord(msgspec.Struct, gc=False):
    position: SourcePosition
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


class EngagementRow(msgspec.Struct, gc=False):
    id: int
    content_id: str | None
    user_id: str | None
    event_type: str | None
    event_ts: datetime  # timezone-aware, UTC
    duration_ms: int | None
    device: str | None
    raw_payload: dict[str, Any] | None


class ContentRow(msgspec.Struct, gc=False):
    id: str
    slug: str | None
    title: str | None
    content_type: str | None
    length_seconds: int | None
    publish_ts: datetime | None


class EngagementChange(msgspec.Struct, gc=False):
    """One Debezium change of ``engagement_events``: op is c (insert), r (snapshot read), u, or d."""

    position: SourcePosition
    op: str
    before: EngagementRow | None
    after: EngagementRow | None
    commit_ts_ms: int


class ContentChange(msgspec.Struct, gc=False):
    position: SourcePosition
    op: str
    before: ContentRow | None
    after: ContentRow | None
    commit_ts_ms: int


class Skipped(msgspec.Struct, gc=False):
    """A record that carries nothing to apply (a delete tombstone): counted, not dead-lettered."""

    position: SourcePosition
    reason: str


class DeadLetter(msgspec.Struct, gc=False):
    """A record that can never be applied, with why and where it came from."""

    position: SourcePosition
    stage: str
    reason: str
    key: bytes | None
    value: bytes | None


class Contribution(msgspec.Struct, gc=False):
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


class EnrichedChange(msgspec.Struct, gc=False):
    """An engagement change joined to content, reduced to its contributions."""

    position: SourcePosition
    commit_ts_ms: int
    contributions: tuple[Contribution, ...]
