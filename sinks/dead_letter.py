"""The dead-letter topic: records that can never be applied, with the reason and their original bytes.

Each letter is produced with the record's original key and value and headers that say where it came
from and why: ``dlq.stage`` (decode_engagement, join_content, or the sink's name), ``dlq.reason``,
``dlq.source.topic`` / ``.partition`` / ``.offset``, and any the sink adds (``Sink.letter_headers``).
A sink may have a topic of its own for the letters it gives up on (``stage_topics``). A value too
large for the topic is cut to ``max_bytes`` and gets a ``dlq.truncated`` header with its original
length, rather than failing.

Delivery is confirmed: ``send`` returns only when the broker has acknowledged every letter (the
delivery callback reported no error). A letter that fails (a timeout inside librdkafka, the broker
down) is produced again, with backoff, until it is acknowledged; it is never counted as written
before that. The sink driver calls ``send`` before it stores a position past the letters' records,
so a ``kill -9`` at any moment leaves each letter either on the topic or its record unhandled (and
read again). A replay can therefore produce a letter twice: at least once.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer

from sinks.records import DeadLetter

_log = logging.getLogger(__name__)
HEADROOM_BYTES = 4_096  # for the key, the headers and the record's framing


def headers(letter: DeadLetter) -> list[tuple[str, bytes]]:
    # A parked event's letter names where it was captured, not where it was parked.
    p = letter.origin or letter.position
    return [
        ("dlq.reason", letter.reason.encode()),
        ("dlq.stage", letter.stage.encode()),
        ("dlq.source.topic", p.topic.encode()),
        ("dlq.source.partition", str(p.partition).encode()),
        ("dlq.source.offset", str(p.offset).encode()),
        *letter.headers,
    ]


def message(letter: DeadLetter, max_bytes: int) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]]]:
    """``(key, value, headers)`` of the Kafka record for ``letter``, cut to fit ``max_bytes``: the value
    first; if the headers alone are too large (a sink's header may hold a copy of a large record,
    as the HTTP sink's ``dlq.http.change`` does), the largest header too, with a
    ``dlq.truncated.<header>`` header saying its original length. Every header counts: a record the
    topic refuses is produced again for ever."""
    key, value, extra = letter.key, letter.value, headers(letter)
    room = max_bytes - HEADROOM_BYTES - len(key or b"") - _size(extra)
    while room < 0:
        i = max(range(len(extra)), key=lambda j: len(extra[j][1]))
        name, header = extra[i]
        if not header:
            break  # nothing left to cut (a key larger than the limit): the broker says the rest
        note = (f"dlq.truncated.{name}", str(len(header)).encode())
        room -= len(note[0]) + len(note[1])
        extra[i] = (name, header[: max(0, len(header) + room)])
        extra.append(note)
        room = max_bytes - HEADROOM_BYTES - len(key or b"") - _size(extra)
    room = max(0, room)
    if value is not None and len(value) > room:
        extra.append(("dlq.truncated", str(len(value)).encode()))
        value = value[:room]
    return key, value, extra


def _size(hdrs: Sequence[tuple[str, bytes]]) -> int:
    return sum(len(name) + len(value) for name, value in hdrs)


class DeadLetterProducer:
    """Produces letters and waits for the broker's acknowledgement of each; see the module docstring."""

    def __init__(
        self,
        config: dict[str, Any],
        topic: str,
        max_bytes: int = 1_000_000,
        retry_backoff_s: float = 1.0,
        sleep: Callable[[float], None] = time.sleep,
        producer_factory: Callable[[dict[str, Any]], Any] = Producer,
        stage_topics: Mapping[str, str] | None = None,
    ) -> None:
        self.topic = topic
        # A sink's own letters may go to a topic of its own (the HTTP sink's, for its replay).
        self._stage_topics = dict(stage_topics or {})
        self._max_bytes = max_bytes
        self._backoff = retry_backoff_s
        self._sleep = sleep
        self._producer = producer_factory(
            {
                **config,
                # Acknowledged once every in-sync replica has it (2 of 3 with KAFKA_BROKERS=3), and a
                # retry after a lost acknowledgement or a leader change never writes a letter twice.
                "acks": "all",
                "enable.idempotence": True,
                "linger.ms": 0,
                # A letter is cut to fit this, which Settings holds at or below the topics' limit
                # (KAFKA_MAX_MESSAGE_BYTES, the default): a letter the topic refused would be
                # produced again without end (docs/delivery.md, "Row size bound").
                "message.max.bytes": max_bytes,
                # Fail a delivery after 30 s instead of librdkafka's 5 minutes, and produce it again:
                # the caller keeps waiting either way, but the log says why every 30 s.
                "message.timeout.ms": 30_000,
            }
        )

    def send(self, letters: Sequence[DeadLetter]) -> None:
        """Return once every letter is acknowledged by the broker; retry failed ones without end."""
        pending = list(letters)
        attempt = 0
        while pending:
            failed: list[tuple[DeadLetter, KafkaError]] = []
            for letter in pending:
                self._produce(letter, failed)
            while len(self._producer) > 0:
                self._producer.flush(1.0)
            if not failed:
                return
            attempt += 1
            _log.warning(
                "dead-letter topic %s refused %d letter(s) (attempt %d, first error: %s); producing them again",
                self.topic,
                len(failed),
                attempt,
                failed[0][1],
            )
            self._sleep(min(self._backoff * attempt, 10.0))
            pending = [letter for letter, _ in failed]

    def _produce(self, letter: DeadLetter, failed: list[tuple[DeadLetter, KafkaError]]) -> None:
        def delivered(error: KafkaError | None, _: Any) -> None:
            if error is not None:
                failed.append((letter, error))

        key, value, hdrs = message(letter, self._max_bytes)
        while True:
            try:
                topic = self._stage_topics.get(letter.stage, self.topic)
                self._producer.produce(topic, key=key, value=value, headers=hdrs, on_delivery=delivered)
                return
            except BufferError:
                self._producer.poll(0.5)  # the local queue is full: let deliveries drain
            except KafkaException as exc:
                failed.append((letter, exc.args[0]))
                return

    def close(self) -> None:
        with contextlib.suppress(KafkaException):
            self._producer.flush(5)
