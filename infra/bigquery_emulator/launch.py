"""Start bqemulator with DuckDB's spatial extension taken from a folder of ours, never downloaded.

Run by the emulator's own venv (``.stack/bqemu-venv/bin/python``), not the project's: it imports
nothing from the project. bqemulator 1.4.0 opens DuckDB with ``duckdb.connect(path)`` and then
runs ``INSTALL spatial; LOAD spatial``, which downloads the extension. DuckDB finds an extension
already installed in its ``extension_directory`` (``<dir>/v<version>/<platform>/``) and skips the
download, so this wrapper links the file shipped in the ``duckdb-extension-spatial`` wheel there
and passes that folder to every ``duckdb.connect``. No file goes to ``~/.duckdb``.

With ``BQEMU_TIME_TRAVEL_RETENTION_DAYS=0`` it also turns off the time-travel snapshot that
bqemulator takes after every write: a ``CREATE TABLE AS SELECT *`` of the whole table, which made
one 500-row insertAll take 35 ms into an empty table and 750 ms into one of 100,000 rows (measured
here; docs/bigquery.md). The change event the snapshot goes with is still published.

It also closes one gap that schema evolution meets: bqemulator 1.4.0 takes a ``tables.patch`` or
``tables.update`` that adds fields (BigQuery's way to add a column to a table that receives
streaming inserts) into its catalog only, and the next insertAll naming the new column fails inside
DuckDB ("table t has 6 columns but 3 values were supplied"). The wrapper adds the missing columns to
the DuckDB table in the same call (``add_columns_on_schema_update``), as BigQuery would.

And it makes a Storage Write append to a COMMITTED stream all or nothing, which the sink's
exactly-once argument needs (``sinks.bigquery_storage_write``): bqemulator 1.4.0 advances the
stream's offset and row count first and inserts the rows after, so an insert that failed left the
offset past rows the table never got; the client's retry at the same offset was then answered
ALREADY_EXISTS ("applied already") and those rows were lost, and a ``FinalizeWriteStream`` could
count rows not inserted yet. Inserts failed when the emulator's catalog lagged its DuckDB table by
a column: an append that read the schema just before a ``tables.patch`` added one ("table has N
columns but N-1 values were supplied"), or a row-count update written from a copy of the table
read before the patch, which dropped the new column from the catalog for good
(``atomic_storage_write``).

An append's row count reaches the catalog's DuckDB table behind the appends, one write per table
a second (``row_counts_written_behind``): bqemulator 1.4.0 rewrote the table's whole catalog row
(its schema as JSON) in every append, about a quarter of an append's CPU (docs/benchmarks.md).
Every read goes through the catalog's cache, which has the count at once; an emulator killed
within that second restarts with the count of a second before in its catalog, never fewer rows.

Last, only the thread that started bqemulator's DuckDB engine (the event loop's, which serves
every REST request) uses the engine's one DuckDB connection; any other thread (the gRPC server's
handler threads: Storage Write appends, their catalog row-count updates, Storage Read sessions)
gets a DuckDB connection of its own to the same database (``one_connection_per_thread``). A
``DuckDBPyConnection`` is not thread-safe, and bqemulator 1.4.0 used the shared one from both
sides. Two failures came of it, with queries polling the changelog while the sink appended:
- The emulator hung for good (docs/benchmarks.md). An append unregistered its Arrow rows on the
  shared connection: DuckDB's commit of that holds the connection's lock and then waits for the
  GIL to free the Python object, while the event loop, holding the GIL, waits for that same lock
  to parse its next query. The loop serves both REST and gRPC, so nothing answered again. py-spy
  of the hung emulator: the main thread in ``DuckDBEngine.execute``, a gRPC thread in
  ``unregister``; the same two calls in DuckDB alone: ``~PythonDependencyItem`` waiting for the
  GIL, ``ClientContext::LockContext`` waiting for the lock. A query calling one of bqemulator's
  Python UDFs deadlocks the same way against any statement another thread starts on that
  connection.
- A query could answer with another thread's result. The connection keeps one pending result, so
  a row-count update run from a gRPC thread between a REST query's execute and its fetch replaced
  it: ``SELECT COUNT(*)`` answered ``1``, the upsert's row count.
Inserting on a cursor of the append's own (the launcher's first fix) ended the hang but not the
second failure: the row-count update still ran on the shared connection.

Usage: ``python launch.py --extension-dir DIR start [bqemulator start options]``.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from pathlib import Path
from typing import Any

import duckdb
import duckdb_extension_spatial

# Held by every catalog table update (a REST request) and by a Storage Write append's insert and
# read-modify-write of the table's row count (a gRPC thread): that must never write back a schema
# read before an update changed it, nor insert during an ALTER TABLE of its table.
CATALOG_LOCK = threading.RLock()


class NotInserted(Exception):  # noqa: N818 - a state
    """The rows of a Storage Write append did not reach the table."""


def install_spatial(extension_dir: Path) -> None:
    version = duckdb.__version__
    platform = duckdb.execute("PRAGMA platform").fetchone()[0]  # type: ignore[index]
    shipped = Path(duckdb_extension_spatial.__file__).parent / "extensions" / f"v{version}" / "spatial.duckdb_extension"
    if not shipped.exists():
        sys.exit(f"launch.py: {shipped} is missing: duckdb-extension-spatial must match duckdb {version}")
    target = extension_dir / f"v{version}" / platform / "spatial.duckdb_extension"
    if target.exists():
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        target.symlink_to(shipped)
    except OSError:
        shutil.copyfile(shipped, target)


def no_time_travel_snapshots() -> None:
    from bqemulator.domain.events import TableDataChanged
    from bqemulator.versioning.snapshots import SnapshotManager

    def record_change(self: Any, project_id: str, dataset_id: str, table_id: str) -> None:
        self._events.publish(TableDataChanged(project_id, dataset_id, table_id))

    SnapshotManager.record_change = record_change  # type: ignore[method-assign]


def add_columns_on_schema_update() -> None:
    from bqemulator.api.routes.tables import _field_to_rest
    from bqemulator.catalog.duckdb_repository import DuckDBCatalogRepository
    from bqemulator.storage.sql_identifiers import quoted_table_ref
    from bqemulator.storage.type_map import bq_schema_to_duckdb_columns

    update_table = DuckDBCatalogRepository.update_table

    def update_table_and_columns(self: Any, table: Any) -> Any:
        with CATALOG_LOCK:  # against a Storage Write append's row-count update (atomic_storage_write)
            existing = self.get_table(table.project_id, table.dataset_id, table.table_id)
            if existing is not None and existing.table_type == "TABLE" and table.table_type == "TABLE":
                known = {field.name for field in existing.schema_.fields}
                added = [_field_to_rest(field) for field in table.schema_.fields if field.name not in known]
                if added:
                    ref = quoted_table_ref(table.project_id, table.dataset_id, table.table_id)
                    for name, dtype in bq_schema_to_duckdb_columns(added):
                        self._engine.execute(f'ALTER TABLE {ref} ADD COLUMN IF NOT EXISTS "{name}" {dtype}')
            return update_table(self, table)

    DuckDBCatalogRepository.update_table = update_table_and_columns  # type: ignore[method-assign]


def atomic_storage_write() -> None:
    """A COMMITTED (or default) stream's append is applied whole or not at all (module docstring)."""
    import grpc
    from bqemulator.grpc_api import write_servicer
    from bqemulator.storage.sql_identifiers import quoted_table_ref, register_name
    from bqemulator.streaming.write_stream import WriteStreamType

    handler = write_servicer.BigQueryWriteHandler
    perform_append = handler._perform_append
    finalize = handler._handle_finalize_write_stream
    immediate = (WriteStreamType.COMMITTED, WriteStreamType.DEFAULT)

    def flush_to_target(self: Any, stream: Any, rows: Any) -> None:
        target = quoted_table_ref(stream.project_id, stream.dataset_id, stream.table_id)
        registered = register_name(f"__bqemu_write_{os.urandom(6).hex()}")
        connection = self._ctx.engine.connection  # this gRPC thread's own (one_connection_per_thread)
        with self._write_lock, CATALOG_LOCK:
            connection.register(registered, rows)
            try:
                # BY NAME: a column the catalog does not list yet (a schema update under way) is NULL.
                connection.execute(f"INSERT INTO {target} BY NAME SELECT * FROM {registered}")
            except Exception as exc:
                raise NotInserted(str(exc)) from exc
            finally:
                connection.unregister(registered)
            # The rows are in: what follows is bookkeeping, and must not undo the append.
            catalog = self._ctx.catalog
            meta = catalog.get_table(stream.project_id, stream.dataset_id, stream.table_id)
            if meta is not None:
                counted = meta.model_copy(update={"num_rows": meta.num_rows + rows.num_rows})
                getattr(catalog, "count_rows", catalog.update_table)(counted)
            self._ctx.snapshots.record_change(stream.project_id, stream.dataset_id, stream.table_id)

    def perform_append_or_nothing(self: Any, stream: Any, rows: Any, offset: Any, max_buffered_rows: int) -> bytes:
        with stream.lock:
            before = (stream.next_offset, stream.row_count)
            try:
                return perform_append(self, stream, rows, offset, max_buffered_rows)
            except NotInserted as exc:
                if stream.stream_type not in immediate:
                    raise
                stream.next_offset, stream.row_count = before
                detail = f"rows not appended, offset {before[0]} is still the stream's end: {exc}"
                return write_servicer._error_response(stream.name, detail, status_code=grpc.StatusCode.INTERNAL)

    def finalize_after_appends(self: Any, request_bytes: bytes, context: Any) -> bytes:
        from google.cloud.bigquery_storage_v1 import types

        stream = self._manager.get(types.FinalizeWriteStreamRequest.deserialize(request_bytes).name)
        if stream is None:
            return finalize(self, request_bytes, context)
        with stream.lock:  # the row count of appends that are done, never of one still inserting
            return finalize(self, request_bytes, context)

    handler._flush_to_target = flush_to_target  # type: ignore[method-assign]
    handler._perform_append = perform_append_or_nothing  # type: ignore[method-assign]
    handler._handle_finalize_write_stream = finalize_after_appends  # type: ignore[method-assign]


