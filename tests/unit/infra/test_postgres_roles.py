"""Least privilege in the native Postgres: the server's pg_hba.conf and the monitoring role's login.

The grants themselves are checked against a real server in tests/integration/test_cdc_capture.py.
"""

from __future__ import annotations

import pytest

from infra.settings import PostgresSettings
from infra.stack.postgres import hba_rules


def rules(settings: PostgresSettings, **kwargs: str) -> list[list[str]]:
    return [line.split() for line in hba_rules(settings, **kwargs).splitlines() if not line.startswith("#")]


def first_match(table: list[list[str]], kind: str, db: str, user: str) -> list[str]:
    """pg_hba's first-match rule, for the lines hba_rules writes (no groups, no files)."""

    def name_matches(pattern: str, name: str) -> bool:
        return pattern == "all" or pattern == f'"{name}"'

    for line in table:
        if line[0] == "local" and kind != "local":
            continue
        if line[0] != "local" and kind == "local":
            continue
        if name_matches(line[1], db) and name_matches(line[2], user):
            return line
    raise AssertionError(f"no line matches {kind} {db} {user}")


def test_the_cdc_role_reaches_the_application_database_only():
    pg = PostgresSettings(db="engagement_db", cdc_user="debezium")
    table = rules(pg)
    assert first_match(table, "host", "engagement_db", "debezium")[-1] == "scram-sha-256"
    assert first_match(table, "host", "postgres", "debezium")[-1] == "reject"
    assert first_match(table, "host", "template1", "debezium")[-1] == "reject"


def test_other_roles_authenticate_with_scram_from_the_loopback_only():
    table = rules(PostgresSettings())
    for user in ("engagement", "engagement_monitor", "postgres"):
        line = first_match(table, "host", "engagement_db", user)
        assert line[-1] == "scram-sha-256" and line[3] in ("127.0.0.1/32", "::1/128")
    assert {tuple(line[3:]) for line in table if line[0] == "host" and line[2] == "all"} == {
        ("127.0.0.1/32", "scram-sha-256"),
        ("::1/128", "scram-sha-256"),
    }
    assert first_match(table, "local", "engagement_db", "postgres")[-1] == "peer"


def test_no_line_allows_physical_replication():
    # Physical replication connections match only lines naming the "replication" keyword.
    assert not any(line[1] in ("replication", "all,replication") for line in rules(PostgresSettings()))
    assert "trust" not in hba_rules(PostgresSettings())


def test_names_are_quoted_so_keywords_stay_literal():
    table = rules(PostgresSettings(db="all", cdc_user="replication"))
    assert ["host", '"all"', '"replication"', "127.0.0.1/32", "scram-sha-256"] in table
    assert ["host", "all", '"replication"', "all", "reject"] in table


def test_secure_mode_can_require_tls_on_the_accepting_lines():
    table = rules(PostgresSettings(), connection_type="hostssl")
    accepting = [line for line in table if line[-1] == "scram-sha-256"]
    assert accepting and all(line[0] == "hostssl" for line in accepting)


def test_monitor_conninfo_uses_the_monitoring_role():
    pg = PostgresSettings(monitor_user="mon", monitor_password="m-secret")
    info = pg.conninfo(monitor=True)
    assert "user=mon " in info and "password=m-secret " in info
    assert pg.superuser_password.get_secret_value() not in info
    with pytest.raises(ValueError, match="not both"):
        pg.conninfo(monitor=True, superuser=True)


def test_make_status_reads_the_slot_as_the_monitoring_role(monkeypatch):
    import fakeredis

    from infra.settings import Settings
    from pipeline.status import read

    seen: list[str] = []
    monkeypatch.setattr(read, "read_slot", lambda conninfo, slot: seen.append(conninfo))
    monkeypatch.setattr(read, "read_connector", lambda url, name, **kwargs: None)
    settings = Settings(pipeline={"sinks": "redis"})
    read.read_once(settings, fakeredis.FakeRedis(), {})
    pg = settings.postgres
    assert len(seen) == 1 and f"user={pg.monitor_user} " in seen[0]
    assert pg.superuser_password.get_secret_value() not in seen[0]
