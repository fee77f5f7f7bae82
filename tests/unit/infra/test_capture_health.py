"""Every state of capture that `make status` tells apart, from the report alone."""

from __future__ import annotations

import pytest

from infra.capture_health import capture_problems, first_trace_line
from infra.settings import CdcSettings

CDC = CdcSettings(
    connector_name="engagement-postgres",
    slot_name="engagement_slot",
    status_max_slot_lag_bytes=64 * 1024 * 1024,
    status_max_slot_lag_s=120.0,
)
HEALTHY = {"state": "healthy"}
TRACE = (
    "org.apache.kafka.connect.errors.ConnectException: An exception occurred in the change event producer.\n"
    "\tat io.debezium.pipeline.ErrorHandler.setProducerThrowable(ErrorHandler.java:67)\n"
)


def connector(state="RUNNING", tasks=(("RUNNING", None),), trace=None):
    status = {"name": "engagement-postgres", "connector": {"state": state, "worker_id": "127.0.0.1:58083"}}
    if trace:
        status["connector"]["trace"] = trace
    status["tasks"] = [
        {"id": i, "state": s, "worker_id": "127.0.0.1:58083", **({"trace": t} if t else {})}
        for i, (s, t) in enumerate(tasks)
    ]
    return status


def slot(active=True, wal_status="reserved", lag_bytes=4096, lag_s=None):
    return {
        "slot": "engagement_slot",
        "active": active,
        "wal_status": wal_status,
        "lag_bytes": lag_bytes,
        "retained_bytes": lag_bytes,
        "lag_s": lag_s,
    }


def report(connector_status=None, slot_status=None, connect=HEALTHY, postgres=HEALTHY):
    result = {"services": {"postgres": postgres, "connect": connect}}
    if connector_status is not None:
        result["connector"] = connector_status
    if slot_status is not None:
        result["slot"] = slot_status
    return result


@pytest.mark.parametrize(
    ("status", "problems"),
    [
        pytest.param(report(connector(), slot()), [], id="healthy"),
        pytest.param(report(connector(), slot(lag_s=12.5)), [], id="healthy-with-some-lag"),
        pytest.param(
            report(connector(tasks=[("FAILED", TRACE)]), slot(active=False)),
            [
                "connector task 0 FAILED: org.apache.kafka.connect.errors.ConnectException: "
                "An exception occurred in the change event producer.",
                "replication slot engagement_slot is inactive (no consumer connected)",
            ],
            id="task-failed-connector-running",
        ),
        pytest.param(
            report(connector(state="FAILED", tasks=[], trace=TRACE), slot(active=False)),
            [
                "connector engagement-postgres FAILED: org.apache.kafka.connect.errors.ConnectException: "
                "An exception occurred in the change event producer.",
                "connector engagement-postgres has no tasks",
                "replication slot engagement_slot is inactive (no consumer connected)",
            ],
            id="connector-failed",
        ),
        pytest.param(
            report(connector(tasks=[("FAILED", None)]), slot()),
            ["connector task 0 FAILED: (no trace)"],
            id="task-failed-without-trace",
        ),
        pytest.param(
            report(connector(state="PAUSED", tasks=[("PAUSED", None)]), slot()),
            ["connector engagement-postgres is PAUSED", "connector task 0 is PAUSED"],
            id="paused",
        ),
        pytest.param(
            report(connector(state="STOPPED", tasks=[]), slot(active=False)),
            [
                "connector engagement-postgres is STOPPED",
                "connector engagement-postgres has no tasks",
                "replication slot engagement_slot is inactive (no consumer connected)",
            ],
            id="stopped",
        ),
        pytest.param(
            report(connector(tasks=[("RUNNING", None), ("UNASSIGNED", None), ("RESTARTING", None)]), slot()),
            ["connector task 1 is UNASSIGNED", "connector task 2 is RESTARTING"],
            id="tasks-not-running",
        ),
        pytest.param(
            report(connector(tasks=[]), slot()),
            ["connector engagement-postgres has no tasks"],
            id="no-tasks-yet",
        ),
        pytest.param(
            report(None, slot(active=False)),
            [
                "connector engagement-postgres is not registered (python -m infra.stack register)",
                "replication slot engagement_slot is inactive (no consumer connected)",
            ],
            id="not-registered",
        ),
        pytest.param(
            report(None, slot(active=False), connect={"state": "stopped"}),
            [
                "Kafka Connect is stopped: nothing captures changes",
                "replication slot engagement_slot is inactive (no consumer connected)",
            ],
            id="connect-stopped",
        ),
        pytest.param(
            report(None, slot(), connect={"state": "unhealthy"}),
            ["Kafka Connect is unhealthy: nothing captures changes"],
            id="connect-unhealthy",
        ),
        pytest.param(
            report(connector(), slot(active=False)),
            ["replication slot engagement_slot is inactive (no consumer connected)"],
            id="slot-inactive-while-rest-says-running",
        ),
        pytest.param(
            report(connector(), None),
            ["replication slot engagement_slot does not exist (Debezium creates it when its task starts)"],
            id="slot-missing",
        ),
        pytest.param(
            report(connector(), None, postgres={"state": "stopped"}),
            ["Postgres is stopped: replication slot engagement_slot cannot be checked"],
            id="postgres-stopped",
        ),
        pytest.param(
            report(connector(), slot(wal_status="lost", lag_bytes=None)),
            [
                "replication slot engagement_slot lost WAL it still needed (wal_status=lost): "
                "Debezium must snapshot again"
            ],
            id="wal-lost",
        ),
        pytest.param(
            report(connector(), slot(lag_bytes=64 * 1024 * 1024)),
            [],
            id="lag-at-the-limit",
        ),
        pytest.param(
            report(connector(), slot(lag_bytes=75 * 1024 * 1024 + 512 * 1024)),
            ["replication slot engagement_slot lag 75.5 MiB above the limit 64 MiB"],
            id="lag-bytes-above-the-limit",
        ),
        pytest.param(
            report(connector(), slot(lag_s=121.4)),
            ["replication slot engagement_slot lag 121 s above the limit 120 s"],
            id="lag-seconds-above-the-limit",
        ),
    ],
)
def test_capture_problems(status, problems):
    assert capture_problems(status, CDC) == problems


def test_a_long_first_trace_line_is_cut():
    line = first_trace_line("x" * 1000 + "\n\tat frame")
    assert len(line) == 300 and line.endswith("...")
