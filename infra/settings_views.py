"""Settings of what users look at: the metrics endpoint, the status view and the live page.

Kept apart from ``infra.settings`` (which re-exports them) so that module stays about the parts
that move data."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings

from infra.settings_base import config as _config


class MetricsSettings(BaseSettings):
    """The pipeline's Prometheus endpoint (``infra.telemetry``), served by each job process."""

    model_config = _config("METRICS_")

    host: str = "127.0.0.1"
    # 0 turns the endpoint off. On Flink or Dataflow each worker process serves its own on this port
    # (where it is free); Beam's metrics carry the same counters to the runner's own monitoring.
    port: int = Field(default=59464, ge=0, le=65535)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"


class StatusSettings(BaseSettings):
    """``make status`` (``pipeline.status``): what it samples and when it calls a part unhealthy."""

    model_config = _config("STATUS_")

    # Rates (events/s per stage, per sink) are the change of counters and offsets over this interval.
    sample_s: float = Field(default=2.0, gt=0)
    # A sink further behind the topic's end than this many changes (summed over partitions) is unhealthy;
    # so is one that is behind and did not move during the sample.
    max_sink_lag: int = Field(default=100_000, ge=0)
    # The dead-letter breakdown by stage and reason reads at most this many of each topic's newest letters
    # (the totals are exact: they come from the offsets).
    dead_letter_scan: int = Field(default=20_000, gt=0)


class DashboardSettings(BaseSettings):
    """The live leaderboard page (``pipeline.dashboard``)."""

    model_config = _config("DASHBOARD_")

    host: str = "127.0.0.1"
    port: int = Field(default=58090, ge=1, le=65535)
    # How often the page's server-sent events carry a new snapshot.
    refresh_s: float = Field(default=1.0, gt=0)
    top: int = Field(default=10, ge=1, le=100)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"
