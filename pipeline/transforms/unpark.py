"""The parked lane's step: bring parked events back once their content is known, or dead-letter them.

```
a parked lane:  ReadParked ─> Unpark ─> Write<Sink> (the same sinks as its event lane)
```

Each event lane has a twin that reads the parking topic (``sinks.parking``). ``UnparkFn`` decodes
each envelope and the original Debezium record in it, joins it against the content view, and:

- content known: an ``EnrichedChange`` positioned in the parking topic, with ``origin`` (where it was
  captured, the id sinks deduplicate on) and ``for_sink`` (the sink that parked it: only that one
  applies it);
- content still unknown: the whole batch waits once, at most ``poll_s`` (and never past the nearest
  deadline), for any of the missing contents; what is still missing is parked again (a new record
  at the parking topic's end, same origin and deadline, for the same sink), so no event is held
  behind another that waits for content that never comes;
- past its deadline (one per content id, set when the content was first missed), and once the
  content view proves it had read its topic up to that deadline (``ContentView.proven_absent_at``):
  a dead letter ``join_content`` with the original key and value, for that sink only.

The wait holds only this lane's bundle, never the event lanes. An unresolved event goes round the
parking topic about once per ``poll_s`` until its deadline: 1,000 of them with the default 10 s
cost about 10,000 small records, written and read again.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import msgspec

from infra import telemetry
from pipeline.decode import decode_engagement, decode_error_letter
from pipeline.metrics import MissingContentError
from pipeline.model import DeadLetter, EngagementChange, KafkaRecord, Parked, Skipped
from pipeline.sources.kafka_partitions import RecordBatch, records
from pipeline.transforms.enrich import ContentJoinFn, enrich, failure_letter, missing_letter
from sinks.parking import ParkedEnvelope, decode_envelope


def unparked_change(record: KafkaRecord, parked: ParkedEnvelope) -> EngagementChange | Skipped:
    """The original change in an envelope, positioned where Debezium put it (raises DecodeError)."""
    original = KafkaRecord(parked.origin, parked.key, parked.value, parked.commit_ts_ms)
    return decode_engagement(original)


class UnparkFn(ContentJoinFn):
    """``RecordBatch`` of the parking topic ``-> list[EnrichedChange | DeadLetter | Skipped]``."""

    def __init__(self, *args: Any, poll_s: float = 1.0, **kwargs: Any) -> None:
        # late_content_timeout_s only names the timeout in the letters: deadlines are in the envelopes.
        super().__init__(*args, **kwargs)
        self._poll_s = poll_s
        self._reparked = telemetry.counter("engagement_join", ("join", "reparked"), outcome="reparked")
        self._unparked = telemetry.counter("engagement_join", ("join", "unparked"), outcome="unparked")
        self._expired = telemetry.counter("engagement_join", ("join", "park_expired"), outcome="park_expired")
        self._malformed = telemetry.counter(
            "engagement_decode", ("decode", "parked_malformed"), kind="parked", outcome="malformed"
        )
        self._failed = telemetry.counter("engagement_join", ("join", "failed"), outcome="failed")

    def process(self, batch: RecordBatch) -> Iterator[list[Any]]:
        out: list[Any] = []
        waiting: dict[int, tuple[KafkaRecord, ParkedEnvelope, EngagementChange, str]] = {}
        for record in records(batch):
            try:
                parked = decode_envelope(record.value)
                change = unparked_change(record, parked)
            # Any exception (a deep value makes msgspec raise RecursionError): the record's letter.
            except Exception as error:  # noqa: BLE001
                self._malformed.inc()
                out.append(decode_error_letter(record, "decode_parked", error))
                continue
            if type(change) is Skipped:  # a parked tombstone cannot happen; keep the position moving
                out.append(Skipped(record.position, change.reason))
                continue
            try:
                item = self._resolve(record, parked, change)
            except Exception as error:  # noqa: BLE001 - one record's failure is its letter, not the job's
                self._failed.inc()
                out.append(self._failure(record, parked, change, error))
                continue
            if type(item) is str:  # still missing: this content id
                waiting[len(out)] = (record, parked, change, item)
            out.append(item)
        if waiting:
            # One short wait for the whole batch, never past the nearest deadline, for any of the
            # contents to arrive; what is still missing after it goes round the parking topic again.
            # A wait per event, in order, would hold every event behind one that waits for content
            # that never comes (until its deadline).
            # Past a deadline but not yet proven absent (the view is behind): wait for the proof.
            now = self._clock_ms()
            deadlines = [parked.deadline_ms for _, parked, _, _ in waiting.values()]
            ahead = [deadline - now for deadline in deadlines if deadline > now]
            passed = [deadline for deadline in deadlines if deadline <= now]
            timeout_s = min(self._poll_s, min(ahead) / 1000) if ahead else self._poll_s
            missing = {content_id for *_, content_id in waiting.values()}
            self._view.wait_for_any(missing, timeout_s, proof_at_ms=max(passed) if passed else None)
            for index, (record, parked, change, _) in waiting.items():
                try:
                    item = self._resolve(record, parked, change)
                    if type(item) is str:
                        self._reparked.inc()
                        item = self._repark(record, parked, change, item)
                except Exception as error:  # noqa: BLE001 - as above
                    self._failed.inc()
                    item = self._failure(record, parked, change, error)
                out[index] = item
        if out:
            yield out

    def _resolve(self, record: KafkaRecord, parked: ParkedEnvelope, change: EngagementChange) -> Any:
        """The change back for its sink, its dead letter past the deadline, or the missing content id."""
        try:
            enriched = enrich(change, self._view.get)
        except MissingContentError as missing:  # an update can name two contents: the first missing
            if self._clock_ms() < parked.deadline_ms or not self._view.proven_absent_at(parked.deadline_ms):
                return missing.content_id
            self._expired.inc()
            letter = missing_letter(change, missing.content_id, self._late_timeout, len(self._view))
            return msgspec.structs.replace(
                letter, position=record.position, sequence=None, origin=parked.origin, for_sink=parked.sink
            )
        self._unparked.inc()
        # The sequence stays: sinks order an event's changes by it (admit sets no mark from it).
        return msgspec.structs.replace(enriched, position=record.position, origin=parked.origin, for_sink=parked.sink)

    def _failure(
        self, record: KafkaRecord, parked: ParkedEnvelope, change: EngagementChange, error: BaseException
    ) -> DeadLetter:
        """The letter of a parked event the join could not handle, for the sink that parked it."""
        letter = failure_letter(change, "join", error)
        return msgspec.structs.replace(
            letter, position=record.position, sequence=None, origin=parked.origin, for_sink=parked.sink
        )

    def _repark(self, record: KafkaRecord, parked: ParkedEnvelope, change: EngagementChange, content_id: str) -> Parked:
        return Parked(
            record.position,
            parked.key,
            parked.value,
            change.op,
            change.sequence,
            content_id,
            parked.deadline_ms,
            parked.commit_ts_ms,
            origin=parked.origin,
            for_sink=parked.sink,
        )
