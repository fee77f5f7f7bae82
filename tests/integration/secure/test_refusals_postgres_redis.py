"""Postgres and Redis in secure mode: a client with TLS and credentials gets its answer; one without
TLS, without credentials, or that cannot verify the server is refused; and Redis' ACL users cannot
step outside their grants. Each refusal is asserted by its exact error class and message."""

from __future__ import annotations

import time
from pathlib import Path

import psycopg
import pytest
import redis
from psycopg.conninfo import make_conninfo

from infra.settings import LeaderboardSettings, Settings
from infra.stack.certificates import ensure_certificates
from infra.stack.local import LocalStack
from pipeline.instance_lock import InstanceLock
from pipeline.status.read import sample
from sinks.fencing import Fence, fence_key, guard
from sinks.flush import Flusher
from sinks.records import Contribution, EnrichedChange, SourcePosition
from sinks.redis_leaderboard import RedisLeaderboardSink

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def foreign_ca(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA that did not sign the stack's certificates."""
    return ensure_certificates(tmp_path_factory.mktemp("foreign-ca")).ca_cert


# --- Postgres ---------------------------------------------------------------------------------------


def test_postgres_answers_over_tls_with_a_verified_server(secure_stack: LocalStack, secure_settings: Settings) -> None:
    pg = secure_settings.postgres
    conninfo = pg.conninfo()
    assert "sslmode=verify-full" in conninfo
    with psycopg.connect(conninfo) as conn:
        row = conn.execute("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()").fetchone()
        assert row == (True, "TLSv1.3")
        assert conn.execute("SELECT current_user, 6 * 7").fetchone() == (pg.user, 42)


def test_postgres_refuses_a_client_without_tls(secure_stack: LocalStack, secure_settings: Settings) -> None:
    pg = secure_settings.postgres
    for conninfo in (pg.conninfo(), pg.conninfo(superuser=True), pg.conninfo(monitor=True)):
        with pytest.raises(psycopg.OperationalError) as refused:
            psycopg.connect(make_conninfo(conninfo, sslmode="disable"))
        assert type(refused.value) is psycopg.OperationalError
        assert "no pg_hba.conf entry for host" in str(refused.value)
        assert "no encryption" in str(refused.value)


def test_postgres_refuses_a_client_without_credentials(secure_stack: LocalStack, secure_settings: Settings) -> None:
    pg = secure_settings.postgres
    with pytest.raises(psycopg.OperationalError) as wrong:
        psycopg.connect(make_conninfo(pg.conninfo(), password="not-the-password"))
    assert type(wrong.value) is psycopg.OperationalError
    assert f'password authentication failed for user "{pg.user}"' in str(wrong.value)
    with pytest.raises(psycopg.OperationalError) as missing:
        psycopg.connect(make_conninfo(pg.conninfo(), password="", passfile="/dev/null"))
    assert "no password supplied" in str(missing.value)


def test_postgres_client_refuses_a_server_it_cannot_verify(
    secure_stack: LocalStack, secure_settings: Settings, foreign_ca: Path
) -> None:
    with pytest.raises(psycopg.OperationalError) as refused:
        psycopg.connect(make_conninfo(secure_settings.postgres.conninfo(), sslrootcert=str(foreign_ca)))
    assert "certificate verify failed" in str(refused.value)


def test_debezium_reads_over_tls(secure_stack: LocalStack, secure_settings: Settings) -> None:
    # The connector is RUNNING (the fixture waited for it) and holds the slot: its connections are TLS.
    pg = secure_settings.postgres
    with psycopg.connect(pg.conninfo(superuser=True)) as conn:
        rows = conn.execute(
            "SELECT a.backend_type, s.ssl FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.usename = %s",
            (pg.cdc_user,),
        ).fetchall()
    assert ("walsender", True) in rows
    assert {ssl for _, ssl in rows} == {True}


# --- Redis ------------------------------------------------------------------------------------------


def test_redis_answers_the_pipeline_user_over_tls(secure_stack: LocalStack, secure_settings: Settings) -> None:
    client = secure_settings.redis.client()
    assert client.connection_pool.connection_kwargs["ssl_ca_certs"] == str(secure_settings.stack.tls_dir / "ca.pem")
    assert client.ping() is True
    assert client.set("engagement:secure-test", "42") is True
    assert client.get("engagement:secure-test") == b"42"
    assert secure_settings.redis.client(reader=True).get("engagement:secure-test") == b"42"


def test_redis_refuses_a_client_without_tls(secure_stack: LocalStack, secure_settings: Settings) -> None:
    r = secure_settings.redis
    plain = redis.Redis(
        host=r.host, port=r.port, username=r.effective_username, password=r.password.get_secret_value(), retry=None
    )
    with pytest.raises(redis.ConnectionError):
        plain.ping()


def test_redis_refuses_a_client_without_credentials(secure_stack: LocalStack, secure_settings: Settings) -> None:
    r = secure_settings.redis
    tls = {"host": r.host, "port": r.port, "ssl": True, "ssl_ca_certs": str(r.effective_ca_file), "retry": None}
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(**tls).ping()
    # The default user is off: REDIS_PASSWORD alone (how the plain stack authenticates) is refused.
    with pytest.raises(redis.AuthenticationError, match="invalid username-password pair or user is disabled"):
        redis.Redis(**tls, password=r.password.get_secret_value()).ping()
    with pytest.raises(redis.AuthenticationError, match="invalid username-password pair or user is disabled"):
        redis.Redis(**tls, username=r.effective_username, password="not-the-password").ping()


def test_redis_client_refuses_a_server_it_cannot_verify(
    secure_stack: LocalStack, secure_settings: Settings, foreign_ca: Path
) -> None:
    r = secure_settings.redis
    client = redis.Redis(
        host=r.host,
        port=r.port,
        ssl=True,
        ssl_ca_certs=str(foreign_ca),
        username=r.effective_username,
        password=r.password.get_secret_value(),
        retry=None,
    )
    with pytest.raises(redis.ConnectionError, match="certificate verify failed"):
        client.ping()


def test_redis_pipeline_user_stays_inside_its_grant(secure_stack: LocalStack, secure_settings: Settings) -> None:
    client = secure_settings.redis.client()
    for denied in (
        client.flushall,
        lambda: client.config_get("*"),
        lambda: client.keys("*"),
        lambda: client.execute_command("SHUTDOWN"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError, match="no permissions to run"):
            denied()
    with pytest.raises(redis.exceptions.NoPermissionError, match="no permissions to access one of the keys"):
        client.set("outside:the:grant", "1")
    # A script runs with its caller's ACL: its keys and commands are checked too.
    with pytest.raises(redis.exceptions.NoPermissionError, match="no permissions to access one of the keys"):
        client.eval("return redis.call('SET', KEYS[1], '1')", 1, "outside:the:grant")
    with pytest.raises(redis.ResponseError, match="The user executing the script can't run this command") as script:
        client.eval("return redis.call('FLUSHALL')", 0)
    assert type(script.value) is redis.ResponseError  # Redis 7.0 sends this one without the NOPERM prefix


def test_redis_reader_only_reads(secure_stack: LocalStack, secure_settings: Settings) -> None:
    reader = secure_settings.redis.client(reader=True)
    assert reader.ping() is True
    for denied in (
        lambda: reader.set("engagement:secure-test", "0"),
        lambda: reader.delete("engagement:secure-test"),
        lambda: reader.eval("return 1", 0),
        reader.flushall,
    ):
        with pytest.raises(redis.exceptions.NoPermissionError, match="no permissions to run"):
            denied()


def test_the_leaderboard_sink_and_instance_lock_work_inside_the_grant(
    secure_stack: LocalStack, secure_settings: Settings
) -> None:
    # The pipeline's own Redis code (Lua scripts, SCRIPT LOAD, positions, the lock) as the ACL user:
    # a command missing from the grant would fail here with NoPermissionError.
    group = secure_settings.pipeline.consumer_group
    lock = InstanceLock(secure_settings.redis.client(), group, ttl_s=10.0)
    generation = lock.acquire()
    assert lock.refresh() is True
    minute = int(time.time() // 60)
    board = LeaderboardSettings(window_minutes=10, allowed_lateness_minutes=10)
    # Fenced by the lock's generation, as the supervisor's job is: positions.lua reads the fence key.
    sink = guard(
        RedisLeaderboardSink(secure_settings.redis, board, clock=lambda: minute * 60.0 + 5, roll_in_background=False),
        Fence(fence_key(group), generation, secure_settings.redis),
    )
    sink.open()
    try:
        flusher = Flusher(sink, _NoLetters(), ["securetest"], owns_upstream_letters=True)
        flusher.load()
        k = Contribution("c1", "video", minute, "play", 7.0, 7.0, 1)
        change = EnrichedChange(
            SourcePosition("securetest", 0, 0), b'{"id": 0}', None, "c", None, 0, None, None, None, (k,)
        )
        assert flusher.flush([change]).written == 1
        sink.roll()  # window.lua (ZUNIONSTORE over the minute buckets): raises if outside the grant
    finally:
        sink.close()
        lock.release()
    reader = secure_settings.redis.client(reader=True)
    assert reader.zscore("top_engagement:10min", "c1") == 7.0
    assert reader.zscore("top_engagement:10min:video", "c1") == 7.0


class _NoLetters:
    def send(self, letters: object) -> None:
        raise AssertionError(f"no dead letters expected: {letters}")


def test_make_status_reads_everything_as_the_reader_and_the_monitor(
    secure_stack: LocalStack, secure_settings: Settings
) -> None:
    # make status (pipeline/status) and the stack's own report read Redis as the read-only user and the
    # slot as the monitoring role over TLS: nothing they read may be refused.
    report = secure_stack.status()
    assert {name: report["services"][name]["state"] for name in ("postgres", "redis")} == {
        "postgres": "healthy",
        "redis": "healthy",
    }
    assert report["slot"] is not None and report["slot"]["active"] is True
    assert report["http_breakers"] == {}
    sampled = sample(secure_settings, sleep=lambda _: None)
    assert {k: v for k, v in sampled["errors"].items() if k in ("postgres", "redis")} == {}
    assert sampled["slot"]["slot"] == secure_settings.cdc.slot_name
