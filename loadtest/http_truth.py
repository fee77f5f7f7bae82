"""The HTTP truth check: what the local receiver holds, event by event, against Postgres.

Runtime-neutral (no pytest): the integration tests and the fault suite (``loadtest.faults``) use it.
A receiver that keeps, per event id, the change with the highest Debezium sequence (the offset
breaks ties) holds every event's current state (docs/http.md); that state must equal Postgres.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

import psycopg

from infra.settings import Settings
from sinks.kafka_positions import KafkaPositions, group_id


def wait_http_caught_up(settings: Settings, endpoints: Iterable[str], timeout: float = 120) -> None:
    """Until the HTTP sink of every endpoint has committed the engagement topic's end offsets."""
    topic = settings.cdc.engagement_topic
    deadline = time.monotonic() + timeout
    for endpoint in endpoints:
        positions = KafkaPositions(
            settings.kafka.client_config(), group_id(settings.pipeline.consumer_group, f"http_{endpoint}")
        )
        try:
            while behind := {p: n for p, n in positions.lag(topic).items() if n}:
                if time.monotonic() >= deadline:
                    raise AssertionError(f"http_{endpoint} is behind: {behind}")
                time.sleep(0.5)
        finally:
            positions.close()


def latest_by_event(changes: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    latest: dict[int, dict[str, Any]] = {}
    for change in changes:
        order = (tuple(change["sequence"] or (-1, -1)), change["offset"])
        held = latest.get(change["id"])
        if held is None or order > (tuple(held["sequence"] or (-1, -1)), held["offset"]):
            latest[change["id"]] = change
    return latest


def assert_http_matches_sql(settings: Settings, changes: list[dict[str, Any]], since_id: int) -> int:
    """Every event inserted after ``since_id`` is at the receiver, alive, with Postgres' duration; every
    event the receiver last saw alive is in Postgres with that duration, every one it saw deleted is
    gone. ``changes`` are the receiver's changes of one endpoint that takes every change."""
    latest = latest_by_event(changes)
    with psycopg.connect(settings.postgres.conninfo()) as conn:
        rows = dict(
            conn.execute(
                "SELECT id, duration_ms FROM engagement_events WHERE id > %s OR id = ANY(%s)", (since_id, list(latest))
            ).fetchall()
        )
    mismatches: list[str] = []
    for event_id, duration_ms in rows.items():
        change = latest.get(event_id)
        seconds = None if duration_ms is None else duration_ms / 1000
        if change is None:
            if event_id > since_id:
                mismatches.append(f"event {event_id}: in SQL, never received")
        elif change["op"] == "d":
            mismatches.append(f"event {event_id}: in SQL, last received as deleted")
        elif change["engagement_seconds"] != seconds:
            mismatches.append(f"event {event_id}: received {change['engagement_seconds']} s, SQL {seconds} s")
    mismatches += [
        f"event {i}: received alive, not in SQL" for i, c in latest.items() if c["op"] != "d" and i not in rows
    ]
    if mismatches:
        raise AssertionError(f"{len(mismatches)} mismatches, first: {mismatches[:5]}")
    return len(rows)
