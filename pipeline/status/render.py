"""The status report as text for a terminal (``make status``); ``--json`` prints the report itself."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from infra.reserved_ports import format_ranges

MIB = 1024 * 1024


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}/s"


def _age(seconds: float | None) -> str:
    return "never" if seconds is None else f"{seconds:,.1f} s ago"


def _capture(capture: Mapping[str, Any]) -> list[str]:
    lines = []
    connector = capture["connector"]
    if connector:
        tasks = ", ".join(f"task {t['id']} {t['state']}" for t in connector.get("tasks", []))
        lines.append(f"connector: {connector['name']} {connector['connector']['state']} ({tasks or 'no tasks'})")
    slot = capture["slot"]
    if slot:
        lag_s = "-" if slot.get("lag_s") is None else f"{slot['lag_s']:.1f} s"
        lines.append(
            f"replication slot: {slot['slot']} active={slot['active']} wal_status={slot['wal_status']} "
            f"lag={(slot['lag_bytes'] or 0) / MIB:.2f} MiB ({lag_s})"
        )
    return lines


def _sinks(sinks: Mapping[str, Any]) -> list[str]:
    lines = ["sinks (lag = the topic's end - the sink's stored position):"]
    for name, sink in sinks.items():
        lines.append(f"  {name:<22} lag {sink['lag']:>9,}   out {_rate(sink['out_per_s']):>10}")
        for topic, info in sink["topics"].items():
            behind = {p: v["lag"] for p, v in info["partitions"].items() if v["lag"]}
            per_partition = " ".join(f"{p}:{n:,}" for p, n in behind.items()) or "all partitions caught up"
            lines.append(f"    {topic:<44} {info['lag']:>9,}   {per_partition}")
    return lines


def restarted_line(restarts: Mapping[str, str]) -> str:
    """The supervisor's restarts for a Redis that came back older, and the last one's age."""
    ago = max(0.0, time.time() - int(restarts.get("last_at_ms", 0)) / 1000)
    counts = ", ".join(
        f"{label} {restarts[cause]}"
        for cause, label in (("positions_rewound", "positions rewound"), ("lock_missing", "lock gone"))
        if cause in restarts
    )
    return f"  restarted for a Redis that came back older: {counts} (last {ago:,.0f} s ago)"


def render(report: Mapping[str, Any]) -> str:
    lines: list[str] = []
    lock = report["pipeline"]["lock"]
    group = report["pipeline"]["consumer_group"]
    if lock:
        lines.append(f"pipeline: running for {group} on {lock['host']} pid {lock['pid']}")
        if restarts := lock.get("restarts"):
            lines.append(restarted_line(restarts))
    else:
        lines.append(f"pipeline: not running for {group}")
    lines += _capture(report["capture"])
    lines.append(f"topics (in over {report['sample_s']:g} s):")
    for topic, info in report["topics"].items():
        lines.append(f"  {topic:<46} end {info['end']:>10,}   in {_rate(info['in_per_s']):>10}")
    lines += _sinks(report["sinks"])
    if report["stages"]:
        lines.append("stages (the job's counters, per second):")
        lines += [f"  {stage:<50} {rate:>10,.0f}" for stage, rate in report["stages"].items()]
    lines.append("dead letters:")
    for topic, info in report["dead_letters"].items():
        scanned = "" if info["scanned"] == info["total"] else f" (breakdown of the newest {info['scanned']:,})"
        lines.append(f"  {topic:<46} {info['total']:>8,}{scanned}")
        lines += [f"    {row['count']:>8,}  {row['stage']:<18} {row['reason']}" for row in info["by_stage_reason"][:10]]
    if report["breakers"]:
        lines.append("HTTP circuit breakers:")
        lines += [
            f"  {b['endpoint']:<20} {b['state']:<10} {b['failures']} failure(s) in a row" for b in report["breakers"]
        ]
    for view in report.get("content_views", []):
        lines.append(
            f"content view of {view['topic']}: last read {_age(view['poll_age_s'])}, reader restarts {view['restarts']}"
        )
    if report.get("taskmanagers") is not None:
        lines.append("Flink TaskManagers (partitions their workers read):")
        for taskmanager, topics in report["taskmanagers"].items():
            reading = "; ".join(f"{topic} {format_ranges(partitions)}" for topic, partitions in sorted(topics.items()))
            lines.append(f"  {taskmanager:<20} {reading or 'nothing (no worker answered)'}")
    board, bigquery = report["freshness"]["leaderboard"], report["freshness"]["bigquery"]
    lines.append(f"newest leaderboard update: {_age(board and board['age_s'])}")
    if bigquery is not None:
        lines.append(f"newest BigQuery row: {_age(bigquery['age_s'])} ({bigquery['table']})")
    for note in report["notes"]:
        lines.append(f"note: {note}")
    if report["problems"]:
        lines.append("UNHEALTHY:")
        lines += [f"  - {problem}" for problem in report["problems"]]
    else:
        lines.append("healthy")
    return "\n".join(lines)
