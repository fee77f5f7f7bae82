"""The BigQuery lane's own ceiling, apart from the emulator: ``python -m loadtest.bench_bigquery ceiling``.

    python -m loadtest.bench_bigquery ceiling --events 400000 --rounds 2

A null BigQuery (``loadtest.null_bigquery``: answers REST and Storage Write, counts the rows, keeps
none) takes bounded runs with ``PIPELINE_SINKS=bigquery`` over the first ``--events`` envelopes of
the engagement topic (``PIPELINE_STOP_OFFSETS``), each under a consumer group of its own (removed
after), so no run moves the stack's own BigQuery positions. The write modes alternate for
``--rounds``. Per run: rows/s at the endpoint from the first sample with rows to the first with all
of them, the CPU over that window of the job (rows/s per core and per worker process), of Prism and
of the endpoint, and the requests with their mean size; then the medians per mode.

Run on a quiet machine with the stack up (``make up``); the emulator is not used.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx
from confluent_kafka import TopicPartition
from confluent_kafka.admin import OffsetSpec

from infra.process import port_open, stop_group
from infra.settings import REPO_ROOT, Settings
from infra.stack.kafka_admin import admin_client, end_offsets
from infra.stack.local import LocalStack
from loadtest.bench_harness import children, say, stack_sampler
from loadtest.bench_pipeline import start_bounded_drain
from loadtest.null_bigquery import GRPC_OFFSET
from loadtest.procstats import children_map


@dataclass(frozen=True)
class Ceiling:
    """One bounded run against the null endpoint, over the window from its first row to its last."""

    rows: int  # in the window
    run_rows: int  # at the endpoint over the whole run (the window's first sample already had some)
    seconds: float
    cores: dict[str, float]  # CPU cores of each sampled process over the window
    workers: int  # SDK harness processes of the job
    requests: int  # insertAll or AppendRows requests of the whole run
    request_bytes: int
    peak_rss_mib: float

    @property
    def rate(self) -> float:
        return self.rows / self.seconds

    @property
    def per_core(self) -> float:
        return self.rate / self.cores["job"] if self.cores["job"] else 0.0


def first_offsets(settings: Settings, topic: str, events: int) -> dict[int, tuple[int, int]]:
    """``{partition: (first offset, stop offset)}``: about ``events`` envelopes in all, from each
    partition's start, spread evenly (fewer where a partition holds fewer)."""
    ends = end_offsets(settings.kafka, topic)
    asked = {TopicPartition(topic, p): OffsetSpec.earliest() for p in ends}
    admin = admin_client(settings.kafka)  # held until the futures resolve: they die with the client
    starts = {tp.partition: f.result(timeout=30).offset for tp, f in admin.list_offsets(asked).items()}
    share = -(-events // len(ends))
    return {p: (starts[p], min(ends[p], starts[p] + share)) for p in sorted(ends)}


@contextmanager
def null_endpoint(port: int) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    """``loadtest.null_bigquery`` in a process of its own (its CPU is measured apart)."""
    for taken in (port, port + GRPC_OFFSET):
        if port_open("127.0.0.1", taken):
            raise SystemExit(f"port {taken} is taken: choose another with --port")
    log = open(REPO_ROOT / ".stack" / "logs" / "null-bigquery.log", "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadtest.null_bigquery", "--port", str(port)],
        cwd=REPO_ROOT,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while not port_open("127.0.0.1", port) or not port_open("127.0.0.1", port + GRPC_OFFSET):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"the null endpoint did not start (see {log.name})")
            time.sleep(0.1)
        yield proc, url
    finally:
        stop_group(proc)
        log.close()


def harness_count(job_pid: int) -> int:
    """SDK harness processes under the job; 1 when the harness runs in the job process (LOOPBACK)."""
    tree = children_map()
    found, stack = 0, list(tree.get(job_pid, []))
    while stack:
        pid = stack.pop()
        stack.extend(tree.get(pid, []))
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmd:
                found += b"sdk_worker" in cmd.read()
        except OSError:
            continue
    return max(1, found)


def drop_groups(settings: Settings, prefix: str) -> None:
    """The run's consumer groups (the sinks' positions, the lanes' monitoring commits)."""
    admin = admin_client(settings.kafka)
    groups = [g.group_id for g in admin.list_consumer_groups().result().valid if g.group_id.startswith(prefix)]
    for future in admin.delete_consumer_groups(groups).values() if groups else ():
        future.result()


def endpoint_counts(url: str, kind: str) -> dict[str, int]:
    """Requests, rows and bytes of ``kind`` (insert_all, append_rows) the null endpoint has taken."""
    counts: dict[str, int] = httpx.get(f"{url}/stats", timeout=10).raise_for_status().json()[kind]
    return counts


