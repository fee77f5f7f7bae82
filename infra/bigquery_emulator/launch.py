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

Usage: ``python launch.py --extension-dir DIR start [bqemulator start options]``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path
from typing import Any

import duckdb
import duckdb_extension_spatial


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
    from bqemulator.cli import main as bqemulator

    sys.argv = ["bqemulator", *args[2:]]
    sys.exit(bqemulator())


if __name__ == "__main__":
    main()
