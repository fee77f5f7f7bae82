"""Children that must die with their parent, and a supervisor that never adopts a Prism it did not start.

Real tiny processes (python, sleep), no services; each test stops what it started.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from infra.process import ServiceProcess, StackError, pid_alive, port_open
from infra.settings import PipelineSettings, Settings
from pipeline.instance_lock import LOST
from pipeline.supervisor import Supervisor, start_own_prism

MIDDLE = """
import subprocess, sys, time
from infra.process import parent_death_signal
child = subprocess.Popen(["sleep", "60"], preexec_fn=parent_death_signal() if sys.argv[1] == "1" else None)
print(child.pid, flush=True)
time.sleep(60)
"""


def grandchild_of_a_killed_parent(die_with_parent: bool) -> int:
    """Start parent -> child, ``kill -9`` the parent alone, return the child's pid."""
    parent = subprocess.Popen(
        [sys.executable, "-c", MIDDLE, "1" if die_with_parent else "0"], stdout=subprocess.PIPE, text=True
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    parent.kill()
    parent.wait()
    return child


def gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not pid_alive(pid)


def test_a_child_with_the_parent_death_signal_dies_with_its_parent():
    assert gone_within(grandchild_of_a_killed_parent(True), 10)


def test_without_it_the_child_outlives_its_parent():
    child = grandchild_of_a_killed_parent(False)
    try:
        assert not gone_within(child, 1)
    finally:
        os.kill(child, signal.SIGKILL)


def prism_like(tmp_path, port: int) -> ServiceProcess:
    return ServiceProcess(
        name="prism-test",
        command=["sleep", "60"],
        pid_file=tmp_path / "prism.pid",
        log_file=tmp_path / "prism.log",
        ready=lambda: True,
        host="127.0.0.1",
        port=port,
        die_with_parent=True,
    )


def test_a_prism_port_in_use_by_another_process_is_refused(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        prism = prism_like(tmp_path, port)
        with pytest.raises(StackError, match="already in use by another process"):
            start_own_prism(prism)
    assert not prism.pid_file.exists()


def test_a_live_prism_named_by_the_pid_file_is_refused_not_adopted(tmp_path):
    orphan = subprocess.Popen(["sleep", "60"])
    try:
        prism = prism_like(tmp_path, 1)
        prism.pid_file.write_text(f"{orphan.pid}\n")
        with pytest.raises(StackError, match=f"pid {orphan.pid}"):
            start_own_prism(prism)
        assert orphan.poll() is None  # refused, not killed
    finally:
        orphan.kill()
        orphan.wait()


def test_a_stale_pid_file_is_no_reason_to_refuse(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    prism = prism_like(tmp_path, port)
    prism.pid_file.write_text("999999999\n")
    start_own_prism(prism, timeout=5)
    try:
        assert prism.pid() is not None and not port_open("127.0.0.1", port)
    finally:
        prism.stop(5)


def test_the_job_is_given_the_endpoint_of_the_supervisors_own_prism():
    settings = Settings(pipeline=PipelineSettings(prism_port=12345, runner="prism"))
    command = Supervisor(settings, ["--bounded"]).worker_command()
    assert command[1:] == [
        "-m",
        "pipeline.worker",
        "--runner",
        "prism",
        "--job-endpoint",
        "127.0.0.1:12345",  # where Prism listens: PIPELINE_BIND_HOST
        "--bounded",
    ]


def test_a_lost_lock_kills_the_job_at_once():
    supervisor = Supervisor(Settings(), [])
    supervisor._child = subprocess.Popen(["sleep", "60"])
    supervisor._on_lock_lost(LOST)
    assert supervisor._child.wait(10) == -signal.SIGKILL
