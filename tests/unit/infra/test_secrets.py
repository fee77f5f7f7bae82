"""Secrets pickle as references and resolve where they are unpickled; local defaults stay local."""

import pickle

import pytest
from apache_beam.internal import pickler

from infra import secrets
from infra.secrets import LocalDefaultPasswordError, Secret, SecretConfig, UnresolvedSecretError, is_loopback
from infra.settings import RedisSettings, Settings


@pytest.fixture(autouse=True)
def clean(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # no .env file
    for name in (
        "REDIS_HOST",
        "REDIS_PASSWORD",
        "POSTGRES_HOST",
        "KAFKA_BOOTSTRAP",
        "KAFKA_SECURITY_PROTOCOL",
        "STACK_SECURE",
        "ALLOW_LOCAL_DEFAULT_PASSWORDS",
    ):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def another_process(monkeypatch):
    """Unpickle as a worker process would: nothing held in this one's memory."""

    def load(blob: bytes) -> object:
        monkeypatch.setattr(secrets, "_held", {})
        return pickle.loads(blob)

    return load


def test_a_pickled_secret_carries_no_value_and_resolves_in_the_same_process(monkeypatch):
    monkeypatch.setenv("REDIS_PASSWORD", "s3cret-in-env")
    settings = RedisSettings()
    blob = pickler.dumps(settings)
    assert b"s3cret-in-env" not in pickle.dumps(settings)
    assert pickler.loads(blob).password.get_secret_value() == "s3cret-in-env"


def test_in_another_process_a_secret_is_read_from_its_setting(monkeypatch, another_process):
    settings = RedisSettings(password="given-in-code")
    blob = pickle.dumps(settings)
    monkeypatch.setenv("REDIS_PASSWORD", "the-workers-own")
    restored = another_process(blob)
    assert restored.password.get_secret_value() == "the-workers-own"
    assert restored.password.setting == "REDIS_PASSWORD"


def test_in_another_process_an_unset_setting_falls_back_to_its_default(another_process):
    restored = another_process(pickle.dumps(RedisSettings(password="x")))
    assert restored.password.get_secret_value() == "redis-local"


def test_a_secret_of_no_setting_cannot_be_resolved_elsewhere(another_process):
    blob = pickle.dumps(Secret("loose"))
    assert b"loose" not in blob
    with pytest.raises(UnresolvedSecretError, match="given in code"):
        another_process(blob).get_secret_value()


def test_a_secret_manager_reference_pickles_as_itself_and_is_fetched_on_use(monkeypatch, another_process):
    fetched = []
    monkeypatch.setattr(secrets, "_secret_manager", lambda resource: fetched.append(resource) or "from-sm")
    reference = "secretmanager:projects/p/secrets/redis/versions/2"
    monkeypatch.setenv("REDIS_PASSWORD", reference)
    restored = another_process(pickle.dumps(RedisSettings()))
    assert restored.password.get_secret_value() == "from-sm"
    assert fetched == ["projects/p/secrets/redis/versions/2"]


def test_a_client_config_pickles_its_secret_entries_as_references():
    config = SecretConfig({"bootstrap.servers": "b:9092"}, {"sasl.password": Secret("kafka-pw")})
    assert config == {"bootstrap.servers": "b:9092", "sasl.password": "kafka-pw"}
    more = config.with_(**{"group.id": "g"})
    blob = pickle.dumps(more)
    assert b"kafka-pw" not in blob
    assert pickle.loads(blob) == {"bootstrap.servers": "b:9092", "group.id": "g", "sasl.password": "kafka-pw"}


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.0.0.12", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("10.0.0.5", False),
        ("redis", False),
        ("0.0.0.0", False),
        ("redis.example.com", False),
    ],
)
def test_loopback_hosts(host, loopback):
    assert is_loopback(host) is loopback


def test_local_default_passwords_are_refused_where_they_would_reach_a_host_off_loopback(monkeypatch):
    monkeypatch.setenv("REDIS_HOST", "10.0.0.6")
    monkeypatch.setenv("POSTGRES_HOST", "db.internal")
    settings = Settings()  # building them is fine: a process may never connect to either
    with pytest.raises(LocalDefaultPasswordError) as info:
        settings.redis.client()
    assert str(info.value) == (
        "REDIS_PASSWORD holds the local default from this repository, refused for 10.0.0.6, which is not "
        "loopback: set your own (docs/security.md)"
    )
    with pytest.raises(LocalDefaultPasswordError, match=r"^POSTGRES_MONITOR_PASSWORD holds"):
        settings.postgres.conninfo(monitor=True)
    monkeypatch.setenv("REDIS_PASSWORD", "chosen")
    assert Settings().redis.client().connection_pool.connection_kwargs["password"] == "chosen"


def test_compose_may_keep_the_local_defaults_on_its_private_network(monkeypatch):
    monkeypatch.setenv("REDIS_HOST", "redis")
    monkeypatch.setenv("ALLOW_LOCAL_DEFAULT_PASSWORDS", "true")
    assert Settings().redis.client().connection_pool.connection_kwargs["password"] == "redis-local"


def test_local_defaults_on_loopback_are_fine():
    assert "password=engagement-local " in Settings().postgres.conninfo()


def test_a_sasl_kafka_off_loopback_needs_its_own_password(monkeypatch):
    monkeypatch.setenv("KAFKA_BOOTSTRAP", "127.0.0.1:9093,kafka-1.internal:9093")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    refused = r"^KAFKA_SASL_PASSWORD holds .* refused for 127\.0\.0\.1, kafka-1"
    with pytest.raises(LocalDefaultPasswordError, match=refused):
        Settings().kafka.client_config()
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "PLAINTEXT")
    assert "sasl.password" not in Settings().kafka.client_config()
