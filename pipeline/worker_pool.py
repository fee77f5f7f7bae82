"""A Beam SDK worker pool (the ``EXTERNAL`` environment) that listens where it is told to.

Each Flink TaskManager asks the pool named by ``FLINK_WORKER_POOL`` to start the Python workers of
a job (``StartWorker``) and to stop them (``StopWorker``). On Kubernetes the pool is a sidecar of
every TaskManager pod; locally ``infra.stack.flink_cluster`` starts one next to each TaskManager.

Why not Beam's ``worker_pool_main``: it listens on every interface (``[::]``) with no way to say
otherwise, and starts workers with ``python -c`` and no hook of ours. This pool reuses its servicer
(``StopWorker`` and the clean-up on exit are Beam's) but binds the given address, and starts each
worker as ``python -m pipeline.sdk_worker`` with the first free port of its own metrics ports, so
each worker process serves its metrics on a port that ``make status`` and Prometheus know. Workers
stay in the pool's process group, so stopping or killing the group (as ``infra.stack.flink_cluster``
does) takes them with it, as a pod's end would. Not a parent-death signal: that fires when the
*thread* that started the child ends, and ``StartWorker`` runs on gRPC's pool threads, which come
and go (a worker was killed at birth that way).

    python -m pipeline.worker_pool --address 127.0.0.1:58050 --metrics-ports 59470-59473
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import threading

import grpc
from apache_beam.portability.api import beam_fn_api_pb2, beam_fn_api_pb2_grpc
from apache_beam.runners.worker.worker_pool_main import BeamFnExternalWorkerPoolServicer
from apache_beam.utils import thread_pool_executor

from infra.reserved_ports import parse_ranges

_log = logging.getLogger("pipeline.worker_pool")


class WorkerPool(BeamFnExternalWorkerPoolServicer):
    """Starts each worker as its own process (see the module docstring)."""

    def __init__(self, metrics_ports: list[int]) -> None:
        super().__init__(use_process=True)
        self._metrics_ports = metrics_ports
        self._ports: dict[str, int] = {}
        self._lock = threading.Lock()

    def metrics_port(self) -> int:
        """The first of the pool's metrics ports no live worker holds; 0 (none) when all are taken."""
        live = {port for wid, port in self._ports.items() if self._alive(wid)}
        return next((port for port in self._metrics_ports if port not in live), 0)

    def _alive(self, worker_id: str) -> bool:
        process = self._worker_processes.get(worker_id)
        return process is not None and process.poll() is None

    def StartWorker(  # noqa: N802 (the gRPC method's name)
        self, start_worker_request: beam_fn_api_pb2.StartWorkerRequest, unused_context: object
    ) -> beam_fn_api_pb2.StartWorkerResponse:
        request = start_worker_request
        with self._lock:
            port = self.metrics_port()
            try:
                process = subprocess.Popen(
                    [sys.executable, "-m", "pipeline.sdk_worker", request.control_endpoint.url, request.worker_id],
                    env={**os.environ, "METRICS_PORT": str(port)},
                )
            except OSError as exc:
                return beam_fn_api_pb2.StartWorkerResponse(error=f"cannot start a worker: {exc}")
            self._worker_processes[request.worker_id] = process
            self._ports[request.worker_id] = port
        _log.info("worker %s started as pid %d, metrics on port %d", request.worker_id, process.pid, port)
        return beam_fn_api_pb2.StartWorkerResponse()


def serve(address: str, metrics_ports: list[int]) -> grpc.Server:
    server = grpc.server(
        thread_pool_executor.shared_unbounded_instance(),
        options=[("grpc.http2.max_pings_without_data", 0), ("grpc.http2.max_ping_strikes", 0)],
    )
    if not server.add_insecure_port(address):
        raise OSError(f"cannot listen on {address}")
    beam_fn_api_pb2_grpc.add_BeamFnExternalWorkerPoolServicer_to_server(WorkerPool(metrics_ports), server)
    server.start()
    return server


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline.worker_pool", description=__doc__.split("\n")[0])
    parser.add_argument("--address", default="127.0.0.1:50000", help="host:port to listen on (default %(default)s)")
    parser.add_argument(
        "--metrics-ports", default="", help="ports for the workers' metrics, e.g. 59470-59473 (default: none)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    server = serve(args.address, sorted(parse_ranges(args.metrics_ports)))
    _log.info("listening for TaskManagers on %s", args.address)
    server.wait_for_termination()
    return 0


if __name__ == "__main__":
    sys.exit(main())
