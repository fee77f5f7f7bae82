"""Settings of the Flink runner (``python -m pipeline --runner flink``; docs/operations.md, "Flink").

Kept apart from ``infra.settings`` (which re-exports them) so that module stays about the parts that
move data. The supervisor starts Beam's Flink job server (``pipeline.flink_job_server``) from the
jars ``make flink-bootstrap`` put in ``lib_dir``; with ``master=[local]`` the job server runs each job
in an embedded Flink cluster (JobManager and TaskManager in its JVM) with ``parallelism`` slots.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings

from infra.settings_base import REPO_ROOT as REPO_ROOT
from infra.settings_base import config as _config


class FlinkSettings(BaseSettings):
    """Beam's Flink job server and the Flink options the job is submitted with."""

    model_config = _config("FLINK_")

    # "[local]": an embedded cluster per job inside the job server's JVM; host:port: the REST
    # address of a running Flink 1.19 cluster (its TaskManagers then reach our LOOPBACK worker).
    master: str = "[local]"
    job_port: int = Field(default=58099, ge=1, le=65535)
    artifact_port: int = Field(default=58098, ge=1, le=65535)
    # The job server's (and so the embedded cluster's) JVM heap: unbounded by default in Beam.
    heap: str = "1g"
    parallelism: int = Field(default=2, ge=1)
    # 0: no Flink checkpoints. The source resumes from the sinks' stored positions whenever the job
    # is submitted again, so checkpoints are not what recovery rests on (docs/pipeline.md, "Flink").
    checkpoint_interval_ms: int = Field(default=0, ge=0)
    # Flink's own restarts of a failed job. 0: a failure fails the job and the supervisor submits it
    # again. With LOOPBACK workers the SDK harness lives in the job process, so Flink cannot restart
    # a job whose harness died; restarting it would only retry against a dead endpoint.
    execution_retries: int = Field(default=0, ge=0)
    # How long a bundle stays open on Flink before it ends (and the sinks flush what they hold).
    max_bundle_time_ms: int = Field(default=100, gt=0)
    start_timeout_s: float = Field(default=120.0, gt=0)
    lib_dir: Path = REPO_ROOT / ".stack" / "lib" / "flink"
