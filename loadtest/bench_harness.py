"""What the benchmarks share: the stack's process sampler, the generator and the streaming pipeline
as subprocesses, and the Redis sink's stored positions and lag (used by bench_pipeline, bench_lanes,
bench_bigquery, bench_http and run_locust)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager

import redis

from infra.process import stop_group
from infra.settings import REPO_ROOT, Settings
from infra.stack.kafka_admin import end_offsets
from infra.stack.local import LocalStack
from loadtest.procstats import ProcessSampler, children_map
from sinks.redis_leaderboard import RedisLeaderboardSink
from sinks.redis_store import next_offsets

# Time series of the sustained runs, for loadtest.charts (make bench-charts).
SERIES_DIR = REPO_ROOT / ".bench"
NO_CHANGES = {
    "GENERATOR_EVENT_UPDATE_SHARE": "0",
    "GENERATOR_EVENT_DELETE_SHARE": "0",
    "GENERATOR_CONTENT_UPDATE_SHARE": "0",
}


def say(message: str) -> None:
    print(message, flush=True)


def stored(client: redis.Redis, topic: str, sink: str = RedisLeaderboardSink.name) -> dict[int, int]:
    return next_offsets(client, sink, topic)


def lag(settings: Settings, client: redis.Redis) -> int:
    topic = settings.cdc.engagement_topic
    positions = stored(client, topic)
    return sum(max(0, end - positions.get(p, 0)) for p, end in end_offsets(settings.kafka, topic).items())


def stack_sampler(stack: LocalStack) -> ProcessSampler:
    pids = {}
    for process in stack.processes:
        pid = process.pid()
        if pid is None:
            raise SystemExit(f"{process.name} is not running: start the stack with `make up`")
        pids[process.name] = pid
    return ProcessSampler(pids)


def generator(*args: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "generator", *args],
        cwd=REPO_ROOT,
        env={**os.environ, **NO_CHANGES, **(extra_env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


@contextmanager
def streaming_pipeline(
    extra_env: dict[str, str] | None = None, log_name: str = "bench-pipeline.log"
) -> Iterator[subprocess.Popen[str]]:
    """The supervisor in its own process group; stopped with SIGINT like a user's Ctrl-C."""
    log = open(REPO_ROOT / ".stack" / "logs" / log_name, "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline"],
        cwd=REPO_ROOT,
        # The Redis lanes unless a benchmark asks for more (bench_bigquery, bench_lanes).
        env={**os.environ, "PIPELINE_SINKS": "redis", **(extra_env or {})},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        yield proc
    finally:
        stop_group(proc)
        log.close()


def children(pid: int) -> dict[str, int]:
    """The supervisor's runner (Prism, or Flink's job server) and job processes, by name."""
    found: dict[str, int] = {}
    for child in children_map().get(pid, []):
        try:
            with open(f"/proc/{child}/cmdline", "rb") as cmd:
                line = cmd.read().replace(b"\0", b" ").decode()
        except OSError:
            continue
        found["job" if "pipeline.worker" in line else "flink" if "FlinkJobServerDriver" in line else "prism"] = child
    return found


def wait_until_caught_up(settings: Settings, client: redis.Redis, timeout: float) -> float:
    """Seconds until the stored positions reach today's topic ends."""
    topic = settings.cdc.engagement_topic
    ends = end_offsets(settings.kafka, topic)
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        positions = stored(client, topic)
        if all(positions.get(p, 0) >= end for p, end in ends.items()):
            return time.monotonic() - began
        time.sleep(0.005)
    raise SystemExit(f"the pipeline did not catch up within {timeout} s (lag {lag(settings, client):,})")
