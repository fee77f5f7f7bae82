"""An append's row count reaches the emulator's catalog table behind the appends
(``row_counts_written_behind`` in infra/bigquery_emulator/launch.py).

Runs in the emulator's own venv against bqemulator's ``DuckDBCatalogRepository`` class, patched;
the repository's cache and its DuckDB write are fakes that record what they get.
"""

from __future__ import annotations

import textwrap

CHECKS = textwrap.dedent(
    """
    import sys, time
    from datetime import UTC, datetime
    sys.path.insert(0, "infra/bigquery_emulator")
    import launch

    launch.row_counts_written_behind(interval_s=float(sys.argv[1]))
    from bqemulator.catalog.duckdb_repository import DuckDBCatalogRepository
    from bqemulator.catalog.models import TableMeta

    class Cache:
        def __init__(self):
            self.tables = {}
        def update_table(self, table):
            self.tables[table.project_id, table.dataset_id, table.table_id] = table
        def get_table(self, *ref):
            return self.tables.get(ref)

    class Repository:  # the two members count_rows uses
        def __init__(self):
            self._cache, self.written = Cache(), []
        def _write_table(self, table):
            self.written.append((table.table_id, table.num_rows))

    now = datetime(2026, 12, 7, tzinfo=UTC)
    def meta(table, rows):
        return TableMeta(project_id="p", dataset_id="d", table_id=table, creation_time=now,
                         last_modified_time=now, num_rows=rows, etag="e")

    repo = Repository()
    for rows in (100, 250, 400):
        DuckDBCatalogRepository.count_rows(repo, meta("t", rows))
    DuckDBCatalogRepository.count_rows(repo, meta("u", 7))
    print("read at once:", repo._cache.get_table("p", "d", "t").num_rows, "written:", repo.written)
    time.sleep(float(sys.argv[1]) * 3)
    print("written after:", sorted(repo.written))
    """
)


def test_a_row_count_is_read_at_once_and_written_once_per_table_behind_the_appends(in_emulator_venv):
    assert in_emulator_venv(CHECKS, "0.2") == [
        "read at once: 400 written: []",
        "written after: [('t', 400), ('u', 7)]",
    ]
