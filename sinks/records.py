"""The records sinks accept: what the pipeline hands over, and what sinks may rely on.

These types are the boundary between ``pipeline/`` (which builds them) and ``sinks/`` (which writes
them), so they live on the sink side: the pipeline depends on the sinks' contract, never the other
way round. ``pipeline.model`` re-exports them next to the pipeline's own intermediate types.

Every item that reaches a sink carries where it came from (``position``), Debezium's ordering of the
change (``sequence``), and the record's original Kafka ``key`` and ``value`` bytes, so that any
stage can dead-letter it as it arrived. The bytes are references to what the consumer returned: no
copy is made while the steps are fused in one stage.

``msgspec.Struct`` classes with ``gc=False``: millions are built per minute, a Struct is built in C,
and these hold only scalars, strings, tuples of Structs and decoded JSON, so none can be part of a
reference cycle. Treat them as immutable; ``msgspec.structs.replace`` copies one with changes.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import msgspec

Sequence = tuple[int, int]
"""Debezium's ``source.sequence`` for PostgreSQL: ``(commit LSN of the previous transaction, LSN)``.

Within one Kafka partition, changes arrive in increasing order of this pair; a change that comes
again after a Kafka Connect crash repeats its pair (``sinks.positions``)."""


class SourcePosition(msgspec.Struct, frozen=True, gc=False):
    """Where a record came from; ``offset`` is the record's own offset (next to read is offset + 1)."""

    topic: str
    partition: int
    offset: int

    @property
    def partition_key(self) -> str:
        return f"{self.topic}:{self.partition}"

    @property
    def record_id(self) -> str:
        """A stable id of the record, the same on every replay (BigQuery insertId, idempotency key)."""
        return f"{self.topic}/{self.partition}/{self.offset}"


class EngagementRow(msgspec.Struct, gc=False):
    id: int
    content_id: str | None
    user_id: str | None
    event_type: str | None
    event_ts: datetime  # timezone-aware, UTC
    duration_ms: int | None
    device: str | None
    raw_payload: str | None  # the JSONB column's text, verbatim (pipeline.decode._raw_payload)
    # Columns added to the table after this code was written (schema evolution), ``(name, value)``
    # sorted by name, values as Debezium's JSON gave them. The aggregates ignore them; BigQuery adds
    # them to its tables (docs/operations.md, "Schema evolution").
    extra: tuple[tuple[str, Any], ...] = ()


class ContentRow(msgspec.Struct, gc=False):
    id: str
    slug: str | None
    title: str | None
    content_type: str | None
    length_seconds: int | None
    publish_ts: datetime | None


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
    """An engagement change joined to content: the rows, the content they point to, and what the
    change adds to the aggregates (``contributions``). ``content`` is the content of the after-image
    (of the before-image for a delete), ``None`` when the row names no content."""

    position: SourcePosition
    key: bytes | None
    value: bytes | None
    op: str  # c (insert), r (snapshot read), u, d
    sequence: Sequence | None
    commit_ts_ms: int
    before: EngagementRow | None
    after: EngagementRow | None
    content: ContentRow | None
    contributions: tuple[Contribution, ...]
    # The row's own metrics (the after-image; the before-image of a delete) against ``content``, as
    # BigQuery and HTTP deliver them; the aggregates use ``contributions``.
    engagement_seconds: float | None = None
    engagement_pct: float | None = None
    # A change that was parked (its content was not known yet) and comes back from the parking
    # topic: ``position`` is where it was read there, ``origin`` where Debezium put it, and only
    # ``for_sink``, the sink that parked it, applies it (``sinks.parking``).
    origin: SourcePosition | None = None
    for_sink: str | None = None

    @property
    def row(self) -> EngagementRow | None:
        """The row a change is about: the after-image, or the before-image of a delete."""
        return self.before if self.op == "d" else self.after

    @property
    def identity(self) -> SourcePosition:
        """Where the change was captured: the id sinks deduplicate on (insertIds, idempotency
        keys), the same whether it was applied at once or after a stay in the parking topic."""
        return self.origin or self.position


class ContentChange(msgspec.Struct, gc=False):
    """One Debezium change of ``content``."""

    position: SourcePosition
    key: bytes | None
    value: bytes | None
    op: str
    sequence: Sequence | None
    before: ContentRow | None
    after: ContentRow | None
    commit_ts_ms: int


class Skipped(msgspec.Struct, gc=False):
    """A record that carries nothing to apply (a delete tombstone): it only moves a sink's position."""

    position: SourcePosition
    reason: str
    key: bytes | None = None

    op = "skip"
    sequence = None


class DeadLetter(msgspec.Struct, gc=False):
    """A record that can never be applied, with why, where it came from, and its original bytes.

    Upstream steps (decode, join) put these in the stream in place of the record, so the sinks
    produce them, confirmed, before they store a position past them. ``deterministic`` letters
    (decode: the same bytes always fail) are produced by one lane per topic; the others (join: the
    content may have arrived by the time another lane, or a replay, joins the record) by every sink
    that admits them, so none is lost when lanes see different outcomes."""

    position: SourcePosition
    stage: str
    reason: str
    key: bytes | None
    value: bytes | None
    sequence: Sequence | None = None
    deterministic: bool = True
    # More headers for the letter's record, from the sink that gave up on it (``Sink.letter_headers``).
    headers: tuple[tuple[str, bytes], ...] = ()
    # A parked change that timed out: where it was captured, and the one sink that parked it.
    origin: SourcePosition | None = None
    for_sink: str | None = None

    op = "dead_letter"


class Parked(msgspec.Struct, gc=False):
    """An event whose content is not known yet: each sink that admits it writes it to the parking
    topic (``sinks.parking``) instead of applying it, and the lane reads on. The parked lane brings
    it back when the content arrives, or dead-letters it at ``deadline_ms`` (wall clock)."""

    position: SourcePosition
    key: bytes | None
    value: bytes | None
    op: str
    sequence: Sequence | None
    content_id: str
    deadline_ms: int
    commit_ts_ms: int
    # Parked again by the parked lane (its content still missing): where it was captured, and the
    # one sink whose event it is.
    origin: SourcePosition | None = None
    for_sink: str | None = None


Positioned = EnrichedChange | ContentChange | Skipped | DeadLetter | Parked
"""Anything that travels down a lane to a sink."""
