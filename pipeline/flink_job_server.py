"""Beam's Flink job server as a process the supervisor owns, like Prism (``--runner flink``).

Beam's Python ``FlinkRunner`` starts a job server from a ``beam-runners-flink-<ver>-job-server``
jar it downloads at run time. That download fails here, and Maven Central has no such jar for any
Beam version, so ``make flink-bootstrap`` resolves the runner module and its dependencies into
``FLINK_LIB_DIR`` (``infra/maven/flink/pom.xml``) and the supervisor starts the job server from that
classpath itself (with Beam's gRPC server factory patched to bind the address it is given, ahead of
the jars: ``flink_classpath``):

- its own JVM, with a bounded heap (``FLINK_HEAP``; Beam leaves it unbounded), its log in
  ``<STACK_DIR>/logs/flink-job-server-<port>.log``;
- in the supervisor's process group and with a parent-death signal, so ``kill -9`` of the
  supervisor (or of its group) never leaves it, or the embedded Flink cluster in it, orphaned;
- refused, like Prism, if its port is already taken: a job server this supervisor did not start may
  be running another instance's job.

The job is then submitted with ``PortableRunner --job_endpoint`` (``pipeline.runners``). Before a
submission, ``cancel_running_jobs`` cancels whatever the job server still runs from an earlier
attempt of this supervisor (a job whose LOOPBACK harness was killed with its process), so two jobs
never read the same partitions at once; the sinks' fencing would refuse the older one's writes
anyway (``sinks.fencing``).
"""

from __future__ import annotations

import logging
import signal
import time
from pathlib import Path

import grpc
import httpx
from apache_beam.portability.api import beam_job_api_pb2, beam_job_api_pb2_grpc

from infra.addresses import connect_host
from infra.process import ServiceProcess, StackError, port_open, refuse_if_taken
from infra.settings import Settings
from infra.stack.flink_cluster import flink_classpath

_log = logging.getLogger(__name__)

MAIN_CLASS = "org.apache.beam.runners.flink.FlinkJobServerDriver"
_STATE = beam_job_api_pb2.JobState.Enum
_FLINK_TERMINAL = {"FINISHED", "CANCELED", "FAILED"}
_ACTIVE = {_STATE.STOPPED, _STATE.STARTING, _STATE.RUNNING, _STATE.UPDATING, _STATE.DRAINING}


def job_server_process(settings: Settings) -> ServiceProcess:
    fs = settings.flink
    if not any(fs.lib_dir.glob("beam-runners-flink-*.jar")):
        raise StackError(f"Beam's Flink job server is not installed in {fs.lib_dir}. Run `make flink-bootstrap`.")
    stack_dir = settings.stack.dir
    work = stack_dir / "flink"
    conf = []
    if fs.master == "[local]":
        conf = [f"--flink-conf-dir={write_embedded_config(work / 'conf', settings.pipeline.bind_host)}"]
    return ServiceProcess.in_stack(
        stack_dir,
        f"flink-job-server-{fs.job_port}",
        command=[
            "java",
            f"-Xmx{fs.heap}",
            # The embedded cluster's temporary files (blobs, spilled state) stay under the stack.
            f"-Djava.io.tmpdir={work / 'tmp'}",
            "-cp",
            flink_classpath(fs),
            MAIN_CLASS,
            f"--flink-master={fs.master}",
            # Where the job and artifact services listen: loopback by default (PIPELINE_BIND_HOST;
            # 0.0.0.0 for every interface).
            f"--job-host={settings.pipeline.bind_host}",
            f"--job-port={fs.job_port}",
            f"--artifact-port={fs.artifact_port}",
            # No Java expansion service: the pipeline has no cross-language transforms.
            "--expansion-port=-1",
            f"--artifacts-dir={work / 'artifacts'}",
            *conf,
        ],
        ready=lambda: port_open(connect_host(settings.pipeline.bind_host), fs.job_port),
        host=connect_host(settings.pipeline.bind_host),
        port=fs.job_port,
        stop_signal=signal.SIGTERM,
        new_session=False,
        die_with_parent=True,
    )


