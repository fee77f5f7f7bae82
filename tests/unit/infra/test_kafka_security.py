"""Kafka and Connect in secure mode, offline: the clients' librdkafka settings, the brokers' and the
Connect worker's files, the storage format, the users' ACLs and Connect's REST credentials."""

import pickle
import stat

import pytest
from confluent_kafka.admin import AclOperation, ResourcePatternType, ResourceType

from infra.process import StackError
from infra.settings import CdcSettings, ConnectSettings, KafkaSettings, Settings, StackSettings
from infra.stack.certificates import TlsFiles, ensure_certificates
from infra.stack.kafka import CONF_DIR, Kafka, jaas_quote, scram_argument, server_properties
from infra.stack.kafka_admin import acl_bindings


def secure(tmp_path, **kafka) -> Settings:
    return Settings(kafka=KafkaSettings(**kafka), stack=StackSettings(dir=tmp_path, secure=True))


def props(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if line and not line.startswith("#"))


def test_plain_clients_are_unchanged():
    assert Settings().kafka.client_config(**{"group.id": "g"}) == {
        "bootstrap.servers": "127.0.0.1:59092",
        "message.max.bytes": 5_242_880,
        "group.id": "g",
    }


def test_secure_mode_clients_use_sasl_ssl_scram_and_the_stack_ca(tmp_path):
    config = secure(tmp_path).kafka.client_config(**{"group.id": "g"})
    assert dict(config) == {
        "bootstrap.servers": "127.0.0.1:59092",
        "message.max.bytes": 5_242_880,
        "security.protocol": "SASL_SSL",
        "sasl.mechanisms": "SCRAM-SHA-512",
        "sasl.username": "engagement",
        "sasl.password": "kafka-engagement-local",
        "ssl.ca.location": str(tmp_path / "tls" / "ca.pem"),
        "group.id": "g",
    }
    # Producers get the same, plus acks=all and idempotence.
    producer = secure(tmp_path).kafka.producer_config()
    assert (producer["security.protocol"], producer["acks"], producer["enable.idempotence"]) == (
        "SASL_SSL",
        "all",
        True,
    )


def test_the_admin_client_is_the_admin_user(tmp_path):
    config = secure(tmp_path, admin_username="root", admin_password="s3cret").kafka.client_config(admin=True)
    assert (config["sasl.username"], config["sasl.password"]) == ("root", "s3cret")


def test_explicit_settings_win_over_secure_mode(tmp_path):
    settings = secure(
        tmp_path,
        security_protocol="PLAINTEXT",
    )
    assert "security.protocol" not in settings.kafka.client_config()
    managed = Settings(
        kafka=KafkaSettings(
            security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-256",
            sasl_username="svc",
            sasl_password="pw",
            ssl_ca_location="/etc/ca.pem",
        )
    ).kafka.client_config()
    assert {k: managed[k] for k in ("sasl.mechanisms", "sasl.username", "sasl.password", "ssl.ca.location")} == {
        "sasl.mechanisms": "SCRAM-SHA-256",
        "sasl.username": "svc",
        "sasl.password": "pw",
        "ssl.ca.location": "/etc/ca.pem",
    }


def test_the_password_never_pickles_with_the_client_config(tmp_path):
    config = secure(tmp_path, sasl_password="do-not-ship-me").kafka.client_config()
    blob = pickle.dumps(config)
    assert b"do-not-ship-me" not in blob
    assert pickle.loads(blob)["sasl.password"] == "do-not-ship-me"


def test_brokers_in_secure_mode_authenticate_every_listener(tmp_path):
    settings = secure(tmp_path, brokers=3, admin_password="adm1n").kafka
    kafka = Kafka(settings, tmp_path, tmp_path / "lib", TlsFiles(tmp_path / "tls"))
    text = server_properties(
        (CONF_DIR / "server.properties").read_text(),
        settings,
        kafka.nodes[1],
        secure=(CONF_DIR / "server-secure.properties").read_text(),
        tls=kafka.tls,
    )
    p = props(text)
    assert p["listeners"] == "SASL_SSL://127.0.0.1:59102,CONTROLLER://127.0.0.1:59103"
    assert p["inter.broker.listener.name"] == "SASL_SSL"
    assert p["listener.security.protocol.map"] == "CONTROLLER:SASL_SSL,SASL_SSL:SASL_SSL"
    assert p["sasl.mechanism.inter.broker.protocol"] == "SCRAM-SHA-512"
    assert p["listener.name.sasl_ssl.sasl.enabled.mechanisms"] == "SCRAM-SHA-512"
    assert p["sasl.mechanism.controller.protocol"] == "PLAIN"
    assert p["listener.name.controller.plain.sasl.jaas.config"] == (
        'org.apache.kafka.common.security.plain.PlainLoginModule required username="admin" password="adm1n" '
        'user_admin="adm1n";'
    )
    assert (p["ssl.keystore.type"], p["ssl.keystore.location"]) == (
        "PEM",
        str(tmp_path / "tls" / "server-keystore.pem"),
    )
    assert (p["ssl.truststore.type"], p["ssl.truststore.location"]) == ("PEM", str(tmp_path / "tls" / "ca.pem"))
    assert p["authorizer.class.name"] == "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
    assert (p["super.users"], p["allow.everyone.if.no.acl.found"]) == ("User:admin", "false")


