"""The BigQuery tables and the current-state view: schemas, 30-minute slots, periods (pure).

**Thirty-minute partitions.** BigQuery's finest time-unit partitioning is HOUR, so the changelog is
partitioned by integer range on ``event_slot = DIV(UNIX_SECONDS(event_ts), 1800)``, interval 1: one
partition per half hour, with ``event_ts`` kept a TIMESTAMP, clustered by content_type and
event_type.

**Periods.** An integer range holds at most 10,000 partitions (208 days of slots) and has no
partition expiration, so one table cannot hold the history forever. The changelog is therefore one
table per calendar quarter (``engagement_changes_2026q4``, at most 4,416 slots), whose range is
exactly that quarter's slots. The sink creates a quarter's table when it first meets a row of it,
and ``python -m sinks.bigquery_admin roll`` creates the next one ahead of time and drops quarters
past a retention (which is how old partitions are expired). The view is rebuilt over whatever
quarter tables exist whenever one is added or dropped.

**Nothing lands in ``__UNPARTITIONED__``.** A row goes to the table of its own quarter, whose range
covers it by construction. Event times before 1970 or more than ``BIGQUERY_FUTURE_PERIODS``
quarters ahead go to ``engagement_changes_outliers`` instead (unpartitioned, clustered the same
way, and in the view too), so a stray timestamp (year 2100) never creates a table, and is still
kept and queryable.

**The current view.** ``engagement_events`` takes, per event id, the latest change by Debezium's
source sequence ``(commit LSN, LSN)`` then Kafka offset, and drops it if that change is a delete:
so a change written twice (a retry, a replay, a Debezium re-send) changes nothing, and the view
equals the Postgres table. ``engagement_seconds``/``engagement_pct`` are computed in the view from
the *current* content (the latest row of ``content_changes``), as Postgres would join them today;
the changelog keeps what they were when each change happened.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Final

from google.cloud import bigquery

from infra.settings import BigQuerySettings

SLOT_SECONDS: Final = 1800
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
_SECOND: Final = timedelta(seconds=1)
OUTLIERS: Final = "outliers"
CLUSTERING: Final = ["content_type", "event_type"]

F = bigquery.SchemaField
_SOURCE = [
    F("commit_ts", "TIMESTAMP", description="Commit time in Postgres (Debezium source.ts_ms)"),
    F("source_commit_lsn", "INT64", description="Debezium source.sequence[0]: commit LSN of the previous txn"),
    F("source_lsn", "INT64", description="Debezium source.sequence[1]: LSN of this change"),
    F("source_topic", "STRING", "REQUIRED"),
    F("source_partition", "INT64", "REQUIRED"),
    F("source_offset", "INT64", "REQUIRED"),
    F("written_at", "TIMESTAMP", "REQUIRED", description="When the sink sent the row"),
]
CHANGES_SCHEMA: Final = [
    F("op", "STRING", "REQUIRED", description="c insert, r snapshot read, u update, d delete"),
    F("id", "INT64", "REQUIRED"),
    F("content_id", "STRING"),
    F("user_id", "STRING"),
    F("event_type", "STRING"),
    F("event_ts", "TIMESTAMP", "REQUIRED"),
    F("event_slot", "INT64", "REQUIRED", description="DIV(UNIX_SECONDS(event_ts), 1800): the partition"),
    F("duration_ms", "INT64"),
    F("device", "STRING"),
    F("raw_payload", "JSON"),
    F("engagement_seconds", "FLOAT64", description="duration_ms / 1000"),
    F("engagement_pct", "FLOAT64", description="engagement_seconds / length_seconds * 100, when the change happened"),
    F("over_100", "BOOL", description="engagement_pct > 100"),
    F("slug", "STRING"),
    F("title", "STRING"),
    F("content_type", "STRING"),
    F("length_seconds", "INT64"),
    *_SOURCE,
]
CONTENT_SCHEMA: Final = [
    F("op", "STRING", "REQUIRED"),
    F("id", "STRING", "REQUIRED"),
    F("slug", "STRING"),
    F("title", "STRING"),
    F("content_type", "STRING"),
    F("length_seconds", "INT64"),
    F("publish_ts", "TIMESTAMP"),
    *_SOURCE,
]
AUDIT_SCHEMA: Final = [
    F("op", "STRING"),
    F("before", "JSON"),
    F("after", "JSON"),
    F("source", "JSON"),
    F("envelope", "STRING", description="The record's value as it arrived, when it is not JSON"),
    F("key", "STRING"),
    *_SOURCE,
]


def unix_seconds(ts: datetime) -> int:
    """BigQuery's ``UNIX_SECONDS``: whole seconds since the epoch, rounded down (exact arithmetic)."""
    return (ts - _EPOCH) // _SECOND


