"""The BigQuery sinks: streaming inserts (insertAll) of the engagement and content changelogs.

Not atomic (``sinks.contract``): rows are inserted, then the positions are committed to Kafka
(``sinks.kafka_positions``). A crash between the two sends the rows again, with the same insertIds
(``sinks.bigquery_rows.insert_id``): BigQuery drops most such repeats itself (best effort, about a
minute), and the view (``sinks.bigquery_tables``) makes every repeat invisible, so the current state
is exact whatever happens.

Why not Beam's ``WriteToBigQuery``: it makes random insertIds per bundle (a replay is a new row to
BigQuery), and its client cannot be pointed at a local endpoint. This is a plain
``google-cloud-bigquery`` client inside the sink contract instead.

Each insertAll call has its own HTTP timeout and a bounded client retry
(``BIGQUERY_REQUEST_TIMEOUT_S``, ``BIGQUERY_CALL_RETRY_DEADLINE_S``), so no call can hang or retry
for minutes; past that, the driver's ``RetryPolicy`` (exponential backoff with jitter, forever:
Kafka holds the backlog) takes over. ``skipInvalidRows`` is set, so a bad row is refused alone and
its ``insertErrors`` entry becomes its dead letter; a request refused as a whole (HTTP 400, 413:
too large) is split in halves until the bad row is alone. Errors that a person must fix (401, 403
other than quotas, 404 after recreating the tables) are retried and logged, never dead-lettered:
the data is valid, the configuration is not.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pyarrow as pa
import requests
from google.api_core import exceptions as api
from google.auth import exceptions as auth_exceptions
from google.cloud import bigquery

from infra.settings import BigQuerySettings, KafkaSettings
from sinks.bigquery_dataset import Clock, Dataset, make_client, utcnow
from sinks.bigquery_rows import (
    audit_row,
    change_row,
    content_row,
    describe,
    extra_columns,
    insert_id,
    is_retryable_row,
    timestamp,
)
from sinks.bigquery_storage_write import (
    StorageWriter,
    StreamAppender,
    arrow_schema,
    convertible,
    make_write_client,
    record_batch,
)
from sinks.bigquery_tables import (
    AUDIT_SCHEMA,
    CHANGES_SCHEMA,
    CONTENT_SCHEMA,
    added_field,
    changes_table_id,
    period_of,
)
from sinks.contract import BatchLimits, Outcome, Retry, RetryPolicy, Sink, SinkUnavailable
from sinks.kafka_positions import KafkaPositions, group_id
from sinks.positions import Position
from sinks.records import ContentChange, EnrichedChange

_log = logging.getLogger(__name__)
_TRANSIENT = (
    api.TooManyRequests,
    api.ServerError,
    api.RetryError,
    api.DeadlineExceeded,
    requests.ConnectionError,
    requests.Timeout,
    auth_exceptions.TransportError,
    ConnectionError,
    TimeoutError,
)
_QUOTA_REASONS = frozenset({"quotaExceeded", "rateLimitExceeded"})


def _reason(exc: api.GoogleAPICallError) -> str | None:
    errors = getattr(exc, "errors", None) or []
    first = errors[0] if errors else None
    return first.get("reason") if isinstance(first, dict) else None


def classify(exc: Exception) -> str:
    """``split`` (the request as a whole was refused: find the bad row), ``missing`` (a table or
    the dataset is gone), or ``retry`` (everything else: transient, or a person must act)."""
    if isinstance(exc, api.BadRequest) or getattr(exc, "code", None) == 413:
        return "split"
    if isinstance(exc, api.NotFound):
        return "missing"
    return "retry"


class BigQuerySink(Sink[Any], abc.ABC):
    """What both BigQuery sinks share; subclasses say which rows go to which table."""

    atomic = False

    def __init__(
        self,
        settings: BigQuerySettings,
        kafka: KafkaSettings,
        consumer_group: str,
        *,
        clock: Clock = utcnow,
    ) -> None:
        self.settings = settings
        self._kafka = kafka.client_config()
        self._group = group_id(consumer_group, self.name)
        self._with_audit = settings.audit
        self._clock = clock
        self.retry_policy = RetryPolicy(initial_s=0.2, max_backoff_s=settings.max_backoff_s)
        # An insertAll request holds one table's rows of the whole batch, so Google's rows-per-request
        # advice applies. A Storage Write append holds one partition's share only, and costs about
        # the same whatever its rows: capping the batch's rows would multiply the appends.
        max_records = settings.max_rows_per_request if settings.write_mode == "insert_all" else BatchLimits.max_records
        self.limits = BatchLimits(max_records=max_records, max_bytes=settings.max_request_bytes)
        self._appender: StreamAppender | None = None  # built in open() for BIGQUERY_WRITE_MODE=storage_write
        self._arrow: dict[tuple[str, int], pa.Schema] = {}  # (table id, columns) -> Arrow schema (Storage Write)

    def open(self) -> None:
        self.client = make_client(self.settings)
        self.dataset = Dataset(self.client, self.settings, audit=self._with_audit, clock=self._clock)
        self._positions = KafkaPositions(self._kafka, self._group)
        self._retry = bigquery.DEFAULT_RETRY.with_timeout(self.settings.call_retry_deadline_s)
        if self.settings.write_mode == "storage_write":
            s = self.settings
            writer = StorageWriter(make_write_client(s), s.request_timeout_s, s.call_retry_deadline_s)
            self._appender = StreamAppender(writer)

    def close(self) -> None:
        positions = getattr(self, "_positions", None)
        if positions is not None:
            positions.close()
        client = getattr(self, "client", None)
        if client is not None:
            client.close()

    def positions(self, topics: Sequence[str]) -> dict[str, Position]:
        appender = self._appender
        if appender is None:
            return self._positions.load(topics)
        loaded = self._positions.load_with_extras(topics)
        appender.resume({key: extra for key, (_, extra) in loaded.items() if extra})
        return {key: position for key, (position, _) in loaded.items()}

    def commit(self, positions: Mapping[str, Position], expected: Mapping[str, Position | None]) -> None:
        appender = self._appender
        extras = None if appender is None else {key: appender.stored_form(key) for key in positions}
        self._positions.store(positions, extras)
        if appender is not None:
            appender.committed(list(positions))

    @abc.abstractmethod
    def rows_for(self, record: Any, written_at: str, now: datetime) -> list[tuple[str, dict[str, Any]]]:
        """``(table id, row)`` pairs for one record; ``ValueError`` if the record has none."""

    def write(self, batch: Any) -> Outcome:
        records = batch.records
        now = self._clock()
        written_at = timestamp(now) or ""
        outcome = Outcome()
        # insertAll: one request per table. Storage Write: one append per (partition, table), so
        # that each stream holds one partition's rows in their order.
        by_table: dict[tuple[str, str], tuple[list[int], list[dict[str, Any]], list[str]]] = {}
        per_partition = self._appender is not None
        with self._available("create tables"):
            self.dataset.ensure()
            for index, record in enumerate(records):
                try:
                    pairs = self.rows_for(record, written_at, now)
                except ValueError as exc:
                    outcome.rejected[index] = str(exc)
                    continue
                partition = record.position.partition_key if per_partition else ""
                for table_id, row in pairs:
                    indexes, rows, ids = by_table.setdefault((partition, table_id), ([], [], []))
                    indexes.append(index)
                    rows.append(row)
                    ids.append(insert_id(getattr(record, "origin", None) or record.position))
        for (partition, table_id), (indexes, rows, ids) in by_table.items():
            if per_partition:
                self._append(partition, table_id, rows, indexes, batch, outcome)
                continue
            try:
                with self._available(f"insert into {table_id}"):
                    self._insert(table_id, rows, ids, indexes, outcome)
            except SinkUnavailable as exc:
                _retry_all(outcome, indexes, exc)
        for index in outcome.rejected:  # a record refused by one table is refused
            outcome.retry.pop(index, None)
        return outcome

    def _schema(self, table_id: str) -> list[bigquery.SchemaField]:
        s = self.settings
        if table_id.endswith(f".{s.audit_table}"):
            return AUDIT_SCHEMA
        if table_id.endswith(f".{s.content_table}"):
            return CONTENT_SCHEMA
        # With the columns added to engagement_events so far: an Arrow batch has only the columns
        # of its schema, so without them Storage Write dropped those values.
        return [*CHANGES_SCHEMA, *(added_field(name, kind) for name, kind in self.dataset.added.items())]

    def _append(
        self,
        partition: str,
        table_id: str,
        rows: list[dict[str, Any]],
        indexes: list[int],
        batch: Any,
        outcome: Outcome,
    ) -> None:
        """Storage Write: refuse rows that cannot be converted, skip what a crashed run appended,
        append the rest at the stream's offset (``sinks.bigquery_storage_write``)."""
        appender = self._appender
        if appender is None:
            raise RuntimeError("Storage Write append without an appender")
        schema = self._schema(table_id)
        arrow = self._arrow.get((table_id, len(schema)))  # columns are only ever added
        if arrow is None:
            arrow = self._arrow[table_id, len(schema)] = arrow_schema(schema)
        keep_rows, keep = rows, indexes
        try:
            converted: pa.RecordBatch | None = record_batch(rows, arrow)  # the common case: all convert
        except (pa.ArrowException, ValueError, TypeError, OverflowError):
            converted = None
            keep_rows, keep = [], []
            for row, index in zip(rows, indexes, strict=True):
                why = convertible(row, arrow)
                if why is None:
                    keep_rows.append(row)
                    keep.append(index)
                else:
                    outcome.rejected[index] = why
        try:
            with self._available("finalize write streams"):
                appender.claim(partition)
        except SinkUnavailable as exc:
            _retry_all(outcome, keep, exc)
            return
        skipped = appender.take_skip(partition, table_id, len(keep_rows))
        pending = keep[skipped:]
        if not pending:
            return
        if converted is None:
            converted = record_batch(keep_rows, arrow)
        pending_batch = converted.slice(skipped)

        def record_stream(key: str) -> None:
            first = min(r.position.offset for r in batch.records if r.position.partition_key == key)
            stored = batch.expected.get(key) or Position(first)
            self._positions.store({key: stored}, {key: appender.stored_form(key, committed_only=True)})

        try:
            with self._available(f"append to {table_id}"):
                appender.append(partition, table_id, pending_batch, record_stream)
        except SinkUnavailable as exc:
            _retry_all(outcome, pending, exc)

    def _insert(self, table_id: str, rows: list[dict], ids: list[str], indexes: list[int], outcome: Outcome) -> None:
        """One insertAll; a request refused as a whole is split until the bad row is alone."""
        try:
            errors = self.client.insert_rows_json(
                table_id,
                rows,
                row_ids=ids,
                skip_invalid_rows=True,
                ignore_unknown_values=False,
                retry=self._retry,
                timeout=self.settings.request_timeout_s,
            )
        except api.GoogleAPICallError as exc:
            kind = classify(exc)
            if kind == "split" and len(rows) > 1:
                half = len(rows) // 2
                self._insert(table_id, rows[:half], ids[:half], indexes[:half], outcome)
                self._insert(table_id, rows[half:], ids[half:], indexes[half:], outcome)
                return
            if kind == "split":
                outcome.rejected[indexes[0]] = f"BigQuery refused the row: {exc.message}"
                return
            if kind == "missing":
                self.dataset.forget()
            raise
        for entry in errors:
            index = indexes[entry["index"]]
            row_errors = entry.get("errors") or []
            if is_retryable_row(row_errors):
                outcome.retry[index] = Retry(f"BigQuery: {describe(row_errors)}")
            else:
                outcome.rejected[index] = f"BigQuery insertErrors: {describe(row_errors)}"

    @contextmanager
    def _available(self, what: str) -> Iterator[None]:
        try:
            yield
        except SinkUnavailable:
            raise
        except api.GoogleAPICallError as exc:
            reason = _reason(exc)
            hint = ""
            if isinstance(exc, api.Forbidden | api.Unauthorized) and reason not in _QUOTA_REASONS:
                hint = " (check the credentials and the roles in docs/bigquery.md)"
            raise SinkUnavailable(f"BigQuery, {what}: {exc.code} {exc.message}{hint}") from exc
        except _TRANSIENT as exc:
            raise SinkUnavailable(f"BigQuery, {what}: {type(exc).__name__}: {exc}") from exc