def test_plain_brokers_have_no_security_lines(tmp_path):
    kafka = Kafka(KafkaSettings(), tmp_path, tmp_path / "lib")
    kafka.write_config()
    p = props(kafka.nodes[0].properties.read_text())
    assert p["listener.security.protocol.map"] == "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT"
    assert not [k for k in p if k.startswith(("sasl.", "ssl.", "listener.name.", "authorizer", "super.users"))]


def test_the_secure_server_properties_are_private(tmp_path):
    kafka = Kafka(secure(tmp_path).kafka, tmp_path, tmp_path / "lib", TlsFiles(tmp_path / "tls"))
    kafka.write_config()
    assert stat.S_IMODE(kafka.nodes[0].properties.stat().st_mode) == 0o600


def test_storage_formatted_plain_is_refused_in_secure_mode(tmp_path):
    kafka = Kafka(secure(tmp_path).kafka, tmp_path, tmp_path / "lib", TlsFiles(tmp_path / "tls"))
    (tmp_path / "kafka" / "data").mkdir(parents=True)
    (tmp_path / "kafka" / "data" / "meta.properties").write_text("node.id=1\n")
    with pytest.raises(StackError, match="formatted for PLAINTEXT listeners, and this stack wants SASL_SSL"):
        kafka.ensure_formatted()


@pytest.mark.parametrize("bad", ['pa"ss', "pa\\ss", "pa\nss"])
def test_passwords_that_would_break_jaas_are_refused(bad):
    with pytest.raises(StackError):
        jaas_quote(bad)


def test_the_admin_credential_for_the_storage_tool():
    assert scram_argument("admin", "pw") == "SCRAM-SHA-512=[name=admin,password=pw]"
    with pytest.raises(StackError):
        scram_argument("admin", "a,b")


def test_each_user_gets_only_its_own_acls():
    cdc = CdcSettings(topic_prefix="engagement")
    granted = {
        (b.principal, b.restype, b.name, b.resource_pattern_type, b.operation)
        for b in acl_bindings(cdc, pipeline_user="app", connect_user="cx", connect_group="engagement-connect")
    }
    topic, prefixed = ResourceType.TOPIC, ResourcePatternType.PREFIXED
    pipeline = {g[1:] for g in granted if g[0] == "User:app"}
    assert {(t, n, p, o) for t, n, p, o in pipeline if t == topic} == {
        (topic, "engagement.", prefixed, op)
        for op in (AclOperation.READ, AclOperation.WRITE, AclOperation.DESCRIBE, AclOperation.DESCRIBE_CONFIGS)
    } | {(topic, "engagement.backfill.", prefixed, op) for op in (AclOperation.CREATE, AclOperation.ALTER)}
    # The pipeline can create and grow only the backfill's position topics; nothing of Connect's.
    assert {g[1] for g in pipeline if g[3] in (AclOperation.CREATE, AclOperation.ALTER, AclOperation.ALL)} == {
        "engagement.backfill."
    }
    connect = {g[1:] for g in granted if g[0] == "User:cx"}
    assert (topic, "engagement-connect-", prefixed, AclOperation.ALL) in connect
    assert (topic, "__debezium-heartbeat.engagement", ResourcePatternType.LITERAL, AclOperation.WRITE) in connect
    assert (topic, "engagement.", prefixed, AclOperation.READ) not in connect
    assert {g[0] for g in granted} == {"User:app", "User:cx"}


def connect_in(tmp_path, **connect):
    from infra.stack.connect import Connect

    settings = Settings(connect=ConnectSettings(**connect), stack=StackSettings(dir=tmp_path, secure=True))
    if not (settings.stack.lib_dir / "connect-plugins" / "debezium-postgres").is_dir():
        pytest.skip("needs the Debezium plugin folder (make bootstrap)")
    ensure_certificates(tmp_path / "tls")
    return Connect(settings)


