"""The live page's snapshot (pure) and its app over fakeredis, with Starlette's TestClient."""

from __future__ import annotations

import time
from types import SimpleNamespace

import fakeredis
import pytest
from starlette.testclient import TestClient

from infra.settings import Settings
from pipeline.dashboard.app import create_app
from pipeline.dashboard.reader import Reader
from pipeline.dashboard.snapshot import History, Raw, events_per_s, snapshot

SETTINGS = Settings()


def raw(now_ms: int, changes: int, **kw) -> Raw:
    defaults = {
        "boards": {"overall": [("a", 30.0), ("b", 12.5)], "podcast": []},
        "titles": {"a": "Alpha"},
        "updated": {"applied_ms": now_ms - 1_500, "commit_ts_ms": now_ms - 2_000, "changes": changes},
        "dead_letters": {"engagement.dlq": 3},
    }
    return Raw(now_ms=now_ms, **{**defaults, **kw})


def test_the_snapshot_ranks_titles_and_times_the_board():
    first, second = raw(10_000, 100), raw(12_000, 700)
    snap = snapshot(second, first, 10)
    assert snap == {
        "window_minutes": 10,
        "now_ms": 12_000,
        "boards": {
            "overall": [
                {"rank": 1, "content_id": "a", "title": "Alpha", "seconds": 30.0},
                {"rank": 2, "content_id": "b", "title": "b", "seconds": 12.5},
            ],
            "podcast": [],
        },
        "events_per_s": 300.0,
        "changes_applied": 700,
        "updated_age_s": 1.5,
        "newest_commit_age_s": 2.0,
        "dead_letters": {"engagement.dlq": 3},
        "sink_lag": None,
        "errors": [],
    }


def test_the_history_keeps_the_last_ten_minutes_of_points_for_the_charts():
    history = History()
    first = snapshot(raw(0, 0, sink_lag={"redis_leaderboard": 0}), None, 10)
    assert history.add(first) == {
        "t_ms": [0],
        "events_per_s": [None],
        "newest_commit_age_s": [2.0],
        "sink_lag": {"redis_leaderboard": [0]},
    }
    history.add(snapshot(raw(300_000, 600, sink_lag={"redis_leaderboard": 5, "bigquery": 40}), None, 10))
    series = history.add(snapshot(raw(600_001, 900, sink_lag=None), None, 10))  # Kafka away: no lags
    assert series["t_ms"] == [300_000, 600_001]  # the first point is older than ten minutes now
    assert series["sink_lag"] == {"bigquery": [40, None], "redis_leaderboard": [5, None]}


def test_no_rate_before_a_second_read_or_after_a_reset():
    assert events_per_s(None, raw(1_000, 5)) is None
    assert events_per_s(raw(1_000, 50), raw(2_000, 5)) is None  # the hash was flushed in between
    assert snapshot(raw(1_000, 5, updated=None), None, 10)["updated_age_s"] is None


class FakeConsumer:
    def list_topics(self, topic, timeout):
        return SimpleNamespace(topics={topic: SimpleNamespace(error=None, partitions={0: None, 1: None})})

    def get_watermark_offsets(self, tp, timeout):
        return (2, 9) if tp.partition == 0 else (0, 4)

    def close(self):
        pass


@pytest.fixture
def client():
    redis = fakeredis.FakeRedis()
    redis.zadd("top_engagement:10min", {"a": 30.0, "b": 12.0})
    redis.zadd("top_engagement:10min:video", {"a": 30.0})
    redis.hset("content:a", "title", "Alpha")
    redis.hset("top_engagement:10min:updated", mapping={"applied_ms": 1_000, "commit_ts_ms": 900, "changes": 7})
    stored = {0: 5, 1: 1}  # every sink's positions: 4 and 3 behind the partitions' ends (9 and 4)
    reader = Reader(SETTINGS, client=redis, consumer=FakeConsumer(), clock=lambda: 3.0, positions=lambda *_: stored)
    app = create_app(SETTINGS, reader)
    with TestClient(app) as test_client:
        yield test_client


def test_the_app_serves_the_page_the_snapshot_and_health(client):
    assert client.get("/healthz").json() == {"ok": True}
    page = client.get("/")
    assert page.status_code == 200
    assert 'new EventSource("/events")' in page.text
    snap = client.get("/api/snapshot").json()
    assert snap["boards"]["overall"] == [
        {"rank": 1, "content_id": "a", "title": "Alpha", "seconds": 30.0},
        {"rank": 2, "content_id": "b", "title": "b", "seconds": 12.0},
    ]
    assert snap["boards"]["video"] == [{"rank": 1, "content_id": "a", "title": "Alpha", "seconds": 30.0}]
    assert snap["boards"]["podcast"] == []
    assert (snap["updated_age_s"], snap["newest_commit_age_s"], snap["changes_applied"]) == (2.0, 2.1, 7)
    assert snap["dead_letters"] == {SETTINGS.cdc.dlq_topic: 11, SETTINGS.cdc.http_dlq_topic: 11}
    deadline = time.monotonic() + 5  # the lags come from a thread of their own
    while snap["sink_lag"] is None and time.monotonic() < deadline:
        time.sleep(0.05)
        snap = client.get("/api/snapshot").json()
    assert snap["sink_lag"] == dict.fromkeys(["redis_leaderboard", "redis_content", "bigquery", "bigquery_content"], 7)
    assert snap["history"]["sink_lag"]["bigquery"][-1] == 7
