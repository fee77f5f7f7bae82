"""Reads what the live page shows: the boards and titles from Redis, dead-letter counts from Kafka.

One reader serves every browser (the app reads once per refresh and fans the snapshot out), so a
dozen open tabs cost Redis what one does. Dead-letter counts are the topics' watermarks (letters on
each topic now), read every ``KAFKA_EVERY_S`` only: they change rarely and cost a metadata round trip.
Neither service being down raises: the snapshot carries the error and the page shows it.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import redis
from confluent_kafka import Consumer, TopicPartition

from infra.settings import Settings
from pipeline.dashboard.snapshot import CONTENT_TYPES, Raw
from sinks.redis_leaderboard import board_key

KAFKA_EVERY_S = 5.0
_TIMEOUT_S = 3.0


class Reader:
    def __init__(
        self,
        settings: Settings,
        client: redis.Redis | None = None,
        consumer: Consumer | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._settings = settings
        self._redis = client or settings.redis.client(timeout_s=2.0, reader=True)
        self._consumer = consumer
        self._clock = clock
        self._letters: dict[str, int] | None = None
        self._letters_at = -1e9
        self._topics = (settings.cdc.dlq_topic, settings.cdc.http_dlq_topic)

    def _kafka(self) -> Consumer:
        if self._consumer is None:
            self._consumer = Consumer(
                {
                    **self._settings.kafka.client_config(),
                    "group.id": "engagement-dashboard",
                    "enable.auto.commit": False,
                }
            )
        return self._consumer

    def _dead_letters(self, errors: list[str]) -> dict[str, int] | None:
        if time.monotonic() - self._letters_at < KAFKA_EVERY_S:
            return self._letters
        try:
            consumer = self._kafka()
            counts = {}
            for topic in self._topics:
                meta = consumer.list_topics(topic, timeout=_TIMEOUT_S).topics.get(topic)
                if meta is None or meta.error is not None:
                    counts[topic] = 0
                    continue
                marks = [
                    consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=_TIMEOUT_S)
                    for p in meta.partitions
                ]
                counts[topic] = sum(high - low for low, high in marks)
            self._letters = counts
        # The page must keep showing the boards while Kafka is away: the error is shown instead.
        except Exception as exc:  # noqa: BLE001
            errors.append(f"Kafka: {exc}")
            self._letters = None
        self._letters_at = time.monotonic()
        return self._letters

    def read(self, top: int) -> Raw:
        errors: list[str] = []
        key = board_key(self._settings.leaderboard.window_minutes)
        boards: dict[str, list[tuple[str, float]]] = {}
        titles: dict[str, str] = {}
        updated = None
        try:
            pipe = self._redis.pipeline(transaction=False)
            names = ["overall", *CONTENT_TYPES]
            for name in names:
                pipe.zrevrange(key if name == "overall" else f"{key}:{name}", 0, top - 1, withscores=True)
            pipe.hgetall(f"{key}:updated")
            *rows, raw_updated = pipe.execute()
            for name, ranked in zip(names, rows, strict=True):
                boards[name] = [(member.decode(), float(score)) for member, score in ranked]
            ids = sorted({cid for ranked in boards.values() for cid, _ in ranked})
            if ids:
                pipe = self._redis.pipeline(transaction=False)
                for cid in ids:
                    pipe.hget(f"content:{cid}", "title")
                titles = {cid: t.decode() for cid, t in zip(ids, pipe.execute(), strict=True) if t is not None}
            if raw_updated:
                updated = {k.decode(): int(float(v)) for k, v in raw_updated.items()}
        except redis.RedisError as exc:
            errors.append(f"Redis: {exc}")
        letters = self._dead_letters(errors)
        return Raw(boards, titles, updated, letters, int(self._clock() * 1000), errors)

    def close(self) -> None:
        self._redis.close()
        if self._consumer is not None:
            self._consumer.close()
