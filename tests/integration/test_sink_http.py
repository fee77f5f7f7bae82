"""The HTTP sink on the real stack and the local receiver: with 30 % of requests failing and the
receiver down for 30 s, every change reaches the receiver or the HTTP dead-letter topic; replay
delivers the rest once by key, refuses while the breaker is open, and a second replay sends nothing.
The receiver's latest change per event equals Postgres, and the Redis board stays equal to SQL.
A receiver answering 200 with an HTML page, 5,000-deep JSON, 256 MB or a byte at a time is never
believed and never fails the job: once it is healthy again, it has every change without a replay."""

from __future__ import annotations

import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition

from infra.http_receiver.client import ReceiverClient
from infra.settings import REPO_ROOT, Settings
from infra.stack.kafka_admin import end_offsets
from infra.stack.local import LocalStack
from loadtest import fault_http
from loadtest.http_truth import assert_http_matches_sql, latest_by_event, wait_http_caught_up
from sinks.http_breaker import BreakerBoard
from sinks.kafka_positions import KafkaPositions, group_id

from .pipeline_helpers import (
    assert_redis_matches_sql,
    env,
    flush_redis,
    streaming,
    wait_caught_up,
    wait_topic_settled,
)
from .test_pipeline import generate
from .test_sink_family import read_to_the_end

pytestmark = pytest.mark.integration
ENDPOINTS = ("everything", "finishes")
ROUTES = """
endpoints:
  everything: {url: "${HTTP_RECEIVER_URL}/ingest/everything"}
  finishes:
    url: "${HTTP_RECEIVER_URL}/ingest/finishes"
    headers: {Authorization: "Bearer ${HTTP_SINK_ROUTE_FINISHES_TOKEN:-test-token}"}
routes:
  - {name: all, endpoint: everything}
  - {name: finishes, endpoint: finishes, match: {event_type: [finish]}}
"""


def sink_env(settings: Settings, routes: Path, **extra: str) -> dict[str, str]:
    return {
        "PIPELINE_SINKS": "redis,http",
        "HTTP_SINK_ROUTES_FILE": str(routes),
        "HTTP_SINK_BUDGET_S": "8",
        "HTTP_SINK_BREAKER_RESET_TIMEOUT_S": "5",
        **extra,
    }


# An open breaker pauses the lane for as long as the outage lasts, by default; this test bounds
# the wait so that the 30 s outage leaves letters for the replay to deliver.
OUTAGE = {"HTTP_SINK_OUTAGE_BUDGET_S": "10"}


def start_http_sinks_at_the_end(settings: Settings) -> dict[int, int]:
    """The HTTP sinks' first positions: the topic's end, so they see this test's changes only."""
    ends: dict[int, int] = {}
    for endpoint in ENDPOINTS:
        positions = KafkaPositions(
            settings.kafka.client_config(), group_id(settings.pipeline.consumer_group, f"http_{endpoint}")
        )
        ends = positions.start_at_end(settings.cdc.engagement_topic)
        positions.close()
    return ends


def wanted(record_value: dict[str, Any], endpoint: str) -> bool:
    """The test's two rules, as the sink applies them (either image of an update)."""
    if endpoint == "everything":
        return True
    images = [record_value.get("before"), record_value.get("after")]
    if record_value["op"] == "d":
        images = images[:1]
    elif record_value["op"] != "u":
        images = images[1:]
    return any(image is not None and image["event_type"] == "finish" for image in images)


def expected_keys(settings: Settings, since: dict[int, int]) -> dict[str, set[str]]:
    topic = settings.cdc.engagement_topic
    expected: dict[str, set[str]] = {endpoint: set() for endpoint in ENDPOINTS}
    for r in read_to_the_end(settings):
        if r.value is not None and r.offset >= since.get(r.partition, 0):
            for endpoint in ENDPOINTS:
                if wanted(r.value, endpoint):
                    expected[endpoint].add(f"{topic}/{r.partition}/{r.offset}")
    return expected


