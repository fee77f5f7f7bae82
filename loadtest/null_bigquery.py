"""A null BigQuery for benchmarks: answers what the BigQuery sinks call, and keeps no row.

    python -m loadtest.null_bigquery --port 59150   # REST on 59150, Storage Write (gRPC) on 59160
    BIGQUERY_EMULATOR_HOST=http://127.0.0.1:59150 python -m pipeline --bounded ...
    curl http://127.0.0.1:59150/stats

It measures the BigQuery lane apart from the emulator (``make bench-bigquery``'s ``ceiling``): the
rows are counted and dropped, so what limits a run is the job, not the store. Nothing is durable;
never point a real run at it.

- REST, as the google-cloud-bigquery client speaks it (``/bigquery/v2/...``): datasets and tables
  are kept in memory (get, list, create, patch, update, delete; a duplicate create is a 409 and a
  patch with a stale etag a 412, as BigQuery answers), so the sinks' ``Dataset.ensure`` runs as it
  would. ``insertAll`` into a known table accepts every row.
- gRPC ``BigQueryWrite`` (``loadtest.null_bigquery_write``) on the REST port plus ten, where
  ``sinks.bigquery_storage_write`` looks for the emulator's: streams keep only their row counts,
  and offsets are checked as BigQuery checks them.
- ``GET /stats``: requests, rows and bytes of insertAll and AppendRows, the other REST requests,
  and the wall-clock times of the first and the last row (JSON).

Binds 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import re
import signal
import sys
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

import grpc
import orjson

from loadtest.null_bigquery_write import WriteService

HOST: Final = "127.0.0.1"
GRPC_OFFSET: Final = 10  # sinks.bigquery_storage_write looks for gRPC ten above the REST port
_API: Final = re.compile(r"^/bigquery/v2/projects/([^/]+)/datasets(?:/([^/]+)(/tables(?:/([^/]+)(/insertAll)?)?)?)?$")


@dataclass
class Tally:
    requests: int = 0
    rows: int = 0
    bytes: int = 0


@dataclass
class Counts:
    """What reached the endpoint; every method is safe from the server's threads."""

    insert_all: Tally = field(default_factory=Tally)
    append_rows: Tally = field(default_factory=Tally)
    other_requests: int = 0
    first_row_at: float | None = None
    last_row_at: float | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def rows(self, tally: Tally, rows: int, size: int) -> None:
        now = time.time()
        with self._lock:
            tally.requests += 1
            tally.rows += rows
            tally.bytes += size
            if rows:
                if self.first_row_at is None:
                    self.first_row_at = now
                self.last_row_at = now

    def appended(self, rows: int, size: int) -> None:
        self.rows(self.append_rows, rows, size)

    def other(self) -> None:
        with self._lock:
            self.other_requests += 1

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "insert_all": vars(self.insert_all).copy(),
                "append_rows": vars(self.append_rows).copy(),
                "other_requests": self.other_requests,
                "first_row_at": self.first_row_at,
                "last_row_at": self.last_row_at,
            }


class ApiError(Exception):
    def __init__(self, status: HTTPStatus, reason: str, message: str) -> None:
        super().__init__(message)
        self.status, self.reason = status, reason

    def body(self) -> dict[str, Any]:
        # The shape google-api-core reads into GoogleAPICallError (code, message, errors[].reason).
        error = {"code": self.status.value, "message": str(self), "errors": [{"reason": self.reason}]}
        return {"error": error}


