"""The generator against the real database: counts, CDC operations, rollback, CLI, outages.

The outage tests count exactly: every event the generator reports as written is in Postgres once
(each event's random ``session_id`` in ``raw_payload`` tells a row written twice from two rows).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
import uuid
from datetime import UTC, datetime

import psycopg
import pytest

from generator.events import EventFactory
from generator.retry import RetryingWriter, RetryPolicy
from generator.runner import run_burst
from generator.writer import PostgresWriter, open_connection
from infra.settings import REPO_ROOT, GeneratorSettings, Settings
from infra.stack.local import LocalStack

from .conftest import settings_env
from .kafka_reader import read_topic
from .pg_fault_proxy import FaultProxy

pytestmark = pytest.mark.integration


def test_burst_with_updates_and_deletes_reaches_kafka(stack: LocalStack, settings: Settings, db):
    gen = GeneratorSettings(event_update_share=0.02, event_delete_share=0.01, content_update_share=0.002)
    rng = random.Random(7)
    writer = PostgresWriter(db, gen, rng)
    catalogue = writer.load_catalogue()
    first_id = db.execute("SELECT coalesce(max(id), 0) FROM engagement_events").fetchone()[0]
    stats = run_burst(writer, EventFactory(catalogue, gen, rng), catalogue, 5000, 1000, print)
    assert stats.inserted == 5000 and stats.batches == 5
    assert stats.updated > 0 and stats.deleted > 0
    live = db.execute("SELECT count(*) FROM engagement_events WHERE id > %s", (first_id,)).fetchone()[0]
    # Deletes may also hit older rows in the update window, so at least this many are gone.
    assert live <= 5000 - 0 and live >= 5000 - stats.deleted

    records = read_topic(
        settings.kafka.bootstrap_servers,
        settings.cdc.engagement_topic,
        lambda rs: sum(1 for r in rs if r.op == "c" and r.key["id"] > first_id) >= 5000,
        timeout=60,
    )
    ops = {r.op for r in records if r.key and r.key["id"] > first_id}
    assert {"c", "u", "d", "tombstone"} <= ops


def test_a_failing_batch_rolls_back_completely(stack: LocalStack, settings: Settings, db):
    gen = GeneratorSettings()
    writer = PostgresWriter(db, gen, random.Random(1))
    catalogue = writer.load_catalogue()
    before = db.execute("SELECT count(*) FROM engagement_events").fetchone()[0]
    rows = EventFactory(catalogue, gen, random.Random(2)).batch(100, datetime.now(UTC))
    bad = (catalogue[0].id, uuid.uuid4(), "skip", datetime.now(UTC), 1, "web", "{}")  # violates the CHECK
    with pytest.raises(psycopg.errors.CheckViolation):
        writer.write_batch([*rows, bad], catalogue)
    assert db.info.transaction_status == psycopg.pq.TransactionStatus.IDLE
    assert db.execute("SELECT count(*) FROM engagement_events").fetchone()[0] == before


def run_generator(settings: Settings, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "generator", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **settings_env(settings), **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result


def test_cli_burst_reports_its_rate(stack: LocalStack, settings: Settings):
    result = run_generator(settings, "--burst", "2000", "--seed", "3")
    assert "burst: 2,000 events" in result.stdout and "rows/s" in result.stdout


def test_cli_continuous_mode_holds_its_rate(stack: LocalStack, settings: Settings):
    result = run_generator(settings, "--duration", "3", GENERATION_RATE="30000")  # 500 rows/s
    summary = result.stdout.strip().splitlines()[-1]
    inserted = int(summary.split(": ")[1].split(" events")[0].replace(",", ""))
    assert 1300 <= inserted <= 1700  # 3 s at 500/s; a functional check, not a benchmark


# Inserts only: with no updates or deletes, every event written is a row that stays.
INSERTS_ONLY = {
    "GENERATOR_EVENT_UPDATE_SHARE": "0",
    "GENERATOR_EVENT_DELETE_SHARE": "0",
    "GENERATOR_CONTENT_UPDATE_SHARE": "0",
}


def rows_and_distinct_events(conninfo: str, after_id: int) -> tuple[int, int]:
    with psycopg.connect(conninfo) as conn:
        return conn.execute(
            "SELECT count(*), count(DISTINCT raw_payload->>'session_id') FROM engagement_events WHERE id > %s",
            (after_id,),
        ).fetchone()


def test_generator_keeps_writing_through_a_postgres_restart(stack: LocalStack, settings: Settings, tmp_path):
    conninfo = settings.postgres.conninfo()
    with psycopg.connect(conninfo) as conn:
        first_id = conn.execute("SELECT coalesce(max(id), 0) FROM engagement_events").fetchone()[0]
    env = {
        **os.environ,
        **settings_env(settings),
        **INSERTS_ONLY,
        "GENERATION_RATE": "12000",  # 200 events/s, 20 a transaction
        "GENERATOR_REPORT_INTERVAL_S": "1",
    }
    # Connect is stopped around the restart (a graceful stop commits Debezium's offsets): a
    # Debezium that loses Postgres mid-stream re-sends the changes after its last committed offset
    # (at least once, docs/delivery.md), and later tests read this session's topic. The changes
    # wait in the slot and arrive once when Connect is back (test_connect_restart.py).
    stack.connect.process.stop(settings.stack.stop_timeout_s)
    stderr_file = tmp_path / "generator.stderr"
    proc = subprocess.Popen(
        [sys.executable, "-m", "generator", "--duration", "20", "--seed", "11"],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr_file.open("w"),
        text=True,
    )
    lines: list[str] = []
    writing = threading.Event()

    def read_stdout() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line.rstrip("\n"))
            if "events" in line and "target" in line:
                writing.set()

    reader = threading.Thread(target=read_stdout, daemon=True)
    reader.start()
    try:
        assert writing.wait(60), f"the generator never reported writing: {lines}"
        # `pg_ctl restart -m fast`, through the stack's process object: SIGINT is the fast shutdown.
        stack.postgres.process.stop(settings.stack.stop_timeout_s)
        stack.postgres.process.start(settings.stack.start_timeout_s)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        stack.postgres.process.start(settings.stack.start_timeout_s)
        stack.connect.process.start(settings.stack.start_timeout_s)
        stack.connect.wait_running(settings.stack.start_timeout_s)
    reader.join(10)
    assert proc.returncode == 0, stderr_file.read_text() + "\n".join(lines)

    outage_started = [line for line in lines if line.startswith("postgres outage: a write of")]
    outage_over = [line for line in lines if line.startswith("postgres outage over after")]
    assert len(outage_started) == 1 and len(outage_over) == 1, lines
    summary = lines[-1]
    inserted = int(summary.split(": ")[1].split(" events")[0].replace(",", ""))
    retried = int(summary.split("; ")[-2].split(" retried writes")[0])
    assert retried >= 1 and "in 1 outages" in summary, summary
    assert " 0 events refused" in summary
    assert inserted > 2000  # it went on writing after the restart (about 4,000 in 20 s)
    assert rows_and_distinct_events(conninfo, first_id) == (inserted, inserted)


@pytest.fixture
def proxy(stack: LocalStack, settings: Settings):
    fault_proxy = FaultProxy(settings.postgres.host, settings.postgres.port)
    yield fault_proxy
    fault_proxy.close()


def proxied_writer(settings: Settings, proxy: FaultProxy, lines: list[str]) -> tuple[RetryingWriter, list]:
    conninfo = settings.postgres.model_copy(update={"port": proxy.port}).conninfo()
    gen = GeneratorSettings(event_update_share=0, event_delete_share=0, content_update_share=0)
    writer = PostgresWriter(open_connection(conninfo), gen, random.Random(5))
    catalogue = writer.load_catalogue()
    policy = RetryPolicy(initial_s=0.05, max_backoff_s=0.5, jitter_s=0.0, give_up_s=60.0)
    return RetryingWriter(writer, lambda: open_connection(conninfo), policy, lines.append), catalogue


def write_counted(
    settings: Settings, retrying: RetryingWriter, catalogue: list, rows: list
) -> tuple[int, tuple[int, int]]:
    conninfo = settings.postgres.conninfo()
    with psycopg.connect(conninfo) as conn:
        first_id = conn.execute("SELECT coalesce(max(id), 0) FROM engagement_events").fetchone()[0]
    result = retrying.write_batch(rows, catalogue)
    return result.inserted, rows_and_distinct_events(conninfo, first_id)


@pytest.mark.parametrize(
    ("where", "seed", "last_line"),
    [
        ("after_server", 6, "the batch of 100 events had committed before the connection dropped, not written again"),
        ("before_server", 7, "the batch of 100 events written"),
    ],
    ids=["after the server committed: not written again", "before the server saw it: written again once"],
)
def test_a_lost_commit_is_written_exactly_once(stack, settings, proxy, where: str, seed: int, last_line: str):
    lines: list[str] = []
    retrying, catalogue = proxied_writer(settings, proxy, lines)
    rows = EventFactory(catalogue, retrying.writer.settings, random.Random(seed)).batch(100, datetime.now(UTC))
    proxy.lose_commit(where)
    inserted, in_db = write_counted(settings, retrying, catalogue, rows)
    assert proxy.fired == [where]
    assert (inserted, in_db) == (100, (100, 100))
    assert lines[-1].endswith(last_line)
    retrying.writer.conn.close()