def http_letters(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    """Every letter on the HTTP dead-letter topic, by endpoint, with its headers."""
    topic = settings.cdc.http_dlq_topic
    ends = end_offsets(settings.kafka, topic)
    consumer = Consumer({"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": "tests-http"})
    consumer.assign([TopicPartition(topic, p, 0) for p in ends])
    letters: dict[str, list[dict[str, Any]]] = defaultdict(list)
    read = dict.fromkeys(ends, 0)
    deadline = time.monotonic() + 60
    try:
        while any(read[p] < end for p, end in ends.items()):
            assert time.monotonic() < deadline, f"read {read} of {ends}"
            for message in consumer.consume(500, timeout=0.5):
                if message.error():
                    continue
                read[message.partition()] = message.offset() + 1
                headers = {k: v for k, v in message.headers() or []}
                change = orjson.loads(headers["dlq.http.change"])
                letters[headers["dlq.http.endpoint"].decode()].append(
                    {
                        "key": change["idempotency_key"],
                        "status": headers["dlq.http.status"].decode(),
                        "value": message.value(),
                    }
                )
    finally:
        consumer.close()
    return letters


def replay(settings: Settings, routes: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sinks.http_replay", "--json"],
        cwd=REPO_ROOT,
        env=env(settings, **sink_env(settings, routes)),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def wait_breaker_open(settings: Settings, timeout: float = 20) -> None:
    board = BreakerBoard(settings.redis.client())
    deadline = time.monotonic() + timeout
    while not any(e["state"] == "open" for e in board.read().get("everything", [])):
        assert time.monotonic() < deadline, f"no open breaker published: {board.read()}"
        time.sleep(0.2)


def wait_board_clear(settings: Settings, timeout: float = 30) -> None:
    board = BreakerBoard(settings.redis.client())
    deadline = time.monotonic() + timeout
    while any(e["state"] != "closed" for entries in board.read().values() for e in entries):
        assert time.monotonic() < deadline, f"breaker entries still published: {board.read()}"
        time.sleep(0.5)


def test_every_change_reaches_the_receiver_or_the_dead_letter_topic_and_replay_completes_it(
    stack: LocalStack, settings: Settings, tmp_path: Path
):
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES)
    receiver = ReceiverClient(settings.http_receiver.control_url)
    receiver.clear_faults()
    receiver.reset()
    receiver.set_faults(error_rate=0.3, seed=7)
    flush_redis(settings)
    # The snapshot on the topic first: the two endpoints' start positions are taken one after the
    # other, and a record landing between them would be one endpoint's and not the other's.
    wait_topic_settled(settings)
    since = start_http_sinks_at_the_end(settings)
    with streaming(settings, tmp_path / "pipeline.log", **sink_env(settings, routes, **OUTAGE)) as pipeline:
        generator = generate(settings, "--rate", "90000", "--duration", "40")  # 1,500 events/s
        time.sleep(10)
        receiver.down(30)
        wait_breaker_open(settings)
        refused = replay(settings, routes)
        assert refused.returncode == 3, refused.stdout + refused.stderr
        assert "refusing to replay" in refused.stderr
        assert generator.wait(120) == 0, generator.stdout.read() if generator.stdout else ""
        wait_caught_up(settings, timeout=180)
        wait_http_caught_up(settings, ENDPOINTS)
        assert pipeline.alive()
    assert_redis_matches_sql(settings)

    expected = expected_keys(settings, since)
    letters = http_letters(settings)
    # Both endpoints' sinks share the lane: while one waits out the outage the other gets nothing
    # new, so either may hold the letters.
    assert any(letters[endpoint] for endpoint in ENDPOINTS), "the outage sent nothing to the dead-letter topic"
    for endpoint in ENDPOINTS:
        received = {c["idempotency_key"] for c in receiver.changes(endpoint)}
        lettered = {letter["key"] for letter in letters[endpoint]}
        assert received | lettered == expected[endpoint]
        assert {letter["status"] for letter in letters[endpoint]} <= {"circuit_open", "connection", "503"}

    receiver.clear_faults()
    wait_board_clear(settings)  # the stopped pipeline's breaker entries: withdrawn, or expired
    first = replay(settings, routes)
    assert first.returncode == 0, first.stdout + first.stderr
    reports = {r["endpoint"]: r for r in orjson.loads(first.stdout)}
    second = replay(settings, routes)
    assert second.returncode == 0, second.stdout + second.stderr
    again = {r["endpoint"]: r for r in orjson.loads(second.stdout)}

    stats = receiver.stats()
    for endpoint in ENDPOINTS:
        received = receiver.changes(endpoint)
        keys = [c["idempotency_key"] for c in received]
        assert sorted(keys) == sorted(expected[endpoint])  # every change, once by key
        assert stats["by_endpoint"][endpoint]["unique"] == len(expected[endpoint])
        report = reports[endpoint]
        assert report["letters"] == len(letters[endpoint])
        assert report["delivered"] == len(letters[endpoint]) and report["refused_again"] == 0
        assert (again[endpoint]["letters"], again[endpoint]["delivered"], again[endpoint]["requests"]) == (0, 0, 0)

    # The latest change per event, as a receiver ordering by Debezium's sequence sees it, is Postgres.
    latest = latest_by_event(receiver.changes("everything"))
    with psycopg.connect(settings.postgres.conninfo()) as conn:
        rows = dict(
            conn.execute("SELECT id, duration_ms FROM engagement_events WHERE id = ANY(%s)", (list(latest),)).fetchall()
        )
    alive = {i: c for i, c in latest.items() if c["op"] != "d"}
    assert set(alive) == set(rows)
    assert {i: c["engagement_seconds"] for i, c in alive.items()} == {
        i: (None if d is None else d / 1000) for i, d in rows.items()
    }


@pytest.mark.slow  # about a minute; make faults' http-hostile covers the same under load
def test_hostile_replies_are_never_believed_and_never_fail_the_job(
    stack: LocalStack, settings: Settings, tmp_path: Path
):
    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES)
    receiver = ReceiverClient(settings.http_receiver.control_url)
    receiver.clear_faults()
    receiver.reset()
    flush_redis(settings)
    wait_topic_settled(settings)
    since = start_http_sinks_at_the_end(settings)
    letters_since = end_offsets(settings.kafka, settings.cdc.http_dlq_topic)
    with psycopg.connect(settings.postgres.conninfo()) as conn:
        since_id = conn.execute("SELECT coalesce(max(id), 0) FROM engagement_events").fetchone()[0]
    # A budget longer than the hostile phases: what is not believed is retried, not dead-lettered.
    hostile_env = sink_env(
        settings, routes, HTTP_SINK_BUDGET_S="120", HTTP_SINK_REQUEST_DEADLINE_S="2", HTTP_SINK_MAX_BACKOFF_S="1"
    )
    log = tmp_path / "pipeline.log"
    with streaming(settings, log, **hostile_env) as pipeline:
        wait_caught_up(settings)
        generator = generate(settings, "--rate", "18000", "--duration", "16")  # 300 events/s
        time.sleep(2)
        # Each reply until the sinks have had it once (both endpoints' sinks share the lane: one
        # waits while the other retries, so the replies are what the receiver gave, not a timetable).
        assert fault_http.cycle(receiver) == list(fault_http.PHASES)
        assert generator.wait(120) == 0, generator.stdout.read() if generator.stdout else ""
        wait_caught_up(settings, timeout=180)
        wait_http_caught_up(settings, ENDPOINTS, timeout=180)
        assert pipeline.alive()
        seen = fault_http.problems(settings)
    text = log.read_text(errors="replace")
    assert "job failed" not in text, text[-3000:]
    assert receiver.stats()["hostile_replies"] > 0
    restarts = [line for line in text.splitlines() if "restart" in line or "starting" in line]
    assert {p for p, n in seen.items() if n > 0} >= {"bad_reply", "too_deep", "too_large", "timeout"}, (seen, restarts)

    expected = expected_keys(settings, since)
    for endpoint in ENDPOINTS:
        assert sorted(c["idempotency_key"] for c in receiver.changes(endpoint)) == sorted(expected[endpoint])
    assert end_offsets(settings.kafka, settings.cdc.http_dlq_topic) == letters_since  # nothing dead-lettered
    assert assert_http_matches_sql(settings, receiver.changes("everything"), since_id) > 0
    assert_redis_matches_sql(settings)  # the other lane never noticed


