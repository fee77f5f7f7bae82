"""The generator against the real database: counts, CDC operations, rollback, CLI."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import uuid
from datetime import UTC, datetime

import psycopg
import pytest

from generator.events import EventFactory
from generator.runner import run_burst
from generator.writer import PostgresWriter
from infra.settings import REPO_ROOT, GeneratorSettings, Settings
from infra.stack.local import LocalStack

from .conftest import settings_env
from .kafka_reader import read_topic

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
