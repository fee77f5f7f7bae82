"""The BigQuery emulator (bqemulator 1.4.0, on DuckDB) as a native process with its own venv.

Its own venv (``.stack/bqemu-venv``, pinned in ``infra/bigquery_emulator/requirements.txt``)
because its pins (DuckDB 1.5.4, FastAPI, grpcio) are not the pipeline's. Run ``--persistent``
with ``BQEMU_TIME_TRAVEL_RETENTION_DAYS=0``: the in-memory mode copies the whole table on every
insert (2.1 GB at 100k rows), and time travel keeps every version. The REST port is the one in
``BIGQUERY_EMULATOR_HOST``; its gRPC port (the Storage APIs) is ten above it.

Its gaps against BigQuery are in docs/bigquery.md; the ones that matter here: it keeps neither
range partitioning nor ``requirePartitionFilter``, and does not deduplicate insertIds.
"""

from __future__ import annotations

import functools
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from infra.process import ServiceProcess, StackError
from infra.settings import REPO_ROOT, BigQuerySettings

LAUNCHER = REPO_ROOT / "infra" / "bigquery_emulator" / "launch.py"
GRPC_OFFSET = 10


class BigQueryEmulator:
    def __init__(self, settings: BigQuerySettings, stack_dir: Path, venv: Path) -> None:
        self.settings = settings
        self.root = stack_dir / "bigquery"
        self._stack_dir = stack_dir
        self._python = venv / "bin" / "python"
        url = urlsplit(settings.emulator_host)
        if not url.hostname or not url.port:
            raise StackError(f"BIGQUERY_EMULATOR_HOST={settings.emulator_host!r}: expected http://HOST:PORT")
        self.host, self.port = url.hostname, url.port

    @functools.cached_property
    def process(self) -> ServiceProcess:
        if not self._python.exists():
            raise StackError(f"{self._python} is missing. Run `make bootstrap` (it builds the emulator's venv).")
        return ServiceProcess.in_stack(
            self._stack_dir,
            "bigquery",
            command=[
                str(self._python),
                str(LAUNCHER),
                "--extension-dir",
                str(self.root / "duckdb-extensions"),
                "start",
                "--persistent",
                "--data-dir",
                str(self.root / "data"),
                "--rest-host",
                self.host,
                "--rest-port",
                str(self.port),
                "--grpc-host",
                self.host,
                "--grpc-port",
                str(self.port + GRPC_OFFSET),
                "--project",
                self.settings.project_id,
                "--log-level",
                "warning",
            ],
            ready=self.ready,
            host=self.host,
            port=self.port,
            env={"BQEMU_TIME_TRAVEL_RETENTION_DAYS": "0"},
        )

    def prepare(self) -> None:
        (self.root / "data").mkdir(parents=True, exist_ok=True)

    def ready(self) -> bool:
        url = f"{self.settings.emulator_host}/bigquery/v2/projects/{self.settings.project_id}/datasets"
        try:
            return httpx.get(url, timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False
