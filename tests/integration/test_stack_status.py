"""`make status` against the real test stack: exit 0 while capture runs, 1 with the reason when not.

Each outage is made for real -- the connector paused over Connect's REST, Postgres restarted (REST
says RUNNING while Debezium is away), Connect stopped -- and undone before the test ends, waiting
until status is clean again, so the tests after it find the session stack as it was.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import orjson
import pytest

from infra.settings import REPO_ROOT, Settings
from infra.stack import __main__ as cli
from infra.stack.local import LocalStack

from .conftest import settings_env

pytestmark = pytest.mark.integration

OK_LINE = "capture: ok (connector and tasks RUNNING, slot active, lag within limits)"
STOPPED_LINE = "capture: STOPPED or FAILED"


def run_status(settings: Settings, *flags: str) -> tuple[int, list[str]]:
    """``python -m infra.stack status`` for the test stack (``make status`` adds ``--with-pipeline``)."""
    env = {
        **os.environ,
        **settings_env(settings),
        "CDC_CONNECTOR_NAME": settings.cdc.connector_name,
        "CDC_SLOT_NAME": settings.cdc.slot_name,
        "CDC_PUBLICATION_NAME": settings.cdc.publication_name,
    }
    result = subprocess.run(
        [sys.executable, "-m", "infra.stack", "status", *flags],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return result.returncode, result.stdout.splitlines()


def capture_section(lines: list[str]) -> list[str]:
    start = next(i for i, line in enumerate(lines) if line.startswith("capture: "))
    return lines[start:]


def wait_until_capture_is_healthy(stack: LocalStack, timeout: float = 120.0) -> None:
    """Debezium reconnects to a restarted Postgres by itself, about 10 s later."""
    deadline = time.monotonic() + timeout
    problems = stack.status()["capture_problems"]
    while problems and time.monotonic() < deadline:
        time.sleep(0.5)
        problems = stack.status()["capture_problems"]
    assert problems == []


def test_status_exits_1_with_the_reason_while_capture_is_stopped(stack: LocalStack, settings: Settings, capsys):
    name, slot = settings.cdc.connector_name, settings.cdc.slot_name
    wait_until_capture_is_healthy(stack)
    code, lines = run_status(settings)
    assert (code, capture_section(lines)) == (0, [OK_LINE])

    # Paused over Connect's REST: the connector and its task say so.
    stack.connect.pause()
    try:
        code, lines = run_status(settings)
    finally:
        stack.connect.resume()
    assert code == 1
    assert capture_section(lines)[:3] == [
        STOPPED_LINE,
        f"  - connector {name} is PAUSED",
        "  - connector task 0 is PAUSED",
    ]
    wait_until_capture_is_healthy(stack)

    # A fast Postgres restart: REST keeps saying RUNNING while Debezium waits to reconnect, but
    # the slot has no consumer. Checked in-process at once, well inside Debezium's 10 s wait.
    stack.postgres.process.stop(settings.stack.stop_timeout_s)
    stack.postgres.process.start(settings.stack.start_timeout_s)
    report = stack.status()
    capsys.readouterr()
    assert cli.cmd_status(stack) == 1
    out = capsys.readouterr().out.splitlines()
    assert report["connector"]["connector"]["state"] == "RUNNING"
    assert capture_section(out) == [STOPPED_LINE, f"  - replication slot {slot} is inactive (no consumer connected)"]
    wait_until_capture_is_healthy(stack)

    # Connect stopped: nothing captures, and the slot is inactive.
    stack.connect.process.stop(settings.stack.stop_timeout_s)
    try:
        code, lines = run_status(settings)
    finally:
        stack.connect.process.start(settings.stack.start_timeout_s)
        stack.connect.wait_running(settings.stack.start_timeout_s)
    assert code == 1
    assert capture_section(lines) == [
        STOPPED_LINE,
        "  - Kafka Connect is stopped: nothing captures changes",
        f"  - replication slot {slot} is inactive (no consumer connected)",
    ]

    wait_until_capture_is_healthy(stack)
    code, lines = run_status(settings)
    assert (code, capture_section(lines)) == (0, [OK_LINE])


def test_make_status_prints_the_stack_then_the_pipeline_once_each_and_all_of_it_as_json(
    stack: LocalStack, settings: Settings
):
    wait_until_capture_is_healthy(stack)
    group = settings.pipeline.consumer_group
    no_pipeline = f"no pipeline is running for consumer group {group} (nobody holds its instance lock)"
    code, lines = run_status(settings, "--with-pipeline")
    assert code == 1  # no pipeline runs in this test
    assert lines[0] == "services:" and OK_LINE in lines
    # The connector and the slot come once, in the pipeline's part, after the stack's.
    assert [line.split(":")[0] for line in lines if line.startswith(("connector:", "replication slot:"))] == [
        "connector",
        "replication slot",
    ]
    assert lines.index(OK_LINE) < lines.index(f"pipeline: not running for {group}")

    code, lines = run_status(settings, "--with-pipeline", "--json")
    body = orjson.loads("\n".join(lines))
    assert code == 1
    assert set(body) == {"stack", "pipeline"}
    assert {info["state"] for info in body["stack"]["services"].values()} == {"healthy"}
    assert body["stack"]["capture_problems"] == []
    assert body["pipeline"]["problems"] == [no_pipeline]