def embedded_config(host: str) -> dict[str, str]:
    """Flink's configuration for the cluster embedded in the job server (``FLINK_MASTER=[local]``):
    its blob server, RPC, REST endpoint and TaskManagers' data ports listen on ``host``. Flink's
    defaults bind every interface (eight listeners of the job server's JVM while a job ran)."""
    reach = connect_host(host)
    bind = host or "0.0.0.0"
    return {
        "jobmanager.rpc.address": reach,
        "jobmanager.bind-host": bind,
        "rest.address": reach,
        "rest.bind-address": bind,
        "taskmanager.host": reach,
        "taskmanager.bind-host": bind,
    }


def write_embedded_config(folder: Path, host: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"{key}: {value}" for key, value in embedded_config(host).items()]
    (folder / "config.yaml").write_text("\n".join(lines) + "\n")
    return folder


def start_own_job_server(process: ServiceProcess, timeout: float) -> None:
    """Start the job server, refusing a port that something else already holds (see the docstring)."""
    refuse_if_taken(
        process,
        "The Flink job server's port",
        "It may be a job server an older pipeline left behind, or another instance on the same FLINK_JOB_PORT. "
        "Stop that process, or set another FLINK_JOB_PORT and FLINK_ARTIFACT_PORT.",
    )
    for folder in ("tmp", "artifacts"):
        (process.log_file.parent.parent / "flink" / folder).mkdir(parents=True, exist_ok=True)
    process.start(timeout)


def cancel_running_jobs(endpoint: str, timeout_s: float = 30.0) -> list[str]:
    """Cancel every job the job server at ``endpoint`` still runs; return their ids."""
    cancelled = []
    with grpc.insecure_channel(endpoint) as channel:
        stub = beam_job_api_pb2_grpc.JobServiceStub(channel)
        jobs = stub.GetJobs(beam_job_api_pb2.GetJobsRequest(), timeout=timeout_s).job_info
        for job in jobs:
            if job.state in _ACTIVE:
                _log.warning("cancelling job %s (%s) left by an earlier attempt", job.job_id, job.job_name)
                stub.Cancel(beam_job_api_pb2.CancelJobRequest(job_id=job.job_id), timeout=timeout_s)
                cancelled.append(job.job_id)
    return cancelled


def job_name(settings: Settings) -> str:
    """The Flink job's name: its consumer group, so the job of one instance is found on a cluster."""
    return f"engagement-{settings.pipeline.consumer_group}"


def cancel_cluster_jobs(rest_url: str, name: str, timeout_s: float = 30.0) -> list[str]:
    """Cancel every job named ``name`` the Flink cluster at ``rest_url`` still runs; return their ids.

    For a job the job server lost track of: a job server that died (or was restarted with the
    supervisor) leaves its job running on the cluster, where ``cancel_running_jobs`` cannot see it.
    """
    cancelled = []
    with httpx.Client(base_url=rest_url, timeout=timeout_s) as client:
        jobs = client.get("/jobs/overview").raise_for_status().json()["jobs"]
        for job in jobs:
            if job["name"] == name and job["state"] not in _FLINK_TERMINAL:
                _log.warning("cancelling job %s (%s, %s) left on the cluster", job["jid"], name, job["state"])
                client.patch(f"/jobs/{job['jid']}", params={"mode": "cancel"}).raise_for_status()
                cancelled.append(job["jid"])
        for jid in cancelled:
            _wait_terminal(client, jid, timeout_s)
    return cancelled


def _wait_terminal(client: httpx.Client, jid: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if client.get(f"/jobs/{jid}").raise_for_status().json()["state"] in _FLINK_TERMINAL:
            return
        time.sleep(0.5)
    raise StackError(f"Flink job {jid} was not cancelled within {timeout_s:.0f} s")
