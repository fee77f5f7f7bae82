"""Settings of the Flink runner (``python -m pipeline --runner flink``; docs/operations.md, "Flink").

Kept apart from ``infra.settings`` (which re-exports them) so that module stays about the parts that
move data. Two ways to run on Flink:

- **a cluster** (``make flink-cluster``, then ``make flink``; Kubernetes in production): ``master``
  is the REST address of a Flink 1.19 session cluster, and the Python work runs in the Beam SDK
  worker pool next to each TaskManager (``environment="external"``, ``worker_pool``). Flink
  checkpoints the job and restarts it itself when a TaskManager dies.
- **embedded** (``master="[local]"``, the fast path of ``make test-flink``): the job server runs the
  job in a Flink inside its own JVM, and the Python work runs in the submitting process
  (``environment="loopback"``).

The cluster's own settings (ports, TaskManagers, slots, memory) are read by ``infra.stack.
flink_cluster``, which starts it as native processes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings

from infra.settings_base import REPO_ROOT as REPO_ROOT
from infra.settings_base import config as _config

WORKER_METRICS_PORTS = 4  # per TaskManager's worker pool: at most this many workers serve metrics


class FlinkSettings(BaseSettings):
    """Beam's Flink job server, the Flink options the job is submitted with, and the local cluster."""

    model_config = _config("FLINK_")

    # "[local]": an embedded cluster per job inside the job server's JVM; host:port: the REST
    # address of a running Flink 1.19 cluster.
    master: str = "[local]"
    # Where the Python work runs: "loopback" in the submitting process (embedded only: a
    # TaskManager elsewhere cannot outlive it), "external" in the worker pool named by worker_pool.
    environment: Literal["loopback", "external"] = "loopback"
    # The worker pool every TaskManager connects to, as the TaskManager resolves it: on Kubernetes
    # the pool is a sidecar of each TaskManager pod (localhost:50000); the local cluster gives each
    # TaskManager JVM a hosts file that maps this name to its own pool (infra.stack.flink_cluster).
    worker_pool: str = "beam-worker-pool:58050"
    # Python worker processes per TaskManager (Beam's sdk_worker_parallelism).
    sdk_workers: int = Field(default=1, ge=1)
    job_port: int = Field(default=58099, ge=1, le=65535)
    artifact_port: int = Field(default=58098, ge=1, le=65535)
    # The job server's (and so the embedded cluster's) JVM heap: unbounded by default in Beam.
    heap: str = "1g"
    # The job's parallelism; 0: every slot of the cluster (taskmanagers x slots), at most 16.
    parallelism: int = Field(default=0, ge=0)
    # Flink checkpoints of the job; 0 turns them off. Where they go is the cluster's setting
    # (state.checkpoints.dir); embedded, they stay in the job server's memory.
    checkpoint_interval_ms: int = Field(default=30_000, ge=0)
    # Flink's own restarts of a failed job: -1 leaves it to the cluster's restart strategy
    # (exponential back-off); 0 fails the job at once and the supervisor submits it again, the only
    # choice with loopback workers, whose harness dies with the job process.
    execution_retries: int = Field(default=-1, ge=-1)
    # How long a bundle stays open on Flink before it ends (and the sinks flush what they hold).
    max_bundle_time_ms: int = Field(default=100, gt=0)
    start_timeout_s: float = Field(default=120.0, gt=0)
    lib_dir: Path = REPO_ROOT / ".stack" / "lib" / "flink"

    # --- the local session cluster (infra.stack.flink_cluster, make flink-cluster) ---------------
    host: str = "127.0.0.1"  # every listener of the cluster, its worker pools and its web UI
    rest_port: int = Field(default=58081, ge=1, le=65535)  # REST API and web UI
    rpc_port: int = Field(default=58061, ge=1, le=65535)  # the JobManager's RPC
    blob_port: int = Field(default=58062, ge=1, le=65535)
    taskmanagers: int = Field(default=2, ge=1, le=16)
    slots: int = Field(default=1, ge=1, le=16)  # per TaskManager
    jobmanager_memory: str = "768m"  # Flink's process sizes: heap, metaspace and overhead together
    taskmanager_memory: str = "1024m"
    # The first worker metrics port; TaskManager i's pool gives its workers the ports from
    # worker_metrics_port + 4 * (i - 1) (``worker_metrics_ports``).
    worker_metrics_port: int = Field(default=59470, ge=1, le=65535)

    @property
    def external(self) -> bool:
        return self.environment == "external"

    @property
    def job_parallelism(self) -> int:
        if self.parallelism:
            return self.parallelism
        return min(16, self.taskmanagers * self.slots)

    @property
    def restarts(self) -> int:
        """The restarts the job asks Flink for (see ``execution_retries``)."""
        return self.execution_retries if self.external else 0

    @property
    def worker_pool_port(self) -> int:
        return int(self.worker_pool.rsplit(":", 1)[1])

    @property
    def rest_url(self) -> str:
        """The cluster's REST API: ``master`` when it names one, else the local cluster's."""
        if self.master not in ("[local]", "[auto]"):
            return self.master if "://" in self.master else f"http://{self.master}"
        return f"http://{self.host}:{self.rest_port}"

    def shifted(self, offset: int) -> FlinkSettings:
        """These settings with every port ``offset`` higher: the test (+100) and fault (+200) stacks'."""
        pool_host, pool_port = self.worker_pool.rsplit(":", 1)
        ports = ("job_port", "artifact_port", "rest_port", "rpc_port", "blob_port", "worker_metrics_port")
        update: dict[str, object] = {name: getattr(self, name) + offset for name in ports}
        update["worker_pool"] = f"{pool_host}:{int(pool_port) + offset}"
        if self.master != "[local]":
            update["master"] = f"{self.host}:{self.rest_port + offset}"
        return self.model_copy(update=update)

    def environment_variables(self) -> dict[str, str]:
        """These settings as the ``FLINK_*`` variables a child process reads them from."""
        names = [
            "master",
            "environment",
            "worker_pool",
            "sdk_workers",
            "job_port",
            "artifact_port",
            "parallelism",
            "checkpoint_interval_ms",
            "execution_retries",
            "host",
            "rest_port",
            "rpc_port",
            "blob_port",
            "taskmanagers",
            "slots",
            "worker_metrics_port",
        ]
        return {f"FLINK_{name.upper()}": str(getattr(self, name)) for name in names}

    def taskmanager_rpc_port(self, index: int) -> int:
        """TaskManager ``index``'s RPC port on the local cluster (1-based): 58101, 58102, ..."""
        return self.rest_port + 19 + index

    def worker_metrics_ports(self, index: int) -> list[int]:
        """The metrics ports of the workers of TaskManager ``index``'s pool (1-based)."""
        first = self.worker_metrics_port + WORKER_METRICS_PORTS * (index - 1)
        return list(range(first, first + WORKER_METRICS_PORTS))

    def worker_metrics_urls(self) -> dict[str, list[str]]:
        """Per TaskManager of the local cluster (``taskmanager-<i>``), its workers' metrics URLs."""
        return {
            f"taskmanager-{i}": [f"http://{self.host}:{port}/metrics" for port in self.worker_metrics_ports(i)]
            for i in range(1, self.taskmanagers + 1)
        }
