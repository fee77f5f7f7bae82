"""Debezium on the real stack: topics, snapshot reads, inserts, updates, deletes, tombstones."""

from __future__ import annotations

import time
from datetime import datetime

import orjson
import pytest

from infra.settings import Settings
from infra.stack.kafka import admin_client, describe_topic_config
from infra.stack.local import LocalStack

from .conftest import SNAPSHOT_CONTENT, SNAPSHOT_EVENTS
from .kafka_reader import by_key, read_topic

pytestmark = pytest.mark.integration


def test_engagement_topic_has_16_partitions_and_is_never_compacted(stack: LocalStack, settings: Settings):
    admin = admin_client(settings.kafka)
    topic = settings.cdc.engagement_topic
    assert len(admin.list_topics(topic, timeout=10).topics[topic].partitions) == 16
    assert describe_topic_config(admin, topic)["cleanup.policy"] == "delete"


def test_content_topic_is_log_compacted(stack: LocalStack, settings: Settings):
    admin = admin_client(settings.kafka)
    assert describe_topic_config(admin, settings.cdc.content_topic)["cleanup.policy"] == "compact"


def test_heartbeat_and_dead_letter_topics_exist(stack: LocalStack, settings: Settings):
    topics = admin_client(settings.kafka).list_topics(timeout=10).topics
    assert settings.cdc.heartbeat_topic in topics
    assert settings.cdc.dlq_topic in topics


def test_existing_rows_arrive_as_snapshot_reads(stack: LocalStack, settings: Settings):
    bootstrap = settings.kafka.bootstrap_servers
    events = read_topic(
        bootstrap, settings.cdc.engagement_topic, lambda rs: sum(r.op == "r" for r in rs) >= SNAPSHOT_EVENTS
    )
    content = read_topic(
        bootstrap, settings.cdc.content_topic, lambda rs: sum(r.op == "r" for r in rs) >= SNAPSHOT_CONTENT
    )
    reads = [r for r in events if r.op == "r"]
    assert len(reads) == SNAPSHOT_EVENTS
    assert len({r.key["id"] for r in reads}) == SNAPSHOT_EVENTS
    assert sum(r.op == "r" for r in content) == SNAPSHOT_CONTENT
    # Events are spread over partitions by primary key, not piled into one.
    assert len({r.partition for r in reads}) > 8


def test_envelope_carries_what_the_pipeline_decodes(stack: LocalStack, settings: Settings):
    events = read_topic(settings.kafka.bootstrap_servers, settings.cdc.engagement_topic, lambda rs: len(rs) > 0)
    record = events[0]
    assert set(record.key) == {"id"}
    envelope = record.value
    assert {"op", "before", "after", "source", "ts_ms"} <= set(envelope)
    assert "schema" not in envelope  # schemas.enable=false
    after = envelope["after"]
    assert after["id"] == record.key["id"]
    # UUIDs as strings, timestamptz as ISO-8601 text, JSONB as a JSON string (decoded twice).
    assert len(after["content_id"]) == 36
    datetime.fromisoformat(after["event_ts"].replace("Z", "+00:00"))
    assert isinstance(after["raw_payload"], str) and isinstance(orjson.loads(after["raw_payload"]), dict)
    source = envelope["source"]
    assert source["table"] == "engagement_events" and source["lsn"] > 0 and source["ts_ms"] > 0


def test_insert_update_delete_arrive_as_c_u_d_and_tombstone(stack: LocalStack, settings: Settings, db):
    content_id = db.execute("SELECT id FROM content LIMIT 1").fetchone()[0]
    event_id = db.execute(
        "INSERT INTO engagement_events (content_id, user_id, event_type, event_ts, duration_ms, device, raw_payload)"
        " VALUES (%s, gen_random_uuid(), 'play', now(), 1000, 'web', '{\"k\": 1}') RETURNING id",
        (content_id,),
    ).fetchone()[0]
    db.execute("UPDATE engagement_events SET duration_ms = 2500 WHERE id = %s", (event_id,))
    db.execute("DELETE FROM engagement_events WHERE id = %s", (event_id,))

    records = read_topic(
        settings.kafka.bootstrap_servers,
        settings.cdc.engagement_topic,
        lambda rs: len(by_key(rs, "id", event_id)) >= 4,
        settle=1.0,
    )
    mine = by_key(records, "id", event_id)
    assert [r.op for r in mine] == ["c", "u", "d", "tombstone"]
    assert len({r.partition for r in mine}) == 1  # one key, one partition, in commit order
    create, update, delete, _ = (r.value for r in mine)
    assert create["before"] is None and create["after"]["duration_ms"] == 1000
    # REPLICA IDENTITY FULL: the update's before-image is the whole old row.
    assert update["before"]["duration_ms"] == 1000 and update["after"]["duration_ms"] == 2500
    assert update["before"]["event_type"] == "play" and update["before"]["content_id"] == str(content_id)
    assert delete["after"] is None and delete["before"]["duration_ms"] == 2500
    assert delete["before"]["event_ts"] == update["after"]["event_ts"]


def test_content_update_has_before_and_after(stack: LocalStack, settings: Settings, db):
    content_id, title = db.execute("SELECT id, title FROM content ORDER BY id LIMIT 1").fetchone()
    db.execute("UPDATE content SET title = %s, length_seconds = 777 WHERE id = %s", (title + " (v2)", content_id))
    records = read_topic(
        settings.kafka.bootstrap_servers,
        settings.cdc.content_topic,
        lambda rs: any(r.op == "u" for r in by_key(rs, "id", str(content_id))),
    )
    update = next(r.value for r in by_key(records, "id", str(content_id)) if r.op == "u")
    assert update["before"]["title"] == title
    assert update["after"]["title"] == title + " (v2)" and update["after"]["length_seconds"] == 777
    assert update["after"]["slug"] == update["before"]["slug"]  # unchanged columns are present too


def test_heartbeats_keep_the_slot_moving(stack: LocalStack, settings: Settings, db):
    """The heartbeat action query runs with the CDC role's narrow grants and reaches Kafka."""
    before = db.execute("SELECT beat_at FROM cdc_heartbeat WHERE id = 1").fetchone()[0]
    read_topic(settings.kafka.bootstrap_servers, settings.cdc.heartbeat_topic, lambda rs: len(rs) >= 2, timeout=30)
    deadline = time.monotonic() + 15
    while db.execute("SELECT beat_at FROM cdc_heartbeat WHERE id = 1").fetchone()[0] == before:
        assert time.monotonic() < deadline, "heartbeat.action.query never updated cdc_heartbeat"
        time.sleep(0.5)
    slot = stack.postgres.slot_status()
    assert slot is not None and slot["active"] is True


def test_cdc_role_has_only_the_grants_it_needs(stack: LocalStack, settings: Settings):
    import psycopg

    pg = settings.postgres
    conninfo = (
        f"host={pg.host} port={pg.port} dbname={pg.db} user={pg.cdc_user} password={pg.cdc_password.get_secret_value()}"
    )
    with psycopg.connect(conninfo, autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM content").fetchone()[0] >= 0
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM engagement_events")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute(
                "INSERT INTO content (id, slug, title, publish_ts) VALUES (gen_random_uuid(), 'x', 'x', now())"
            )


def test_network_connections_need_a_password(stack: LocalStack, settings: Settings):
    import psycopg

    pg = settings.postgres
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(f"host={pg.host} port={pg.port} dbname={pg.db} user={pg.user} password=wrong")
