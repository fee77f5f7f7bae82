"""A Flink 1.19 session cluster as native processes: a JobManager, N TaskManagers, a worker pool each.

``make flink-cluster [TASKMANAGERS=N]`` starts it and ``make flink`` submits the job to it
(docs/operations.md, "Flink"). No Flink distribution is served here, so each JVM runs Flink's own
entry point from the jars ``make flink-bootstrap`` resolved (``FLINK_LIB_DIR``):

- the JobManager, ``StandaloneSessionClusterEntrypoint``, with the web UI and REST API on
  ``FLINK_HOST:FLINK_REST_PORT``;
- TaskManager *i*, ``TaskManagerRunner``, with ``FLINK_SLOTS`` slots; its JVM options and memory
  sizes come from Flink's ``BashJavaUtils``, as Flink's own start scripts get them;
- next to each TaskManager its Beam SDK worker pool (``pipeline.worker_pool``), where the job's
  Python runs. The job names one pool address (``FLINK_WORKER_POOL``), as it does on Kubernetes,
  where each TaskManager pod reaches its own sidecar at ``localhost``. Here the TaskManagers share
  a host, so pool *i* listens on loopback address ``127.0.0.<10+i>`` and TaskManager *i*'s JVM
  resolves the pool's host name to it through a hosts file of its own (``-Djdk.net.hosts.file``).

Every listener binds ``FLINK_HOST`` (loopback by default). Each process has its pid file and log
under the stack folder like every other service; ``up`` starts what is not running (so it also
brings back a TaskManager or pool that died, as Kubernetes would restart its pod), ``down`` stops
them all. Checkpoints go to ``<STACK_DIR>/flink-cluster/checkpoints``; the cluster restarts a failed
job with exponential back-off (``restart_strategy``), from its latest checkpoint.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from infra.process import ServiceProcess, StackError, port_open, stop_together
from infra.reserved_ports import reserve_ports
from infra.settings import REPO_ROOT, FlinkSettings, Settings

JOBMANAGER_CLASS = "org.apache.flink.runtime.entrypoint.StandaloneSessionClusterEntrypoint"
TASKMANAGER_CLASS = "org.apache.flink.runtime.taskexecutor.TaskManagerRunner"
BASH_JAVA_UTILS = "org.apache.flink.runtime.util.bash.BashJavaUtils"
POOL_ADDRESS_BASE = 10  # pool i listens on 127.0.0.<10 + i>


class FlinkCluster:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.flink = settings.flink
        self.stack_dir = settings.stack.dir
        self.root = self.stack_dir / "flink-cluster"
        self.conf_dir = self.root / "conf"

    # --- layout ---------------------------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        return self.root / "checkpoints"

    def pool_host(self, index: int) -> str:
        return f"127.0.0.{POOL_ADDRESS_BASE + index}"

    def config(self) -> dict[str, Any]:
        """Flink's configuration for every process of the cluster (``conf/config.yaml``)."""
        f = self.flink
        return {
            "jobmanager.rpc.address": f.host,
            "jobmanager.rpc.port": f.rpc_port,
            "jobmanager.bind-host": f.host,
            "jobmanager.memory.process.size": f.jobmanager_memory,
            "rest.address": f.host,
            "rest.bind-address": f.host,
            "rest.port": f.rest_port,
            "blob.server.port": f.blob_port,
            "taskmanager.host": f.host,
            "taskmanager.bind-host": f.host,
            "taskmanager.data.port": 0,
            "taskmanager.numberOfTaskSlots": f.slots,
            "taskmanager.memory.process.size": f.taskmanager_memory,
            # The state is Beam's SDF residuals and timers, small: the heap gets the memory instead.
            "taskmanager.memory.managed.fraction": 0.05,
            # A job's Beam classes come from the cluster's classpath, not from a second copy per job
            # (its staged jars): a job restarted many times never fills the metaspace.
            "classloader.resolve-order": "parent-first",
            "cluster.evenly-spread-out-slots": True,
            # A TaskManager that died is noticed in seconds, not after the default 50 s.
            "heartbeat.interval": 2000,
            "heartbeat.timeout": 10000,
            "state.backend.type": "hashmap",
            "state.checkpoints.dir": self.checkpoint_dir.resolve().as_uri(),
            "state.checkpoints.num-retained": 3,
            "restart-strategy.type": "exponential-delay",
            "restart-strategy.exponential-delay.initial-backoff": "1 s",
            "restart-strategy.exponential-delay.max-backoff": "60 s",
            "restart-strategy.exponential-delay.backoff-multiplier": 2.0,
            "restart-strategy.exponential-delay.reset-backoff-threshold": "5 min",
            "web.tmpdir": str(self.root / "web"),
            "io.tmp.dirs": str(self.root / "tmp"),
        }

    def write_config(self) -> None:
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        for folder in ("web", "tmp", "checkpoints"):
            (self.root / folder).mkdir(parents=True, exist_ok=True)
        lines = [f"{key}: {_yaml(value)}" for key, value in self.config().items()]
        (self.conf_dir / "config.yaml").write_text("\n".join(lines) + "\n")

    def _hosts_file(self, index: int) -> Path:
        """TaskManager ``index``'s hosts file: the system's, this host's name, and its pool."""
        path = self.root / f"hosts-taskmanager-{index}"
        pool_host = self.flink.worker_pool.rsplit(":", 1)[0]
        system = Path("/etc/hosts").read_text() if Path("/etc/hosts").exists() else ""
        path.write_text(
            f"{system.rstrip()}\n127.0.0.1 localhost {socket.gethostname()}\n{self.pool_host(index)} {pool_host}\n"
        )
        return path

    # --- processes ------------------------------------------------------------------------------
    def _java(self, main_class: str, jvm: list[str], dynamic: list[str]) -> list[str]:
        # Beam's ServerFactory patched to bind loopback, ahead of the jars: the FnAPI servers a
        # TaskManager opens for each SDK harness would listen on every interface (flink_classpath).
        classpath = flink_classpath(self.flink)
        return ["java", *jvm, "-cp", classpath, main_class, "--configDir", str(self.conf_dir), *dynamic]

    @functools.cached_property
    def jobmanager(self) -> ServiceProcess:
        jvm, dynamic = self._resource_params("GET_JM_RESOURCE_PARAMS")
        f = self.flink
        return ServiceProcess.in_stack(
            self.stack_dir,
            "flink-jobmanager",
            command=self._java(JOBMANAGER_CLASS, jvm, dynamic),
            ready=self._rest_ready,
            host=f.host,
            port=f.rest_port,
            cwd=self.root,
        )

    def taskmanager(self, index: int) -> ServiceProcess:
        jvm, dynamic = self._taskmanager_params
        port = self.flink.taskmanager_rpc_port(index)
        hosts = f"-Djdk.net.hosts.file={self._hosts_file(index)}"
        return ServiceProcess.in_stack(
            self.stack_dir,
            f"flink-taskmanager-{index}",
            command=self._java(
                TASKMANAGER_CLASS,
                [*jvm, hosts],
                [*dynamic, "-D", f"taskmanager.rpc.port={port}", "-D", f"taskmanager.resource-id=taskmanager-{index}"],
            ),
            ready=lambda: port_open(self.flink.host, port),
            host=self.flink.host,
            port=port,
            cwd=self.root,
        )

    def worker_pool(self, index: int) -> ServiceProcess:
        host, port = self.pool_host(index), self.flink.worker_pool_port
        ports = self.flink.worker_metrics_ports(index)
        return ServiceProcess.in_stack(
            self.stack_dir,
            f"flink-worker-pool-{index}",
            command=[
                sys.executable,
                "-m",
                "pipeline.worker_pool",
                f"--address={host}:{port}",
                f"--metrics-ports={ports[0]}-{ports[-1]}",
            ],
            ready=lambda: port_open(host, port),
            host=host,
            port=port,
            cwd=REPO_ROOT,
        )

    @functools.cached_property
    def _taskmanager_params(self) -> tuple[list[str], list[str]]:
        return self._resource_params("GET_TM_RESOURCE_PARAMS")

    def _resource_params(self, command: str) -> tuple[list[str], list[str]]:
        """JVM options and dynamic properties from Flink's memory model, as its scripts get them;
        kept next to the configuration they were computed from, since each costs a JVM start."""
        self.write_config()
        digest = hashlib.sha1((self.conf_dir / "config.yaml").read_bytes()).hexdigest()[:12]
        cached = self.root / f"{command.lower()}-{digest}.txt"
        if cached.exists():
            jvm, dynamic = cached.read_text().splitlines()
            return jvm.split(), dynamic.split()
        self._require_jars()
        done = subprocess.run(
            ["java", "-cp", f"{self.flink.lib_dir}/*", BASH_JAVA_UTILS, command, "--configDir", str(self.conf_dir)],
            capture_output=True,
            text=True,
            check=False,
        )
        results = [
            line.removeprefix("BASH_JAVA_UTILS_EXEC_RESULT:")
            for line in done.stdout.splitlines()
            if line.startswith("BASH_JAVA_UTILS_EXEC_RESULT:")
        ]
        if done.returncode != 0 or len(results) != 2:
            raise StackError(f"Flink could not size its {command} memory:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
        cached.write_text("\n".join(results) + "\n")
        return results[0].split(), results[1].split()

    def _require_jars(self) -> None:
        if not any(self.flink.lib_dir.glob("flink-runtime-web-*.jar")):
            raise StackError(f"Flink's jars are not installed in {self.flink.lib_dir}. Run `make flink-bootstrap`.")

    def _rest_ready(self) -> bool:
        try:
            return httpx.get(f"{self.flink.rest_url}/overview", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False

    # --- whole cluster --------------------------------------------------------------------------
    def processes(self, taskmanagers: int | None = None) -> list[ServiceProcess]:
        count = self.flink.taskmanagers if taskmanagers is None else taskmanagers
        members = [self.jobmanager]
        for index in range(1, max(count, self._highest_started()) + 1):
            members += [self.worker_pool(index), self.taskmanager(index)]
        return members

    def _highest_started(self) -> int:
        """The highest TaskManager index with a pid file: ``down`` stops those of a larger ``up``."""
        indexes = [int(p.stem.rsplit("-", 1)[1]) for p in (self.stack_dir / "pids").glob("flink-taskmanager-*.pid")]
        return max(indexes, default=0)

    def up(self, taskmanagers: int | None = None, log: Any = print) -> None:
        count = self.flink.taskmanagers if taskmanagers is None else taskmanagers
        timeout = self.flink.start_timeout_s
        f = self.flink
        reserve_ports(
            [
                f.rest_port,
                f.rpc_port,
                f.blob_port,
                f.worker_pool_port,
                *(self.flink.taskmanager_rpc_port(i) for i in range(1, 17)),
            ]
        )
        self._start(self.jobmanager, timeout, log)
        for index in range(1, count + 1):
            self._start(self.worker_pool(index), timeout, log)
            self._start(self.taskmanager(index), timeout, log)
        self.wait_registered(count, timeout)
        log(f"  flink     {count} TaskManager(s) x {self.flink.slots} slot(s); web UI {self.flink.rest_url}")

    @staticmethod
    def _start(process: ServiceProcess, timeout: float, log: Any) -> None:
        began = time.monotonic()
        started = process.start(timeout)
        verb = "started" if started else "already running"
        log(f"  {process.name:<22} {verb} on {process.host}:{process.port} ({time.monotonic() - began:.1f} s)")

    def wait_registered(self, count: int, timeout: float) -> None:
        """Until ``count`` TaskManagers are registered with the JobManager."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.taskmanagers()) >= count:
                return
            time.sleep(0.5)
        raise StackError(f"only {len(self.taskmanagers())} of {count} TaskManagers registered within {timeout:.0f} s")

    def taskmanagers(self) -> list[dict[str, Any]]:
        """The TaskManagers the JobManager knows (Flink's REST ``/taskmanagers``)."""
        try:
            reply = httpx.get(f"{self.flink.rest_url}/taskmanagers", timeout=5.0)
            return list(reply.raise_for_status().json()["taskmanagers"])
        except httpx.HTTPError:
            return []

    def down(self) -> list[ServiceProcess]:
        return stop_together(list(reversed(self.processes())), self.settings.stack.stop_timeout_s)

    def kill_taskmanager(self, index: int) -> None:
        """``kill -9`` of TaskManager ``index`` and its worker pool (fault tests)."""
        self.taskmanager(index).kill()
        self.worker_pool(index).kill()


def flink_classpath(fs: FlinkSettings) -> str:
    """The classpath of every Flink JVM (the job server, the session cluster's JobManager and
    TaskManagers): the jars of ``FLINK_LIB_DIR``, behind Beam's ``ServerFactory`` patched to listen
    on the address it is given (``infra/beam-java/server-factory.patch``, compiled into
    ``<FLINK_LIB_DIR>-patch`` by ``make flink-bootstrap``). Beam's own listens on every interface:
    the job and artifact services whatever ``--job-host`` says, and the FnAPI servers each Flink
    operator opens for its SDK harness."""
    patched = fs.lib_dir.with_name(fs.lib_dir.name + "-patch") / "beam-server-factory-patched.jar"
    if not patched.exists():
        raise StackError(f"Beam's patched ServerFactory is not built ({patched}). Run `make flink-bootstrap`.")
    return f"{patched}:{fs.lib_dir}/*"


def _yaml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.stack.flink_cluster", description=__doc__.split("\n")[0])
    parser.add_argument("command", choices=("up", "down", "status"))
    parser.add_argument("--taskmanagers", type=int, default=None, help="TaskManagers to run (FLINK_TASKMANAGERS)")
    args = parser.parse_args(argv)
    cluster = FlinkCluster(Settings())
    try:
        if args.command == "up":
            print(f"==> starting a Flink session cluster ({cluster.flink.rest_url})", flush=True)
            cluster.up(args.taskmanagers, log=lambda line: print(line, flush=True))
        elif args.command == "down":
            stopped = cluster.down()
            print(f"stopped: {', '.join(p.name for p in stopped) or 'nothing was running'}")
        else:
            for process in cluster.processes(args.taskmanagers):
                state = "running" if process.running() else "stopped"
                print(f"  {process.name:<22} {state:<8} {process.host}:{process.port}")
            for tm in cluster.taskmanagers():
                print(f"  registered {tm['id']}: {tm['freeSlots']}/{tm['slotsNumber']} slots free")
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
