"""Only the thread that started the emulator's DuckDB engine uses its connection
(``one_connection_per_thread`` in infra/bigquery_emulator/launch.py).

bqemulator runs in its own venv (``.stack/bqemu-venv``), so the checks run there, in a child
process, against bqemulator's real ``DuckDBEngine``; only its start-up is a fake (an in-memory
database, without the extensions and UDFs the real one loads).
"""

from __future__ import annotations

import textwrap

CHECKS = textwrap.dedent(
    """
    import asyncio, sys, threading
    import duckdb
    sys.path.insert(0, "infra/bigquery_emulator")
    import launch
    from bqemulator.storage.engine import DuckDBEngine

    async def start(self):
        self._connection = duckdb.connect()
        self._connection.execute("SET TimeZone = 'UTC'")

    DuckDBEngine.start = start
    if sys.argv[1] == "patched":
        launch.one_connection_per_thread()
    engine = DuckDBEngine(None)
    asyncio.run(engine.start())  # on this thread, as the emulator starts it on its event loop's
    main = engine.connection
    engine.execute("CREATE TABLE t AS SELECT 42 AS n")
    pending = engine.execute("SELECT n FROM t")  # a REST query, between its execute and its fetch

    def grpc_thread():  # a handler thread: reads, then writes, as an append's row-count update does
        own = engine.connection
        zone = engine.execute("SELECT current_setting('TimeZone')").fetchone()[0]
        engine.execute("INSERT INTO t VALUES (7)")
        print("other thread:", own is not main, engine.connection is own, zone)

    thread = threading.Thread(target=grpc_thread)
    thread.start()
    thread.join()
    print("the query's answer:", pending.fetchall())
    print("table:", sorted(r[0] for r in engine.execute("SELECT n FROM t").fetchall()))
    print("this thread:", engine.connection is main)
    """
)


def test_another_thread_has_a_connection_of_its_own_and_leaves_a_query_its_answer(in_emulator_venv):
    assert in_emulator_venv(CHECKS, "patched") == [
        # Its own connection, the same one each time, with the engine's time zone.
        "other thread: True True UTC",
        "the query's answer: [(42,)]",
        # Both connections are one database: the other thread's row is in the table.
        "table: [7, 42]",
        "this thread: True",
    ]


def test_bqemulator_alone_gives_a_query_the_answer_of_another_threads_statement(in_emulator_venv):
    # What the patch is for: if this starts failing, bqemulator changed (re-check the patch).
    assert in_emulator_venv(CHECKS, "unpatched") == [
        "other thread: False True UTC",
        # The INSERT's row count, not the SELECT's row.
        "the query's answer: [(1,)]",
        "table: [7, 42]",
        "this thread: True",
    ]
