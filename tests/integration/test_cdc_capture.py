"""Debezium on the real stack: topics, snapshot reads, inserts, updates, deletes, tombstones, and
rows at and above the row size bound (docs/delivery.md, "Row size bound")."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime

import orjson
import psycopg
import pytest

from infra import row_bound
from infra.settings import Settings
from infra.stack.kafka_admin import admin_client, describe_topic_config, topic_specs
from infra.stack.local import LocalStack

from .conftest import SNAPSHOT_CONTENT, SNAPSHOT_EVENTS
from .kafka_reader import Record, by_key, read_topic

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
        # The heartbeat row: its id may be read and beat_at written (heartbeat.action.query), no more.
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT beat_at FROM cdc_heartbeat")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM cdc_heartbeat")


def test_cdc_role_reads_only_the_published_tables(stack: LocalStack, settings: Settings, db):
    """A table the application adds later is not readable by the CDC role (no default privileges),
    the role reaches no other database, and physical replication (a copy of every table of the
    cluster) is refused to it by pg_hba.conf while Debezium's logical replication runs."""
    pg = settings.postgres
    db.execute("CREATE TABLE IF NOT EXISTS private_notes (id INTEGER PRIMARY KEY, note TEXT)")
    cdc = f"host={pg.host} port={pg.port} user={pg.cdc_user} password={pg.cdc_password.get_secret_value()}"
    with psycopg.connect(f"{cdc} dbname={pg.db}", autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT * FROM private_notes")
        readable = conn.execute(
            "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = 'public' AND c.relkind = 'r' AND has_table_privilege(c.oid, 'SELECT') "
            "ORDER BY 1"
        ).fetchall()
        assert [r[0] for r in readable] == ["content", "engagement_events"]
    with pytest.raises(psycopg.OperationalError, match="rejects connection"):
        psycopg.connect(f"{cdc} dbname=postgres")
    with pytest.raises(psycopg.OperationalError, match="replication connection"):
        psycopg.connect(f"{cdc} dbname={pg.db} replication=true")
    slot = stack.postgres.slot_status()
    assert slot is not None and slot["active"] is True


def test_the_monitoring_role_reads_the_slot_and_no_table(stack: LocalStack, settings: Settings):
    with psycopg.connect(settings.postgres.conninfo(monitor=True), autocommit=True) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("SELECT count(*) FROM engagement_events")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE cdc_heartbeat SET beat_at = now()")
    # The lag columns of pg_stat_replication are NULL to a role without pg_monitor (or superuser).
    slot = stack.postgres.slot_status()
    assert slot is not None and slot["active"] is True and isinstance(slot["lag_bytes"], int)
    with psycopg.connect(settings.postgres.conninfo(monitor=True), autocommit=True) as conn:
        sender = conn.execute("SELECT state FROM pg_stat_replication").fetchall()
    assert sender and all(row[0] == "streaming" for row in sender)


def test_network_connections_need_a_password(stack: LocalStack, settings: Settings):
    import psycopg

    pg = settings.postgres
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(f"host={pg.host} port={pg.port} dbname={pg.db} user={pg.user} password=wrong")


# --- the row size bound (docs/delivery.md, "Row size bound") -----------------------------------


def worst_payload(text_bytes: int, pair: str = "\\\\") -> str:
    """A JSON string of exactly ``text_bytes`` octets (even) of escaped backslashes (or quotes):
    every octet of it is one the converter escapes, the worst case for the record's size."""
    return '"' + pair * ((text_bytes - 2) // 2) + '"'


@dataclass(frozen=True)
class AtBound:
    inserted: Record  # a create with raw_payload and device at the bound
    updated: Record  # an update from one payload at the bound to another: before and after
    content_update: Record  # the same for content's title and slug


@pytest.fixture(scope="module")
def at_bound(stack: LocalStack, settings: Settings) -> Iterator[AtBound]:
    """Rows at the bound, captured; deleted afterwards so later sessions' SQL checks ignore them."""
    n = row_bound.RAW_PAYLOAD_MAX_BYTES
    first, second = worst_payload(n), worst_payload(n, '\\"')
    device = "\x01" * row_bound.DEVICE_MAX_BYTES
    title, retitle = "\x01" * row_bound.TITLE_MAX_BYTES, "\x02" * row_bound.TITLE_MAX_BYTES
    slug = "probe-" + "\x1f" * (row_bound.SLUG_MAX_BYTES - len("probe-"))  # probe-: not in the catalogue
    with psycopg.connect(settings.postgres.conninfo(), autocommit=True) as db:
        content_id = db.execute("SELECT id FROM content ORDER BY id LIMIT 1").fetchone()[0]
        insert = (
            "INSERT INTO engagement_events (content_id, user_id, event_type, event_ts, duration_ms, device,"
            " raw_payload) VALUES (%s, gen_random_uuid(), 'finish', now(), 1000, %s, %s::jsonb) RETURNING id"
        )
        inserted_id = db.execute(insert, (content_id, device, first)).fetchone()[0]
        updated_id = db.execute(insert, (content_id, "web", first)).fetchone()[0]
        db.execute("UPDATE engagement_events SET raw_payload = %s::jsonb WHERE id = %s", (second, updated_id))
        # Postgres keeps the JSON text as written: the rows really are at the bound.
        sizes = db.execute(
            "SELECT octet_length(raw_payload::text) FROM engagement_events WHERE id IN (%s, %s)",
            (inserted_id, updated_id),
        ).fetchall()
        assert sizes == [(n,), (n,)]
        probe_id = uuid.uuid4()
        db.execute(
            "INSERT INTO content (id, slug, title, content_type, length_seconds, publish_ts)"
            " VALUES (%s, %s, %s, 'video', 60, now())",
            (probe_id, slug, title),
        )
        db.execute("UPDATE content SET title = %s WHERE id = %s", (retitle, probe_id))

        bootstrap = settings.kafka.bootstrap_servers
        events = read_topic(
            bootstrap,
            settings.cdc.engagement_topic,
            lambda rs: len(by_key(rs, "id", inserted_id)) >= 1 and len(by_key(rs, "id", updated_id)) >= 2,
        )
        content = read_topic(
            bootstrap, settings.cdc.content_topic, lambda rs: len(by_key(rs, "id", str(probe_id))) >= 2
        )
        yield AtBound(
            inserted=by_key(events, "id", inserted_id)[0],
            updated=by_key(events, "id", updated_id)[1],
            content_update=by_key(content, "id", str(probe_id))[1],
        )
        db.execute("DELETE FROM engagement_events WHERE id IN (%s, %s)", (inserted_id, updated_id))
        db.execute("DELETE FROM content WHERE id = %s", (probe_id,))


def connector_states(stack: LocalStack) -> list[str]:
    status = stack.connect.status()
    assert status is not None
    return [status["connector"]["state"], *(task["state"] for task in status["tasks"])]


def test_changes_at_the_bound_arrive_whole(at_bound: AtBound, stack: LocalStack):
    n = row_bound.RAW_PAYLOAD_MAX_BYTES
    first, second = worst_payload(n), worst_payload(n, '\\"')
    inserted, updated = at_bound.inserted.value, at_bound.updated.value
    assert at_bound.inserted.op == "c" and inserted["after"]["raw_payload"] == first
    assert inserted["after"]["device"] == "\x01" * row_bound.DEVICE_MAX_BYTES
    assert at_bound.updated.op == "u"
    assert updated["before"]["raw_payload"] == first and updated["after"]["raw_payload"] == second
    # The update is the worst case the limits are sized for: above 4 n, within the arithmetic.
    size = len(at_bound.updated.raw or b"")
    assert 4 * n < size <= row_bound.change_value_bytes(row_bound.engagement_row_bytes())
    images = sum(len(orjson.dumps(updated[side])) for side in ("before", "after"))
    assert size - images <= row_bound.ENVELOPE_BUDGET_BYTES
    for image in (updated["before"], updated["after"], inserted["after"]):
        assert len(orjson.dumps(image)) <= row_bound.engagement_row_bytes()
    content = at_bound.content_update.value
    assert content["before"]["title"] == "\x01" * row_bound.TITLE_MAX_BYTES
    assert content["after"]["title"] == "\x02" * row_bound.TITLE_MAX_BYTES
    assert len(content["after"]["slug"].encode()) == row_bound.SLUG_MAX_BYTES
    assert len(at_bound.content_update.raw or b"") <= row_bound.change_value_bytes(row_bound.content_row_bytes())
    assert connector_states(stack) == ["RUNNING", "RUNNING"]


def test_every_topic_takes_the_one_limit(stack: LocalStack, settings: Settings):
    admin = admin_client(settings.kafka)
    limit = str(settings.kafka.max_message_bytes)
    for spec in topic_specs(settings.cdc, max_message_bytes=settings.kafka.max_message_bytes):
        assert describe_topic_config(admin, spec.name)["max.message.bytes"] == limit


def test_the_pipeline_source_reads_a_change_at_the_bound(at_bound: AtBound, settings: Settings):
    """The Beam source, with the pipeline's own consumer config, reads the 4 MB update byte for byte
    (in-process FnApiRunner: a full pipeline run would add nothing about sizes)."""
    import apache_beam as beam
    from apache_beam.runners.portability.fn_api_runner import FnApiRunner
    from apache_beam.testing.util import assert_that, equal_to

    from pipeline.lanes import consumer_config
    from pipeline.sources.kafka_partitions import PartitionSpec, ReadKafkaPartitions, SourceTuning, records

    update = at_bound.updated
    spec = PartitionSpec(settings.cdc.engagement_topic, update.partition, update.offset, update.offset + 1)
    with beam.Pipeline(runner=FnApiRunner()) as p:
        read = (
            p
            | ReadKafkaPartitions([spec], consumer_config(settings), SourceTuning(), "capture_test")
            | beam.FlatMap(records)
            | beam.Map(lambda record: (record.position.offset, record.value))
        )
        assert_that(read, equal_to([(update.offset, update.raw)]))


@pytest.mark.parametrize(
    ("statement", "constraint"),
    [
        ("INSERT_EVENT", "engagement_events_raw_payload_size"),
        ("UPDATE_EVENT", "engagement_events_raw_payload_size"),
        ("DEVICE", "engagement_events_device_size"),
        ("TITLE", "content_title_size"),
        ("SLUG", "content_slug_size"),
    ],
)
def test_rows_above_the_bound_are_refused_by_name_and_capture_goes_on(
    stack: LocalStack, settings: Settings, db, statement: str, constraint: str
):
    above = worst_payload(row_bound.RAW_PAYLOAD_MAX_BYTES + 2)
    content_id = db.execute("SELECT id FROM content ORDER BY id LIMIT 1").fetchone()[0]
    insert = (
        "INSERT INTO engagement_events (content_id, user_id, event_type, event_ts, duration_ms, device, raw_payload)"
        " VALUES (%s, gen_random_uuid(), 'play', now(), 1000, %s, %s::jsonb) RETURNING id"
    )
    victim = db.execute(insert, (content_id, "web", '{"k": 1}')).fetchone()[0]
    refused = {
        "INSERT_EVENT": (insert, (content_id, "web", above)),
        "UPDATE_EVENT": ("UPDATE engagement_events SET raw_payload = %s::jsonb WHERE id = %s", (above, victim)),
        "DEVICE": (insert, (content_id, "\x01" * (row_bound.DEVICE_MAX_BYTES + 1), '{"k": 1}')),
        "TITLE": ("UPDATE content SET title = %s WHERE id = %s", ("t" * (row_bound.TITLE_MAX_BYTES + 1), content_id)),
        "SLUG": ("UPDATE content SET slug = %s WHERE id = %s", ("s" * (row_bound.SLUG_MAX_BYTES + 1), content_id)),
    }
    with pytest.raises(psycopg.errors.CheckViolation) as refusal:
        db.execute(*refused[statement])
    assert refusal.value.diag.constraint_name == constraint
    assert f'violates check constraint "{constraint}"' in str(refusal.value)

    # Capture goes on: the next change arrives, the refused one never existed, the task runs.
    db.execute("UPDATE engagement_events SET duration_ms = 2000 WHERE id = %s", (victim,))
    mine = by_key(
        read_topic(
            settings.kafka.bootstrap_servers,
            settings.cdc.engagement_topic,
            lambda rs: len(by_key(rs, "id", victim)) >= 2,
            settle=1.0,
        ),
        "id",
        victim,
    )
    assert [r.op for r in mine] == ["c", "u"]
    assert mine[1].value["before"]["raw_payload"] == mine[1].value["after"]["raw_payload"] == '{"k": 1}'
    assert mine[1].value["after"]["duration_ms"] == 2000
    assert connector_states(stack) == ["RUNNING", "RUNNING"]
    db.execute("DELETE FROM engagement_events WHERE id = %s", (victim,))


BOUNDS = [
    ("content_slug_size", True),
    ("content_title_size", True),
    ("engagement_events_device_size", True),
    ("engagement_events_raw_payload_size", True),
]


def bound_constraints(db: psycopg.Connection) -> list[tuple[str, bool]]:
    names = [name for name, _ in BOUNDS]
    return db.execute(
        "SELECT conname, convalidated FROM pg_constraint WHERE conname = ANY(%s) ORDER BY conname", (names,)
    ).fetchall()


def test_the_bound_reaches_an_existing_database(stack: LocalStack, settings: Settings, db, caplog):
    """`make up` on a database from before the bound: added, NOT VALID while an old row breaks it."""
    assert bound_constraints(db) == BOUNDS
    stack.postgres.provision()  # again, as every `make up` does: nothing changes
    assert bound_constraints(db) == BOUNDS

    db.execute("ALTER TABLE engagement_events DROP CONSTRAINT engagement_events_raw_payload_size")
    content_id = db.execute("SELECT id FROM content ORDER BY id LIMIT 1").fetchone()[0]
    old = db.execute(
        "INSERT INTO engagement_events (content_id, user_id, event_type, event_ts, duration_ms, device, raw_payload)"
        " VALUES (%s, gen_random_uuid(), 'play', now(), 1000, 'web', %s::jsonb) RETURNING id",
        (content_id, worst_payload(row_bound.RAW_PAYLOAD_MAX_BYTES + 2)),
    ).fetchone()[0]
    try:
        with caplog.at_level("WARNING", logger="infra.stack.postgres"):
            stack.postgres.provision()
        assert "engagement_events_raw_payload_size" in caplog.text
        assert dict(bound_constraints(db))["engagement_events_raw_payload_size"] is False
        with pytest.raises(psycopg.errors.CheckViolation):  # NOT VALID is still enforced on writes
            db.execute("UPDATE engagement_events SET device = 'tv' WHERE id = %s", (old,))
    finally:
        db.execute("DELETE FROM engagement_events WHERE id = %s", (old,))
    stack.postgres.provision()
    assert bound_constraints(db) == BOUNDS
