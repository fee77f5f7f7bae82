"""Run the real pipeline (supervisor, Prism, job) against the test stack; the Redis == SQL check is
``loadtest.truth``."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from infra.process import port_open, stop_group
from infra.settings import REPO_ROOT, Settings

# The truth check lives with the fault suite, which must not import tests; re-exported for the tests.
from loadtest.truth import (  # noqa: F401
    TOLERANCE,
    assert_redis_matches_sql,
    hand_made_content,
    wait_caught_up,
    wait_topic_settled,
)

from .conftest import settings_env


def env(settings: Settings, **extra: str) -> dict[str, str]:
    return {**os.environ, **settings_env(settings), **extra}


def run_pipeline(settings: Settings, *args: str, timeout: float, **extra: str) -> subprocess.CompletedProcess[str]:
    """``python -m pipeline <args>`` against the test stack, to its end; output captured."""
    return subprocess.run(
        [sys.executable, "-m", "pipeline", *args],
        cwd=REPO_ROOT,
        env=env(settings, **extra),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def run_bounded(settings: Settings, timeout: float = 300, **extra: str) -> str:
    result = run_pipeline(settings, "--bounded", timeout=timeout, **extra)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


class Streaming:
    """The supervisor in its own process group, like a service: start, kill -9, restart, stop."""

    def __init__(self, settings: Settings, log: Path, **extra: str) -> None:
        self.settings = settings
        self.log_path = log
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pipeline"],
            cwd=REPO_ROOT,
            env=env(self.settings, **self.extra),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def kill9(self) -> None:
        assert self.proc is not None
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        # Prism was in the same process group: its port must be free again.
        deadline = time.monotonic() + 10
        while port_open("127.0.0.1", self.settings.pipeline.prism_port):
            assert time.monotonic() < deadline, "Prism survived kill -9 of the pipeline's process group"
            time.sleep(0.1)

    def stop(self) -> int:
        assert self.proc is not None
        return stop_group(self.proc, timeout=60)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


@contextmanager
def streaming(settings: Settings, log: Path, **extra: str) -> Iterator[Streaming]:
    pipeline = Streaming(settings, log, **extra)
    pipeline.start()
    try:
        yield pipeline
    finally:
        pipeline.stop()


def flush_redis(settings: Settings) -> None:
    settings.redis.client().flushall()
