"""The parked lane's step: bring parked events back once their content is known, or dead-letter them.

```
a parked lane:  ReadParked ─> Unpark ─> Write<Sink> (the same sinks as its event lane)
```

Each event lane has a twin that reads the parking topic (``sinks.parking``). ``UnparkFn`` decodes
each envelope and the original Debezium record in it, joins it against the content view, and:

- content known: an ``EnrichedChange`` positioned in the parking topic, with ``origin`` (where it was
  captured, the id sinks deduplicate on) and ``for_sink`` (the sink that parked it: only that one
  applies it);
- content still unknown: it waits for the content until the envelope's deadline (one per content
  id, set when the content was first missed), then a dead letter ``join_content`` with the original
  key and value, for that sink only.

The wait holds only this lane's bundle: the event lanes keep reading. The deadlines are ordered
like the parking topic, so one wait covers every event of a missing content, and 1,000 such events
cost about one timeout, not 1,000.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import apache_beam as beam
import msgspec
from apache_beam.metrics import Metrics

from pipeline.decode import DecodeError, decode_engagement, decode_error_letter
from pipeline.metrics import MissingContentError
from pipeline.model import EngagementChange, KafkaRecord, Skipped
from pipeline.sources.content_view import ContentView
from pipeline.sources.kafka_partitions import RecordBatch, records
from pipeline.transforms.enrich import enrich, missing_letter
from sinks.parking import BadEnvelopeError, ParkedEnvelope, decode_envelope


def unparked_change(record: KafkaRecord, parked: ParkedEnvelope) -> EngagementChange | Skipped:
    """The original change in an envelope, positioned where Debezium put it (raises DecodeError)."""
    original = KafkaRecord(parked.origin, parked.key, parked.value, parked.commit_ts_ms)
    return decode_engagement(original)


class UnparkFn(beam.DoFn):
    """``RecordBatch`` of the parking topic ``-> list[EnrichedChange | DeadLetter | Skipped]``."""

    def __init__(
        self,
        consumer_config: dict[str, Any],
        content_topic: str,
        late_content_timeout_s: float,
        startup_timeout_s: float,
        view_factory: Callable[[], ContentView] | None = None,
        clock_ms: Callable[[], int] = lambda: time.time_ns() // 1_000_000,
    ) -> None:
        self._view_factory = view_factory
        self._config = consumer_config
        self._topic = content_topic
        self._startup_timeout = startup_timeout_s
        self._timeout_s = late_content_timeout_s  # for the letters' reason; deadlines are in the envelopes
        self._clock_ms = clock_ms
        self._unparked = Metrics.counter("join", "unparked")
        self._expired = Metrics.counter("join", "park_expired")
        self._malformed = Metrics.counter("decode", "parked_malformed")

    def setup(self) -> None:
        factory = self._view_factory or (lambda: ContentView.shared(self._config, self._topic))
        self._view = factory()
        self._view.wait_until_current(self._startup_timeout)

    def process(self, batch: RecordBatch) -> Iterator[list[Any]]:
        out: list[Any] = []
        for record in records(batch):
            try:
                parked = decode_envelope(record.value)
                change = unparked_change(record, parked)
            except (BadEnvelopeError, DecodeError) as error:
                self._malformed.inc()
                out.append(decode_error_letter(record, "decode_parked", error))
                continue
            if type(change) is Skipped:  # a parked tombstone cannot happen; keep the position moving
                out.append(Skipped(record.position, change.reason))
                continue
            out.append(self._resolve(record, parked, change))
        if out:
            yield out

    def _resolve(self, record: KafkaRecord, parked: ParkedEnvelope, change: EngagementChange) -> Any:
        lookup = self._view.get
        while True:
            try:
                enriched = enrich(change, lookup)
            except MissingContentError as missing:  # an update can name two contents: loop
                remaining_s = (parked.deadline_ms - self._clock_ms()) / 1000
                if remaining_s > 0:
                    self._view.wait_for(missing.content_id, remaining_s)
                    continue
                self._expired.inc()
                letter = missing_letter(change, missing.content_id, self._timeout_s, len(self._view))
                return msgspec.structs.replace(
                    letter, position=record.position, sequence=None, origin=parked.origin, for_sink=parked.sink
                )
            self._unparked.inc()
            # The sequence stays: sinks order an event's changes by it (admit sets no mark from it).
            return msgspec.structs.replace(
                enriched, position=record.position, origin=parked.origin, for_sink=parked.sink
            )
