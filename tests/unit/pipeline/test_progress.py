"""``pipeline.progress.follow``: a real child process, a bar of what its positions cover."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from pipeline.progress import follow


def test_the_bar_follows_the_work_to_the_run_s_end_and_the_exit_code_is_the_run_s() -> None:
    answers = iter([None, 2, 1, 5])  # Kafka not answering, then a figure that went back (ignored)
    out = io.StringIO()
    run = subprocess.Popen([sys.executable, "-c", "import time, sys; time.sleep(0.5); sys.exit(3)"])
    code = follow(run, 4, lambda: next(answers, 5), what="bigquery", show=True, every_s=0.1, out=out)
    assert code == 3
    final = out.getvalue().rsplit("\r", 1)[-1]
    assert final.startswith("bigquery: 100%") and "4/4" in final  # capped at the total


def test_no_bar_when_it_is_not_asked_for() -> None:
    out = io.StringIO()
    run = subprocess.Popen([sys.executable, "-c", "pass"])
    assert follow(run, 10, lambda: 10, what="bigquery", show=False, every_s=0.05, out=out) == 0
    assert out.getvalue() == ""


def test_the_run_is_killed_and_reaped_when_following_it_fails() -> None:
    run = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])

    def broken() -> int:
        raise RuntimeError("the store went away")

    with pytest.raises(RuntimeError, match="the store went away"):
        follow(run, 10, broken, what="bigquery", show=True, every_s=0.05, out=io.StringIO())
    assert run.returncode == -9  # SIGKILL, and waited for: no zombie, no run going on alone