def row_counts_written_behind(interval_s: float = 1.0) -> None:
    """An append's new row count goes to the catalog's cache at once (every read sees it) and to the
    catalog's DuckDB table at most ``interval_s`` later, one write per table for all the appends
    between (module docstring)."""
    from bqemulator.catalog.duckdb_repository import DuckDBCatalogRepository

    def count_rows(self: Any, table: Any) -> None:
        with CATALOG_LOCK:
            self._cache.update_table(table)
            pending = self.__dict__.setdefault("_launch_uncounted", set())
            pending.add((table.project_id, table.dataset_id, table.table_id))
            if self.__dict__.get("_launch_counter") is None:
                self._launch_counter = threading.Thread(
                    target=write_counts, args=(self,), name="row-counts", daemon=True
                )
                self._launch_counter.start()

    def write_counts(self: Any) -> None:
        while True:
            time.sleep(interval_s)
            with CATALOG_LOCK:
                pending, self._launch_uncounted = self._launch_uncounted, set()
                try:
                    for ref in pending:
                        table = self._cache.get_table(*ref)
                        if table is not None:  # not dropped since
                            self._write_table(table)
                except Exception as exc:  # noqa: BLE001 - the next round tries again; the thread must live
                    self._launch_uncounted |= pending
                    print(f"launch.py: row counts not written yet: {exc}", file=sys.stderr, flush=True)

    DuckDBCatalogRepository.count_rows = count_rows  # type: ignore[attr-defined]


