import pytest
from pydantic import ValidationError

from infra.settings import CdcSettings, GeneratorSettings, PostgresSettings, Settings


def test_seed_004_variable_names(monkeypatch):
    monkeypatch.setenv("GENERATION_RATE", "400000")
    monkeypatch.setenv("BURST_MODE", "true")
    monkeypatch.setenv("BURST_COUNT", "1234")
    gen = GeneratorSettings()
    assert (gen.generation_rate, gen.burst_mode, gen.burst_count) == (400_000, True, 1234)
    assert gen.rate_per_second == pytest.approx(6666.67, rel=1e-3)


def test_prefixed_service_settings(monkeypatch):
    monkeypatch.setenv("POSTGRES_PORT", "6000")
    monkeypatch.setenv("REDIS_PASSWORD", "s3cret")
    monkeypatch.setenv("CDC_TOPIC_PREFIX", "demo")
    settings = Settings()
    assert settings.postgres.port == 6000
    assert settings.redis.password.get_secret_value() == "s3cret"
    assert settings.cdc.engagement_topic == "demo.public.engagement_events"
    assert settings.cdc.content_topic == "demo.public.content"
    assert settings.cdc.heartbeat_topic == "__debezium-heartbeat.demo"


def test_secrets_never_in_repr():
    settings = Settings()
    text = repr(settings) + str(settings.model_dump())
    for secret in ("engagement-local", "debezium-local", "redis-local", "postgres-local"):
        assert secret not in text


def test_settings_are_frozen():
    with pytest.raises(ValidationError):
        PostgresSettings().port = 1  # type: ignore[misc]


def test_defaults_listen_on_loopback_only():
    settings = Settings()
    for part in (settings.postgres, settings.kafka, settings.connect, settings.redis):
        assert part.host == "127.0.0.1"


@pytest.mark.parametrize("name", ["1slot", "slot name", "slot;drop", ""])
def test_identifiers_are_checked(name):
    with pytest.raises(ValidationError):
        CdcSettings(slot_name=name)


def test_conninfo_uses_the_right_role():
    pg = PostgresSettings()
    assert "user=engagement " in pg.conninfo()
    assert "user=postgres " in pg.conninfo(superuser=True)
    assert "dbname=postgres " in pg.conninfo(superuser=True, dbname="postgres")


def test_one_broker_by_default_and_three_on_request(monkeypatch):
    from infra.settings import KafkaSettings

    one = KafkaSettings()
    assert (one.brokers, one.replication_factor, one.min_insync_replicas) == (1, 1, 1)
    assert one.bootstrap_servers == "127.0.0.1:59092"
    monkeypatch.setenv("KAFKA_BROKERS", "3")
    three = KafkaSettings()
    assert (three.replication_factor, three.min_insync_replicas) == (3, 2)
    assert three.bootstrap_servers == "127.0.0.1:59092,127.0.0.1:59102,127.0.0.1:59112"
    assert three.controller_ports == [59093, 59103, 59113]
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "kafka:9092,kafka-2:9092")
    assert KafkaSettings().bootstrap_servers == "kafka:9092,kafka-2:9092"


@pytest.mark.parametrize("count", ["0", "2", "5"])
def test_brokers_are_one_or_three(monkeypatch, count):
    from infra.settings import KafkaSettings

    monkeypatch.setenv("KAFKA_BROKERS", count)
    with pytest.raises(ValidationError, match="1 or 3"):
        KafkaSettings()


def test_producers_wait_for_every_in_sync_replica_and_never_write_twice():
    from infra.settings import KafkaSettings

    config = KafkaSettings().producer_config(**{"linger.ms": 5})
    assert (config["acks"], config["enable.idempotence"], config["linger.ms"]) == ("all", True, 5)
