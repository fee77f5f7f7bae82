"""The locust load test (loadtest/locustfile.py) headless against the test stack, the pipeline streaming.

Two writers and the SLA user for 15 s at 300 events/s: locust exits 0, its CSV has exactly the
writer's four kinds of transaction and the SLA row, none failed, and Postgres holds exactly what
the writers reported (events inserted minus deleted; one probe event per SLA request); the Redis
boards then equal SQL. And the premise of one process driving every user: under locust's gevent
patching, psycopg and redis-py wait cooperatively (and psycopg's C wait, forced, does not).
"""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from infra.settings import REPO_ROOT, Settings
from infra.stack.local import LocalStack
from loadtest.locust_report import read_stats
from loadtest.probes import wait_until_live

from .pipeline_helpers import assert_redis_matches_sql, env, streaming, wait_caught_up

pytestmark = pytest.mark.integration

SLA_NAME = "commit -> top_engagement:10min"
BATCH = 50
# Larger shares than the generator's defaults, so each kind of change happens in a 15 s run.
SHARES = {
    "GENERATOR_EVENT_UPDATE_SHARE": "0.05",
    "GENERATOR_EVENT_DELETE_SHARE": "0.02",
    "GENERATOR_CONTENT_UPDATE_SHARE": "0.02",
    "GENERATOR_SEED": "15",
}


def event_counts(db: psycopg.Connection) -> tuple[int, int]:
    """(generated events, probe events) in Postgres."""
    row = db.execute(
        "SELECT count(*) FILTER (WHERE device IS DISTINCT FROM 'probe'), count(*) FILTER (WHERE device = 'probe') "
        "FROM engagement_events"
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def run_locust(settings: Settings, out: Path) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "locust", "--config", str(REPO_ROOT / "loadtest" / "locust.conf")]
    command += ["--users", "3", "--spawn-rate", "3", "--run-time", "15s", "--events-per-second", "300"]
    command += ["--batch-size", str(BATCH), "--csv", str(out / "locust"), "--html", str(out / "locust.html")]
    command += ["--json-file", str(out / "locust")]
    return subprocess.run(
        command, cwd=REPO_ROOT, env=env(settings, **SHARES), capture_output=True, text=True, timeout=180, check=False
    )


def test_headless_run_reports_exactly_what_it_wrote(
    stack: LocalStack, settings: Settings, db: psycopg.Connection, tmp_path: Path
) -> None:
    with streaming(settings, tmp_path / "pipeline.log"):
        wait_until_live(settings)
        events_before, probes_before = event_counts(db)
        result = run_locust(settings, tmp_path)
        events_after, probes_after = event_counts(db)
        wait_caught_up(settings, timeout=180)
        assert_redis_matches_sql(settings)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    with (tmp_path / "locust_stats.csv").open(newline="") as handle:
        in_csv = {(row["Type"], row["Name"]) for row in csv.DictReader(handle)}
    kinds = {
        "insert events": "SQL",
        "update event": "SQL",
        "delete event": "SQL",
        "edit content": "SQL",
        SLA_NAME: "SLA",
    }
    assert in_csv == {(t, name) for name, t in kinds.items()} | {("", "Aggregated")}
    # The final figures (the CSV is rewritten once a second, not at exit).
    stats = read_stats(tmp_path / "locust.json")
    assert {name: row.type for name, row in stats.items()} == kinds
    assert {name: row.failures for name, row in stats.items()} == dict.fromkeys(kinds, 0)
    inserts, deletes, sla = stats["insert events"], stats["delete event"], stats[SLA_NAME]
    assert events_after - events_before == inserts.rows - deletes.rows
    # The SLA user stopped in the middle of a probe's COMMIT cannot know whether it landed (the
    # server may have committed it), so Postgres may hold one probe more than the report; never fewer.
    assert sla.requests == sla.rows
    assert probes_after - probes_before - sla.requests in (0, 1)


def test_psycopg_and_redis_wait_cooperatively_under_gevent(stack: LocalStack, settings: Settings) -> None:
    def check(timeout_s: float, **extra: str) -> subprocess.CompletedProcess[str]:
        command = [sys.executable, "-m", "tests.integration.gevent_concurrency", "8", str(timeout_s)]
        return subprocess.run(
            command, cwd=REPO_ROOT, env=env(settings, **extra), capture_output=True, text=True, timeout=120, check=False
        )

    cooperative = check(30)
    assert (cooperative.returncode, cooperative.stdout) == (0, "concurrent 8 8\n"), cooperative.stderr[-3000:]
    # The control: psycopg's C wait, which blocks the whole process, keeps the first session alone in Postgres.
    blocking = check(2, PSYCOPG_WAIT_FUNC="wait_c")
    assert blocking.returncode == 1
    assert "canceling statement due to statement timeout" in blocking.stderr
