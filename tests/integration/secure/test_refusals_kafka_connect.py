"""Kafka and Kafka Connect in secure mode: a client with SASL_SSL and its own user gets its record back
exactly; a client without TLS, with a wrong password, or that cannot verify the brokers is refused;
a user cannot step outside its ACLs; Connect's REST API answers 401 without credentials; and the
connector runs, so a row committed in Postgres arrives on its topic over SASL_SSL.

Each refusal is asserted by librdkafka's exact error code and message: a check that fails if a
listener is left open (try it: a PLAINTEXT listener makes ``test_kafka_refuses_a_client_without_tls``
read metadata and fail)."""

from __future__ import annotations

import ssl
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson
import psycopg
import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from infra.settings import Settings
from infra.stack.certificates import ensure_certificates
from infra.stack.kafka_admin import admin_client
from infra.stack.local import LocalStack

pytestmark = pytest.mark.integration

TIMEOUT_S = 5.0


@pytest.fixture(scope="module")
def foreign_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA that did not sign the stack's certificates."""
    return ensure_certificates(tmp_path_factory.mktemp("foreign-ca-kafka")).ca_cert


@pytest.fixture(scope="module")
def scratch_topic(secure_stack: LocalStack, secure_settings: Settings) -> Iterator[str]:
    """A topic under the project's prefix, made by the admin (the pipeline's user may not create)."""
    name = f"{secure_settings.cdc.topic_prefix}.secure-check-{uuid.uuid4().hex[:8]}"
    admin = admin_client(secure_settings.kafka)
    admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])[name].result()
    yield name
    admin.delete_topics([name])[name].result()


def metadata_errors(config: dict[str, Any]) -> tuple[KafkaError, list[KafkaError]]:
    """Ask for metadata with ``config``: the error it ends with, and what librdkafka reported on the way."""
    seen: list[KafkaError] = []
    consumer = Consumer({**config, "group.id": "secure-refusals", "error_cb": seen.append, "log_level": 0})
    try:
        with pytest.raises(KafkaException) as refused:
            consumer.list_topics(timeout=TIMEOUT_S)
    finally:
        consumer.close()
    return refused.value.args[0], seen


# --- Kafka ------------------------------------------------------------------------------------------


