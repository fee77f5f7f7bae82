"""A pytest plugin that counts, per integration test, the dead letters it left, by stage.

Not loaded by default. ``pytest tests/integration -p tests.integration.letter_trace`` appends one
line per test to ``$LETTER_TRACE`` (default ``letter-trace.txt`` in the working folder). It found
the letter storms of parked events re-read on every start-over (docs/delivery.md).
"""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from confluent_kafka import Consumer, TopicPartition

from infra.stack.kafka_admin import end_offsets


def count_letters(bootstrap: str, topic: str, since: dict[int, int], until: dict[int, int]) -> Counter[str]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "letter-trace"})
    consumer.assign([TopicPartition(topic, p, since.get(p, 0)) for p in until])
    remaining = sum(until.values()) - sum(since.get(p, 0) for p in until)
    stages: Counter[str] = Counter()
    deadline = time.monotonic() + 60
    try:
        while remaining > 0 and time.monotonic() < deadline:
            for message in consumer.consume(1000, timeout=0.5):
                if message.error() is None:
                    remaining -= 1
                    headers = dict(message.headers() or [])
                    stages[headers.get("dlq.stage", b"?").decode()] += 1
    finally:
        consumer.close()
    return stages


@pytest.fixture(autouse=True)
def _letters_per_test(request: pytest.FixtureRequest) -> Iterator[None]:
    if "stack" not in request.fixturenames:
        yield
        return
    settings = request.getfixturevalue("settings")
    request.getfixturevalue("stack")
    topic = settings.cdc.dlq_topic
    before = end_offsets(settings.kafka, topic)
    yield
    after = end_offsets(settings.kafka, topic)
    stages = count_letters(settings.kafka.bootstrap_servers, topic, before, after)
    with open(os.environ.get("LETTER_TRACE", "letter-trace.txt"), "a") as trace:
        trace.write(f"{request.node.nodeid}: {dict(sorted(stages.items()))}\n")
