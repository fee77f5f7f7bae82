"""The dataset the BigQuery sinks write to: the client, and tables created idempotently on demand.

``Dataset.ensure()`` creates the dataset, the content changelog, the current quarter's changelog
(and ``BIGQUERY_FUTURE_PERIODS`` more) and the view; ``ensure_period`` adds a quarter's table the
first time a row needs it and rebuilds the view over every quarter table that exists. ``roll`` is
the scheduled form of the same (``python -m sinks.bigquery_admin roll``), with a retention.

Several writers may add a period at once (one per worker, at a quarter boundary): each rebuilds the
view from a fresh listing and checks the listing again afterwards, so the last rebuild includes
every table; ``roll`` run ahead of the boundary (daily, from cron or Cloud Scheduler) makes this
the rare path.

**Added columns** (schema evolution): ``ensure_columns`` adds a column that appeared in
``engagement_events`` to every quarter's table, NULLABLE, by a schema update (for a table that
takes streaming inserts this is BigQuery's ``ALLOW_FIELD_ADDITION``), then rebuilds the view with
it. ``ensure`` reconciles the tables first, so a writer that stopped half-way through the tables
leaves nothing for the view's ``UNION ALL`` to trip on. Columns are only ever added.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime

from google.api_core import exceptions as api
from google.api_core.client_options import ClientOptions
from google.auth.credentials import AnonymousCredentials
from google.cloud import bigquery

from infra.settings import BigQuerySettings
from sinks.bigquery_tables import (
    OUTLIERS,
    Quarter,
    added_field,
    added_fields,
    audit_table,
    changes_table,
    changes_table_id,
    content_table,
    periods_in,
    view,
)

_log = logging.getLogger(__name__)
Clock = Callable[[], datetime]


def utcnow() -> datetime:
    return datetime.now(UTC)


def make_client(settings: BigQuerySettings) -> bigquery.Client:
    """A client for the emulator (anonymous: nothing to refresh, no OAuth flow can start) or for
    BigQuery with application default credentials."""
    if settings.emulated:
        return bigquery.Client(
            project=settings.project_id,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options=ClientOptions(api_endpoint=settings.emulator_host),
            location=settings.location,
        )
    return bigquery.Client(project=settings.project_id, location=settings.location)


class Dataset:
    def __init__(
        self, client: bigquery.Client, settings: BigQuerySettings, *, audit: bool = False, clock: Clock = utcnow
    ) -> None:
        self.client = client
        self.settings = settings
        self._audit = audit
        self._clock = clock
        self._periods: set[str] = set()
        self._added: dict[str, str] = {}  # columns added to engagement_events, and their types
        self._ready = False

    @property
    def added(self) -> Mapping[str, str]:
        """The columns added to the changelog tables so far, and their types."""
        return self._added

    def forget(self) -> None:
        """Someone dropped a table (a NotFound on insert): check everything again on next use."""
        self._ready = False
        self._periods.clear()

    def ensure(self) -> None:
        if self._ready:
            return
        s = self.settings
        dataset = bigquery.Dataset(s.dataset_ref)
        dataset.location = s.location
        self.client.create_dataset(dataset, exists_ok=True)
        self.client.create_table(content_table(s), exists_ok=True)
        if self._audit:
            self.client.create_table(audit_table(s), exists_ok=True)
        for period in self.upcoming():
            self.client.create_table(changes_table(s, period, self._added), exists_ok=True)
        self._reconcile_columns()
        self.refresh_view()
        self._ready = True

    def ensure_columns(self, wanted: Mapping[str, str]) -> None:
        """Every changelog table and the view have the ``wanted`` columns (``{name: type}``)."""
        if all(name in self._added for name in wanted):
            return
        self.ensure()
        missing = {name: kind for name, kind in wanted.items() if name not in self._added}
        if not missing:
            return
        added = {**self._added, **missing}
        for period in self.periods():
            self._add_fields(changes_table_id(self.settings, period), added)
        self.refresh_view(added)
        # Only now: a schema update or view update that failed is tried again with the next row.
        self._added = added
        _log.info("engagement changelog: added columns %s", ", ".join(f"{n} {k}" for n, k in missing.items()))

    def _reconcile_columns(self) -> None:
        tables = [changes_table_id(self.settings, period) for period in self.periods()]
        for table_id in tables:
            for name, kind in added_fields(self.client.get_table(table_id).schema).items():
                self._added.setdefault(name, kind)
        if self._added:
            for table_id in tables:
                self._add_fields(table_id, self._added)

    def _add_fields(self, table_id: str, fields: Mapping[str, str]) -> None:
        # The table's etag makes the update a compare-and-set: two workers adding columns at once
        # never drop each other's field; the loser reads the table again.
        for _ in range(5):
            table = self.client.get_table(table_id)
            have = {field.name for field in table.schema}
            add = [added_field(name, kind) for name, kind in fields.items() if name not in have]
            if not add:
                return
            table.schema = [*table.schema, *add]
            try:
                self.client.update_table(table, ["schema"])
                return
            except api.PreconditionFailed:
                continue
        raise api.Conflict(f"{table_id}: its schema kept changing while columns were added")

    def upcoming(self) -> list[str]:
        """The current quarter and the future ones the sink routes to."""
        quarter = Quarter.of(self._clock())
        periods = [quarter.suffix]
        for _ in range(self.settings.future_periods):
            quarter = quarter.next()
            periods.append(quarter.suffix)
        return periods

    def ensure_period(self, period: str) -> None:
        if period in self._periods:
            return
        self.ensure()
        self.client.create_table(changes_table(self.settings, period, self._added), exists_ok=True)
        self._add_fields(changes_table_id(self.settings, period), self._added)  # it may have existed
        self.refresh_view()

    def periods(self) -> list[str]:
        tables = self.client.list_tables(self.settings.dataset_ref)
        return periods_in(self.settings, (t.table_id for t in tables))

    def refresh_view(self, added: Mapping[str, str] | None = None) -> None:
        periods = self.periods()
        for _ in range(3):
            self._put_view(periods, added)
            again = self.periods()
            if again == periods:
                break
            periods = again
        self._periods = set(periods)

    def _put_view(self, periods: list[str], added: Mapping[str, str] | None = None) -> None:
        wanted = view(self.settings, periods, sorted(self._added if added is None else added))
        try:
            current = self.client.get_table(wanted.reference)
        except api.NotFound:
            try:
                self.client.create_table(wanted)
                return
            except api.Conflict:
                current = self.client.get_table(wanted.reference)
        if current.view_query != wanted.view_query:
            current.view_query = wanted.view_query
            self.client.update_table(current, ["view_query"])
            _log.info("view %s now reads %s", self.settings.view, ", ".join(periods))

    def roll(self, retain_periods: int | None = None) -> tuple[list[str], list[str]]:
        """Create the upcoming quarters' tables; drop quarters older than ``retain_periods`` (the
        current one counts as one). Returns (created or kept, dropped)."""
        self.forget()
        self.ensure()
        dropped: list[str] = []
        if retain_periods is not None:
            oldest = Quarter.of(self._clock())
            for _ in range(retain_periods - 1):
                oldest = oldest.previous()
            periods = self.periods()
            dropped = [p for p in periods if p != OUTLIERS and Quarter.parse(p) < oldest]
            if dropped:
                # The view stops reading a table before it goes, so no query meets a missing table.
                self._put_view([p for p in periods if p not in dropped])
                for period in dropped:
                    self.client.delete_table(changes_table_id(self.settings, period), not_found_ok=True)
                self.refresh_view()
        return sorted(self._periods), dropped
