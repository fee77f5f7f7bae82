"""The yardstick: what a user could write by hand in an afternoon instead of the pipeline.

    python -m loadtest.baseline_consumer                 # drain the engagement topic once, print JSON

One process, no Beam: confluent-kafka reads the content topic into a dict, then every partition of
the engagement topic from offset 0 to its end as it is at start; orjson decodes the Debezium
envelopes; each consumed batch is summed per content and per (minute, content, type), the way the
leaderboard sink sums it, and applied in one Redis round trip (MULTI/EXEC: HINCRBY/HINCRBYFLOAT on
the content hashes, ZINCRBY on the minute buckets and the boards, the offsets in a hash). At least
once: nothing drops a replay or a Debezium re-send, nothing checks the offsets it stores, an
update's before-image is taken back with the content as it is now. Its keys live under
``bench:baseline:`` so it never touches the live boards.

It is not a product path: ``loadtest.bench_pipeline drain`` runs it and the pipeline on the same
topic, alternating, and prints the ratio. Written without the product's modules on purpose, so the
comparison is with code a user owns, not with the pipeline's own helpers.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime

import orjson
import redis
from confluent_kafka import Consumer, TopicPartition

from infra.settings import Settings

PREFIX = "bench:baseline:"
BATCH = 5000
TYPES = frozenset({"podcast", "newsletter", "video"})
FIELDS = ("events", "total_seconds", "plays", "pauses", "finishes", "clicks", "pct_sum", "pct_count", "over_100")
COUNTER = {"play": 2, "pause": 3, "finish": 4, "click": 5}


def read_content(consumer: Consumer, topic: str, ends: dict[int, int]) -> dict[str, tuple[str, int | None]]:
    """content id -> (board type, length_seconds), the compacted topic read to its end."""
    content: dict[str, tuple[str, int | None]] = {}
    consumer.assign([TopicPartition(topic, p, 0) for p, end in ends.items() if end > 0])
    left = {p: end for p, end in ends.items() if end > 0}
    while left:
        for message in consumer.consume(BATCH, timeout=1.0):
            if message.error() is not None:
                continue
            value = message.value()
            if value is not None:
                after = orjson.loads(value)["after"]
                if after is not None:
                    kind = after.get("content_type")
                    content[after["id"]] = (kind if kind in TYPES else "unknown", after.get("length_seconds"))
            if message.offset() + 1 >= left.get(message.partition(), sys.maxsize):
                del left[message.partition()]
    consumer.unassign()
    return content


def minute_of(event_ts: str | int) -> int:
    if isinstance(event_ts, int):  # MicroTimestamp
        return event_ts // 60_000_000
    return int(datetime.fromisoformat(event_ts).timestamp()) // 60


def add(row: dict, sign: int, content: dict, sums: dict, buckets: dict) -> None:
    content_id = row.get("content_id")
    if content_id is None or content_id not in content:
        return
    kind, length = content[content_id]
    values = sums.get(content_id)
    if values is None:
        values = sums[content_id] = [0, 0.0, 0, 0, 0, 0, 0.0, 0, 0]
    values[0] += sign
    counter = COUNTER.get(row.get("event_type") or "")
    if counter is not None:
        values[counter] += sign
    duration = row.get("duration_ms")
    if duration is not None:
        seconds = duration / 1000
        values[1] += sign * seconds
        key = (minute_of(row["event_ts"]), content_id, kind)
        buckets[key] = buckets.get(key, 0.0) + sign * seconds
        if length:
            pct = seconds / length * 100
            values[6] += sign * pct
            values[7] += sign
            values[8] += sign * (pct > 100)


def apply(client: redis.Redis, sums: dict, buckets: dict, offsets: dict[int, int], window: int, lateness: int) -> None:
    now = int(time.time()) // 60
    pipe = client.pipeline(transaction=True)
    for content_id, values in sums.items():
        key = f"{PREFIX}engagement:content:{content_id}"
        for name, value in zip(FIELDS, values, strict=True):
            if value:
                if isinstance(value, float):
                    pipe.hincrbyfloat(key, name, value)
                else:
                    pipe.hincrby(key, name, value)
    for (minute, content_id, kind), seconds in buckets.items():
        if minute < now - window - lateness + 1:
            continue
        for key in (f"{PREFIX}engagement:minute:{minute}", f"{PREFIX}engagement:minute:{minute}:{kind}"):
            pipe.zincrby(key, seconds, content_id)
            pipe.expire(key, (window + lateness) * 60)
        if minute > now - window:
            pipe.zincrby(f"{PREFIX}top_engagement:{window}min", seconds, content_id)
            pipe.zincrby(f"{PREFIX}top_engagement:{window}min:{kind}", seconds, content_id)
    pipe.hset(f"{PREFIX}positions", mapping={str(p): o for p, o in offsets.items()})
    pipe.execute()


def drain(settings: Settings) -> dict[str, float]:
    consumer = Consumer(settings.kafka.client_config(**{"group.id": "bench-baseline", "enable.auto.commit": False}))
    ends = {}
    for topic in (settings.cdc.content_topic, settings.cdc.engagement_topic):
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends[topic] = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
    began = time.monotonic()
    content = read_content(consumer, settings.cdc.content_topic, ends[settings.cdc.content_topic])
    client = settings.redis.client()
    for key in client.scan_iter(f"{PREFIX}*", count=1000):
        client.delete(key)
    board = settings.leaderboard
    topic, left = settings.cdc.engagement_topic, {p: e for p, e in ends[settings.cdc.engagement_topic].items() if e}
    consumer.assign([TopicPartition(topic, p, 0) for p in left])
    seen, started = 0, time.monotonic()
    while left:
        sums: dict = {}
        buckets: dict = {}
        offsets: dict[int, int] = {}
        for message in consumer.consume(BATCH, timeout=1.0):
            if message.error() is not None:
                continue
            seen += 1
            partition, offset = message.partition(), message.offset()
            offsets[partition] = offset + 1
            if offset + 1 >= left.get(partition, sys.maxsize):
                del left[partition]
            value = message.value()
            if value is None:
                continue
            envelope = orjson.loads(value)
            op = envelope["op"]
            if op in ("u", "d") and envelope["before"] is not None:
                add(envelope["before"], -1, content, sums, buckets)
            if op != "d" and envelope["after"] is not None:
                add(envelope["after"], +1, content, sums, buckets)
        if offsets:
            apply(client, sums, buckets, offsets, board.window_minutes, board.allowed_lateness_minutes)
    ended = time.monotonic()
    consumer.close()
    return {
        "events": seen,
        "content": len(content),
        "seconds": ended - started,
        "events_per_s": seen / (ended - started),
        "with_content_s": ended - began,
    }


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0]).parse_args(argv)
    print(orjson.dumps(drain(Settings())).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
