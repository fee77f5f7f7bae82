"""``python -m pipeline status`` (what ``make status`` runs) against the real test stack.

A running pipeline that keeps up is healthy; the same stack with the pipeline stopped is not, and
says so; and with changes committed while it is stopped, the Redis sink is reported behind by
exactly those changes and stalled. The Prometheus endpoint of the running job is read too.
"""

from __future__ import annotations

import uuid

import httpx
import orjson
import pytest

from infra.settings import Settings
from infra.stack.kafka_admin import end_offsets
from sinks.redis_leaderboard import RedisLeaderboardSink
from sinks.redis_store import next_offsets

from .pipeline_helpers import run_pipeline, streaming, wait_caught_up, wait_topic_settled

pytestmark = pytest.mark.integration


def run_status(settings: Settings) -> tuple[int, dict]:
    result = run_pipeline(
        settings,
        "status",
        "--json",
        timeout=120,
        CDC_CONNECTOR_NAME=settings.cdc.connector_name,
        CDC_SLOT_NAME=settings.cdc.slot_name,
    )
    assert result.stdout, result.stderr[-3000:]
    return result.returncode, orjson.loads(result.stdout)


def insert_events(db, content_id: str, count: int) -> None:
    for i in range(count):
        db.execute(
            "INSERT INTO engagement_events (content_id, event_type, event_ts, duration_ms, device) "
            "VALUES (%s, 'play', now(), %s, 'web')",
            (content_id, 1_000 * (i + 1)),
        )


def test_status_running_then_stopped_then_behind(stack, settings: Settings, db, tmp_path):
    content_id = str(uuid.uuid4())
    db.execute("INSERT INTO content VALUES (%s, %s, 'Status probe', 'video', 60, now())", (content_id, content_id))
    group = settings.pipeline.consumer_group
    with streaming(settings, tmp_path / "pipeline.log") as pipeline:
        insert_events(db, content_id, 3)
        wait_caught_up(settings)
        code, report = run_status(settings)
        metrics = httpx.get(settings.metrics.url, timeout=10).text

        # The session's event topic holds test_forged_sequence's forged mark: an event of this test
        # that lands on its partition is rightly noted as a mark replaced (about one run in five).
        notes = [note for note in report["notes"] if "sequence mark(s) replaced" not in note]
        assert (code, report["problems"], notes) == (0, [], [])
        assert report["pipeline"]["lock"]["pid"] == pipeline.proc.pid
        assert set(report["sinks"]) == {RedisLeaderboardSink.name, "redis_content"}
        assert report["sinks"][RedisLeaderboardSink.name]["lag"] == 0
        assert report["capture"]["slot"]["active"] is True
        assert "sink: outcome=written,sink=redis_leaderboard" in report["stages"]
        assert report["freshness"]["leaderboard"]["commit_ts_ms"] is not None
        assert 'engagement_sink_records_total{outcome="written",sink="redis_leaderboard"}' in metrics
        topic = settings.cdc.engagement_topic
        assert f'engagement_source_lag_records{{lane="leaderboards",partition="0",topic="{topic}"}}' in metrics

    code, report = run_status(settings)
    no_pipeline = f"no pipeline is running for consumer group {group} (nobody holds its instance lock)"
    assert (code, report["problems"]) == (1, [no_pipeline])
    assert report["pipeline"]["lock"] is None

    topic = settings.cdc.engagement_topic
    insert_events(db, content_id, 5)
    wait_topic_settled(settings)
    ends = end_offsets(settings.kafka, topic)
    stored = next_offsets(settings.redis.client(), RedisLeaderboardSink.name, topic)
    behind = {str(p): end - stored.get(p, 0) for p, end in ends.items() if end - stored.get(p, 0)}
    assert sum(behind.values()) == 5

    code, report = run_status(settings)
    stalled = f"sink redis_leaderboard is stalled: 5 changes behind and it did not move in {report['sample_s']:.1f} s"
    assert (code, report["problems"]) == (1, [no_pipeline, stalled])
    partitions = report["sinks"][RedisLeaderboardSink.name]["topics"][topic]["partitions"]
    assert {p: v["lag"] for p, v in partitions.items() if v["lag"]} == behind
