"""``python -m infra.stack {up,down,status,logs,reset,register,provision,tail}``: the local stack's supervisor.

``make up``, ``make down``, ``make status`` and ``make logs`` call this. Errors the user can act on
(a port in use, a missing binary, a service that died during start-up) are printed as one clear
message with the last lines of that service's log, and exit with status 1.
"""

from __future__ import annotations

import argparse
import signal
import sys
import time
from collections import Counter
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaError, TopicPartition

from infra.process import StackError, tail
from infra.settings import Settings
from infra.stack.local import LocalStack


def _print(message: str) -> None:
    print(message, flush=True)


def _human_bytes(value: object) -> str:
    if not isinstance(value, int):
        return str(value)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(value) < 1024:
            return f"{value:.0f} {unit}"
        value = value / 1024  # type: ignore[assignment]
    return f"{value:.1f} TiB"


def cmd_status(stack: LocalStack, *, with_pipeline: bool = False, as_json: bool = False) -> int:
    """Print the stack's health; 1 when a service is unhealthy or capture is stopped, failed or
    lagging past its limits (the reasons are the last lines), else 0. ``with_pipeline`` (``make
    status``): then the pipeline's report (``python -m pipeline status``), which has the connector,
    the slot and the breakers in its own words, so the stack's part leaves them out; 1 also when
    it is unhealthy. ``as_json``: both reports as one JSON object, ``{"stack": ..., "pipeline": ...}``."""
    report = stack.status()
    pipeline = None
    if with_pipeline:
        from pipeline.status.health import report as pipeline_report
        from pipeline.status.read import sample

        pipeline = pipeline_report(sample(stack.settings), stack.settings)
    unhealthy = [n for n, i in report["services"].items() if i["state"] != "healthy"]
    problems = report.get("capture_problems", [])
    code = 1 if unhealthy or problems or (pipeline is not None and not pipeline["healthy"]) else 0
    if as_json:
        body = {"stack": report, **({"pipeline": pipeline} if with_pipeline else {})}
        print(orjson.dumps(body, option=orjson.OPT_INDENT_2 | orjson.OPT_NON_STR_KEYS).decode())
        return code
    _print_stack(report, details=not with_pipeline)
    if pipeline is not None:
        from pipeline.status.render import render

        _print("")
        _print(render(pipeline))
    return code


def _print_stack(report: dict[str, Any], *, details: bool) -> None:
    _print("services:")
    for name, info in report["services"].items():
        pid = info["pid"] or "-"
        _print(f"  {name:<13} {info['state']:<10} {info['address']:<20} pid {pid}")
    if "topics" in report:
        _print("topics:")
        for name, info in report["topics"].items():
            # A partition short of in-sync replicas (a broker down or catching up) or without a leader.
            short = "".join(
                f" {key.replace('_', '-')}={info[key]}" for key in ("under_replicated", "offline") if info.get(key)
            )
            _print(
                f"  {name:<45} partitions={info['partitions']:<3} cleanup.policy={info['cleanup.policy']}"
                f" replicas={info.get('replicas', '-')} min.insync={info.get('min.insync.replicas', '-')}{short}"
            )
    connector = report.get("connector") if details else None
    if connector:
        tasks = ", ".join(f"task {t['id']} {t['state']}" for t in connector.get("tasks", []))
        _print(f"connector: {connector['name']} {connector['connector']['state']} ({tasks or 'no tasks'})")
    elif details and report["services"]["connect"]["state"] == "healthy":
        _print("connector: not registered")
    slot = report.get("slot") if details else None
    if slot:
        lag_s = f" ({slot['lag_s']:.1f} s)" if slot.get("lag_s") is not None else ""
        _print(
            f"replication slot: {slot['slot']} active={slot['active']} wal_status={slot['wal_status']} "
            f"lag={_human_bytes(slot['lag_bytes'])}{lag_s} retained={_human_bytes(slot['retained_bytes'])}"
        )
    breakers = report.get("http_breakers") if details else None
    if breakers:
        _print("http sink circuit breakers (running pipelines, per sink instance):")
        for endpoint, entries in sorted(breakers.items()):
            for entry in sorted(entries, key=lambda e: e["instance"]):
                detail = f" last failure: {entry['detail']}" if entry["state"] != "closed" and entry["detail"] else ""
                _print(f"  {endpoint:<20} {entry['state']:<10} {entry['failures']} failure(s) in a row{detail}")
    elif details and report.get("http_breakers") is not None:
        _print("http sink circuit breakers: none published (no pipeline runs the HTTP sink)")
    problems = report.get("capture_problems", [])
    if problems:
        _print("capture: STOPPED or FAILED")
        for problem in problems:
            _print(f"  - {problem}")
    elif "capture_problems" in report:
        _print("capture: ok (connector and tasks RUNNING, slot active, lag within limits)")


def cmd_logs(stack: LocalStack, lines: int, service: str | None) -> int:
    for process in stack.processes:
        if service and process.name != service:
            continue
        _print(f"==> {process.log_file} <==")
        _print(tail(process.log_file, lines))
    return 0


