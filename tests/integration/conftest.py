"""Session fixtures: a real native stack on its own ports and folder, started and removed here.

The test stack never touches the development stack (``make up``): other ports, ``.stack-test/``,
and run-unique connector, slot, publication and topic names. It is reset before starting (a crashed
earlier run may have left processes) and reset again at the end: connector deleted, slot dropped,
processes stopped by pid, data removed.
"""

from __future__ import annotations

import random
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from faker import Faker

from generator.catalogue import make_catalogue
from generator.events import EventFactory
from generator.writer import PostgresWriter
from infra.settings import REPO_ROOT, GeneratorSettings, Settings, StackSettings
from infra.stack.local import LocalStack, child_environment

SNAPSHOT_CONTENT = 20
SNAPSHOT_EVENTS = 50


def make_test_settings() -> Settings:
    run = uuid.uuid4().hex[:8]
    base = Settings()
    return Settings(
        postgres=base.postgres.model_copy(update={"port": base.postgres.port + 100}),
        kafka=base.kafka.model_copy(
            update={"port": base.kafka.port + 100, "controller_port": base.kafka.controller_port + 100}
        ),
        connect=base.connect.model_copy(update={"port": base.connect.port + 100, "group_id": f"connect-{run}"}),
        redis=base.redis.model_copy(update={"port": base.redis.port + 100}),
        bigquery=base.bigquery.model_copy(update={"emulator_host": "http://127.0.0.1:59150"}),
        http_receiver=base.http_receiver.model_copy(
            update={"port": base.http_receiver.port + 100, "control_port": base.http_receiver.control_port + 100}
        ),
        cdc=base.cdc.model_copy(
            update={
                "topic_prefix": f"t{run}",
                "slot_name": f"slot_{run}",
                "publication_name": f"pub_{run}",
                "connector_name": f"engagement-{run}",
                "heartbeat_interval_ms": 1000,
            }
        ),
        stack=StackSettings(dir=REPO_ROOT / ".stack-test", stop_timeout_s=60.0),
        generator=GeneratorSettings(),
        metrics=base.metrics.model_copy(update={"port": base.metrics.port + 100}),
        dashboard=base.dashboard.model_copy(update={"port": base.dashboard.port + 100}),
        flink=base.flink.shifted(100),
        pipeline=base.pipeline.model_copy(
            # The Redis tests run the Redis lanes only; the BigQuery tests add theirs.
            update={"prism_port": base.pipeline.prism_port + 100, "consumer_group": f"pipeline-{run}", "sinks": "redis"}
        ),
    )


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment a subprocess needs to talk to the test stack (the HTTP sink off)."""
    return child_environment(settings)


def _log(message: str) -> None:
    print(message, flush=True)


@pytest.fixture(scope="session")
def settings() -> Settings:
    return make_test_settings()


@pytest.fixture(scope="session")
def stack(settings: Settings) -> Iterator[LocalStack]:
    local = LocalStack(settings, log=_log)
    local.reset()
    try:
        local.up(connector=False)
        seed_snapshot_rows(settings)
        local.connect.register()
        local.connect.wait_running(settings.stack.start_timeout_s)
        yield local
    finally:
        local.reset()


def seed_snapshot_rows(settings: Settings) -> None:
    """Rows that exist before the connector starts: they must arrive as snapshot reads (op r)."""
    rng = random.Random(42)
    fake = Faker()
    fake.seed_instance(42)
    gen = GeneratorSettings(event_update_share=0, event_delete_share=0, content_update_share=0)
    with psycopg.connect(settings.postgres.conninfo(), autocommit=True) as conn:
        writer = PostgresWriter(conn, gen, rng)
        writer.insert_content(make_catalogue(rng, fake, SNAPSHOT_CONTENT, datetime.now(UTC)))
        catalogue = writer.load_catalogue()
        writer.write_batch(EventFactory(catalogue, gen, rng).batch(SNAPSHOT_EVENTS, datetime.now(UTC)), catalogue)


@pytest.fixture
def db(stack: LocalStack, settings: Settings) -> Iterator[psycopg.Connection]:
    with psycopg.connect(settings.postgres.conninfo(), autocommit=True) as conn:
        yield conn