def event_slot(ts: datetime) -> int:
    """``DIV(UNIX_SECONDS(ts), 1800)``; BigQuery's DIV rounds towards zero, so before 1970 too."""
    seconds = unix_seconds(ts)
    slot = abs(seconds) // SLOT_SECONDS
    return slot if seconds >= 0 else -slot


@dataclass(frozen=True, order=True)
class Quarter:
    year: int
    quarter: int  # 1..4

    @classmethod
    def of(cls, ts: datetime) -> Quarter:
        ts = ts.astimezone(UTC)
        return cls(ts.year, (ts.month - 1) // 3 + 1)

    @classmethod
    def parse(cls, suffix: str) -> Quarter:
        year, quarter = suffix.split("q")
        return cls(int(year), int(quarter))

    @property
    def suffix(self) -> str:
        return f"{self.year}q{self.quarter}"

    @property
    def start(self) -> datetime:
        return datetime(self.year, 3 * self.quarter - 2, 1, tzinfo=UTC)

    def next(self) -> Quarter:
        return Quarter(self.year + 1, 1) if self.quarter == 4 else Quarter(self.year, self.quarter + 1)

    def previous(self) -> Quarter:
        return Quarter(self.year - 1, 4) if self.quarter == 1 else Quarter(self.year, self.quarter - 1)

    @property
    def slots(self) -> tuple[int, int]:
        """``[first slot, end slot)`` of the quarter: its table's partition range."""
        return event_slot(self.start), event_slot(self.next().start)


def period_of(ts: datetime, now: datetime, future_periods: int) -> str:
    """The suffix of the changelog table a row with event time ``ts`` goes to."""
    if ts < _EPOCH:
        return OUTLIERS
    quarter, last = Quarter.of(ts), Quarter.of(now)
    for _ in range(future_periods):
        last = last.next()
    return OUTLIERS if quarter > last else quarter.suffix


def changes_table_id(settings: BigQuerySettings, period: str) -> str:
    return f"{settings.dataset_ref}.{settings.changes_table}_{period}"


def added_field(name: str, kind: str) -> bigquery.SchemaField:
    """A column added to ``engagement_events`` after the tables were made (schema evolution)."""
    return F(name, kind, "NULLABLE", description="Added to engagement_events later (docs/operations.md)")


def added_fields(schema: Sequence[bigquery.SchemaField]) -> dict[str, str]:
    """``{name: type}`` of the fields of a changelog table beyond ``CHANGES_SCHEMA``."""
    base = {field.name for field in CHANGES_SCHEMA}
    return {field.name: field.field_type for field in schema if field.name not in base}


def changes_table(settings: BigQuerySettings, period: str, added: Mapping[str, str] | None = None) -> bigquery.Table:
    """The table spec for one period: range-partitioned on its quarter's slots, clustered, with the
    columns added to the source table so far."""
    schema = [*CHANGES_SCHEMA, *(added_field(name, kind) for name, kind in (added or {}).items())]
    table = bigquery.Table(changes_table_id(settings, period), schema=schema)
    table.clustering_fields = CLUSTERING
    if period != OUTLIERS:
        first, end = Quarter.parse(period).slots
        table.range_partitioning = bigquery.RangePartitioning(
            field="event_slot", range_=bigquery.PartitionRange(start=first, end=end, interval=1)
        )
        table.require_partition_filter = settings.require_partition_filter
    table.description = f"Engagement changes with event_ts in {period} (sinks/bigquery_tables.py)"
    return table


def content_table(settings: BigQuerySettings) -> bigquery.Table:
    table = bigquery.Table(f"{settings.dataset_ref}.{settings.content_table}", schema=CONTENT_SCHEMA)
    table.clustering_fields = ["id"]
    table.description = "Content changes (sinks/bigquery_tables.py)"
    return table


def audit_table(settings: BigQuerySettings) -> bigquery.Table:
    table = bigquery.Table(f"{settings.dataset_ref}.{settings.audit_table}", schema=AUDIT_SCHEMA)
    table.clustering_fields = ["source_topic", "op"]
    table.description = "Every CDC envelope as it arrived, replayable history (sinks/bigquery_tables.py)"
    return table


def periods_in(settings: BigQuerySettings, table_ids: Iterable[str]) -> list[str]:
    """The period suffixes among a dataset's table ids, oldest first, outliers last."""
    prefix = f"{settings.changes_table}_"
    found: list[Quarter] = []
    outliers = False
    for table_id in table_ids:
        if not table_id.startswith(prefix):
            continue
        suffix = table_id[len(prefix) :]
        if suffix == OUTLIERS:
            outliers = True
            continue
        try:
            found.append(Quarter.parse(suffix))
        except ValueError:
            continue
    return [q.suffix for q in sorted(found)] + ([OUTLIERS] if outliers else [])


_EVENT_COLUMNS: Final = "id, content_id, user_id, event_type, event_ts, event_slot, duration_ms, device, raw_payload"
_ORDER: Final = "COALESCE(source_commit_lsn, -1) DESC, COALESCE(source_lsn, -1) DESC, source_offset DESC"


def view_sql(settings: BigQuerySettings, periods: Sequence[str], added: Sequence[str] = ()) -> str:
    """The current-state view over ``periods`` (see the module docstring), with the ``added``
    columns, which every period's table must have."""
    if not periods:
        raise ValueError("the view needs at least one changelog table")
    extra = "".join(f", {name}" for name in added)
    arms = []
    for period in periods:
        table = f"`{changes_table_id(settings, period)}`"
        # A filter on the partition column keeps the view valid under require_partition_filter.
        where = "" if period == OUTLIERS else f" WHERE event_slot >= {Quarter.parse(period).slots[0]}"
        arms.append(
            f"SELECT op, {_EVENT_COLUMNS}{extra}, slug, title, content_type, length_seconds, commit_ts,"
            f" source_commit_lsn, source_lsn, source_offset FROM {table}{where}"
        )
    changes = "\n    UNION ALL ".join(arms)
    content = f"`{settings.dataset_ref}.{settings.content_table}`"
    current = (
        "CASE WHEN c.id IS NOT NULL THEN c.{col} ELSE e.{col} END AS {col}"  # current content, else as of the change
    )
    columns = ",\n  ".join(current.format(col=col) for col in ("slug", "title", "content_type", "length_seconds"))
    length = "CASE WHEN c.id IS NOT NULL THEN c.length_seconds ELSE e.length_seconds END"
    added_columns = "".join(f" e.{name}," for name in added)
    return f"""SELECT
  e.id, e.content_id, e.user_id, e.event_type, e.event_ts, e.event_slot, e.duration_ms, e.device, e.raw_payload,
  {columns},{added_columns}
  e.duration_ms / 1000.0 AS engagement_seconds,
  CASE WHEN {length} > 0 THEN e.duration_ms / 1000.0 / ({length}) * 100 END AS engagement_pct,
  COALESCE(CASE WHEN {length} > 0 THEN e.duration_ms / 1000.0 / ({length}) * 100 > 100 END, FALSE) AS over_100,
  e.commit_ts
FROM (
  SELECT * FROM (
    SELECT *, ROW_NUMBER() OVER (PARTITION BY id ORDER BY {_ORDER}) AS change_rank
    FROM (
    {changes}
    ) AS changes
  ) AS ranked
  WHERE change_rank = 1 AND op != 'd'
) AS e
LEFT JOIN (
  SELECT * FROM (
    SELECT *, ROW_NUMBER() OVER (PARTITION BY id ORDER BY {_ORDER}) AS change_rank
    FROM {content}
  ) AS ranked
  WHERE change_rank = 1 AND op != 'd'
) AS c
ON c.id = e.content_id"""


def view(settings: BigQuerySettings, periods: Sequence[str], added: Sequence[str] = ()) -> bigquery.Table:
    table = bigquery.Table(f"{settings.dataset_ref}.{settings.view}")
    table.view_query = view_sql(settings, periods, added)
    table.description = "engagement_events as it is now in Postgres: the latest change per id (docs/bigquery.md)"
    return table
