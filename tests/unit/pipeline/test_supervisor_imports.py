"""The supervisor (``python -m pipeline``) lives as long as the job and imports no Apache Beam: only
the job process and its workers pay for Beam's memory."""

from __future__ import annotations

import subprocess
import sys

from infra.settings import REPO_ROOT

HEAVY = ("apache_beam", "pyarrow", "grpc", "google.cloud.bigquery")


def test_the_supervisor_imports_no_beam():
    script = (
        f"import sys, pipeline.__main__, pipeline.supervisor; print(sorted(m for m in {HEAVY!r} if m in sys.modules))"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.strip() == "[]"