def _retry_all(outcome: Outcome, indexes: list[int], exc: SinkUnavailable) -> None:
    why = Retry(exc.reason, exc.retry_after_s)
    for index in indexes:
        outcome.retry.setdefault(index, why)


class BigQueryChangesSink(BigQuerySink):
    """Engagement changes into the quarter tables (and, with ``audit``, every envelope)."""

    name = "bigquery"

    def rows_for(self, record: EnrichedChange, written_at: str, now: datetime) -> list[tuple[str, dict[str, Any]]]:
        s = self.settings
        row = change_row(record, written_at)
        image = record.row
        assert image is not None  # change_row refused a change without one
        if image.extra:
            try:
                self.dataset.ensure_columns(extra_columns(image))
            except api.BadRequest as exc:
                # The names are made safe (sinks.bigquery_rows.extra_column): a refusal left is one
                # no retry can fix, so the record becomes a dead letter instead of stalling the lane.
                columns = sorted(extra_columns(image))
                raise ValueError(f"BigQuery refused the added columns {columns}: {exc.message}") from exc
        period = period_of(image.event_ts, now, s.future_periods)
        self.dataset.ensure_period(period)
        pairs = [(changes_table_id(s, period), row)]
        if self._with_audit:
            pairs.append((f"{s.dataset_ref}.{s.audit_table}", audit_row(record, written_at)))
        return pairs


class BigQueryContentSink(BigQuerySink):
    """Content changes into ``content_changes``: the view joins the current content from it."""

    name = "bigquery_content"

    def rows_for(self, record: ContentChange, written_at: str, now: datetime) -> list[tuple[str, dict[str, Any]]]:
        s = self.settings
        pairs = [(f"{s.dataset_ref}.{s.content_table}", content_row(record, written_at))]
        if self._with_audit:
            pairs.append((f"{s.dataset_ref}.{s.audit_table}", audit_row(record, written_at)))
        return pairs