class Catalog:
    """Datasets and tables as resources in memory, with the answers BigQuery gives."""

    def __init__(self) -> None:
        self._datasets: dict[tuple[str, str], dict[str, Any]] = {}
        self._tables: dict[tuple[str, str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._etag = 0

    def _tagged(self, resource: dict[str, Any]) -> dict[str, Any]:
        self._etag += 1
        resource["etag"] = str(self._etag)
        return resource

    def dataset(self, method: str, project: str, dataset: str | None, body: dict[str, Any]) -> dict[str, Any] | None:
        with self._lock:
            if dataset is None:
                if method == "GET":
                    return {"datasets": [{"datasetReference": d["datasetReference"]} for d in self._datasets.values()]}
                if method != "POST":
                    raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, "invalid", f"{method} on the datasets")
                ref = body.get("datasetReference") or {}
                key = (project, ref.get("datasetId", ""))
                if key in self._datasets:
                    raise ApiError(HTTPStatus.CONFLICT, "duplicate", f"Already Exists: Dataset {project}:{key[1]}")
                self._datasets[key] = self._tagged({**body, "id": f"{project}:{key[1]}"})
                return self._datasets[key]
            key = (project, dataset)
            if key not in self._datasets:
                raise ApiError(HTTPStatus.NOT_FOUND, "notFound", f"Not found: Dataset {project}:{dataset}")
            if method == "DELETE":
                del self._datasets[key]
                return None
            if method in ("PATCH", "PUT"):
                self._datasets[key] = self._tagged({**self._datasets[key], **body})
            return self._datasets[key]

    def table(
        self, method: str, project: str, dataset: str, table: str | None, body: dict[str, Any], if_match: str | None
    ) -> dict[str, Any] | None:
        with self._lock:
            if (project, dataset) not in self._datasets:
                raise ApiError(HTTPStatus.NOT_FOUND, "notFound", f"Not found: Dataset {project}:{dataset}")
            if table is None:
                if method == "GET":
                    listed = [
                        {"tableReference": t["tableReference"], "type": t["type"]}
                        for (p, d, _), t in sorted(self._tables.items())
                        if (p, d) == (project, dataset)
                    ]
                    return {"tables": listed, "totalItems": len(listed)}
                if method != "POST":
                    raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, "invalid", f"{method} on the tables")
                ref = body.get("tableReference") or {}
                key = (project, dataset, ref.get("tableId", ""))
                if key in self._tables:
                    raise ApiError(HTTPStatus.CONFLICT, "duplicate", f"Already Exists: Table {'.'.join(key)}")
                kind = "VIEW" if "view" in body else "TABLE"
                self._tables[key] = self._tagged({**body, "type": kind, "id": f"{project}:{dataset}.{key[2]}"})
                return self._tables[key]
            key = (project, dataset, table)
            current = self._tables.get(key)
            if current is None:
                raise ApiError(HTTPStatus.NOT_FOUND, "notFound", f"Not found: Table {project}:{dataset}.{table}")
            if method == "DELETE":
                del self._tables[key]
                return None
            if method in ("PATCH", "PUT"):
                if if_match is not None and if_match != current["etag"]:
                    raise ApiError(HTTPStatus.PRECONDITION_FAILED, "failedPrecondition", "Precondition check failed.")
                base = {"tableReference": current["tableReference"], "type": current["type"]}
                self._tables[key] = self._tagged({**(current if method == "PATCH" else base), **body})
            return self._tables[key]

    def has_table(self, project: str, dataset: str, table: str) -> bool:
        with self._lock:
            return (project, dataset, table) in self._tables


class RestHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: the client's session reuses its connections
    disable_nagle_algorithm = True  # headers and body are two writes: no delayed-ACK wait between them
    server: RestServer

    def log_message(self, format: str, *args: Any) -> None:
        return  # a line per request would cost more than the request

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PATCH(self) -> None:
        self._handle("PATCH")

    def do_PUT(self) -> None:
        self._handle("PUT")

    def do_DELETE(self) -> None:
        self._handle("DELETE")

    def _handle(self, method: str) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        path = self.path.split("?", 1)[0]
        counts, catalog = self.server.counts, self.server.catalog
        try:
            if path == "/stats" and method == "GET":
                self._reply(HTTPStatus.OK, counts.snapshot())
                return
            match = _API.match(path)
            if match is None:
                raise ApiError(HTTPStatus.NOT_FOUND, "notFound", f"the null endpoint does not serve {method} {path}")
            project, dataset, tables, table, insert = match.groups()
            body = orjson.loads(raw) if raw else {}
            if insert:
                if method != "POST" or dataset is None or table is None:
                    raise ApiError(HTTPStatus.METHOD_NOT_ALLOWED, "invalid", f"{method} {path}")
                if not catalog.has_table(project, dataset, table):
                    raise ApiError(HTTPStatus.NOT_FOUND, "notFound", f"Not found: Table {project}:{dataset}.{table}")
                counts.rows(counts.insert_all, len(body.get("rows") or ()), len(raw))
                self._reply(HTTPStatus.OK, {"kind": "bigquery#tableDataInsertAllResponse"})
                return
            counts.other()
            if tables and dataset is not None:
                resource = catalog.table(method, project, dataset, table, body, self.headers.get("If-Match"))
            else:
                resource = catalog.dataset(method, project, dataset, body)
            if resource is None:
                self._reply(HTTPStatus.NO_CONTENT, None)
            else:
                self._reply(HTTPStatus.OK, resource)
        except ApiError as exc:
            self._reply(exc.status, exc.body())
        except orjson.JSONDecodeError as exc:
            self._reply(HTTPStatus.BAD_REQUEST, ApiError(HTTPStatus.BAD_REQUEST, "invalid", str(exc)).body())

    def _reply(self, status: HTTPStatus, payload: dict[str, Any] | None) -> None:
        data = b"" if payload is None else orjson.dumps(payload)
        self.send_response(status)
        if payload is not None:
            self.send_header("Content-Type", "application/json; charset=UTF-8")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class RestServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, port: int, counts: Counts, catalog: Catalog) -> None:
        self.counts, self.catalog = counts, catalog
        super().__init__((HOST, port), RestHandler)


class NullBigQuery:
    """Both servers, started together on ``port`` and ``port + GRPC_OFFSET``; ``port=0`` finds a free pair."""

    def __init__(self, port: int = 0, grpc_workers: int = 8) -> None:
        self.counts = Counts()
        self._wanted = port
        self._grpc_workers = grpc_workers
        self._rest: RestServer | None = None
        self._grpc: grpc.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        if self._rest is None:
            raise RuntimeError("not started")
        return self._rest.server_address[1]

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def start(self) -> NullBigQuery:
        for _ in range(1 if self._wanted else 20):
            rest = RestServer(self._wanted, self.counts, Catalog())
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=self._grpc_workers))
            service = WriteService(self.counts.appended, self.counts.other)
            server.add_generic_rpc_handlers((service.handler(),))
            try:
                bound = server.add_insecure_port(f"{HOST}:{rest.server_address[1] + GRPC_OFFSET}")
            except RuntimeError:
                bound = 0
            if bound:
                self._rest, self._grpc = rest, server
                break
            rest.server_close()
        if self._rest is None or self._grpc is None:
            raise OSError(f"no free port pair (REST, REST + {GRPC_OFFSET}) on {HOST}")
        self._grpc.start()
        self._thread = threading.Thread(
            target=self._rest.serve_forever, args=(0.05,), name="null-bigquery-rest", daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._grpc is not None:
            self._grpc.stop(grace=None)
        if self._rest is not None:
            self._rest.shutdown()
            self._rest.server_close()

    def __enter__(self) -> NullBigQuery:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.null_bigquery", description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=59150, help=f"REST port; gRPC listens {GRPC_OFFSET} above it")
    args = parser.parse_args(argv)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with NullBigQuery(args.port) as endpoint:
        print(f"null BigQuery: REST {endpoint.url}, Storage Write {HOST}:{endpoint.port + GRPC_OFFSET}", flush=True)
        stop.wait()
        print(orjson.dumps(endpoint.counts.snapshot()).decode(), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