def test_an_event_parked_for_its_content_reaches_the_receiver_once_under_its_own_key(
    stack: LocalStack, settings: Settings, tmp_path: Path
):
    """An event put on the topic before its content: parked by each sink, back when the content
    arrives, delivered once with the key, position and sequence it was captured with."""
    import uuid

    from confluent_kafka import Producer

    routes = tmp_path / "routes.yaml"
    routes.write_text(ROUTES)
    receiver = ReceiverClient(settings.http_receiver.control_url)
    receiver.clear_faults()
    receiver.reset()
    flush_redis(settings)
    wait_topic_settled(settings)  # the snapshot is on the topic: the sinks start after it
    start_http_sinks_at_the_end(settings)
    content_id = str(uuid.uuid4())
    now_ms = int(time.time() * 1000)
    row = {
        "id": 910_000_001,
        "content_id": content_id,
        "user_id": None,
        "event_type": "play",
        "event_ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "duration_ms": 45_000,
        "device": "web",
        "raw_payload": '["any", "json"]',
    }
    source = {"ts_ms": now_ms, "sequence": '["900000000","900000100"]'}
    value = orjson.dumps({"before": None, "after": row, "op": "c", "source": source})
    content = {
        "id": content_id,
        "slug": f"late-{content_id}",
        "title": "arrives late",
        "content_type": "podcast",
        "length_seconds": 90,
        "publish_ts": "2026-01-01T00:00:00Z",
    }
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    delivered: list[Any] = []

    def ours(changes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        return [c for c in changes if c["id"] == row["id"]]

    with streaming(
        settings, tmp_path / "pipeline.log", **sink_env(settings, routes), PIPELINE_LATE_CONTENT_TIMEOUT_S="30"
    ):
        wait_caught_up(settings)
        producer.produce(
            settings.cdc.engagement_topic,
            key=orjson.dumps({"id": row["id"]}),
            value=value,
            on_delivery=lambda err, msg: delivered.append(msg),
        )
        producer.flush(10)
        time.sleep(3)  # parked by now: its content is not in any view
        assert ours(receiver.changes("everything")) == []
        producer.produce(
            settings.cdc.content_topic,
            key=orjson.dumps({"id": content_id}),
            value=orjson.dumps({"before": None, "after": content, "op": "c", "source": {"ts_ms": now_ms}}),
        )
        producer.flush(10)
        deadline = time.monotonic() + 60
        while not ours(receiver.changes("everything")):
            assert time.monotonic() < deadline, "the parked event never reached the receiver"
            time.sleep(0.2)
        time.sleep(3)  # a second delivery would show by now
        [message] = delivered
        [change] = ours(receiver.changes("everything"))
    origin = f"{settings.cdc.engagement_topic}/{message.partition()}/{message.offset()}"
    assert change["idempotency_key"] == origin
    assert (change["op"], change["engagement_seconds"], change["sequence"]) == ("c", 45.0, [900_000_000, 900_000_100])
    assert (change["partition"], change["offset"]) == (message.partition(), message.offset())
    assert ours(receiver.changes("finishes")) == []
    metrics = settings.redis.client(decode_responses=True).hgetall(f"engagement:content:{content_id}")
    assert metrics["events"] == "1" and float(metrics["total_seconds"]) == 45.0
    # Joined with the content that came late: on its type's board.
    assert settings.redis.client().zscore("top_engagement:10min:podcast", content_id) == 45.0