def test_kafka_sasl_ssl_client_gets_its_record_back(secure_settings: Settings, scratch_topic: str) -> None:
    kafka = secure_settings.kafka
    config = kafka.client_config()
    assert (config["security.protocol"], config["sasl.mechanisms"], config["sasl.username"]) == (
        "SASL_SSL",
        "SCRAM-SHA-512",
        kafka.sasl_username,
    )
    delivered: list[Any] = []
    producer = Producer(kafka.producer_config())
    producer.produce(
        scratch_topic,
        key=b"k-1",
        value=b'{"secure": true}',
        headers=[("h", b"v")],
        on_delivery=lambda err, msg: delivered.append((err, msg.offset())),
    )
    assert producer.flush(30) == 0
    assert delivered == [(None, 0)]
    consumer = Consumer(
        kafka.client_config(**{"group.id": f"secure-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False})
    )
    try:
        consumer.assign([TopicPartition(scratch_topic, 0, 0)])
        messages = consumer.consume(1, timeout=30)
    finally:
        consumer.close()
    assert [(m.error(), m.key(), m.value(), m.headers(), m.offset()) for m in messages] == [
        (None, b"k-1", b'{"secure": true}', [("h", b"v")], 0)
    ]


def test_kafka_refuses_a_client_without_tls(secure_settings: Settings) -> None:
    error, seen = metadata_errors({"bootstrap.servers": secure_settings.kafka.bootstrap_servers})
    assert (error.code(), error.str()) == (
        KafkaError._TRANSPORT,
        "Failed to get metadata: Local: Broker transport failure",
    )
    # The broker drops the plaintext request: nothing but disconnects, never an answer.
    assert seen and {e.code() for e in seen} <= {KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN}


@pytest.mark.parametrize(("user", "password"), [("engagement", "not-the-password"), ("nobody", "whatever")])
def test_kafka_refuses_a_wrong_password_or_an_unknown_user(secure_settings: Settings, user: str, password: str) -> None:
    config = secure_settings.kafka.client_config(**{"sasl.username": user})
    error, seen = metadata_errors({**config, "sasl.password": password})
    assert error.code() == KafkaError._TRANSPORT
    auth = [e for e in seen if e.code() == KafkaError._AUTHENTICATION]
    assert auth, [e.str() for e in seen]
    assert (
        "SASL authentication error: Authentication failed during authentication due to invalid credentials "
        "with SASL mechanism SCRAM-SHA-512"
    ) in auth[0].str()


def test_kafka_client_that_cannot_verify_the_brokers_is_refused(secure_settings: Settings, foreign_ca: Path) -> None:
    config = secure_settings.kafka.client_config(**{"ssl.ca.location": str(foreign_ca)})
    error, seen = metadata_errors(config)
    assert error.code() == KafkaError._TRANSPORT
    ssl = [e for e in seen if e.code() == KafkaError._SSL]
    assert ssl, [e.str() for e in seen]
    assert "certificate verify failed" in ssl[0].str()


def test_the_pipeline_user_stays_inside_its_acls(secure_settings: Settings) -> None:
    s = secure_settings
    admin = AdminClient(s.kafka.client_config())
    name = f"{s.cdc.topic_prefix}.not-allowed-{uuid.uuid4().hex[:8]}"
    with pytest.raises(KafkaException) as refused:
        admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])[name].result()
    assert refused.value.args[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED
    # Except the backfill's empty position topics (pipeline/backfill), which it creates itself.
    backfill = f"{s.cdc.topic_prefix}.backfill.secure-{uuid.uuid4().hex[:8]}"
    admin.create_topics([NewTopic(backfill, num_partitions=1, replication_factor=1)])[backfill].result()
    root = admin_client(s.kafka)  # held: a client collected before its future resolves cancels it
    root.delete_topics([backfill])[backfill].result()
    # Connect's internal topics are invisible to it; its own topics are not.
    topics = admin.list_topics(timeout=10).topics
    assert s.cdc.engagement_topic in topics
    assert not [t for t in topics if t.startswith(f"{s.connect.group_id}-")]
    assert [t for t in root.list_topics(timeout=10).topics if t.startswith(f"{s.connect.group_id}-")]


# --- Kafka Connect ----------------------------------------------------------------------------------


def test_connect_rest_api_needs_credentials(secure_stack: LocalStack, secure_settings: Settings) -> None:
    connect = secure_settings.connect
    url = f"{connect.url}/connectors"
    assert url.startswith("https://")
    verify = connect.verify()
    assert httpx.get(url, timeout=10, verify=verify).status_code == 401
    assert httpx.get(url, timeout=10, verify=verify, auth=(connect.username, "not-the-password")).status_code == 401
    # A write without credentials is refused too (pointing the connector elsewhere is the threat).
    config_url = f"{url}/{secure_settings.cdc.connector_name}/config"
    assert httpx.put(config_url, json={"database.hostname": "elsewhere"}, timeout=10, verify=verify).status_code == 401
    answer = httpx.get(url, timeout=10, **connect.http_options())
    assert answer.status_code == 200
    assert answer.json() == [secure_settings.cdc.connector_name]


def test_connect_rest_api_is_https_only(secure_stack: LocalStack, secure_settings: Settings, foreign_ca: Path) -> None:
    connect = secure_settings.connect
    plain = f"http://{connect.host}:{connect.port}/connectors"
    # Jetty's TLS connector takes no plain HTTP request: what comes back is no HTTP at all.
    with pytest.raises(httpx.RemoteProtocolError, match="illegal request line"):
        httpx.get(plain, timeout=10, auth=connect.auth())
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(
            f"{connect.url}/connectors",
            timeout=10,
            auth=connect.auth(),
            verify=ssl.create_default_context(cafile=foreign_ca),
        )


def test_the_connector_runs_and_its_changes_arrive_over_sasl_ssl(
    secure_stack: LocalStack, secure_settings: Settings
) -> None:
    s = secure_settings
    status = secure_stack.connect.status()
    assert status is not None
    assert [status["connector"]["state"], *(t["state"] for t in status["tasks"])] == ["RUNNING", "RUNNING"]
    content_id = str(uuid.uuid4())
    slug = f"secure-{content_id[:8]}"
    with psycopg.connect(s.postgres.conninfo(), autocommit=True) as conn:
        conn.execute(
            "INSERT INTO content (id, slug, title, content_type, length_seconds, publish_ts) "
            "VALUES (%s, %s, %s, 'podcast', 42, %s)",
            (content_id, slug, "Over TLS", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)),
        )
    topic = s.cdc.content_topic
    consumer = Consumer(s.kafka.client_config(**{"group.id": f"secure-{content_id[:8]}", "enable.auto.commit": False}))
    found: list[dict[str, Any]] = []
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, 0) for p in partitions])
        deadline = time.monotonic() + 60
        while not found and time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=0.5):
                if message.error() or message.value() is None:
                    continue
                if orjson.loads(message.key()) == {"id": content_id}:
                    found.append(orjson.loads(message.value()))
    finally:
        consumer.close()
    assert found, f"no change for content {content_id} on {topic} within 60 s"
    envelope = found[0]
    assert envelope["op"] == "c"
    assert {k: envelope["after"][k] for k in ("id", "slug", "title", "content_type", "length_seconds")} == {
        "id": content_id,
        "slug": slug,
        "title": "Over TLS",
        "content_type": "podcast",
        "length_seconds": 42,
    }
