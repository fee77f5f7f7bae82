"""Turn what ``pipeline.status.read`` sampled into the status report, and judge it.

Pure: the raw sample and the settings in, a JSON-ready report out with ``problems`` (one line each,
empty when healthy) and ``notes`` (worth knowing, not a failure). So every rule is unit-tested
without services.

A part is unhealthy when:
- a service does not answer (Kafka, Redis, Postgres, Kafka Connect, BigQuery when its sink runs);
- capture is stopped, failed or lagging (``infra.capture_health``: connector, tasks, slot);
- no pipeline holds the instance lock of ``PIPELINE_CONSUMER_GROUP`` (nothing is running);
- a sink is more than ``STATUS_MAX_SINK_LAG`` changes behind its topics' end, or is behind and did
  not move during the sample (stalled: a sink that is down, fenced, or retrying);
- an HTTP endpoint's circuit breaker is not closed.

- a content view's reader has not polled its topic for ``VIEW_STALE_S``, or restarted during the
  sample (from the job's metrics; a restart before the sample is a note).

Dead letters are reported by stage and reason, not judged: bad input is expected, and counted.
Sequence marks a sink found wrong and replaced since the job started (the source's LSNs went back
after a restore or failover, or a forged sequence; ``sinks.positions``) are notes, per sink, partition
and kind, from the job's ``engagement_sink_sequence_regressions_total``: handled, but worth knowing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from infra.capture_health import connector_problems, slot_problems
from infra.settings import Settings

__all__ = ["content_views", "differences", "reason_kind", "report", "sequence_regressions"]

_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", re.IGNORECASE)
_NUMBER = re.compile(r"\d+(\.\d+)?")


def reason_kind(reason: str) -> str:
    """A letter's reason without its particulars (ids, numbers), so letters of one cause group together."""
    return _NUMBER.sub("N", _UUID.sub("<id>", reason))[:160]


def differences(
    first: Mapping[str, float] | None, second: Mapping[str, float] | None, seconds: float
) -> dict[str, float]:
    """Per-second change of each sample both have; a counter that went down (the job restarted in
    between) gives no rate."""
    if not first or not second or seconds <= 0:
        return {}
    return {k: (v - first[k]) / seconds for k, v in second.items() if k in first and v >= first[k]}


def _topics(first: Mapping[str, Any], second: Mapping[str, Any], seconds: float) -> dict[str, Any]:
    result = {}
    for topic, ends in second["ends"].items():
        before = first["ends"].get(topic, {})
        total = sum(ends.values())
        result[topic] = {
            "end": total,
            "in_per_s": (total - sum(before.values())) / seconds if before and seconds > 0 else None,
        }
    return result


def _sink(
    name: str,
    first: Mapping[str, Any] | None,
    second: Mapping[str, Any] | None,
    ends: Mapping[str, Any],
    seconds: float,
) -> dict[str, Any]:
    topics: dict[str, Any] = {}
    lag_total = moved = 0
    for topic, stored in (second or {}).items():
        topic_ends = ends.get(topic, {})
        if not topic_ends:
            continue
        partitions = {}
        for partition, end in sorted(topic_ends.items()):
            position = stored.get(partition)
            partitions[str(partition)] = {
                "stored": position,
                "end": end,
                "lag": max(0, end - (position or 0)),
            }
        lag = sum(p["lag"] for p in partitions.values())
        lag_total += lag
        earlier = (first or {}).get(topic, {})
        moved += sum(stored.values()) - sum(earlier.values())
        topics[topic] = {"lag": lag, "partitions": partitions}
    return {
        "topics": topics,
        "lag": lag_total,
        "out_per_s": moved / seconds if seconds > 0 and first is not None else None,
    }


_REGRESSIONS = "engagement_sink_sequence_regressions_total"
_LABEL = re.compile(r'(\w+)="([^"]*)"')
_KINDS = {
    "unseen_gap": "a sequence below the mark that was never applied (a forged or out-of-order mark)",
    "later_commit": "LSNs below the mark committed after it (the source's LSNs went back: a restore or failover)",
    "implausible_mark": "a stored mark past 64 bits",
}


def sequence_regressions(metrics: Mapping[str, float] | None) -> list[dict[str, Any]]:
    """Each sink, partition and kind with sequence marks found wrong since the job started, from the
    job's counters."""
    found = []
    for sample, count in sorted((metrics or {}).items()):
        name, _, labels = sample.partition("{")
        if name == _REGRESSIONS and count > 0:
            found.append({**dict(_LABEL.findall(labels)), "count": int(count)})
    return found


_VIEW_RESTARTS = "engagement_content_view_reader_restarts_total"
_VIEW_POLL = "engagement_content_view_last_poll_timestamp_seconds"
# A reader polls every 50 ms or so; this long without a poll, it is stuck or dead.
VIEW_STALE_S = 30.0


def content_views(
    first: Mapping[str, float] | None, second: Mapping[str, float] | None, now: float
) -> list[dict[str, Any]]:
    """Each content view's reader, from the job's metrics: restarts since the job started, restarts
    during the sample, and the age of its last poll."""
    views: dict[str, dict[str, Any]] = {}
    for sample, value in sorted((second or {}).items()):
        name, _, labels = sample.partition("{")
        if name not in (_VIEW_RESTARTS, _VIEW_POLL):
            continue
        topic = dict(_LABEL.findall(labels)).get("topic", "?")
        view = views.setdefault(topic, {"topic": topic, "restarts": 0, "restarted_in_sample": 0, "poll_age_s": None})
        if name == _VIEW_RESTARTS:
            view["restarts"] = int(value)
            view["restarted_in_sample"] = max(0, int(value - (first or {}).get(sample, value)))
        elif value > 0:
            view["poll_age_s"] = round(max(0.0, now - value), 1)
    return list(views.values())


