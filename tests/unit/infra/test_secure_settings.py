"""Secure mode's client settings (STACK_SECURE) and what the stack writes for Postgres and Redis in it:
plain mode unchanged, secure mode verifying TLS and named users, and the Redis ACL as the grant says."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from infra.settings import PostgresSettings, RedisSettings, Settings, StackSettings
from infra.stack.postgres import hba_rules
from infra.stack.redis_server import PIPELINE_COMMANDS, READER_COMMANDS, RedisServer, acl_lines, pipeline_key_patterns

PLAIN_TAIL = "connect_timeout=5 application_name=engagement"


def settings(tmp_path: Path, *, secure: bool, **groups: object) -> Settings:
    return Settings(stack=StackSettings(dir=tmp_path, secure=secure), **groups)  # type: ignore[arg-type]


def test_plain_mode_changes_nothing(tmp_path: Path) -> None:
    s = settings(tmp_path, secure=False)
    assert s.postgres.conninfo().endswith(PLAIN_TAIL)
    kwargs = s.redis.client().connection_pool.connection_kwargs
    assert (kwargs["username"], kwargs["password"]) == (None, "redis-local")
    assert "ssl_ca_certs" not in kwargs
    # reader=True is the same default-user client when Redis has no users.
    assert s.redis.client(reader=True).connection_pool.connection_kwargs["username"] is None


def test_secure_mode_verifies_postgres_against_the_stack_ca(tmp_path: Path) -> None:
    s = settings(tmp_path, secure=True)
    assert s.postgres.conninfo().endswith(f"{PLAIN_TAIL} sslmode=verify-full sslrootcert={tmp_path}/tls/ca.pem")
    # A setting given by hand wins over the secure default, and a path with a space is quoted.
    pg = PostgresSettings(sslmode="require", sslrootcert=Path("/a b/ca.pem"))
    s = settings(tmp_path, secure=True, postgres=pg)
    assert s.postgres.conninfo().endswith(f"{PLAIN_TAIL} sslmode=require sslrootcert='/a b/ca.pem'")


def test_secure_mode_opens_redis_with_tls_and_named_users(tmp_path: Path) -> None:
    s = settings(tmp_path, secure=True)
    kwargs = s.redis.client().connection_pool.connection_kwargs
    assert kwargs["ssl_ca_certs"] == f"{tmp_path}/tls/ca.pem"
    assert (kwargs["ssl_cert_reqs"], kwargs["ssl_check_hostname"]) == ("required", True)
    assert (kwargs["username"], kwargs["password"]) == ("engagement-pipeline", "redis-local")
    reader = s.redis.client(reader=True).connection_pool.connection_kwargs
    assert (reader["username"], reader["password"]) == ("engagement-reader", "reader-local")


def test_the_secure_defaults_follow_the_settings_that_hold_the_group(tmp_path: Path) -> None:
    # The test fixtures copy groups from one Settings into another with another STACK_DIR.
    first = settings(tmp_path / "one", secure=True)
    second = settings(tmp_path / "two", secure=True, postgres=first.postgres, redis=first.redis)
    assert second.postgres.effective_sslrootcert == tmp_path / "two" / "tls" / "ca.pem"
    assert first.postgres.effective_sslrootcert == tmp_path / "one" / "tls" / "ca.pem"
    plain = settings(tmp_path, secure=False, postgres=first.postgres, redis=first.redis)
    assert (plain.postgres.effective_sslmode, plain.redis.effective_tls) == (None, False)
    # A pickled group (the job graph) keeps its view.
    assert pickle.loads(pickle.dumps(second.postgres)).conninfo() == second.postgres.conninfo()


def test_empty_variables_mean_unset(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in ("POSTGRES_SSLMODE", "POSTGRES_SSLROOTCERT", "REDIS_TLS", "REDIS_CA_FILE", "REDIS_USERNAME"):
        monkeypatch.setenv(name, "")
    s = settings(tmp_path, secure=True)
    assert (s.postgres.effective_sslmode, s.redis.effective_tls, s.redis.effective_username) == (
        "verify-full",
        True,
        "engagement-pipeline",
    )


def test_secure_pg_hba_takes_tls_connections_only() -> None:
    lines = [line for line in hba_rules(PostgresSettings(), connection_type="hostssl").splitlines() if line[:1] != "#"]
    tcp = [line for line in lines if not line.startswith("local ")]
    # Every TCP line that lets anyone in needs TLS; the one plain "host" line is a reject.
    assert {line.split()[0] for line in tcp if not line.endswith("reject")} == {"hostssl"}
    assert [line for line in tcp if line.startswith("host ")] == ['host all "debezium" all reject']


def test_redis_acl_turns_the_default_user_off_and_grants_no_dangerous_command() -> None:
    lines = acl_lines(RedisSettings())
    assert lines[0] == "user default reset off"
    pipeline, reader = lines[1].split(), lines[2].split()
    assert pipeline[:4] == ["user", "engagement-pipeline", "reset", "on"]
    assert reader[:4] == ["user", "engagement-reader", "reset", "on"]
    assert "redis-local" not in lines[1] and "reader-local" not in lines[2]  # hashed
    dangerous = {"flushall", "flushdb", "config", "keys", "debug", "shutdown", "module", "acl", "script|flush"}
    assert not dangerous & set(PIPELINE_COMMANDS)
    assert not {"set", "del", "eval", "hset", "rename"} & set(READER_COMMANDS)
    assert "~*" not in pipeline  # no pattern matching every key


def test_redis_key_patterns_follow_the_key_prefix() -> None:
    assert pipeline_key_patterns("") == [
        "engagement:*",
        "top_engagement:*",
        "content:*",
        "rebuild:*",
        "http_breaker:*",
        "",
    ]
    assert "staging:top_engagement:*" in pipeline_key_patterns("staging:")
    assert "engagement:*" in pipeline_key_patterns("staging:")  # the instance lock has no prefix


def test_redis_config_listens_on_tls_only_in_secure_mode(tmp_path: Path) -> None:
    from infra.stack.certificates import TlsFiles

    secure = RedisServer(RedisSettings(), tmp_path, TlsFiles(tmp_path / "tls"))
    secure.write_config()
    text = secure.conf.read_text().splitlines()
    assert "port 0" in text and "tls-port 56379" in text and "requirepass" not in " ".join(text)
    assert f"tls-ca-cert-file {tmp_path}/tls/ca.pem" in text
    plain = RedisServer(RedisSettings(), tmp_path / "plain")
    plain.write_config()
    text = plain.conf.read_text().splitlines()
    assert "port 56379" in text and "requirepass redis-local" in text
    assert not [line for line in text if line.startswith(("tls-", "user "))]


def test_debezium_verifies_postgres_in_secure_mode_only(tmp_path: Path) -> None:
    from infra.stack.connect import connector_config

    secure = connector_config(settings(tmp_path, secure=True))
    assert (secure["database.sslmode"], secure["database.sslrootcert"]) == ("verify-full", f"{tmp_path}/tls/ca.pem")
    plain = connector_config(settings(tmp_path, secure=False))
    assert "database.sslmode" not in plain and "database.sslrootcert" not in plain  # Debezium's default
