"""The dead-letter topic: records the pipeline can never apply, with the reason, never dropped.

Each dead letter is produced with the original key and value, and headers saying where it came
from (topic, partition, offset), which step refused it and why. Delivery is at-least-once: the
write is flushed synchronously in ``process`` (bad records are rare); a replay after a crash can
repeat one. This step runs in a stage of its own on Prism (behind the job's ``Flatten``), so a
``kill -9`` between a sink storing a later position and this write can lose a letter: see
docs/delivery.md, "Limits". Counted per stage as ``dead_letters/<stage>``.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import apache_beam as beam
from apache_beam.metrics import Metrics
from confluent_kafka import KafkaException, Producer

from pipeline.model import DeadLetter

_log = logging.getLogger(__name__)


def headers(letter: DeadLetter) -> list[tuple[str, bytes]]:
    p = letter.position
    return [
        ("dlq.reason", letter.reason.encode()),
        ("dlq.stage", letter.stage.encode()),
        ("dlq.source.topic", p.topic.encode()),
        ("dlq.source.partition", str(p.partition).encode()),
        ("dlq.source.offset", str(p.offset).encode()),
    ]


class WriteDeadLettersFn(beam.DoFn):
    def __init__(self, producer_config: dict[str, Any], topic: str, flush_timeout_s: float = 30.0) -> None:
        self._config = producer_config
        self._topic = topic
        self._timeout = flush_timeout_s

    def setup(self) -> None:
        self._producer = Producer({**self._config, "enable.idempotence": True, "linger.ms": 0})

    def process(self, letter: DeadLetter) -> None:
        self._producer.produce(self._topic, key=letter.key, value=letter.value, headers=headers(letter))
        # Wait for the broker: retried (librdkafka retries internally) until it succeeds, because a
        # dead letter must be on Kafka before a later flush stores a position past its record.
        while self._producer.flush(self._timeout) > 0:
            _log.warning("dead-letter topic %s not acknowledging yet; still waiting", self._topic)
        Metrics.counter("dead_letters", letter.stage).inc()

    def teardown(self) -> None:
        producer = getattr(self, "_producer", None)
        if producer is not None:
            with contextlib.suppress(KafkaException):
                producer.flush(5)


class WriteDeadLetters(beam.PTransform):
    def __init__(self, producer_config: dict[str, Any], topic: str) -> None:
        super().__init__()
        self._config = producer_config
        self._topic = topic

    def expand(self, letters: beam.PCollection) -> beam.PCollection:
        return letters | "Produce" >> beam.ParDo(WriteDeadLettersFn(self._config, self._topic))
