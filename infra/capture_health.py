"""Is change capture running? The problems ``make status`` reports, from the status report alone.

Connect's REST status of a connector can say RUNNING while its task has FAILED (one oversized
change does that, for good), and says RUNNING throughout a Postgres restart while Debezium is
disconnected and waiting to reconnect. So capture counts as healthy only when all of these hold:

- Kafka Connect answers, the connector is registered and RUNNING, it has tasks, and every task is
  RUNNING (a FAILED connector or task is reported with the first line of its trace);
- Postgres answers, the replication slot exists, is active (a consumer is connected: Debezium's
  walsender) and has not lost WAL it needed (``wal_status = lost``);
- the slot's lag -- the WAL written since the position Debezium last confirmed -- is within
  ``CDC_STATUS_MAX_SLOT_LAG_BYTES``, and its ``flush_lag`` (the walsender's measure of how long ago
  the last confirmed WAL was written, NULL when caught up) within ``CDC_STATUS_MAX_SLOT_LAG_S``.

``capture_problems`` is pure: the report in, one line per problem out (empty when capture is
healthy), so every state is unit-tested without services. ``read_connector`` and ``read_slot`` fetch
the two inputs by address, for the local stack's ``make status`` and for the pipeline's
(``pipeline.status``) wherever Connect and Postgres run.
"""

from __future__ import annotations

import ssl
from collections.abc import Mapping
from typing import Any

import httpx
import psycopg

from infra.settings import CdcSettings

MIB = 1024 * 1024
# A Java stack trace's first line names the exception and its message; the rest is frames.
TRACE_CHARS = 300


def first_trace_line(trace: object) -> str:
    text = str(trace or "").strip()
    line = text.splitlines()[0].strip() if text else "(no trace)"
    return line if len(line) <= TRACE_CHARS else line[: TRACE_CHARS - 3] + "..."


def _state_problem(what: str, entry: Mapping[str, Any]) -> str | None:
    state = entry.get("state", "UNKNOWN")
    if state == "RUNNING":
        return None
    if state == "FAILED":
        return f"{what} FAILED: {first_trace_line(entry.get('trace'))}"
    return f"{what} is {state}"


def connector_problems(connector: Mapping[str, Any] | None, connect_state: str, cdc: CdcSettings) -> list[str]:
    name = cdc.connector_name
    if connect_state != "healthy":
        return [f"Kafka Connect is {connect_state}: nothing captures changes"]
    if connector is None:
        return [f"connector {name} is not registered (python -m infra.stack register)"]
    problems = []
    state = _state_problem(f"connector {name}", connector.get("connector", {}))
    if state:
        problems.append(state)
    tasks = connector.get("tasks", [])
    if not tasks:
        problems.append(f"connector {name} has no tasks")
    for task in sorted(tasks, key=lambda t: t.get("id", 0)):
        state = _state_problem(f"connector task {task.get('id')}", task)
        if state:
            problems.append(state)
    return problems


def slot_problems(slot: Mapping[str, Any] | None, postgres_state: str, cdc: CdcSettings) -> list[str]:
    name = cdc.slot_name
    if postgres_state != "healthy":
        return [f"Postgres is {postgres_state}: replication slot {name} cannot be checked"]
    if slot is None:
        return [f"replication slot {name} does not exist (Debezium creates it when its task starts)"]
    problems = []
    if not slot.get("active"):
        problems.append(f"replication slot {name} is inactive (no consumer connected)")
    if slot.get("wal_status") == "lost":
        problems.append(
            f"replication slot {name} lost WAL it still needed (wal_status=lost): Debezium must snapshot again"
        )
    lag_bytes = slot.get("lag_bytes")
    limit_bytes = cdc.status_max_slot_lag_bytes
    if isinstance(lag_bytes, int) and lag_bytes > limit_bytes:
        problems.append(
            f"replication slot {name} lag {lag_bytes / MIB:.1f} MiB above the limit {limit_bytes / MIB:g} MiB"
        )
    lag_s = slot.get("lag_s")
    if isinstance(lag_s, int | float) and lag_s > cdc.status_max_slot_lag_s:
        problems.append(f"replication slot {name} lag {lag_s:.0f} s above the limit {cdc.status_max_slot_lag_s:g} s")
    return problems


def capture_problems(report: Mapping[str, Any], cdc: CdcSettings) -> list[str]:
    """Why capture is stopped, failed or behind; empty when it is healthy. ``report`` is
    ``LocalStack.status()``: ``services`` (state per service), ``connector`` (Connect's REST status
    of the connector, absent when unregistered), ``slot`` (``Postgres.slot_status()``)."""
    services = report.get("services", {})
    connect_state = services.get("connect", {}).get("state", "stopped")
    postgres_state = services.get("postgres", {}).get("state", "stopped")
    return [
        *connector_problems(report.get("connector"), connect_state, cdc),
        *slot_problems(report.get("slot"), postgres_state, cdc),
    ]


def read_connector(
    connect_url: str,
    name: str,
    timeout_s: float = 5.0,
    *,
    auth: tuple[str, str] | None = None,
    verify: ssl.SSLContext | bool = True,
) -> dict[str, Any] | None:
    """Connect's REST status of connector ``name``; None when it is not registered. Raises
    ``httpx.HTTPError`` when Connect does not answer. ``auth``, ``verify``: ``ConnectSettings.http_options()``."""
    response = httpx.get(f"{connect_url}/connectors/{name}/status", timeout=timeout_s, auth=auth, verify=verify)
    if response.status_code == 404:
        return None
    response.raise_for_status()
    result: dict[str, Any] = response.json()
    return result


def read_slot(conninfo: str, slot_name: str) -> dict[str, Any] | None:
    """The slot's state and lag; None when it does not exist. ``lag_bytes``: WAL since the position
    Debezium confirmed; ``lag_s``: its walsender's ``flush_lag`` (how long ago the WAL it last
    confirmed was written), None when no consumer is connected or it has caught up."""
    with psycopg.connect(conninfo, connect_timeout=5) as conn:
        row = conn.execute(
            """
            SELECT s.slot_name, s.active, s.wal_status,
                   pg_wal_lsn_diff(pg_current_wal_lsn(), s.confirmed_flush_lsn)::bigint AS lag_bytes,
                   pg_wal_lsn_diff(pg_current_wal_lsn(), s.restart_lsn)::bigint AS retained_bytes,
                   extract(epoch FROM r.flush_lag)::float8 AS lag_s
            FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
            WHERE s.slot_name = %s
            """,
            (slot_name,),
        ).fetchone()
    if row is None:
        return None
    keys = ("slot", "active", "wal_status", "lag_bytes", "retained_bytes", "lag_s")
    return dict(zip(keys, row, strict=True))
