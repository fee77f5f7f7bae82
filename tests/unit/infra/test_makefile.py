"""No shell interpolation of user input in the Makefile: what a user passes (SQL=..., FROM=..., any
VAR=value) reaches the command as one literal argument, whatever backticks, $(...) or quotes it holds.

Each target runs for real with PY replaced by a script that records its arguments, and with its
prerequisites (`up`, `bootstrap`...) taken as done (`make -o`), so nothing starts.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from infra.settings import REPO_ROOT

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")

PREREQUISITES = ("up", "bootstrap", "flink-cluster", "flink-bootstrap")
RECORDER = """\
import json, os, sys
with open(os.environ["ARGV_LOG"], "a") as log:
    log.write(json.dumps({"argv": sys.argv[1:], "env": dict(os.environ)}) + "\\n")
"""


def run_make(tmp_path: Path, target: str, *assignments: str, env: dict[str, str] | None = None) -> list[dict]:
    recorder = tmp_path / "py"
    recorder.write_text(f"#!{sys.executable}\n{RECORDER}")
    recorder.chmod(0o755)
    log = tmp_path / "argv.jsonl"
    log.unlink(missing_ok=True)
    skip = [arg for name in PREREQUISITES if name != target for arg in ("-o", name)]
    # A clean environment: only what a shell would have, plus what the test passes.
    base = {key: os.environ[key] for key in ("PATH", "HOME") if key in os.environ}
    result = subprocess.run(
        ["make", "-s", "-C", str(REPO_ROOT), *skip, target, f"PY={recorder}", *assignments],
        env={**base, "ARGV_LOG": str(log), **(env or {})},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


PAYLOAD = "select 1 from `x` where a = '$(touch {marker})' and b = \"$$HOME\" -- `touch {marker}`; touch {marker}"


def test_sql_with_backticks_and_command_substitution_is_passed_literally(tmp_path):
    marker = tmp_path / "pwned"
    sql = PAYLOAD.format(marker=marker)
    [call] = run_make(tmp_path, "bigquery-query", f"SQL={sql}")
    assert call["argv"] == ["-m", "sinks.bigquery_admin", "query", sql]
    assert not marker.exists()


def test_without_sql_the_query_gets_no_argument(tmp_path):
    [call] = run_make(tmp_path, "bigquery-query")
    assert call["argv"] == ["-m", "sinks.bigquery_admin", "query"]


def test_a_value_from_the_environment_is_passed_literally_too(tmp_path):
    marker = tmp_path / "pwned"
    sql = PAYLOAD.format(marker=marker)
    [call] = run_make(tmp_path, "bigquery-query", env={"SQL": sql})
    assert call["argv"][-1] == sql and not marker.exists()


@pytest.mark.parametrize(
    ("frm", "flag"),
    [("2026-12-06T10:00:00Z", "--from-timestamp"), ("3:120,5:0", "--from-offset"), ("0", "--from-offset")],
)
def test_replay_passes_sink_and_from_as_single_arguments(tmp_path, frm, flag):
    marker = tmp_path / "pwned"
    sink = f"redis; touch {marker}"
    [call] = run_make(tmp_path, "replay", f"SINK={sink}", f"FROM={frm}")
    assert call["argv"] == ["-m", "pipeline", "replay", "--sink", sink, flag, frm]
    assert not marker.exists()


@pytest.mark.parametrize(
    ("target", "assignments", "argv"),
    [
        (
            "backfill",
            ("SINKS=redis,bigquery $(id)",),
            ["-m", "pipeline", "backfill", "--sinks", "redis,bigquery $(id)"],
        ),
        ("backfill", (), ["-m", "pipeline", "backfill"]),
        ("faults", ("ONLY=a b",), ["-m", "loadtest.faults", "--only", "a b"]),
        ("bigquery-roll", ("RETAIN=`id`",), ["-m", "sinks.bigquery_admin", "roll", "--retain", "`id`"]),
        ("logs", ("SERVICE=connect;id",), ["-m", "infra.stack", "logs", "--service", "connect;id"]),
        ("status", ("JSON=1",), ["-m", "infra.stack", "status", "--with-pipeline", "--json"]),
        ("status", (), ["-m", "infra.stack", "status", "--with-pipeline"]),
        ("dataflow-graph", ("DEPTH=$(id)",), ["-m", "pipeline.dataflow_graph", "--depth", "$(id)"]),
        ("dataflow-graph", (), ["-m", "pipeline.dataflow_graph", "--depth", "3"]),
        (
            "loadtest",
            ("RATE=`id`", "USERS=2"),
            ["-m", "loadtest.run_locust", "--users", "2", "--spawn-rate", "8", "--duration", "60s", "--rate", "`id`"],
        ),
        (
            "http-replay",
            ("ENDPOINT=a b", "FROM_BEGINNING=1"),
            ["-m", "sinks.http_replay", "--endpoint", "a b", "--from-beginning"],
        ),
        ("flink-cluster", ("TASKMANAGERS=3",), ["-m", "infra.stack.flink_cluster", "up", "--taskmanagers", "3"]),
    ],
)
def test_each_target_passes_its_variables_as_single_arguments(tmp_path, target, assignments, argv):
    calls = run_make(tmp_path, target, *assignments)
    assert calls[-1]["argv"] == argv


def test_flink_hands_the_taskmanagers_to_the_job_through_the_environment(tmp_path):
    [call] = run_make(tmp_path, "flink", "TASKMANAGERS=3")
    assert call["argv"] == ["-m", "pipeline", "--runner", "flink"]
    assert (call["env"]["FLINK_TASKMANAGERS"], call["env"]["PIPELINE_READERS"]) == ("3", "3")


def test_http_replay_uses_the_example_routes_only_when_the_sink_is_not_configured(tmp_path):
    [call] = run_make(tmp_path, "http-replay")
    assert call["env"]["HTTP_SINK_ROUTES_FILE"] == "infra/http/routes.example.yaml"
    [call] = run_make(tmp_path, "http-replay", "HTTP_SINK_URL=http://h/$(id)")
    assert "HTTP_SINK_ROUTES_FILE" not in call["env"] and call["env"]["HTTP_SINK_URL"] == "http://h/$(id)"


# Make variables a recipe may expand: the Makefile's own, never one a user sets.
OWN = {"PY", "STACK", "MAKE", "FLINK_TMS", "DEMO_HTTP", "MAKEFILE_LIST"}


def test_no_recipe_splices_a_user_variable_into_its_command_line():
    makefile = (REPO_ROOT / "Makefile").read_text()
    recipes = [line for line in makefile.splitlines() if line.startswith("\t")]
    referenced = set()
    for line in recipes:
        # $(NAME) and ${NAME} references; $(value NAME) in a make condition never reaches the shell.
        referenced |= set(re.findall(r"(?<!\$)\$[({]([A-Z_][A-Z0-9_]*)[)}]", line))
    assert referenced <= OWN, f"recipes expand user variables in make: {sorted(referenced - OWN)}"
