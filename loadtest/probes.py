"""Probe rows for the latency benchmarks: commit one event, time until the leaderboard shows it.

``Prober`` commits a probe event for a probe content item of its own every ``interval`` seconds and
polls ``ZSCORE top_engagement:10min`` until the probe's second shows up (commit returned ->
visible). ``ArrivalWatch`` notes when each probe reaches the engagement topic, to split each
latency into the capture's part (commit -> topic) and the pipeline's (topic -> board).
"""

from __future__ import annotations

import threading
import time
import uuid

import orjson
import psycopg
import redis
from confluent_kafka import Consumer, TopicPartition

from infra.settings import Settings
from infra.stack.kafka_admin import end_offsets
from sinks.redis_leaderboard import board_key

PROBE_INSERT = (
    "INSERT INTO engagement_events (content_id, user_id, event_type, event_ts, duration_ms, device)"
    " VALUES (%s, gen_random_uuid(), 'play', now(), 1000, 'probe') RETURNING id"
)
# A probe play of 1,000 ms on a 3,600 s podcast adds exactly this to the probe item's board score.
PROBE_SECONDS = 1.0


def create_probe_content(conn: psycopg.Connection, content_id: str) -> None:
    """A content item of the probe's own (slug ``probe-``: the generator never writes events for it)."""
    conn.execute(
        "INSERT INTO content (id, slug, title, content_type, length_seconds, publish_ts) "
        "VALUES (%s, %s, 'latency probe', 'podcast', 3600, now())",
        (content_id, f"probe-{content_id}"),
    )


def commit_probe(conn: psycopg.Connection, content_id: str) -> int | None:
    """Commit one probe event (``conn`` is in autocommit); returns its id."""
    row = conn.execute(PROBE_INSERT, (content_id,)).fetchone()
    return row[0] if row else None


def wait_on_board(
    client: redis.Redis, board: str, content_id: str, expected: float, timeout_s: float, poll_s: float = 0.001
) -> float | None:
    """Poll until the probe item's score on ``board`` reaches ``expected``: the monotonic time it did,
    or None after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while (score := client.zscore(board, content_id)) is None or score < expected - 1e-6:
        if time.monotonic() > deadline:
            return None
        time.sleep(poll_s)
    return time.monotonic()


def wait_until_live(settings: Settings, timeout_s: float = 180.0) -> float:
    """Seconds until a probe for a new probe item is on the board: the streaming pipeline is up and has
    caught up. Raises ``TimeoutError`` after ``timeout_s``."""
    content_id = str(uuid.uuid4())
    began = time.monotonic()
    client = settings.redis.client()
    with psycopg.connect(settings.postgres.conninfo(), autocommit=True) as conn:
        create_probe_content(conn, content_id)
        commit_probe(conn, content_id)
    board = board_key(settings.leaderboard.window_minutes)
    if wait_on_board(client, board, content_id, PROBE_SECONDS, timeout_s, poll_s=0.1) is None:
        raise TimeoutError(f"a probe event was not on {board} within {timeout_s:g} s: is the pipeline running?")
    return time.monotonic() - began


class ArrivalWatch:
    """Notes when each probe event reaches the engagement topic, to split the latency in two.

    The Kafka half (commit -> Debezium -> topic) belongs to the capture; the rest (topic -> board)
    to the pipeline. Every record is scanned for the probe's content id; only hits are parsed.
    """

    def __init__(self, settings: Settings, content_id: str) -> None:
        self._needle = content_id.encode()
        self._consumer = Consumer(
            settings.kafka.client_config(**{"group.id": "bench-arrivals", "fetch.wait.max.ms": 5})
        )
        topic = settings.cdc.engagement_topic
        ends = end_offsets(settings.kafka, topic)
        self._consumer.assign([TopicPartition(topic, p, end) for p, end in ends.items()])
        self.arrived: dict[int, float] = {}  # event id -> monotonic time seen
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for message in self._consumer.consume(1000, timeout=0.005):
                value = message.value()
                if message.error() is None and value is not None and self._needle in value:
                    after = orjson.loads(value).get("after")
                    if after:
                        self.arrived[after["id"]] = time.monotonic()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self._consumer.close()


class Prober:
    """Commits a probe row every ``interval`` s and measures commit -> visible on the board."""

    def __init__(self, settings: Settings, interval: float = 0.1) -> None:
        self.settings = settings
        self.interval = interval
        self.latencies: list[float] = []
        self.timed: list[tuple[float, float]] = []  # (seconds into the run, ms)
        self.slowest: list[tuple[float, float]] = []  # (ms, seconds into the run), worst first
        self.to_kafka: list[float] = []  # commit -> on the topic, ms
        self.from_kafka: list[float] = []  # on the topic -> on the board, ms
        self.timeouts = 0
        self.committed: dict[int, float] = {}  # probe event id -> monotonic commit time
        self._stop = threading.Event()
        self.content_id = str(uuid.uuid4())
        self.board = board_key(settings.leaderboard.window_minutes)

    def __enter__(self) -> Prober:
        self._began = time.monotonic()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        client = self.settings.redis.client()
        with psycopg.connect(self.settings.postgres.conninfo(), autocommit=True) as conn:
            create_probe_content(conn, self.content_id)
            time.sleep(1.0)  # let the content reach the pipeline's view
            expected = float(client.zscore(self.board, self.content_id) or 0.0)
            watch = ArrivalWatch(self.settings, self.content_id)
            try:
                self._probe(conn, client, watch, expected)
            finally:
                watch.close()

    def _probe(self, conn: psycopg.Connection, client: redis.Redis, watch: ArrivalWatch, expected: float) -> None:
        while not self._stop.is_set():
            event_id = commit_probe(conn, self.content_id)
            committed = time.monotonic()
            if event_id is not None:
                self.committed[event_id] = committed
            expected += PROBE_SECONDS
            seen = wait_on_board(client, self.board, self.content_id, expected, timeout_s=10)
            if seen is None:
                # Counted, and still expected: the next probe waits for this one too.
                self.timeouts += 1
            else:
                ms = (seen - committed) * 1000
                self.latencies.append(ms)
                self.timed.append((committed - self._began, ms))
                self.slowest = sorted([*self.slowest, (ms, committed - self._began)], reverse=True)[:5]
                # The watch may see the record a moment after the pipeline did.
                while event_id is not None and event_id not in watch.arrived and time.monotonic() - seen < 0.5:
                    time.sleep(0.001)
                arrived = watch.arrived.pop(event_id, None) if event_id is not None else None
                if arrived is not None:
                    self.to_kafka.append((arrived - committed) * 1000)
                    self.from_kafka.append(max(0.0, seen - arrived) * 1000)
            self._stop.wait(self.interval)
