"""The two modes of seed 004: continuous at ``GENERATION_RATE`` rows a minute, or one burst.

Both report the achieved rate; continuous mode also reports how far it is behind its target, so a
database that cannot keep up is visible rather than silently slowing the run. Writes lost to a
Postgres outage are retried by the writer (``generator.retry``) and counted here; a batch whose
rows Postgres refuses (``BatchRefusedError``) is counted and skipped in continuous mode and ends a
burst, which promises an exact count.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from faker import Faker

from generator.catalogue import Content, make_catalogue
from generator.events import EventFactory, EventRow
from generator.pacing import RatePacer
from generator.retry import MAX_CONSECUTIVE_REFUSED, BatchRefusedError
from generator.writer import BatchResult, PostgresWriter
from infra.settings import GeneratorSettings

Report = Callable[[str], None]


class BatchWriter(Protocol):
    """A ``PostgresWriter``, or the ``RetryingWriter`` around one."""

    def write_batch(self, rows: Sequence[EventRow], catalogue: list[Content]) -> BatchResult: ...


@dataclass
class RunStats:
    mode: str
    started: float = field(default_factory=time.monotonic)
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    content_updated: int = 0
    batches: int = 0
    # Writes repeated after a Postgres outage, the outages, and their total length.
    retried: int = 0
    outages: int = 0
    outage_s: float = 0.0
    # Events in batches Postgres refused (continuous mode skips them).
    refused: int = 0
    refused_batches: int = 0
    finished: float | None = None

    def add(self, result: BatchResult) -> None:
        self.inserted += result.inserted
        self.updated += result.updated
        self.deleted += result.deleted
        self.content_updated += result.content_updated
        self.batches += 1
        if result.retries:
            self.retried += result.retries
            self.outages += 1
            self.outage_s += result.outage_s

    @property
    def elapsed(self) -> float:
        return (self.finished or time.monotonic()) - self.started

    @property
    def rate(self) -> float:
        return self.inserted / self.elapsed if self.elapsed > 0 else 0.0

    def summary(self) -> str:
        return (
            f"{self.mode}: {self.inserted:,} events in {self.elapsed:.1f} s = {self.rate:,.0f} rows/s "
            f"({self.batches} transactions; {self.updated} event updates, {self.deleted} deletes, "
            f"{self.content_updated} content updates; {self.retried} retried writes in {self.outages} outages "
            f"lasting {self.outage_s:.1f} s; {self.refused:,} events refused in {self.refused_batches} batches)"
        )


def ensure_catalogue(
    writer: PostgresWriter, settings: GeneratorSettings, rng: random.Random, report: Report
) -> list[Content]:
    """Use the catalogue in the database; seed ``content_count`` items if it is empty."""
    catalogue = writer.load_catalogue()
    if catalogue:
        return catalogue
    fake = Faker()
    fake.seed_instance(rng.getrandbits(32))
    new = make_catalogue(rng, fake, settings.content_count, datetime.now(UTC))
    writer.insert_content(new)
    report(f"seeded {len(new)} content items")
    return writer.load_catalogue()


def run_burst(
    writer: BatchWriter, factory: EventFactory, catalogue: list[Content], count: int, batch_size: int, report: Report
) -> RunStats:
    stats = RunStats(mode="burst")
    remaining = count
    while remaining > 0:
        n = min(batch_size, remaining)
        stats.add(writer.write_batch(factory.batch(n, datetime.now(UTC)), catalogue))
        remaining -= n
    stats.finished = time.monotonic()
    return stats


def run_continuous(
    writer: BatchWriter,
    factory: EventFactory,
    catalogue: list[Content],
    settings: GeneratorSettings,
    report: Report,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> RunStats:
    """Write at the configured rate until ``duration_s`` passes (or forever, until Ctrl-C)."""
    pacer = RatePacer(settings.rate_per_second, settings.tick_ms / 1000.0, settings.burst_batch_size, clock, sleep)
    stats = RunStats(mode="continuous", started=clock())
    next_report = stats.started + settings.report_interval_s
    refused_in_a_row = 0
    try:
        while settings.duration_s is None or clock() - stats.started < settings.duration_s:
            n = pacer.next_batch()
            try:
                stats.add(writer.write_batch(factory.batch(n, datetime.now(UTC)), catalogue))
                refused_in_a_row = 0
            except BatchRefusedError as exc:
                stats.refused += exc.events
                stats.refused_batches += 1
                refused_in_a_row += 1
                report(f"{exc}: skipped, not retried")
                if refused_in_a_row >= MAX_CONSECUTIVE_REFUSED:
                    raise
            now = clock()
            if now >= next_report:
                achieved = stats.inserted / (now - stats.started)
                report(
                    f"{now - stats.started:6.1f} s  {stats.inserted:>10,} events  {achieved:8,.0f}/s "
                    f"(target {settings.rate_per_second:,.0f}/s, backlog {pacer.backlog:,}, "
                    f"retried {stats.retried}, refused {stats.refused:,})"
                )
                next_report = now + settings.report_interval_s
    finally:
        stats.finished = clock()
    return stats
