"""Read what ``make status`` shows from the services themselves, by address.

Each reader asks one service and returns plain data (dicts of numbers and strings, ready for
``--json``). A service that does not answer is recorded as an error string under ``errors`` rather
than raised: the status view must say what is down, not fail with it. Nothing here writes.

``sample`` reads the moving parts (end offsets, the sinks' stored positions, the job's Prometheus
counters) twice, ``StatusSettings.sample_s`` apart, so rates come from one clock and one interval;
everything else is read once.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import redis
from confluent_kafka import Consumer, KafkaError, TopicPartition
from prometheus_client.parser import text_string_to_metric_families

from infra.capture_health import read_connector, read_slot
from infra.settings import Settings
from pipeline.flink_job_server import job_name
from pipeline.instance_lock import parse_holder
from sinks.fencing import lock_key, restarts_key
from sinks.http_breaker import BreakerBoard
from sinks.kafka_positions import KafkaPositions, group_id
from sinks.redis_leaderboard import board_key
from sinks.redis_store import next_offsets
from sinks.registry import SinkSpec, lanes

__all__ = ["Sample", "read_once", "sample", "sink_specs", "stored_positions", "topic_of"]

_TIMEOUT_S = 5.0
Sample = dict[str, Any]


def _errors_into(errors: dict[str, str], what: str, read: Callable[[], Any]) -> Any:
    try:
        return read()
    # One part that does not answer must not hide the others: every failure becomes a line.
    except Exception as exc:  # noqa: BLE001
        errors[what] = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
        return None


def topic_of(spec: SinkSpec, settings: Settings) -> str:
    return settings.cdc.engagement_topic if spec.topic == "engagement" else settings.cdc.content_topic


def sink_specs(settings: Settings) -> list[SinkSpec]:
    return [spec for lane in lanes(settings.pipeline.sinks, settings) for spec in lane.sinks]


class _Kafka:
    """One consumer (never subscribed, never committing) for watermarks and the letters' headers."""

    def __init__(self, settings: Settings) -> None:
        self._consumer = Consumer(
            {
                **settings.kafka.client_config(),
                "group.id": "engagement-status",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
            }
        )

    def ends(self, topic: str) -> dict[int, int]:
        meta = self._consumer.list_topics(topic, timeout=_TIMEOUT_S).topics.get(topic)
        if meta is None or meta.error is not None:
            return {}
        return {
            p: self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=_TIMEOUT_S)[1]
            for p in sorted(meta.partitions)
        }

    def letters(self, topic: str, scan: int) -> dict[str, Any]:
        """Total letters (exact, from the watermarks) and the newest ``scan`` of them by stage and reason."""
        meta = self._consumer.list_topics(topic, timeout=_TIMEOUT_S).topics.get(topic)
        if meta is None or meta.error is not None:
            return {"total": 0, "scanned": 0, "by_stage_reason": {}}
        marks = {
            p: self._consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=_TIMEOUT_S)
            for p in meta.partitions
        }
        total = sum(high - low for low, high in marks.values())
        per_partition = max(1, scan // max(1, len(marks)))
        assignment = [
            TopicPartition(topic, p, max(low, high - per_partition)) for p, (low, high) in marks.items() if high > low
        ]
        counts: Counter[tuple[str, str]] = Counter()
        pending = {tp.partition for tp in assignment}
        if assignment:
            self._consumer.assign(assignment)
            deadline = time.monotonic() + 10
            while pending and time.monotonic() < deadline:
                for message in self._consumer.consume(1000, timeout=0.5):
                    if message.error() is not None:
                        if message.error().code() == KafkaError._PARTITION_EOF:
                            pending.discard(message.partition())
                        continue
                    headers = dict(message.headers() or [])
                    stage = (headers.get("dlq.stage") or b"?").decode(errors="replace")
                    reason = (headers.get("dlq.reason") or b"?").decode(errors="replace")
                    counts[(stage, reason)] += 1
            self._consumer.unassign()
        return {
            "total": total,
            "scanned": sum(counts.values()),
            "by_stage_reason": {f"{stage}\t{reason}": n for (stage, reason), n in counts.items()},
        }

    def close(self) -> None:
        self._consumer.close()


def stored_positions(
    settings: Settings, client: redis.Redis, spec: SinkSpec, topics: Iterable[str]
) -> dict[str, dict[int, int]]:
    """``{topic: {partition: next offset}}`` the sink has stored (partitions it never stored are absent)."""
    if spec.positions_in == "redis":
        return {topic: next_offsets(client, spec.name, topic) for topic in topics}
    store = KafkaPositions(settings.kafka.client_config(), group_id(settings.pipeline.consumer_group, spec.name))
    try:
        loaded = store.load(list(topics))
    finally:
        store.close()
    result: dict[str, dict[int, int]] = {topic: {} for topic in topics}
    for field, position in loaded.items():
        topic, _, partition = field.rpartition(":")
        result.setdefault(topic, {})[int(partition)] = position.next_offset
    return result


def _job_metrics(url: str) -> dict[str, float]:
    """The job's Prometheus samples, ``name{label="v",...}`` -> value (counters and gauges only)."""
    text = httpx.get(url, timeout=_TIMEOUT_S).text
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        if family.type not in ("counter", "gauge"):
            continue
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            samples[f"{s.name}{{{labels}}}"] = s.value
    return samples


def on_cluster(settings: Settings) -> bool:
    """The job runs on the Flink cluster, its Python in the TaskManagers' worker pools: configured
    so, or (``make status`` from another shell, without ``make flink``'s settings) the cluster at
    ``FLINK_MASTER`` or the local one runs this consumer group's job."""
    if settings.pipeline.runner == "flink" and settings.flink.external:
        return True
    try:
        reply = httpx.get(f"{settings.flink.rest_url}/jobs/overview", timeout=1.0)
        jobs = reply.raise_for_status().json()["jobs"]
    except (httpx.HTTPError, ValueError, KeyError):
        return False
    return any(job["name"] == job_name(settings) and job["state"] == "RUNNING" for job in jobs)


def _cluster_metrics(settings: Settings) -> tuple[dict[str, float], dict[str, dict[str, list[int]]]]:
    """The samples of every worker of the cluster, merged (counters added up, gauges the highest),
    and per TaskManager the partitions its workers read, ``topic -> [partition, ...]``."""
    merged: dict[str, float] = {}
    reads: dict[str, dict[str, list[int]]] = {}
    for taskmanager, urls in settings.flink.worker_metrics_urls().items():
        reads[taskmanager] = {}
        for url in urls:
            try:
                samples = _job_metrics(url)
            except httpx.TransportError:
                continue  # a port of the pool that no worker holds
            for key, value in samples.items():
                is_counter = key.split("{", 1)[0].endswith("_total")
                merged[key] = merged.get(key, 0.0) + value if is_counter else max(merged.get(key, value), value)
                if key.startswith("engagement_source_lag_records{"):
                    labels = dict(part.split("=", 1) for part in key[key.index("{") + 1 : -1].split(","))
                    topic, partition = labels["topic"].strip('"'), int(labels["partition"].strip('"'))
                    partitions = reads[taskmanager].setdefault(topic, [])
                    if partition not in partitions:  # one series per lane that reads it
                        partitions.append(partition)
    for topics in reads.values():
        for partitions in topics.values():
            partitions.sort()
    return merged, reads


def _moving(settings: Settings, kafka: _Kafka, client: redis.Redis, errors: dict[str, str]) -> Sample:
    cdc = settings.cdc
    topics = [cdc.engagement_topic, cdc.content_topic, cdc.parked_topic]
    ends = {t: _errors_into(errors, "kafka", lambda t=t: kafka.ends(t)) or {} for t in topics}
    sinks: dict[str, Any] = {}
    for spec in sink_specs(settings):
        read = [topic_of(spec, settings)] + ([cdc.parked_topic] if spec.topic == "engagement" else [])
        sinks[spec.name] = _errors_into(
            errors, f"positions of {spec.name}", lambda s=spec, r=read: stored_positions(settings, client, s, r)
        )
    metrics, reads = None, None
    if on_cluster(settings):
        metrics, reads = _errors_into(errors, "metrics", lambda: _cluster_metrics(settings)) or (None, None)
    elif settings.metrics.port:
        metrics = _errors_into(errors, "metrics", lambda: _job_metrics(settings.metrics.url))
    return {
        "at": time.monotonic(),
        "wall": time.time(),
        "ends": ends,
        "stored": sinks,
        "metrics": metrics,
        "reads": reads,
    }


def _lock(client: redis.Redis, group: str) -> dict[str, Any] | None:
    raw = client.get(lock_key(group))
    if raw is None:
        return None
    host, pid = parse_holder(raw.decode())
    lock: dict[str, Any] = {"host": host, "pid": pid, "expires_in_s": max(0, int(client.pttl(lock_key(group)))) / 1000}
    # Restarts for a Redis that came back older (pipeline.supervisor.record_restart).
    restarts = {k.decode(): v.decode() for k, v in client.hgetall(restarts_key(group)).items()}
    if restarts:
        lock["restarts"] = restarts
    return lock


def _board_freshness(client: redis.Redis, settings: Settings) -> dict[str, Any] | None:
    raw = client.hgetall(board_key(settings.leaderboard.window_minutes) + ":updated")
    if not raw:
        return None
    fields = {k.decode(): int(float(v)) for k, v in raw.items()}
    now_ms = int(time.time() * 1000)
    return {
        "applied_ms": fields.get("applied_ms"),
        "commit_ts_ms": fields.get("commit_ts_ms"),
        "changes": fields.get("changes", 0),
        "age_s": None if "applied_ms" not in fields else max(0.0, (now_ms - fields["applied_ms"]) / 1000),
    }


def _bigquery_freshness(settings: Settings) -> dict[str, Any] | None:
    """The newest row of the current quarter's changelog: when it was written, and committed."""
    from sinks.bigquery_dataset import make_client
    from sinks.bigquery_tables import Quarter, changes_table_id, event_slot

    bq = settings.bigquery
    now = datetime.now(UTC)
    table = changes_table_id(bq, Quarter.of(now).suffix)
    # The partition filter keeps the scan to the last day's slots (and satisfies require_partition_filter).
    sql = (
        f"SELECT MAX(written_at) AS written_at, MAX(commit_ts) AS commit_ts FROM `{table}` "
        f"WHERE event_slot >= {event_slot(now - timedelta(days=1))}"
    )
    client = make_client(bq)
    try:
        rows = list(client.query(sql).result(timeout=30))
    finally:
        client.close()
    written, committed = (rows[0]["written_at"], rows[0]["commit_ts"]) if rows else (None, None)
    return {
        "table": table,
        "written_at": None if written is None else written.isoformat(),
        "commit_ts": None if committed is None else committed.isoformat(),
        "age_s": None if written is None else max(0.0, (now - written).total_seconds()),
    }


def read_once(settings: Settings, client: redis.Redis, errors: dict[str, str]) -> dict[str, Any]:
    """The parts read once: capture, the instance lock, breakers, freshness."""
    cdc = settings.cdc
    report: dict[str, Any] = {
        "connector": _errors_into(
            errors,
            "connect",
            lambda: read_connector(settings.connect.url, cdc.connector_name, **settings.connect.http_options()),
        ),
        "slot": _errors_into(
            errors, "postgres", lambda: read_slot(settings.postgres.conninfo(monitor=True), cdc.slot_name)
        ),
        "lock": _errors_into(errors, "redis", lambda: _lock(client, settings.pipeline.consumer_group)),
        "breakers": _errors_into(errors, "redis", lambda: BreakerBoard(client).read()) or {},
        "board": _errors_into(errors, "redis", lambda: _board_freshness(client, settings)),
        "bigquery": None,
    }
    if any(spec.name == "bigquery" for spec in sink_specs(settings)):
        report["bigquery"] = _errors_into(errors, "bigquery", lambda: _bigquery_freshness(settings))
    return report


def sample(settings: Settings, sleep: Callable[[float], None] = time.sleep) -> dict[str, Any]:
    """Everything ``make status`` shows, raw: ``first`` and ``second`` samples, the parts read once,
    the letters, and ``errors`` (what did not answer)."""
    errors: dict[str, str] = {}
    client = settings.redis.client(timeout_s=2.0, reader=True)
    kafka = _Kafka(settings)
    try:
        first = _moving(settings, kafka, client, errors)
        once = read_once(settings, client, errors)
        letters = {
            topic: _errors_into(errors, "kafka", lambda t=topic: kafka.letters(t, settings.status.dead_letter_scan))
            for topic in (settings.cdc.dlq_topic, settings.cdc.http_dlq_topic)
        }
        sleep(max(0.0, settings.status.sample_s - (time.monotonic() - first["at"])))
        second = _moving(settings, kafka, client, errors)
    finally:
        kafka.close()
        client.close()
    return {**once, "first": first, "second": second, "letters": letters, "errors": errors}
