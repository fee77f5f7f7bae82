"""``python -m tests.integration.gevent_concurrency N TIMEOUT_S``: are N greenlets in Postgres and Redis at once?

Run in a process that imports locust first, as ``locust -f`` runs the locustfile (gevent's monkey
patching). Each of N greenlets opens a psycopg connection and waits *inside Postgres* until all N
sessions have been active together; then each blocks in ``BLPOP`` until the main greenlet, having seen N
blocked clients, pushes N items. If a client library blocked the whole process while it waits, the
first greenlet would wait alone until its timeout: the run fails instead of printing ``concurrent N N``.
"""

from __future__ import annotations

import sys
import uuid

import gevent
import locust  # noqa: F401 - before psycopg: gevent patches the process, then psycopg picks its wait function
import psycopg

from infra.settings import Settings


def in_postgres(settings: Settings, tag: str, n: int, timeout_s: float) -> psycopg.Connection:
    """Wait in Postgres until N sessions named ``tag`` are active at once; the first to see it renames
    itself ``{tag}-go`` and every session leaves once that name shows. Returns the open connection
    (closed by the caller once all are out, so the ``-go`` session stays visible)."""
    conn = psycopg.connect(settings.postgres.conninfo(), autocommit=True, application_name=tag)
    conn.execute(f"SET statement_timeout = '{int(timeout_s * 1000)}ms'")
    # The activity view is a snapshot per transaction: cleared each turn to see the others arrive.
    conn.execute(
        "DO $$ BEGIN "
        f"WHILE NOT EXISTS (SELECT 1 FROM pg_stat_activity WHERE application_name = '{tag}-go') LOOP "
        f"IF (SELECT count(*) FROM pg_stat_activity WHERE application_name = '{tag}' AND state = 'active') >= {n} "
        f"THEN PERFORM set_config('application_name', '{tag}-go', false); "
        "ELSE PERFORM pg_sleep(0.01); END IF; "
        "PERFORM pg_stat_clear_snapshot(); END LOOP; END $$"
    )
    return conn


def in_redis(settings: Settings, key: str, timeout_s: float) -> int:
    return 0 if settings.redis.client().blpop([key], timeout=timeout_s) is None else 1


def main(argv: list[str]) -> int:
    n, timeout_s = int(argv[0]), float(argv[1])
    settings = Settings()
    tag = f"gevent-check-{uuid.uuid4().hex[:8]}"
    in_pg = [gevent.spawn(in_postgres, settings, tag, n, timeout_s) for _ in range(n)]
    gevent.joinall(in_pg, raise_error=True)
    for greenlet in in_pg:
        greenlet.value.close()
    control = settings.redis.client()
    waiting = [gevent.spawn(in_redis, settings, tag, timeout_s) for _ in range(n)]
    deadline = gevent.get_hub().loop.now() + timeout_s
    while int(control.info("clients")["blocked_clients"]) < n and gevent.get_hub().loop.now() < deadline:
        gevent.sleep(0.01)
    control.rpush(tag, *range(n))
    gevent.joinall(waiting, raise_error=True)
    control.delete(tag)
    print(f"concurrent {len(in_pg)} {sum(g.value for g in waiting)}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
