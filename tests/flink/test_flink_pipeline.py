"""The pipeline on Flink (``--runner flink``): Redis equals SQL, also after kill -9 of the Flink side.

Slow and not part of ``make test``: ``make test-flink`` (it installs the job server's jars first).
Each run submits the job to Beam's Flink job server, which the supervisor starts and owns, running
an embedded Flink cluster (JobManager and TaskManager in its JVM) at parallelism 2, with two source
readers so both slots read partitions: the fast path, with the job's Python in the job process
(``LOOPBACK``). The session cluster, with the Python in worker pools and Flink's own recovery, is
tested by the fault ``flink-cluster-kill9`` (``test_flink_cluster.py``). Killing that JVM kills the
TaskManager and the job; killing the job process kills the job's SDK harness. Either way the
supervisor submits the job again, and the source resumes from the positions the sinks stored.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from infra.process import pid_alive
from infra.settings import Settings
from infra.stack.local import LocalStack
from sinks.redis_leaderboard import RedisLeaderboardSink
from sinks.redis_store import next_offsets
from tests.integration.pipeline_helpers import (
    assert_redis_matches_sql,
    flush_redis,
    run_bounded,
    streaming,
    wait_caught_up,
    wait_topic_settled,
)
from tests.integration.test_pipeline import generate

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not any(Settings().flink.lib_dir.glob("beam-runners-flink-*.jar")),
        reason="Beam's Flink job server is not installed: make flink-bootstrap",
    ),
]


def flink_env(settings: Settings) -> dict[str, str]:
    """The Flink runner, embedded in the job server (the test stack's ports are the dev stack's + 100)."""
    return {
        "PIPELINE_RUNNER": "flink",
        "PIPELINE_READERS": "2",
        "FLINK_MASTER": "[local]",
        "FLINK_ENVIRONMENT": "loopback",
    }


def job_server_pid(settings: Settings) -> int | None:
    pid_file = settings.stack.dir / "pids" / f"flink-job-server-{settings.flink.job_port}.pid"
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return pid if pid_alive(pid) else None


def worker_pid(supervisor: int) -> int | None:
    """The job process (``python -m pipeline.worker``) the supervisor started."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == supervisor and b"pipeline.worker" in cmdline:
            return int(entry.name)
    return None


def wait_applying(settings: Settings, timeout: float = 120) -> None:
    """Until the Redis sink stores new positions: the (re)submitted job is reading and writing."""
    client = settings.redis.client()
    topic = settings.cdc.engagement_topic
    before = sum(next_offsets(client, RedisLeaderboardSink.name, topic).values())
    deadline = time.monotonic() + timeout
    while sum(next_offsets(client, RedisLeaderboardSink.name, topic).values()) <= before:
        assert time.monotonic() < deadline, f"the Flink job applied nothing within {timeout} s"
        time.sleep(0.5)


def test_bounded_run_on_flink_equals_sql(stack: LocalStack, settings: Settings):
    assert generate(settings, "--burst", "8000", "--seed", "12").wait(120) == 0
    wait_topic_settled(settings)
    flush_redis(settings)
    run_bounded(settings, **flink_env(settings))
    checked = assert_redis_matches_sql(settings)
    assert checked["contents"] >= 20


def test_streaming_on_flink_survives_kill_9_of_the_task_manager_and_of_the_job(
    stack: LocalStack, settings: Settings, tmp_path: Path
):
    flush_redis(settings)
    log = tmp_path / "pipeline.log"
    with streaming(settings, log, **flink_env(settings)) as pipeline:
        assert pipeline.proc is not None
        generator = generate(settings, "--rate", "60000", "--duration", "40")  # 1,000 events/s
        wait_applying(settings)
        # The embedded cluster's JVM: JobManager, TaskManager and the running job, all at once.
        server = job_server_pid(settings)
        assert server is not None
        os.kill(server, signal.SIGKILL)
        wait_applying(settings)  # the supervisor started the job server again and resubmitted
        assert job_server_pid(settings) not in (None, server)
        # The job process: the submitter and its LOOPBACK SDK harness.
        worker = worker_pid(pipeline.proc.pid)
        assert worker is not None
        os.kill(worker, signal.SIGKILL)
        wait_applying(settings)
        assert worker_pid(pipeline.proc.pid) not in (None, worker)
        assert generator.wait(120) == 0, generator.stdout.read() if generator.stdout else ""
        wait_caught_up(settings, timeout=240)
        assert pipeline.alive(), log.read_text()[-3000:]
    assert_redis_matches_sql(settings)
    assert "job failed" in log.read_text()  # both kills were seen as failures and restarted
