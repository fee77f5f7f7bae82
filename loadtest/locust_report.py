"""Reads locust's final statistics back (``--json-file``): per request name, counts, rows and percentiles.

The load test reports each SQL transaction with the rows it changed as the response length and each
SLA probe with its commit -> board time, so the statistics alone say how many events were written,
at what rate, and how the SLA held; ``loadtest.run_locust`` prints that and the integration test
checks the rows against Postgres. The JSON, not the ``*_stats.csv``: locust rewrites the CSV once a
second and not at exit, so its last rows miss the final second's requests; the JSON is written
after the users have stopped. Percentiles come from locust's response-time histogram (times above
100 ms rounded to 10 ms, above 1 s to 100 ms), computed here: importing locust would monkey-patch
the caller with gevent.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson


@dataclass(frozen=True)
class StatsRow:
    type: str
    name: str
    requests: int
    failures: int
    rows: int  # the summed response lengths: rows changed (SQL), probes seen (SLA)
    seconds: float  # the run's length, first to last request
    max_ms: float
    histogram: dict[int, int]  # rounded response time in ms -> requests

    @property
    def per_second(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0

    @property
    def rows_per_second(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0

    def percentile(self, share: float) -> float:
        """The response time that ``share`` of the requests did not exceed (0 without requests)."""
        wanted, seen = share * self.requests, 0
        for ms in sorted(self.histogram):
            seen += self.histogram[ms]
            if seen >= wanted:
                return float(ms)
        return 0.0


def read_stats(path: Path) -> dict[str, StatsRow]:
    """The entries of locust's ``--json-file`` output by request name."""
    entries = orjson.loads(path.read_bytes())
    if not entries:
        return {}
    began = min(e["start_time"] for e in entries)
    seconds = max(e["last_request_timestamp"] or began for e in entries) - began
    return {
        e["name"]: StatsRow(
            type=e["method"],
            name=e["name"],
            requests=e["num_requests"],
            failures=e["num_failures"],
            rows=e["total_content_length"],
            seconds=seconds,
            max_ms=e["max_response_time"] or 0.0,
            histogram={int(ms): count for ms, count in e["response_times"].items()},
        )
        for e in entries
    }


def summary(stats: dict[str, StatsRow]) -> list[str]:
    """The load test's figures: requests/s, events/s written, the SLA's percentiles, failures."""
    requests = sum(row.requests for row in stats.values())
    failures = sum(row.failures for row in stats.values())
    seconds = next(iter(stats.values())).seconds if stats else 0.0
    rate = requests / seconds if seconds > 0 else 0.0
    lines = [f"requests: {requests:,} in {seconds:.1f} s = {rate:,.1f}/s, {failures:,} failures"]
    for row in sorted(stats.values(), key=lambda r: (r.type, r.name)):
        p50, p95, p99 = row.percentile(0.5), row.percentile(0.95), row.percentile(0.99)
        if row.type == "SQL":
            lines.append(
                f"{row.name}: {row.requests:,} transactions ({row.per_second:,.1f}/s), {row.rows:,} rows "
                f"({row.rows_per_second:,.0f}/s), p50 {p50:,.0f} ms, p99 {p99:,.0f} ms, {row.failures:,} failures"
            )
        else:
            lines.append(
                f"{row.name}: {row.requests:,} probes, p50 {p50:,.0f} ms, p95 {p95:,.0f} ms, p99 {p99:,.0f} ms, "
                f"max {row.max_ms:,.0f} ms, {row.failures:,} over the SLA or failed"
            )
    return lines
