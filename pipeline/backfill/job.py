"""The backfill job (bounded): table splits in one snapshot -> the stream's decode and join -> the sinks.

```
EventSplits ─> ReadEvents (snapshot, server-side cursor) ─> Decode ─> JoinContent ─┬> Write<Sink> (each event sink)
ContentSplits ─> ReadContent ─────────────────────────────> Decode ───────────────┴> Write<Sink> (each content sink)
```

Rows become Debezium snapshot envelopes (``pipeline.backfill.envelopes``), so ``DecodeFn``,
``JoinContentFn`` and ``SinkWriteFn`` (the sink contract's driver, ``sinks.flush``) are the
stream's own: nothing here knows a sink. The join looks content up in the content table *of the
same snapshot* (``SnapshotContentView``), so each event joins the content that was current when
its row was; the foreign key guarantees it is there (an event of unknown content is dead-lettered
at once, never parked: no later content can belong to this snapshot).
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import apache_beam as beam

from infra.settings import Settings
from pipeline.backfill.envelopes import (
    CONTENT,
    EVENTS,
    SnapshotInfo,
    Split,
    backfill_topic,
    content_after,
    envelope,
    event_after,
)
from pipeline.backfill.postgres import read_content, read_split
from pipeline.decode import decode_content
from pipeline.lanes import consumer_config, letter_producer
from pipeline.model import ContentChange, ContentRow, KafkaRecord, SourcePosition
from pipeline.sources.content_view import ContentTable
from pipeline.transforms.enrich import DecodeFn, JoinContentFn
from sinks.base import SinkWriteFn
from sinks.fencing import Fence
from sinks.registry import SinkSpec

PROGRESS_EVERY_ROWS = 100_000
# A backfill flush may wait longer than the stream's 50 ms: nobody reads the boards for latency
# while it runs, and larger writes are cheaper per row.
FLUSH_MS = 1_000


@dataclass(frozen=True)
class BackfillPlan:
    """What the job reads: the snapshot, its splits (each with where to resume), and the sinks."""

    conninfo: str
    snapshot_id: str
    info: SnapshotInfo
    splits: tuple[Split, ...]
    event_sinks: tuple[SinkSpec, ...]
    content_sinks: tuple[SinkSpec, ...]
    fetch_rows: int


class ReadSplitFn(beam.DoFn):
    """``Split -> RecordBatch``: the split's rows in the snapshot as Debezium envelopes, in id order."""

    def __init__(self, conninfo: str, snapshot_id: str, info: SnapshotInfo, fetch_rows: int) -> None:
        self._conninfo = conninfo
        self._snapshot_id = snapshot_id
        self._info = info
        self._fetch_rows = fetch_rows

    def process(self, split: Split) -> Iterator[tuple[str, list[tuple[int, int, bytes, bytes, int]]]]:
        info, table = self._info, split.table
        topic = backfill_topic(info.server, table)
        began, done, reported = time.monotonic(), 0, 0
        for rows in read_split(self._conninfo, self._snapshot_id, split, self._fetch_rows):
            batch = []
            for row in rows:
                if table == EVENTS:
                    offset, after = row[0], event_after(row)
                else:
                    offset, after = row[0], content_after(row[1:])
                key, value = envelope(after, table, info)
                batch.append((split.partition, offset, key, value, info.ts_ms))
            done += len(batch)
            yield topic, batch
            if done - reported >= PROGRESS_EVERY_ROWS:
                reported = done
                rate = done / max(time.monotonic() - began, 1e-6)
                print(f"  {table} split {split.partition}: {done:,} rows read ({rate:,.0f} rows/s)", flush=True)
        took = time.monotonic() - began
        print(f"  {table} split {split.partition}: done, {done:,} rows in {took:.1f} s", flush=True)


class SnapshotContentView:
    """The content table of the snapshot, as the join's view: built once per process and snapshot
    through ``pipeline.decode`` from the same envelopes the content sinks get."""

    _cache: ClassVar[dict[str, SnapshotContentView]] = {}
    _lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(self, rows: dict[str, ContentRow]) -> None:
        self._rows = rows

    @classmethod
    def load(cls, conninfo: str, snapshot_id: str, info: SnapshotInfo) -> SnapshotContentView:
        with cls._lock:
            view = cls._cache.get(snapshot_id)
            if view is None:
                table = ContentTable()
                topic = backfill_topic(info.server, CONTENT)
                for ordinal, row in enumerate(read_content(conninfo, snapshot_id)):
                    key, value = envelope(content_after(row), CONTENT, info)
                    change = decode_content(KafkaRecord(SourcePosition(topic, 0, ordinal), key, value, info.ts_ms))
                    if isinstance(change, ContentChange):
                        table.apply(change)
                view = cls._cache[snapshot_id] = cls(table.rows)
            return view

    def get(self, content_id: str) -> ContentRow | None:
        return self._rows.get(content_id)

    @property
    def alive(self) -> bool:
        """Always: the snapshot's content is read once, with no reader thread that could die (the
        join replaces a streaming view whose reader died)."""
        return True

    def __len__(self) -> int:
        return len(self._rows)

    def deadline_for(self, content_id: str, now_ms: int, timeout_ms: int) -> int:
        return now_ms  # nothing can arrive later in a snapshot: dead-letter at once

    def proven_absent_at(self, at_ms: int) -> bool:
        return True  # the snapshot is the whole table

    def wait_until_current(self, timeout: float) -> None:
        return None

    def wait_for_any(self, content_ids: set[str], timeout: float, proof_at_ms: int | None = None) -> bool:
        return False


def build(p: beam.Pipeline, settings: Settings, plan: BackfillPlan) -> None:
    """Add both branches (the module docstring's diagram) to ``p``."""
    s, written = settings, []
    for table, kind, label, specs in (
        (EVENTS, "engagement", "Events", plan.event_sinks),
        (CONTENT, "content", "Content", plan.content_sinks),
    ):
        splits = [split for split in plan.splits if split.table == table]
        if not specs or not splits:
            continue
        changes: Any = (
            p
            | f"{label}Splits" >> beam.Create(splits)
            | f"Read{label}" >> beam.ParDo(ReadSplitFn(plan.conninfo, plan.snapshot_id, plan.info, plan.fetch_rows))
            | f"Decode{label}" >> beam.ParDo(DecodeFn(kind))
        )
        if table == EVENTS:
            view = functools.partial(SnapshotContentView.load, plan.conninfo, plan.snapshot_id, plan.info)
            join = JoinContentFn(
                consumer_config(s),
                s.cdc.content_topic,
                s.pipeline.late_content_timeout_s,
                s.pipeline.view_startup_timeout_s,
                view_factory=view,  # type: ignore[arg-type] - the view's duck type
            )
            changes = changes | "JoinContent" >> beam.ParDo(join)
        topic = backfill_topic(plan.info.server, table)
        for index, spec in enumerate(specs):
            written.append(
                changes
                | f"Write{spec.label}"
                >> beam.ParDo(
                    SinkWriteFn(
                        functools.partial(spec.build, s),
                        letter_producer(s, specs),
                        [topic],
                        owns_upstream_letters=index == 0,
                        max_latency_ms=FLUSH_MS,
                        fence=Fence.of(s),
                    )
                )
            )
    if written:
        _ = tuple(written) | "Written" >> beam.Flatten() | "Done" >> beam.Map(lambda _: None)
