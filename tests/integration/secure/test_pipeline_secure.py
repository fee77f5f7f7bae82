"""The pipeline on the secure stack, at load, with every sink: Debezium reads Postgres over TLS,
every Kafka client is SASL_SSL with its own SCRAM user, the sinks write Redis over TLS as the
pipeline's ACL user; the leaderboards, the BigQuery view and the HTTP receiver then equal Postgres."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest

from infra.http_receiver.client import ReceiverClient
from infra.settings import Settings
from infra.stack.local import LocalStack
from loadtest.bigquery_truth import assert_view_matches_sql, wait_bigquery_caught_up
from loadtest.http_truth import assert_http_matches_sql, wait_http_caught_up
from tests.integration.pipeline_helpers import assert_redis_matches_sql, streaming, wait_caught_up
from tests.integration.test_pipeline import generate

pytestmark = pytest.mark.integration


def test_every_sink_equals_postgres_with_tls_and_authentication_everywhere(
    secure_stack: LocalStack, secure_settings: Settings, tmp_path: Path
):
    s = secure_settings
    assert s.kafka.client_config()["security.protocol"] == "SASL_SSL"
    assert s.redis.effective_tls and s.postgres.effective_sslmode == "verify-full"
    receiver = ReceiverClient(s.http_receiver.control_url)
    receiver.reset()
    with psycopg.connect(s.postgres.conninfo(), autocommit=True) as conn:
        since_id = conn.execute("SELECT coalesce(max(id), 0) FROM engagement_events").fetchone()[0]
    sinks = {"PIPELINE_SINKS": "redis,bigquery,http", "HTTP_SINK_URL": f"{s.http_receiver.url}/ingest/everything"}
    log = tmp_path / "pipeline.log"
    with streaming(s, log, **sinks) as pipeline:
        generator = generate(s, "--rate", "60000", "--duration", "20")  # 1,000 events/s
        assert generator.wait(180) == 0, generator.stdout.read() if generator.stdout else ""
        wait_caught_up(s, timeout=180)
        wait_bigquery_caught_up(s, timeout=240)
        wait_http_caught_up(s, ["default"], timeout=180)
        assert pipeline.alive(), log.read_text(errors="replace")[-3000:]
    text = log.read_text(errors="replace")
    assert "job failed" not in text, text[-3000:]
    checked = assert_redis_matches_sql(s)
    assert checked["board"] > 0
    assert assert_view_matches_sql(s) > 15_000  # the load's inserts, less its deletes
    assert assert_http_matches_sql(s, receiver.changes("everything"), since_id) > 15_000
