"""Debezium capture on the local stack: burst throughput and commit-to-Kafka latency.

1. Burst: ``--burst`` rows (100,000) written by the generator as fast as it can; capture rate is
   rows / (time the last change is read from Kafka - commit time of the first row), where commit
   time is Debezium's ``source.ts_ms`` (Postgres' commit timestamp). Median of ``--repeat`` runs.
2. Latency: the generator at ``--rate`` rows a minute (seed 004's 200,000 = 3,333/s) for
   ``--duration`` seconds; for every insert, the time from its commit (``source.ts_ms``) until this
   consumer reads it from Kafka. p50/p95/p99/max. Then the same at a trickle (10 rows/s).

Writer and reader are separate processes; the stack must be up (``make up``). CPU (in cores) and
peak RSS of Postgres, Kafka, Connect and the generator are printed for each phase.

    make bench-cdc      # or: python -m loadtest.bench_cdc --burst 100000 --repeat 3 --duration 60
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

import orjson
from confluent_kafka import Consumer, TopicPartition

from infra.settings import REPO_ROOT, Settings
from infra.stack.kafka_admin import end_offsets
from infra.stack.local import LocalStack
from loadtest.procstats import ProcessSampler, describe, machine

NO_CHANGES = {
    "GENERATOR_EVENT_UPDATE_SHARE": "0",
    "GENERATOR_EVENT_DELETE_SHARE": "0",
    "GENERATOR_CONTENT_UPDATE_SHARE": "0",
}


def tail_consumer(settings: Settings) -> Consumer:
    """A consumer on every partition of the engagement topic, positioned at the current end."""
    consumer = Consumer(
        settings.kafka.client_config(**{"group.id": "bench-cdc", "enable.auto.commit": False, "fetch.wait.max.ms": 5})
    )
    topic = settings.cdc.engagement_topic
    consumer.assign([TopicPartition(topic, p, end) for p, end in end_offsets(settings.kafka, topic).items()])
    return consumer


def start_generator(args: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, **NO_CHANGES, **(extra_env or {})}
    return subprocess.Popen(
        [sys.executable, "-m", "generator", *args],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stack_pids(stack: LocalStack) -> dict[str, int]:
    pids = {}
    for process in (stack.postgres.process, stack.kafka.process, stack.connect.process):
        pid = process.pid()
        if pid is None:
            raise SystemExit(f"{process.name} is not running: start the stack with `make up`")
        pids[process.name] = pid
    return pids


def burst_run(
    settings: Settings, stack: LocalStack, rows: int, *, drain: bool = False
) -> tuple[float, float, list[str]]:
    """Capture rate of one burst. With ``drain`` the connector is paused while the rows are
    written and resumed afterwards: the rate then measures Debezium alone, reading a backlog."""
    consumer = tail_consumer(settings)
    consumer.consume(1, timeout=1.0)  # join the partitions before the first commit
    if drain:
        stack.connect.pause()
        output = start_generator(["--burst", str(rows)]).communicate(timeout=600)[0]
    sampler = ProcessSampler(stack_pids(stack))
    if drain:
        resumed = time.time()
        stack.connect.resume()
    else:
        generator = start_generator(["--burst", str(rows)])
        sampler.add("generator", generator.pid)
    seen, first_commit_ms, last_commit_ms, last_read = 0, None, 0, 0.0
    deadline = time.monotonic() + 600
    while seen < rows and time.monotonic() < deadline:
        for message in consumer.consume(2000, timeout=0.005):
            if message.error() or message.value() is None:
                continue
            envelope = orjson.loads(message.value())
            if envelope["op"] != "c":
                continue
            commit_ms = envelope["source"]["ts_ms"]
            first_commit_ms = commit_ms if first_commit_ms is None else min(first_commit_ms, commit_ms)
            last_commit_ms = max(last_commit_ms, commit_ms)
            seen += 1
            last_read = time.time()
        sampler.sample()
    if not drain:
        output = generator.communicate(timeout=60)[0]
    consumer.close()
    if seen < rows:
        raise SystemExit(f"only {seen:,} of {rows:,} rows reached Kafka in time")
    capture_s = last_read - (resumed if drain else first_commit_ms / 1000)
    tail_s = last_read - last_commit_ms / 1000
    summary = [line for line in output.splitlines() if line.startswith("burst:")]
    return rows / capture_s, tail_s, [*summary[-1:], *sampler.report()]


def latency_run(
    settings: Settings, stack: LocalStack, per_minute: int, duration: float
) -> tuple[list[float], list[str]]:
    consumer = tail_consumer(settings)
    consumer.consume(1, timeout=1.0)
    sampler = ProcessSampler(stack_pids(stack))
    generator = start_generator(["--rate", str(per_minute), "--duration", str(duration)])
    sampler.add("generator", generator.pid)
    warmup_until = time.time() + 2.0
    latencies: list[float] = []
    while generator.poll() is None:
        for message in consumer.consume(2000, timeout=0.005):
            now = time.time()
            if message.error() or message.value() is None:
                continue
            envelope = orjson.loads(message.value())
            if envelope["op"] == "c" and now > warmup_until:
                latencies.append(now * 1000 - envelope["source"]["ts_ms"])
        sampler.sample()
    # Drain what is still in flight after the generator's last commit.
    for message in consumer.consume(10_000, timeout=2.0):
        if message.value() is not None:
            envelope = orjson.loads(message.value())
            if envelope["op"] == "c":
                latencies.append(time.time() * 1000 - envelope["source"]["ts_ms"])
    consumer.close()
    summary = [
        line for line in (generator.stdout.read() if generator.stdout else "").splitlines() if "continuous:" in line
    ]
    return latencies, [*summary[-1:], *sampler.report()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--burst", type=int, default=100_000, help="rows per burst")
    parser.add_argument("--repeat", type=int, default=3, help="bursts (the median is reported)")
    parser.add_argument("--rate", type=int, default=200_000, help="rows per minute for the latency run")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds of the latency run")
    parser.add_argument("--skip-trickle", action="store_true", help="skip the 10 rows/s latency run")
    args = parser.parse_args(argv)

    settings = Settings()
    stack = LocalStack(settings)
    print(machine())
    cdc = settings.cdc
    print(f"Debezium poll.interval.ms={cdc.poll_interval_ms}, engagement partitions={cdc.engagement_partitions}")

    rates = []
    for run in range(1, args.repeat + 1):
        rate, tail_s, lines = burst_run(settings, stack, args.burst)
        rates.append(rate)
        print(
            f"burst {run}: {args.burst:,} rows captured at {rate:,.0f} rows/s (last commit -> on Kafka {tail_s:.2f} s)"
        )
        for line in lines:
            print(f"    {line}")
    print(
        f"CAPTURE THROUGHPUT ({args.burst:,}-row burst): median {statistics.median(rates):,.0f} rows/s "
        f"(min {min(rates):,.0f}, max {max(rates):,.0f}, {len(rates)} runs)"
    )

    drains = []
    for run in range(1, args.repeat + 1):
        rate, _, lines = burst_run(settings, stack, args.burst, drain=True)
        drains.append(rate)
        print(f"backlog {run}: {args.burst:,} rows written with the connector paused, drained at {rate:,.0f} rows/s")
        for line in lines[1:]:
            print(f"    {line}")
    print(
        f"CAPTURE THROUGHPUT (draining a {args.burst:,}-row backlog): median {statistics.median(drains):,.0f} rows/s "
        f"(min {min(drains):,.0f}, max {max(drains):,.0f})"
    )

    latencies, lines = latency_run(settings, stack, args.rate, args.duration)
    print(f"COMMIT -> KAFKA at {args.rate / 60:,.0f} rows/s for {args.duration:g} s: {describe(latencies)}")
    for line in lines:
        print(f"    {line}")
    if not args.skip_trickle:
        latencies, lines = latency_run(settings, stack, 600, 20.0)
        print(f"COMMIT -> KAFKA at 10 rows/s for 20 s: {describe(latencies)}")
        for line in lines:
            print(f"    {line}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
