"""The content view against the real content topic: absence is proven only by a view that has read
its topic up to the time asked about, never by a deadline alone (``ContentView.proven_absent_at``)."""

from __future__ import annotations

import time
import uuid

import orjson
import pytest
from confluent_kafka import Producer

from infra.settings import Settings
from infra.stack.local import LocalStack
from pipeline.sources.content_view import ContentView

pytestmark = pytest.mark.integration


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def produce_content(settings: Settings, content_id: str) -> None:
    row = {
        "id": content_id,
        "slug": f"view-{content_id}",
        "title": "view probe",
        "content_type": "video",
        "length_seconds": 60,
        "publish_ts": "2026-01-01T00:00:00Z",
    }
    producer = Producer({"bootstrap.servers": settings.kafka.bootstrap_servers})
    producer.produce(
        settings.cdc.content_topic,
        key=orjson.dumps({"id": content_id}),
        value=orjson.dumps({"before": None, "after": row, "op": "c", "source": {"ts_ms": now_ms()}}),
    )
    assert producer.flush(10) == 0


def test_a_view_behind_its_topic_proves_nothing_until_it_has_applied_what_was_published(
    stack: LocalStack, settings: Settings
):
    view = ContentView(settings.kafka.client_config(**{"group.id": "tests-view"}), settings.cdc.content_topic)
    try:
        view.wait_until_current(60)
        content_id = str(uuid.uuid4())
        # The reader thread applies under this lock: holding it stalls the view, as a starved
        # thread would, while the content is published.
        with view._changed:
            produce_content(settings, content_id)
            published_ms = now_ms()
            unproven = [view.proven_absent_at(published_ms) for _ in range(20) if time.sleep(0.1) is None]
            assert view.get(content_id) is None
        assert unproven == [False] * 20
        deadline = time.monotonic() + 30
        while not view.proven_absent_at(published_ms):
            assert time.monotonic() < deadline, "the view never proved it had read up to the publication"
            time.sleep(0.05)
        # Proven current as of a time after the publication: the content is in the view.
        assert view.get(content_id) is not None
        assert view.proven_absent_at(now_ms() + 60_000) is False
    finally:
        view.close()
