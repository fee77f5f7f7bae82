"""Settings of the backfill from Postgres (``python -m pipeline backfill``, docs/operations.md).

Kept apart from ``infra.settings`` (which re-exports them), like the HTTP and view settings."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings

from infra.settings_base import config as _config


class BackfillSettings(BaseSettings):
    """How the backfill reads the tables and finds where the stream takes over."""

    model_config = _config("BACKFILL_")

    # Id ranges engagement_events is read in (each a server-side cursor, and a partition of the
    # backfill's position topic); content is read in one.
    splits: int = Field(default=4, ge=1, le=256)
    # Rows per fetch from a cursor, and per element handed to decode.
    fetch_rows: int = Field(default=5_000, ge=1)
    # How long to wait for Debezium to confirm the snapshot's LSN on the slot (it confirms about
    # every second while it runs; the heartbeat moves it when the tables are quiet).
    slot_wait_timeout_s: float = Field(default=120.0, gt=0)
    # Records per partition read before the end offsets taken ahead of the snapshot, where the
    # boundary search starts.
    scan_margin: int = Field(default=1_000, ge=0)
    # New snapshots tried when a boundary is not exact (a commit-order race, microseconds wide).
    max_snapshot_attempts: int = Field(default=5, ge=1)
    # Runs of the job in the same snapshot before the backfill gives up (each resumes per split).
    job_attempts: int = Field(default=3, ge=1)
