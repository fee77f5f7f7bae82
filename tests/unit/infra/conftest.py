"""Fixtures of the infra unit tests."""

from __future__ import annotations

import subprocess
from collections.abc import Callable

import pytest

from infra.settings import REPO_ROOT, Settings


@pytest.fixture(scope="module")
def in_emulator_venv() -> Callable[[str, str], list[str]]:
    """Runs a script (with one argument) in the BigQuery emulator's own venv, where bqemulator and
    its DuckDB are; returns its output lines. Skips when that venv is not built."""
    python = Settings().stack.bigquery_emulator_venv / "bin" / "python"
    if not python.exists():
        pytest.skip(f"{python} is missing (make bootstrap builds the emulator's venv)")

    def run(script: str, argument: str) -> list[str]:
        done = subprocess.run(
            [str(python), "-c", script, argument],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout.splitlines()

    return run
