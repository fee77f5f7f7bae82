"""Nothing the project runs listens beyond loopback: the test stack's services, the streaming
pipeline (supervisor, Prism, the job process with its SDK harness pool and metrics endpoint) and the
dashboard, with the job running. Each listening socket of their process trees must be bound to a
loopback address; the failure names every one that is not."""

from __future__ import annotations

import subprocess
import sys
import time

import httpx
import pytest

from infra.process import stop_group
from infra.settings import REPO_ROOT, Settings
from infra.stack.local import LocalStack

from .listeners import exposed, listeners, process_trees
from .pipeline_helpers import env, flush_redis, streaming, wait_caught_up

pytestmark = pytest.mark.integration


def test_every_listener_is_on_loopback(stack: LocalStack, settings: Settings, tmp_path):
    with (tmp_path / "dashboard.log").open("wb") as log:
        dashboard = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "dashboard"],
            cwd=REPO_ROOT,
            env=env(settings),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    flush_redis(settings)  # no positions: caught up means this job applied every record
    try:
        with streaming(settings, tmp_path / "pipeline.log") as pipeline:
            # The job is submitted and its SDK harness runs bundles.
            wait_caught_up(settings, timeout=120)
            wait_healthy(settings.dashboard.url + "healthz", dashboard)
            assert pipeline.proc is not None and pipeline.alive()
            pids = [pid for p in stack.processes if (pid := p.pid()) is not None]
            sockets = listeners(process_trees([*pids, pipeline.proc.pid, dashboard.pid]))
    finally:
        stop_group(dashboard, timeout=20)
    listing = "\n".join(f"  {s}" for s in sockets)
    print(f"listening sockets of the stack, the pipeline and the dashboard:\n{listing}")

    # The listing is complete: every service, Prism, the metrics endpoint, the dashboard, and the
    # job process's SDK harness pool (a port of its own, chosen at start).
    ports = {s.port for s in sockets}
    expected = {p.port for p in stack.processes} | {
        settings.pipeline.prism_port,
        settings.metrics.port,
        settings.dashboard.port,
        settings.http_receiver.control_port,
    }
    assert expected <= ports, f"missing from the listing: {sorted(expected - ports)}\n{listing}"
    job = [s for s in sockets if "pipeline.worker" in s.process and s.port != settings.metrics.port]
    assert job, f"no SDK harness pool of the job process among:\n{listing}"

    assert exposed(sockets) == [], "listening beyond loopback:\n" + "\n".join(f"  {s}" for s in exposed(sockets))


def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        assert proc.poll() is None, f"the dashboard exited with {proc.returncode}"
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, f"{url} did not answer 200 within {timeout:.0f} s"
        time.sleep(0.2)
