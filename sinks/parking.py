"""The parking topic: events whose content is not known yet wait there, not in the lane.

Why: an event's content row travels on another topic, so now and then an event arrives before its
content (the content topic is behind), or names content that never comes. Waiting for it inside a
bundle held every partition of the lane (Prism runs a lane's partitions in one bundle): three such
events delayed the board by 30 s. Instead, the join hands on a :class:`~sinks.records.Parked` item
and reads on; each sink that admits it writes it here (a letter of stage ``park``, confirmed before
its position passes it, as for any dead letter) and the parked lane brings it back.

One record per (sink, event): its key is the event's key (the content id, so one content's events
keep their order) and its value an envelope of our own (msgpack): the sink that parked it, where
Debezium put it (``origin``), the deadline, and the original key and value. Only that sink applies
the event when it comes back (``EnrichedChange.for_sink``); the others only move their position.

Exactly once across the two paths. A ``kill -9`` between a park letter's confirmation and the
position store means the event is read again from its own topic and parked again, or applied
directly if its content has arrived: the same event could then arrive twice. Sinks deduplicate on
``EnrichedChange.identity`` (the origin): BigQuery's insertIds and HTTP idempotency keys need
nothing more; atomic sinks record the parked ids with their positions (``Batch.parks``) and apply a
returning event only if its id is still parked (``Batch.claims``), in the same atomic step.
"""

from __future__ import annotations

import msgspec

from sinks.records import DeadLetter, Parked, SourcePosition

PARK_STAGE = "park"


class ParkedEnvelope(msgspec.Struct, array_like=True, gc=False):
    sink: str
    origin_topic: str
    origin_partition: int
    origin_offset: int
    content_id: str
    deadline_ms: int
    commit_ts_ms: int
    key: bytes | None
    value: bytes | None

    @property
    def origin(self) -> SourcePosition:
        return SourcePosition(self.origin_topic, self.origin_partition, self.origin_offset)


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(ParkedEnvelope)


class BadEnvelopeError(ValueError):
    pass


def envelope(parked: Parked, sink: str) -> bytes:
    p = parked.origin or parked.position
    return _encoder.encode(
        ParkedEnvelope(
            sink,
            p.topic,
            p.partition,
            p.offset,
            parked.content_id,
            parked.deadline_ms,
            parked.commit_ts_ms,
            parked.key,
            parked.value,
        )
    )


def decode_envelope(value: bytes | None) -> ParkedEnvelope:
    if value is None:
        raise BadEnvelopeError("a parking record without a value")
    try:
        return _decoder.decode(value)
    except msgspec.DecodeError as exc:
        raise BadEnvelopeError(f"not a parking envelope: {exc}") from None


def park_letter(parked: Parked, sink: str) -> DeadLetter:
    """The record ``sink`` writes to the parking topic for ``parked`` (through its letter producer:
    the same confirmed delivery as a dead letter)."""
    return DeadLetter(
        parked.position,
        PARK_STAGE,
        f"content {parked.content_id} not known yet",
        parked.key,
        envelope(parked, sink),
        # An event parked again sets no mark in the parking topic (sinks.positions).
        None if parked.origin is not None else parked.sequence,
        deterministic=False,
        origin=parked.origin,
    )
