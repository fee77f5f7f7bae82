"""Reads what the live page shows: the boards and titles from Redis, dead-letter counts and each
sink's lag from Kafka (and Redis, where the Redis sinks keep their positions).

One reader serves every browser (the app reads once per refresh and fans the snapshot out), so a
dozen open tabs cost Redis what one does. Dead-letter counts are the topics' watermarks (letters on
each topic now); a sink's lag is its topic's end offsets less the positions it stored, as ``make
status`` counts it (``pipeline.status.read``). Both are read every ``KAFKA_EVERY_S`` only: they cost
metadata round trips. The lags are read by a thread of their own, so the boards never wait for the
slowest store (a Kafka consumer group's positions wait up to ten seconds for a broker that is
away). No service being down raises: the snapshot carries the error and the page shows it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import redis
from confluent_kafka import Consumer, TopicPartition

from infra.settings import Settings
from pipeline.dashboard.snapshot import CONTENT_TYPES, Raw
from pipeline.status.read import sink_specs, stored_positions, topic_of
from sinks.redis_leaderboard import board_key
from sinks.registry import SinkSpec

KAFKA_EVERY_S = 5.0
_TIMEOUT_S = 3.0


class Reader:
    def __init__(
        self,
        settings: Settings,
        client: redis.Redis | None = None,
        consumer: Consumer | None = None,
        clock: Callable[[], float] = time.time,
        positions: Callable[[SinkSpec, str], dict[int, int]] | None = None,
    ) -> None:
        self._settings = settings
        self._redis = client or settings.redis.client(timeout_s=2.0, reader=True)
        # One consumer for the boards' read and one for the lag thread, so neither waits on the
        # other (a given one serves both: the tests' fake).
        self._consumer = consumer
        self._lag_consumer = consumer
        self._clock = clock
        self._positions = positions or self._stored
        self._letters: dict[str, int] | None = None
        self._letters_at = -1e9
        self._lags: dict[str, int] | None = None
        self._lags_error: str | None = None
        self._closed = threading.Event()
        self._lag_thread: threading.Thread | None = None
        self._topics = (settings.cdc.dlq_topic, settings.cdc.http_dlq_topic)

    def _new_consumer(self) -> Consumer:
        return Consumer(
            {**self._settings.kafka.client_config(), "group.id": "engagement-dashboard", "enable.auto.commit": False}
        )

    @staticmethod
    def _marks(consumer: Consumer, topic: str) -> dict[int, tuple[int, int]]:
        """``{partition: (low, high)}`` of ``topic``; empty if it does not exist."""
        meta = consumer.list_topics(topic, timeout=_TIMEOUT_S).topics.get(topic)
        if meta is None or meta.error is not None:
            return {}
        marks = consumer.get_watermark_offsets
        return {p: marks(TopicPartition(topic, p), timeout=_TIMEOUT_S) for p in meta.partitions}

    def _dead_letters(self, errors: list[str]) -> dict[str, int] | None:
        if time.monotonic() - self._letters_at < KAFKA_EVERY_S:
            return self._letters
        # The page must keep showing the boards while Kafka is away: the error is shown instead.
        try:
            if self._consumer is None:
                self._consumer = self._new_consumer()
            self._letters = {
                topic: sum(high - low for low, high in self._marks(self._consumer, topic).values())
                for topic in self._topics
            }
        except Exception as exc:  # noqa: BLE001
            errors.append(f"Kafka: {exc}")
            self._letters = None
        self._letters_at = time.monotonic()
        return self._letters

    def _stored(self, spec: SinkSpec, topic: str) -> dict[int, int]:
        return stored_positions(self._settings, self._redis, spec, [topic])[topic]

    def sink_lags(self) -> dict[str, int]:
        """Each sink's changes of its topic that it has not stored yet."""
        if self._lag_consumer is None:
            self._lag_consumer = self._new_consumer()
        lags = {}
        for spec in sink_specs(self._settings):
            if self._closed.is_set():
                break
            topic = topic_of(spec, self._settings)
            stored = self._positions(spec, topic)
            ends = self._marks(self._lag_consumer, topic)
            lags[spec.name] = sum(max(0, high - stored.get(p, 0)) for p, (_, high) in ends.items())
        return lags

    def _follow_lags(self) -> None:
        while not self._closed.is_set():
            try:
                self._lags, self._lags_error = self.sink_lags(), None
            except Exception as exc:  # noqa: BLE001 - shown on the page; the thread must live
                self._lags, self._lags_error = None, f"sinks' positions: {exc}"
            self._closed.wait(KAFKA_EVERY_S)

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
        if self._lag_thread is None:
            self._lag_thread = threading.Thread(target=self._follow_lags, name="dashboard-lags", daemon=True)
            self._lag_thread.start()
        if self._lags_error:
            errors.append(self._lags_error)
        return Raw(boards, titles, updated, letters, int(self._clock() * 1000), errors, self._lags)

    def close(self) -> None:
        self._closed.set()
        lag_done = self._lag_thread is None
        if self._lag_thread is not None:
            self._lag_thread.join(15)
            lag_done = not self._lag_thread.is_alive()
        if self._consumer is not None:
            self._consumer.close()
        if lag_done:  # else a store keeps it waiting; the daemon thread ends with the process
            self._redis.close()
            if self._lag_consumer is not None and self._lag_consumer is not self._consumer:
                self._lag_consumer.close()