def _read_recent(settings: Settings, topic: str, per_partition: int, timeout: float) -> list[tuple[int, int, Any]]:
    """The last ``per_partition`` records of every partition of ``topic``, decoded."""
    consumer = Consumer(
        settings.kafka.client_config(
            **{"group.id": "stack-tail", "enable.auto.commit": False, "enable.partition.eof": True}
        )
    )
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        assignment, pending = [], set()
        for partition in meta.partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=10)
            if high > low:
                assignment.append(TopicPartition(topic, partition, max(low, high - per_partition)))
                pending.add(partition)
        consumer.assign(assignment)
        records: list[tuple[int, int, Any]] = []
        deadline = time.monotonic() + timeout
        while pending and time.monotonic() < deadline:
            message = consumer.poll(0.2)
            if message is None:
                continue
            if message.error():
                if message.error().code() == KafkaError._PARTITION_EOF:
                    pending.discard(message.partition())
                continue
            value = orjson.loads(message.value()) if message.value() else None
            records.append((message.partition(), message.offset(), value))
        return records
    finally:
        consumer.close()


def cmd_tail(settings: Settings, count: int, timeout: float) -> int:
    """Show recent CDC envelopes of both topics: counts per operation and one line per sample."""
    found = 0
    for topic in (settings.cdc.content_topic, settings.cdc.engagement_topic):
        records = _read_recent(settings, topic, 50, timeout)
        found += len(records)
        ops = Counter("tombstone" if v is None else v.get("op") for _, _, v in records)
        _print(f"{topic}: last {len(records)} records, by operation {dict(ops)}")
        # One of each operation first, then the newest: the demo should show c, u, d and tombstones.
        firsts = {}
        for record in reversed(records):
            firsts.setdefault("tombstone" if record[2] is None else record[2].get("op"), record)
        samples = list(firsts.values())
        samples += [r for r in reversed(records) if r not in samples][: max(0, count - len(samples))]
        for partition, offset, value in samples[:count]:
            op = "tombstone" if value is None else value.get("op")
            row = (value or {}).get("after") or (value or {}).get("before") or {}
            fields = ("id", "content_id", "event_type", "duration_ms", "title", "length_seconds")
            summary = ", ".join(f"{k}={row[k]}" for k in fields if k in row)
            _print(f"  [{partition:>2}]@{offset:<7} {op:<9} {summary}")
    return 0 if found else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m infra.stack", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start every part in order and wait until healthy (idempotent)")
    up.add_argument("--no-connector", action="store_true", help="start Connect but do not register Debezium")
    sub.add_parser("down", help="stop every part (data is kept)")
    status = sub.add_parser("status", help="health, topics, connector state and replication slot lag")
    status.add_argument(
        "--with-pipeline", action="store_true", help="then the pipeline's report (make status): sinks, rates, freshness"
    )
    status.add_argument("--json", action="store_true", help="the report as JSON")
    logs = sub.add_parser("logs", help="last lines of each service's log")
    logs.add_argument("--lines", type=int, default=40)
    logs.add_argument(
        "--service",
        choices=["postgres", "redis", "bigquery", "http_receiver", "kafka", "kafka-2", "kafka-3", "connect"],
    )
    sub.add_parser("reset", help="delete connector and slot, stop everything, remove all data")
    sub.add_parser("register", help="(re)register the Debezium connector from infra/connectors/")
    sub.add_parser("provision", help="roles, schema, topics and connector on services already running (Docker Compose)")
    tail_cmd = sub.add_parser("tail", help="print recent CDC envelopes from the topics")
    tail_cmd.add_argument("--count", type=int, default=5)
    tail_cmd.add_argument("--timeout", type=float, default=15.0)
    args = parser.parse_args(argv)
    # `make status | head` should end quietly, not with a BrokenPipeError traceback.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)

    settings = Settings()
    stack = LocalStack(settings, log=_print)
    try:
        if args.command == "up":
            began = time.monotonic()
            _print(f"Starting the local stack (state in {settings.stack.dir})")
            stack.up(connector=not args.no_connector)
            _print(f"Stack is up in {time.monotonic() - began:.1f} s. `make status` shows its health.")
            return 0
        if args.command == "down":
            stack.down()
            return 0
        if args.command == "status":
            return cmd_status(stack, with_pipeline=args.with_pipeline, as_json=args.json)
        if args.command == "logs":
            return cmd_logs(stack, args.lines, args.service)
        if args.command == "reset":
            stack.reset()
            return 0
        if args.command == "register":
            stack.connect.register()
            stack.connect.wait_running(settings.stack.start_timeout_s)
            _print("connector RUNNING")
            return 0
        if args.command == "provision":
            stack.provision()
            return 0
        if args.command == "tail":
            return cmd_tail(settings, args.count, args.timeout)
    except StackError as exc:
        _print(f"error: {exc}")
        return 1
    return 2


if __name__ == "__main__":
    sys.exit(main())
