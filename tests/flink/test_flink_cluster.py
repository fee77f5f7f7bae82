"""The pipeline on the Flink session cluster under load: ``kill -9`` of a TaskManager and its worker
pool (Flink restarts the job from its checkpoint), then of the JobManager (the supervisor submits it
again); afterwards Redis, the BigQuery view and the HTTP receiver equal SQL.

This is the fault ``flink-cluster-kill9`` of the fault suite (``loadtest/fault_flink.py``), on the
fault stack (ports 200 above the defaults), run here so that ``make test-flink`` covers the cluster.
"""

from __future__ import annotations

import pytest

from infra.settings import Settings
from loadtest.faults import run_fault

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(
        not any(Settings().flink.lib_dir.glob("flink-runtime-web-*.jar")),
        reason="Flink's jars are not installed: make flink-bootstrap",
    ),
]


def test_the_cluster_loses_nothing_when_a_taskmanager_and_then_the_jobmanager_are_killed():
    row = run_fault("flink-cluster-kill9", rate=1500, duration=180)
    print(row.notes)
    assert (row.redis, row.bigquery, row.http, row.letters) == ("yes", "yes", "yes", "0"), row.notes
    assert row.passed, row.notes
    recovered = [note for note in row.notes if "applying again after" in note]
    assert len(recovered) == 2, row.notes
