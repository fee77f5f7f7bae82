"""Settings of the BigQuery sinks (``BIGQUERY_``; docs/bigquery.md).

Kept apart from ``infra.settings`` (which re-exports them) so that module stays under its size; the
one typed config is still ``infra.settings.Settings``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings

from infra.settings_base import config as _config


class BigQuerySettings(BaseSettings):
    """The BigQuery sink: where it writes, how it batches, and the local emulator (docs/bigquery.md).

    ``BIGQUERY_EMULATOR_HOST`` (the variable Google's clients know) points the sink at the local
    emulator that ``make up`` starts; set it empty to write to real BigQuery with application
    default credentials.
    """

    model_config = _config("BIGQUERY_")

    project_id: str = "engagement-demo"
    dataset: str = "analytics"
    location: str = "US"
    emulator_host: str = "http://127.0.0.1:59050"
    # The changelog is one table per calendar quarter: <changes_table>_2026q4 (docs/bigquery.md).
    changes_table: str = "engagement_changes"
    content_table: str = "content_changes"
    audit_table: str = "cdc_audit"
    # Also write every CDC envelope as it arrived to <audit_table> (doubles the rows inserted).
    audit: bool = False
    view: str = "engagement_events"
    # Quarters after the current one that get their own table; later (and pre-1970) event times
    # go to <changes_table>_outliers, so a stray timestamp never creates a table.
    future_periods: int = Field(default=1, ge=0, le=8)
    require_partition_filter: bool = False
    # storage_write (the Storage Write API: committed streams at explicit offsets, exactly-once
    # appends; sinks/bigquery_storage_write.py) or insert_all (streaming inserts, the card's method).
    write_mode: Literal["insert_all", "storage_write"] = "storage_write"
    # How long a change waits for its batch (PIPELINE_SINK_FLUSH_MS is the Redis lanes'): an append
    # or a request costs the same whatever its rows, so BigQuery gets fewer and larger ones.
    linger_ms: int = Field(default=1_000, ge=0, le=60_000)
    # Google recommends 500 rows per insertAll; the API allows 50,000 rows and 10 MB.
    max_rows_per_request: int = Field(default=500, ge=1, le=50_000)
    max_request_bytes: int = Field(default=9_000_000, ge=100_000, le=10_000_000)
    # One insertAll call: its HTTP timeout, and how long the client itself retries it.
    request_timeout_s: float = Field(default=10.0, gt=0)
    call_retry_deadline_s: float = Field(default=15.0, gt=0)
    max_backoff_s: float = Field(default=10.0, gt=0)

    @property
    def emulated(self) -> bool:
        return bool(self.emulator_host)

    @property
    def dataset_ref(self) -> str:
        return f"{self.project_id}.{self.dataset}"