def one_connection_per_thread() -> None:
    """The engine's DuckDB connection to the thread that started it; a cursor to any other thread
    (module docstring)."""
    from bqemulator.storage.engine import DuckDBEngine

    start = DuckDBEngine.start
    shared = DuckDBEngine.connection.fget  # type: ignore[attr-defined]

    async def start_owned(self: Any) -> None:
        self._launch_owner = threading.get_ident()
        self._launch_threads = threading.local()
        await start(self)

    def connection(self: Any) -> duckdb.DuckDBPyConnection:
        main = shared(self)
        owner = getattr(self, "_launch_owner", None)
        if owner is None or owner == threading.get_ident():
            return main
        local = self._launch_threads
        if getattr(local, "parent", None) is not main:  # first use here, or the engine was restarted
            local.connection = main.cursor()
            # A session setting: the engine sets it on its own connection only.
            local.connection.execute("SET TimeZone = 'UTC'")
            local.parent = main
        return local.connection

    DuckDBEngine.start = start_owned  # type: ignore[method-assign]
    DuckDBEngine.connection = property(connection)  # type: ignore[method-assign, assignment]


def main() -> None:
    args = sys.argv[1:]
    if len(args) < 2 or args[0] != "--extension-dir":
        sys.exit(__doc__)
    extension_dir = Path(args[1])
    install_spatial(extension_dir)
    connect = duckdb.connect

    def connect_with_our_extensions(database: Any = ":memory:", read_only: bool = False, config: Any = None, **kw: Any):  # noqa: ANN202
        settings = dict(config or {})
        settings.setdefault("extension_directory", str(extension_dir))
        return connect(database, read_only=read_only, config=settings, **kw)

    duckdb.connect = connect_with_our_extensions
    if os.environ.get("BQEMU_TIME_TRAVEL_RETENTION_DAYS") == "0":
        no_time_travel_snapshots()
    add_columns_on_schema_update()
    atomic_storage_write()
    row_counts_written_behind()
    one_connection_per_thread()
    from bqemulator.cli import main as bqemulator

    sys.argv = ["bqemulator", *args[2:]]
    sys.exit(bqemulator())


if __name__ == "__main__":
    main()
