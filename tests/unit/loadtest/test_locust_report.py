"""Reading locust's final JSON statistics back (loadtest.locust_report)."""

from __future__ import annotations

from pathlib import Path

import orjson

from loadtest.locust_report import read_stats, summary


def entry(name: str, method: str, times: dict[str, int], rows: int, failures: int = 0) -> dict[str, object]:
    return {
        "name": name,
        "method": method,
        "start_time": 1000.0,
        "last_request_timestamp": 1010.0,
        "num_requests": sum(times.values()),
        "num_failures": failures,
        "total_content_length": rows,
        "max_response_time": max(float(ms) for ms in times) + 0.4,
        "response_times": times,
    }


def test_rows_rates_and_percentiles(tmp_path: Path) -> None:
    path = tmp_path / "locust.json"
    path.write_bytes(
        orjson.dumps(
            [
                entry("insert events", "SQL", {"20": 90, "30": 10}, rows=10_000),
                entry("commit -> top_engagement:10min", "SLA", {"50": 50, "90": 45, "400": 4, "5100": 1}, 99, 1),
            ]
        )
    )
    stats = read_stats(path)
    inserts, sla = stats["insert events"], stats["commit -> top_engagement:10min"]
    assert (inserts.requests, inserts.rows, inserts.per_second, inserts.rows_per_second) == (100, 10_000, 10.0, 1000.0)
    assert (sla.percentile(0.5), sla.percentile(0.95), sla.percentile(0.99), sla.percentile(1.0)) == (
        50.0,
        90.0,
        400.0,
        5100.0,
    )
    assert summary(stats) == [
        "requests: 200 in 10.0 s = 20.0/s, 1 failures",
        "commit -> top_engagement:10min: 100 probes, p50 50 ms, p95 90 ms, p99 400 ms, max 5,100 ms, "
        "1 over the SLA or failed",
        "insert events: 100 transactions (10.0/s), 10,000 rows (1,000/s), p50 20 ms, p99 30 ms, 0 failures",
    ]


def test_an_empty_run(tmp_path: Path) -> None:
    path = tmp_path / "locust.json"
    path.write_bytes(b"[]")
    assert read_stats(path) == {}
    assert summary({}) == ["requests: 0 in 0.0 s = 0.0/s, 0 failures"]
