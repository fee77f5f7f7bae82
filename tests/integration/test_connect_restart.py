"""Stopping Kafka Connect and starting it again loses nothing and repeats nothing.

Changes made while Connect is down wait in the replication slot; on restart Debezium resumes from
the offset it committed, so each change arrives exactly once (a graceful stop commits offsets).
"""

from __future__ import annotations

from collections import Counter

import pytest

from infra.settings import Settings
from infra.stack.local import LocalStack

from .kafka_reader import read_topic

pytestmark = pytest.mark.integration

INSERTS, UPDATES, DELETES = 500, 40, 25


def test_restart_resumes_from_the_slot(stack: LocalStack, settings: Settings, db):
    stack.connect.process.stop(settings.stack.stop_timeout_s)
    assert not stack.connect.process.running()
    slot = stack.postgres.slot_status()
    assert slot is not None and slot["active"] is False  # the slot holds the changes from here on

    content_ids = [row[0] for row in db.execute("SELECT id FROM content LIMIT 5").fetchall()]
    ids = [
        row[0]
        for row in db.execute(
            "INSERT INTO engagement_events (content_id, user_id, event_type, event_ts, duration_ms, device)"
            " SELECT (%s::uuid[])[1 + g %% 5], gen_random_uuid(), 'play', now(), g, 'web'"
            " FROM generate_series(1, %s) AS g RETURNING id",
            (content_ids, INSERTS),
        ).fetchall()
    ]
    updated = ids[:UPDATES]
    deleted = ids[-DELETES:]
    db.execute("UPDATE engagement_events SET duration_ms = duration_ms + 1 WHERE id = ANY(%s)", (updated,))
    db.execute("DELETE FROM engagement_events WHERE id = ANY(%s)", (deleted,))
    made_while_down = {("c", i) for i in ids} | {("u", i) for i in updated} | {("d", i) for i in deleted}

    stack.connect.process.start(settings.stack.start_timeout_s)
    stack.connect.wait_running(settings.stack.start_timeout_s)

    def seen(records) -> set[tuple[str, int]]:
        return {(r.op, r.key["id"]) for r in records if r.value is not None}

    records = read_topic(
        settings.kafka.bootstrap_servers,
        settings.cdc.engagement_topic,
        lambda rs: made_while_down <= seen(rs),
        timeout=120,
        settle=3.0,
    )
    counts = Counter((r.op, r.key["id"]) for r in records if r.value is not None)
    assert {k: counts[k] for k in made_while_down if counts[k] != 1} == {}
    # Nothing that was already delivered before the stop came again either.
    assert [k for k, n in counts.items() if n > 1] == []
    sql_count = db.execute("SELECT count(*) FROM engagement_events WHERE id = ANY(%s)", (ids,)).fetchone()[0]
    assert sql_count == INSERTS - DELETES
