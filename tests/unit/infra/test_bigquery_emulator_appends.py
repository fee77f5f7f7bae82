"""The emulator's Storage Write appends are all or nothing (infra/bigquery_emulator/launch.py).

bqemulator runs in its own venv (``.stack/bqemu-venv``), so the checks run there, in a child
process, against bqemulator's real write handler and an in-memory DuckDB table; only the catalog
and the snapshot hook are fakes.
"""

from __future__ import annotations

import textwrap

CHECKS = textwrap.dedent(
    """
    import sys, threading
    import duckdb, grpc, pyarrow as pa
    sys.path.insert(0, "infra/bigquery_emulator")
    import launch

    patched = sys.argv[1] == "patched"
    if patched:
        launch.atomic_storage_write()
    from google.cloud.bigquery_storage_v1 import types
    from bqemulator.grpc_api.write_servicer import BigQueryWriteHandler
    from bqemulator.streaming.write_stream import WriteStream, WriteStreamType

    class Statements:  # a DuckDB connection or cursor whose next INSERT can be made to fail
        def __init__(self, engine, inner):
            self.engine, self.inner = engine, inner
        def __enter__(self):
            return self
        def __exit__(self, *exc):
            self.inner.close()
        def cursor(self):
            return Statements(self.engine, self.inner.cursor())
        def register(self, name, rows):
            self.inner.register(name, rows)
        def unregister(self, name):
            self.inner.unregister(name)
        def execute(self, sql):
            if sql.startswith("INSERT") and self.engine.fail_next_insert:
                self.engine.fail_next_insert = False
                raise duckdb.IOException("disk hiccup")
            return self.inner.execute(sql)

    class Engine:
        def __init__(self):
            self.fail_next_insert = False
            self.connection = Statements(self, duckdb.connect())
        def execute(self, sql):
            return self.connection.execute(sql)

    class Catalog:
        def get_table(self, *ref):
            return None

    class Snapshots:
        def record_change(self, *ref):
            pass

    class Ctx:
        engine, catalog, snapshots = Engine(), Catalog(), Snapshots()

    handler = BigQueryWriteHandler.__new__(BigQueryWriteHandler)
    handler._ctx, handler._write_lock = Ctx(), threading.RLock()
    engine = Ctx.engine
    engine.connection.execute('CREATE SCHEMA "p__d"')
    # The table has a column the catalog's schema (the rows below) does not list yet.
    engine.connection.execute('CREATE TABLE "p__d"."t" (id BIGINT, referrer VARCHAR)')
    stream = WriteStream("projects/p/datasets/d/tables/t/streams/0123456789abcdef", "p", "d", "t",
                         WriteStreamType.COMMITTED)

    def append(ids, offset):
        try:
            reply = types.AppendRowsResponse.deserialize(
                handler._perform_append(stream, pa.table({"id": pa.array(ids, pa.int64())}), offset, 0))
        except Exception as exc:  # unpatched: the insert's error escapes the handler
            return type(exc).__name__
        return grpc.StatusCode.OK.name if not reply.error.code else next(
            c.name for c in grpc.StatusCode if c.value[0] == reply.error.code)

    def rows():
        return sorted(r[0] for r in engine.connection.execute('SELECT id FROM "p__d"."t"').fetchall())

    # 1. An append while the catalog lags the table by a column.
    print("lagging catalog:", append([1, 2], 0), stream.next_offset, rows())
    # 2. An insert that fails, then the client's retry of the same rows at the same offset.
    engine.fail_next_insert = True
    offset = stream.next_offset
    print("failed insert:", append([3, 4], offset), stream.next_offset)
    print("retry:", append([3, 4], offset), stream.next_offset, rows())
    """
)


def test_an_append_is_applied_whole_or_not_at_all(in_emulator_venv):
    assert in_emulator_venv(CHECKS, "patched") == [
        # The rows land (the new column NULL); no error.
        "lagging catalog: OK 2 [1, 2]",
        # Nothing applied, and the offset stays: the retry appends the rows, once.
        "failed insert: INTERNAL 2",
        "retry: OK 4 [1, 2, 3, 4]",
    ]


def test_bqemulator_alone_moves_the_offset_past_rows_it_never_inserted(in_emulator_venv):
    # What the patch is for: if this starts failing, bqemulator changed (re-check the patch).
    assert in_emulator_venv(CHECKS, "unpatched") == [
        "lagging catalog: BinderException 2 []",
        "failed insert: IOException 4",
        # The retry is told the rows are there (ALREADY_EXISTS): rows 1 to 4 are lost.
        "retry: ALREADY_EXISTS 4 []",
    ]