def test_the_connect_worker_and_its_clients_use_sasl_ssl_as_connect(tmp_path):
    connect = connect_in(tmp_path, kafka_password="cx-pw")
    connect.write_config()
    p = props(connect.properties.read_text())
    jaas = 'org.apache.kafka.common.security.scram.ScramLoginModule required username="connect" password="cx-pw";'
    for prefix in ("", "producer.", "consumer.", "admin."):
        assert p[f"{prefix}security.protocol"] == "SASL_SSL"
        assert p[f"{prefix}sasl.mechanism"] == "SCRAM-SHA-512"
        assert p[f"{prefix}sasl.jaas.config"] == jaas
        assert p[f"{prefix}ssl.truststore.type"] == "PEM"
        assert p[f"{prefix}ssl.truststore.location"] == str(tmp_path / "tls" / "ca.pem")
    assert stat.S_IMODE(connect.properties.stat().st_mode) == 0o600


def test_the_connect_rest_api_asks_for_credentials_in_secure_mode(tmp_path):
    connect = connect_in(tmp_path, username="ops", password="rest-pw")
    connect.write_config()
    p = props(connect.properties.read_text())
    assert p["rest.extension.classes"] == (
        "org.apache.kafka.connect.rest.basic.auth.extension.BasicAuthSecurityRestExtension"
    )
    assert connect.rest_users.read_text() == "ops=rest-pw\n"
    assert f'file="{connect.rest_users}"' in connect.rest_jaas.read_text()
    assert f"-Djava.security.auth.login.config={connect.rest_jaas}" in connect.process.command
    for path in (connect.rest_users, connect.rest_jaas):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert connect.http["auth"] == ("ops", "rest-pw")


def test_the_connect_rest_api_stays_open_in_plain_mode(tmp_path):
    settings = Settings(stack=StackSettings(dir=tmp_path))
    assert settings.connect.auth() is None
    assert Settings(connect=ConnectSettings(rest_auth=True), stack=StackSettings(dir=tmp_path)).connect.auth() == (
        "engagement",
        "connect-local",
    )


def test_kafkaio_refuses_sasl(tmp_path):
    from pipeline.sources.kafkaio import KafkaIOUnavailable, java_consumer_config

    with pytest.raises(KafkaIOUnavailable, match="SASL_SSL"):
        java_consumer_config(secure(tmp_path).kafka.client_config(**{"group.id": "g"}))
    assert java_consumer_config(Settings().kafka.client_config(**{"group.id": "g"}))["group.id"] == "g"


def test_empty_variables_follow_secure_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "")
    monkeypatch.setenv("CONNECT_REST_AUTH", "")
    settings = Settings(stack=StackSettings(dir=tmp_path, secure=True))
    assert settings.kafka.effective_security_protocol == "SASL_SSL"
    assert settings.connect.effective_rest_auth is True


def test_env_example_lists_every_kafka_and_connect_security_setting():
    from infra.settings import REPO_ROOT

    example = (REPO_ROOT / ".env.example").read_text()
    for group, prefix in ((KafkaSettings, "KAFKA_"), (ConnectSettings, "CONNECT_")):
        for name in ("security_protocol", "sasl_mechanism", "sasl_username", "sasl_password", "ssl_ca_location"):
            if name in group.model_fields:
                assert f"\n{prefix}{name.upper()}=" in example
    for name in ("KAFKA_ADMIN_USERNAME", "KAFKA_ADMIN_PASSWORD", "CONNECT_REST_AUTH", "CONNECT_USERNAME"):
        assert f"\n{name}=" in example
    for name in ("CONNECT_PASSWORD", "CONNECT_KAFKA_USERNAME", "CONNECT_KAFKA_PASSWORD", "CONNECT_REST_TLS"):
        assert f"\n{name}=" in example


def test_the_connect_rest_api_is_https_only_in_secure_mode(tmp_path):
    from cryptography.hazmat.primitives.serialization import pkcs12

    connect = connect_in(tmp_path)
    assert connect.url == "https://127.0.0.1:58083"
    connect.write_config()
    p = props(connect.properties.read_text())
    assert p["listeners"] == "https://127.0.0.1:58083"
    assert p["rest.advertised.listener"] == "https"
    assert p["listeners.https.ssl.keystore.type"] == "PKCS12"
    password = p["listeners.https.ssl.keystore.password"]
    key, cert, cas = pkcs12.load_key_and_certificates(connect.rest_keystore.read_bytes(), password.encode())
    assert cert.subject.rfc4514_string() == "CN=engagement-server"
    assert key is not None and len(cas) == 1
    assert stat.S_IMODE(connect.rest_keystore.stat().st_mode) == 0o600
    verify = connect.http["verify"]
    assert verify is not True and verify.verify_mode.name == "CERT_REQUIRED"


def test_the_connect_rest_api_stays_http_in_plain_mode():
    assert Settings().connect.url == "http://127.0.0.1:58083"
    assert Settings().connect.http_options() == {"auth": None, "verify": True}
