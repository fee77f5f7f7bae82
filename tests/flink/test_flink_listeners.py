"""Nothing of the Flink runner listens beyond loopback, with a job running: the job server (and the
Flink cluster embedded in its JVM) with the job's LOOPBACK harness pool, then the session cluster
(JobManager, TaskManagers, their worker pools and the SDK workers they start) with the job server
that submits to it. Each listening socket of those process trees must be bound to a loopback
address; the failure names every one that is not."""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.settings import Settings
from infra.stack.flink_cluster import FlinkCluster
from infra.stack.local import LocalStack
from tests.flink.test_flink_pipeline import flink_env
from tests.integration.listeners import exposed, listeners, process_trees
from tests.integration.pipeline_helpers import flush_redis, streaming, wait_caught_up

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not any(Settings().flink.lib_dir.glob("flink-runtime-web-*.jar")),
        reason="Flink's jars are not installed: make flink-bootstrap",
    ),
]


@pytest.mark.parametrize("where", ["embedded", "cluster"])
def test_every_flink_listener_is_on_loopback(stack: LocalStack, settings: Settings, tmp_path: Path, where: str):
    f = settings.flink
    cluster = FlinkCluster(settings) if where == "cluster" else None
    extra = flink_env(settings)
    expected = {f.job_port, f.artifact_port}
    if cluster is not None:
        extra |= {"FLINK_MASTER": f"{f.host}:{f.rest_port}", "FLINK_ENVIRONMENT": "external"}
        # FLINK_TASKMANAGERS (2) x FLINK_SLOTS: the job's parallelism (2) must find its slots.
        expected |= {f.rest_port, f.rpc_port, f.blob_port, f.worker_pool_port}
        expected |= {f.taskmanager_rpc_port(i) for i in range(1, f.taskmanagers + 1)}
    flush_redis(settings)  # no positions: caught up means this job applied every record
    try:
        if cluster is not None:
            cluster.up(log=print)
        with streaming(settings, tmp_path / "pipeline.log", **extra) as pipeline:
            wait_caught_up(settings, timeout=240)
            assert pipeline.proc is not None and pipeline.alive()
            members = [] if cluster is None else cluster.processes()
            pids = [pid for p in [*stack.processes, *members] if (pid := p.pid()) is not None]
            sockets = listeners(process_trees([*pids, pipeline.proc.pid]))
    finally:
        if cluster is not None:
            cluster.down()
    listing = "\n".join(f"  {s}" for s in sockets)
    print(f"listening sockets of the stack and of Flink ({where}):\n{listing}")

    ports = {s.port for s in sockets}
    assert expected <= ports, f"missing from the listing: {sorted(expected - ports)}\n{listing}"
    if cluster is not None:  # an SDK worker a pool started for the job, with its metrics endpoint
        assert any("pipeline.sdk_worker" in s.process for s in sockets), listing
    assert exposed(sockets) == [], "listening beyond loopback:\n" + "\n".join(f"  {s}" for s in exposed(sockets))
