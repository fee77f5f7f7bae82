"""The pipeline on a Flink session cluster, killed one part at a time (the fault ``flink-cluster-kill9``).

The cluster (``infra.stack.flink_cluster``) has two TaskManagers of two slots each and the job runs
at parallelism 2, so that one TaskManager can run the whole job while the other is gone. Under load:

1. ``kill -9`` of TaskManager 1 and its worker pool. Nobody restarts them: Flink notices the lost
   TaskManager, and restarts the job from its latest checkpoint on the slots left (what the
   recovery argument in docs/delivery.md, "Flink checkpoints", is about). Once the job reads
   again, both come back, as Kubernetes would restart a pod.
2. ``kill -9`` of the JobManager, which has no high availability locally: its job is gone with it.
   It is started again (as Kubernetes would); the job server's invocation fails, and the
   supervisor submits the job again, which resumes from the positions the sinks stored.

For each, the time from the kill until the Redis sink applies new changes again is a note of the
fault's row; the suite then compares every sink with SQL as for any fault.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import httpx

from infra.settings import Settings
from infra.stack.flink_cluster import FlinkCluster
from sinks.redis_leaderboard import RedisLeaderboardSink
from sinks.redis_store import next_offsets

if TYPE_CHECKING:
    from loadtest.faults import Run

RECOVERY_TIMEOUT_S = 240.0
# Both kills and both recoveries happen under load (a resubmission takes about a minute).
LOAD_S = 180.0
FLINK_FAULTS = frozenset({"flink-cluster-kill9"})


def cluster_settings(settings: Settings) -> Settings:
    """The fault stack's settings with the job on the cluster: 2 TaskManagers x 2 slots, parallelism
    2, the Python in the worker pools, one source reader per partition."""
    flink = settings.flink.model_copy(
        update={
            "master": f"{settings.flink.host}:{settings.flink.rest_port}",
            "environment": "external",
            "taskmanagers": 2,
            "slots": 2,
            "parallelism": 2,
        }
    )
    pipeline = settings.pipeline.model_copy(update={"runner": "flink", "readers": 16})
    return settings.model_copy(update={"flink": flink, "pipeline": pipeline})


def applied(settings: Settings) -> int:
    """The Redis sink's stored next offsets on the event topic, summed: it grows while it applies."""
    client = settings.redis.client()
    try:
        return sum(next_offsets(client, RedisLeaderboardSink.name, settings.cdc.engagement_topic).values())
    finally:
        client.close()


def seconds_until_applying(settings: Settings, timeout: float = RECOVERY_TIMEOUT_S) -> float | None:
    """From now, seconds until the Redis sink stores new positions twice (a job reading and
    writing again, not one flush left over from before); None if it did not within ``timeout``."""
    began = time.monotonic()
    seen = applied(settings)
    moves = 0
    while time.monotonic() - began < timeout:
        time.sleep(0.2)
        now = applied(settings)
        if now > seen:
            moves += 1
            seen = now
            if moves == 2:
                return time.monotonic() - began
    return None


def running_jobs(settings: Settings) -> list[dict[str, object]]:
    reply = httpx.get(f"{settings.flink.rest_url}/jobs/overview", timeout=5.0).raise_for_status()
    return [job for job in reply.json()["jobs"] if job["state"] == "RUNNING"]


def flink_cluster_kill9(run: Run) -> None:
    settings, cluster = run.settings, FlinkCluster(run.settings)
    jobs = running_jobs(settings)
    run.notes.append(f"{len(jobs)} job(s) running on {len(cluster.taskmanagers())} TaskManagers before")

    began = time.monotonic()
    cluster.kill_taskmanager(1)
    recovered = seconds_until_applying(settings)
    failures = _failures(settings, jobs)
    run.notes.append(
        "TaskManager 1 + its pool kill -9: "
        + (f"applying again after {recovered:.1f} s" if recovered is not None else "did NOT recover")
        + f", failures Flink restarted the job after: {failures}"
    )
    cluster.up(log=lambda _: None)  # both back, as Kubernetes restarts a pod
    time.sleep(max(0.0, 15 - (time.monotonic() - began)))

    cluster.jobmanager.kill()
    cluster.up(log=lambda _: None)
    recovered = seconds_until_applying(settings)
    run.notes.append(
        "JobManager kill -9: "
        + (f"applying again after {recovered:.1f} s" if recovered is not None else "did NOT recover")
        + " (resubmitted by the supervisor)"
    )


def _failures(settings: Settings, jobs: list[dict[str, object]]) -> str:
    """How many failures of the job Flink recorded (its exception history), or "?"."""
    if not jobs:
        return "?"
    try:
        reply = httpx.get(f"{settings.flink.rest_url}/jobs/{jobs[0]['jid']}/exceptions", timeout=5.0)
        return str(len(reply.raise_for_status().json()["exceptionHistory"]["entries"]))
    except (httpx.HTTPError, LookupError, ValueError):
        return "?"
