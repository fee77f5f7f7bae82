"""Continuous mode counts retried and refused writes and goes on; too many refusals in a row end it."""

from __future__ import annotations

import psycopg.errors as pg_errors
import pytest

from generator.retry import MAX_CONSECUTIVE_REFUSED, BatchRefusedError
from generator.runner import run_burst, run_continuous
from generator.writer import BatchResult
from infra.settings import GeneratorSettings


class FakeFactory:
    def batch(self, count, now):
        return [("event",)] * count


class ScriptedWriter:
    """Writes every batch, except those whose (1-based) number is in ``refuse``; ``retried`` maps a
    batch number to the retries it took."""

    def __init__(self, refuse=(), retried=None):
        self.calls = 0
        self.sizes: list[int] = []
        self.refuse = set(refuse)
        self.retried = retried or {}

    def write_batch(self, rows, catalogue):
        self.calls += 1
        self.sizes.append(len(rows))
        if self.calls in self.refuse:
            raise BatchRefusedError(len(rows), pg_errors.CheckViolation("violates check constraint"))
        return BatchResult(inserted=len(rows), retries=self.retried.get(self.calls, 0), outage_s=1.5)


class FakeTime:
    def __init__(self) -> None:
        self.now = 0.0

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


# 600 rows/min = 10/s, one row per 100 ms tick: about 20 batches of 1 in 2 s.
SETTINGS = GeneratorSettings(generation_rate=600, duration_s=2.0, report_interval_s=1.0)


def run(writer, settings=SETTINGS):
    time = FakeTime()
    lines: list[str] = []
    stats = run_continuous(writer, FakeFactory(), [], settings, lines.append, clock=time.clock, sleep=time.sleep)
    return stats, lines


def test_refused_batches_are_counted_reported_and_skipped():
    writer = ScriptedWriter(refuse={3, 4}, retried={7: 5})
    stats, lines = run(writer)
    assert writer.calls > 10  # the run went on after the refusals
    refused_rows = writer.sizes[2] + writer.sizes[3]
    assert (stats.batches, stats.refused_batches) == (writer.calls - 2, 2)
    assert (stats.inserted, stats.refused) == (sum(writer.sizes) - refused_rows, refused_rows)
    assert (stats.retried, stats.outages, stats.outage_s) == (5, 1, 1.5)
    refused = [line for line in lines if "refused a batch" in line]
    assert (
        refused
        == ["Postgres refused a batch of 1 events (CheckViolation: violates check constraint): skipped, not retried"]
        * 2
    )
    periodic = [line for line in lines if "events" in line and "target" in line]
    assert periodic[0].endswith(f"retried 5, refused {refused_rows})")
    assert stats.summary().endswith(
        f"({writer.calls - 2} transactions; 0 event updates, 0 deletes, 0 content updates; "
        f"5 retried writes in 1 outages lasting 1.5 s; {refused_rows} events refused in 2 batches)"
    )


def test_a_run_of_refusals_ends_continuous_mode():
    writer = ScriptedWriter(refuse=range(5, 5 + MAX_CONSECUTIVE_REFUSED))
    with pytest.raises(BatchRefusedError):
        run(writer)
    assert writer.calls == 4 + MAX_CONSECUTIVE_REFUSED


def test_a_refused_batch_ends_a_burst():
    writer = ScriptedWriter(refuse={2})
    with pytest.raises(BatchRefusedError):
        run_burst(writer, FakeFactory(), [], 30, 10, print)
    assert writer.calls == 2