def _stages(rates: Mapping[str, float]) -> dict[str, float]:
    """Events/s in and out of each stage, from the job's counters (``infra.telemetry``'s names)."""
    stages: dict[str, float] = {}
    for sample, rate in sorted(rates.items()):
        name, _, labels = sample.partition("{")
        label = labels.rstrip("}").replace('"', "")
        if name == "engagement_source_records_total":
            stages["source: records read"] = rate
        elif name == "engagement_decode_total":
            stages[f"decode: {label}"] = rate
        elif name == "engagement_join_total":
            stages[f"join: {label}"] = rate
        elif name == "engagement_sink_records_total":
            stages[f"sink: {label}"] = rate
        elif name == "engagement_dead_letters_total":
            stages[f"dead letters: {label}"] = rate
    return stages


def _letters(letters: Mapping[str, Any]) -> dict[str, Any]:
    result = {}
    for topic, info in letters.items():
        if info is None:
            continue
        kinds: dict[tuple[str, str], int] = {}
        for key, count in info["by_stage_reason"].items():
            stage, _, reason = key.partition("\t")
            kinds[(stage, reason_kind(reason))] = kinds.get((stage, reason_kind(reason)), 0) + count
        result[topic] = {
            "total": info["total"],
            "scanned": info["scanned"],
            "by_stage_reason": [
                {"stage": stage, "reason": reason, "count": n}
                for (stage, reason), n in sorted(kinds.items(), key=lambda item: (-item[1], item[0]))
            ],
        }
    return result


def report(raw: Mapping[str, Any], settings: Settings) -> dict[str, Any]:
    """The status report of one ``read.sample``; see the module docstring for the rules."""
    first, second, errors = raw["first"], raw["second"], raw["errors"]
    seconds = second["at"] - first["at"]
    problems: list[str] = [f"{what} did not answer: {error}" for what, error in errors.items() if what != "metrics"]
    notes: list[str] = []

    connect_state = "unreachable" if "connect" in errors else "healthy"
    postgres_state = "unreachable" if "postgres" in errors else "healthy"
    problems += connector_problems(raw["connector"], connect_state, settings.cdc)
    problems += slot_problems(raw["slot"], postgres_state, settings.cdc)

    group = settings.pipeline.consumer_group
    if raw["lock"] is None and "redis" not in errors:
        problems.append(f"no pipeline is running for consumer group {group} (nobody holds its instance lock)")
    if "metrics" in errors:
        notes.append(f"the job's metrics endpoint ({settings.metrics.url}) did not answer: {errors['metrics']}")

    sinks = {}
    for name, stored in second["stored"].items():
        sink = _sink(name, first["stored"].get(name), stored, second["ends"], seconds)
        sinks[name] = sink
        if stored is None:
            continue
        if sink["lag"] > settings.status.max_sink_lag:
            problems.append(
                f"sink {name} is {sink['lag']:,} changes behind "
                f"(limit STATUS_MAX_SINK_LAG={settings.status.max_sink_lag:,})"
            )
        elif sink["lag"] > 0 and sink["out_per_s"] == 0:
            problems.append(
                f"sink {name} is stalled: {sink['lag']:,} changes behind and it did not move in {seconds:.1f} s"
            )

    breakers = []
    for endpoint, entries in sorted(raw["breakers"].items()):
        for entry in sorted(entries, key=lambda e: e["instance"]):
            breakers.append({"endpoint": endpoint, **entry})
            if entry["state"] != "closed":
                detail = f": {entry['detail']}" if entry.get("detail") else ""
                problems.append(
                    f"HTTP endpoint {endpoint}: circuit breaker {entry['state']} "
                    f"({entry['failures']} failure(s) in a row){detail}"
                )

    regressions = sequence_regressions(second["metrics"])
    for r in regressions:
        notes.append(
            f"sink {r.get('sink')}, partition {r.get('partition')}: {r['count']} sequence mark(s) replaced since "
            f"the job started, {_KINDS.get(r.get('kind', ''), r.get('kind'))}; the changes were applied, "
            'not skipped as re-sends (docs/delivery.md "A wrong sequence mark")'
        )

    views = content_views(first["metrics"], second["metrics"], second.get("wall", 0.0))
    for view in views:
        topic = view["topic"]
        if view["poll_age_s"] is not None and view["poll_age_s"] > VIEW_STALE_S:
            problems.append(
                f"the content view of {topic} has not read its topic for {view['poll_age_s']:,.0f} s: its reader is "
                "stuck; events wait parked until it reads again"
            )
        if view["restarted_in_sample"]:
            problems.append(f"the content view reader of {topic} failed and restarted during the sample")
        elif view["restarts"]:
            notes.append(
                f"the content view reader of {topic} failed and restarted {view['restarts']} time(s) since the "
                "job started (it resumes where it was; the job's log says why)"
            )

    rates = differences((first["metrics"] or {}), (second["metrics"] or {}), seconds)
    return {
        "healthy": not problems,
        "problems": problems,
        "notes": notes,
        "sample_s": round(seconds, 3),
        "pipeline": {"consumer_group": group, "lock": raw["lock"]},
        "capture": {"connector": raw["connector"], "slot": raw["slot"]},
        "topics": _topics(first, second, seconds),
        "sinks": sinks,
        "stages": _stages(rates),
        "dead_letters": _letters(raw["letters"]),
        "breakers": breakers,
        "sequence_regressions": regressions,
        "content_views": views,
        "freshness": {"leaderboard": raw["board"], "bigquery": raw["bigquery"]},
        # On the Flink cluster: per TaskManager, the partitions its workers read.
        "taskmanagers": second.get("reads"),
    }
