"""A forged, very high Debezium sequence on one partition does not silence that partition.

The re-send rule skips a change whose ``source.sequence`` is at or below the partition's mark
(``sinks.positions``). One record produced to the event topic with the largest 64-bit LSN would
make every later change of its partition look like a re-send; the sinks must see that nothing was
ever applied between the sequence before that mark and the mark, apply the real changes, count
the regression and keep going: Redis equals SQL.
"""

from __future__ import annotations

import time

import httpx
import orjson
import psycopg
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from infra.settings import Settings
from infra.stack.kafka_admin import end_offsets
from infra.stack.local import LocalStack
from sinks.positions import decode
from sinks.redis_store import next_offsets, positions_key

from .pipeline_helpers import assert_redis_matches_sql, flush_redis, streaming, wait_caught_up

pytestmark = pytest.mark.integration

SINK = "redis_leaderboard"
TOP = str((1 << 64) - 1)  # the largest LSN pg_lsn can hold: plausible, and above every real one


def insert(db: psycopg.Connection, n: int) -> None:
    content_ids = [row[0] for row in db.execute("SELECT id FROM content LIMIT 5").fetchall()]
    db.execute(
        "INSERT INTO engagement_events (content_id, user_id, event_type, event_ts, duration_ms, device)"
        " SELECT (%s::uuid[])[1 + g %% 5], gen_random_uuid(), 'play', now(), 1000 + g, 'web'"
        " FROM generate_series(1, %s) AS g",
        (content_ids, n),
    )


def last_insert(settings: Settings, topic: str) -> tuple[int, bytes, dict]:
    """A partition whose last record is an insert: (partition, key bytes, value)."""
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": "tests-forged"})
    try:
        for partition, end in sorted(end_offsets(settings.kafka, topic).items()):
            if end == 0:
                continue
            consumer.assign([TopicPartition(topic, partition, end - 1)])
            [message] = consumer.consume(1, timeout=10)
            value = orjson.loads(message.value()) if message.value() else None
            if value is not None and value.get("op") == "c":
                return partition, message.key(), value
    finally:
        consumer.close()
    raise AssertionError("no partition ends with an insert")


def regressions(settings: Settings) -> dict[tuple[str, str], float]:
    found = {}
    for family in text_string_to_metric_families(httpx.get(settings.metrics.url, timeout=5).text):
        for s in family.samples:
            if s.name == "engagement_sink_sequence_regressions_total" and s.labels.get("sink") == SINK:
                found[(s.labels["partition"], s.labels["kind"])] = s.value
    return found


def test_a_forged_high_sequence_does_not_silence_its_partition(
    stack: LocalStack, settings: Settings, tmp_path, db: psycopg.Connection
):
    flush_redis(settings)
    topic = settings.cdc.engagement_topic
    client = settings.redis.client()
    with streaming(settings, tmp_path / "pipeline.log", PIPELINE_SINKS="redis") as pipeline:
        # Two transactions: Debezium's first after it starts has a null commit LSN (no sequence), so
        # the second gives every partition a mark and a sequence before it (the gap rule's case; a
        # forged first mark is left to the commit-time rule, docs/delivery.md).
        insert(db, 400)
        insert(db, 400)
        wait_caught_up(settings, timeout=180)
        partition, key, value = last_insert(settings, topic)
        # A copy of that insert as an update to the same row (it nets to zero on the boards) with the
        # largest sequence there is and its genuine commit time: only the gap rule can catch it.
        forged = {**value, "op": "u", "before": value["after"]}
        forged["source"] = {**value["source"], "sequence": orjson.dumps([TOP, TOP]).decode()}
        producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
        producer.produce(topic, orjson.dumps(forged), key, partition=partition)
        assert producer.flush(10) == 0
        forged_offset = end_offsets(settings.kafka, topic)[partition] - 1
        deadline = time.monotonic() + 60
        while next_offsets(client, SINK, topic).get(partition, 0) <= forged_offset:
            assert time.monotonic() < deadline, "the sink did not pass the forged record"
            time.sleep(0.2)
        mark = decode(client.hget(positions_key(SINK), f"{topic}:{partition}")).mark
        assert mark is not None and mark.commit_lsn == int(TOP)  # the forged record set the mark

        insert(db, 400)  # real events, committed right after: some land on the forged partition
        wait_caught_up(settings, timeout=180)
        assert end_offsets(settings.kafka, topic)[partition] > forged_offset + 1
        assert pipeline.alive()
        mark = decode(client.hget(positions_key(SINK), f"{topic}:{partition}")).mark
        assert mark is not None and mark.commit_lsn < int(TOP)
        assert regressions(settings) == {(f"{topic}:{partition}", "unseen_gap"): 1.0}
    # Every event of that partition after the forged record was applied: Redis equals SQL.
    assert_redis_matches_sql(settings)
