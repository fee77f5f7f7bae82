"""The typed records of the pipeline, from Kafka record to what the sinks receive.

The records a sink accepts (positions, rows, enriched and content changes, skips and dead letters)
are defined by the sinks' contract in ``sinks.records`` and re-exported here; this module adds the
pipeline's own intermediate types. All are ``msgspec.Struct``s with ``gc=False`` (see
``sinks.records`` for why). Positions travel with each record so that sinks can store how far into
each partition they have applied (see docs/delivery.md).
"""

from __future__ import annotations

import msgspec

from sinks.records import (
    ContentChange,
    ContentRow,
    Contribution,
    DeadLetter,
    EngagementRow,
    EnrichedChange,
    Parked,
    Sequence,
    Skipped,
    SourcePosition,
)

__all__ = [
    "ContentChange",
    "ContentRow",
    "Contribution",
    "DeadLetter",
    "EngagementChange",
    "EngagementRow",
    "EnrichedChange",
    "KafkaRecord",
    "Parked",
    "Sequence",
    "Skipped",
    "SourcePosition",
]


class KafkaRecord(msgspec.Struct, gc=False):
    position: SourcePosition
    key: bytes | None
    value: bytes | None
    timestamp_ms: int


class EngagementChange(msgspec.Struct, gc=False):
    """One Debezium change of ``engagement_events``: op is c (insert), r (snapshot read), u, or d."""

    position: SourcePosition
    key: bytes | None
    value: bytes | None
    op: str
    sequence: Sequence | None
    before: EngagementRow | None
    after: EngagementRow | None
    commit_ts_ms: int