def ceiling_round(
    settings: Settings, stack: LocalStack, endpoint: subprocess.Popen[bytes], url: str, mode: str, stops: str
) -> Ceiling:
    group = f"bench-bigquery-ceiling-{uuid.uuid4().hex[:8]}"
    env = {
        "PIPELINE_SINKS": "bigquery",
        "PIPELINE_CONSUMER_GROUP": group,
        "PIPELINE_STOP_OFFSETS": stops,
        "BIGQUERY_WRITE_MODE": mode,
        "BIGQUERY_EMULATOR_HOST": url,
    }
    kind = "insert_all" if mode == "insert_all" else "append_rows"
    before = endpoint_counts(url, kind)
    sampler = stack_sampler(stack)
    sampler.add("null_bigquery", endpoint.pid)
    proc = start_bounded_drain(env, "bench-bigquery-ceiling.log")
    series: list[tuple[float, int, dict[str, float]]] = []  # (time, rows at the endpoint, CPU s per process)
    workers = 1
    try:
        while proc.poll() is None:
            rows = endpoint_counts(url, kind)["rows"] - before["rows"]
            if rows and not series:
                for name, pid in children(proc.pid).items():
                    sampler.add(name, pid)
                workers = harness_count(sampler.pids["job"])
            if series or rows:
                sampler.sample(force=True)
                series.append((time.monotonic(), rows, sampler.cpu_seconds()))
            time.sleep(0.5)
    finally:
        stop_group(proc)
        drop_groups(settings, group)
    after = endpoint_counts(url, kind)
    if proc.returncode != 0 or not series:
        raise SystemExit(f"bounded run failed (exit {proc.returncode}; .stack/logs/bench-bigquery-ceiling.log)")
    end = next(sample for sample in series if sample[1] == series[-1][1])  # the first sample with every row
    start = series[0]
    seconds = end[0] - start[0]
    cores = {name: (end[2][name] - start[2][name]) / seconds for name in end[2]}
    return Ceiling(
        rows=end[1] - start[1],
        run_rows=after["rows"] - before["rows"],
        seconds=seconds,
        cores=cores,
        workers=workers,
        requests=after["requests"] - before["requests"],
        request_bytes=after["bytes"] - before["bytes"],
        peak_rss_mib=sampler.peak_rss["job"],
    )


def show(c: Ceiling) -> str:
    return (
        f"{c.rate:,.0f} rows/s ({c.rows:,} rows in {c.seconds:.1f} s, {c.run_rows:,} in the run);"
        f" job {c.cores['job']:.2f} cores: {c.per_core:,.0f} rows/s per core,"
        f" {c.rate / c.workers:,.0f} rows/s per worker process ({c.workers});"
        f" prism {c.cores.get('prism', 0.0):.2f}, null endpoint {c.cores['null_bigquery']:.2f} cores;"
        f" {c.requests:,} requests, mean {c.request_bytes / max(1, c.requests) / 1024:,.0f} KiB,"
        f" {c.rows / max(1, c.requests):,.0f} rows each; job peak RSS {c.peak_rss_mib:,.0f} MiB"
    )


def cmd_ceiling(settings: Settings, stack: LocalStack, args: argparse.Namespace) -> None:
    topic = settings.cdc.engagement_topic
    ranges = first_offsets(settings, topic, args.events)
    events = sum(stop - first for first, stop in ranges.values())
    if events < args.events:
        say(f"({topic} holds {events:,} envelopes from its start, fewer than --events: `make up` fills it)")
    stops = json.dumps({f"{topic}:{p}": stop for p, (_, stop) in ranges.items()})
    say(f"{events:,} envelopes of {topic} per round ({len(ranges)} partitions), PIPELINE_SINKS=bigquery")
    modes = args.modes.split(",")
    results: dict[str, list[Ceiling]] = {mode: [] for mode in modes}
    with null_endpoint(args.port) as (endpoint, url):
        for n in range(1, args.rounds + 1):
            for mode in modes:
                result = ceiling_round(settings, stack, endpoint, url, mode, stops)
                results[mode].append(result)
                say(f"  round {n} {mode}: {show(result)}")
    for mode, runs in results.items():
        rate = statistics.median(r.rate for r in runs)
        say(
            f"BIGQUERY CEILING ({mode}, null endpoint, median of {len(runs)}): {rate:,.0f} rows/s;"
            f" {statistics.median(r.rate / r.workers for r in runs):,.0f} rows/s per worker process;"
            f" job {statistics.median(r.cores['job'] for r in runs):.2f} cores,"
            f" {statistics.median(r.per_core for r in runs):,.0f} rows/s per core;"
            f" null endpoint {statistics.median(r.cores['null_bigquery'] for r in runs):.2f} cores;"
            f" {statistics.median(r.requests for r in runs):,.0f} requests of"
            f" {statistics.median(r.request_bytes / max(1, r.requests) for r in runs) / 1024:,.0f} KiB"
        )
