"""Does the pipeline scale out on a Flink session cluster? Drain with 1 and 2 TaskManagers, and Prism.

    make bench-flink                                       # about 25 minutes
    python -m loadtest.bench_flink drain --events 2000000 --rounds 2
    python -m loadtest.bench_flink latency --rate 3333 --duration 60

- drain: the engagement topic holds at least ``--events`` Debezium envelopes (the generator tops
  it up). Each round drains all of it from offset 0 with the streaming job (the Redis lanes, the
  Redis keys cleared first; stopped once every partition is stored to its end) on the cluster with
  1 TaskManager, then with 2, then on Prism, alternating (streaming, because that is how the job
  runs);
  each TaskManager has one slot and one Python worker, and the job's parallelism is the number of
  TaskManagers. Rate: from the first to the last position stored in Redis. CPU: every process of
  the pipeline side (the supervisor's job server and job process, the JobManager, the TaskManagers,
  the worker pools and their workers; for Prism, Prism and the job process), as CPU seconds per
  million events; peak RSS summed over them. Then the medians and the ratio 2 TM / 1 TM.
- latency: commit -> ``top_engagement:10min`` at ``--rate`` events/s (``loadtest.bench_pipeline``'s
  probes), on the 2-TaskManager cluster, then on Prism.

The benchmark owns the cluster: it stops a running one, starts each size itself and stops it at the
end. It needs the dev stack (``make up``) and ``make flink-bootstrap``; run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass

from infra.process import stop_group
from infra.settings import REPO_ROOT, Settings
from infra.stack.flink_cluster import FlinkCluster
from infra.stack.kafka_admin import end_offsets
from infra.stack.local import LocalStack
from loadtest.bench_harness import children, generator, say, stored
from loadtest.bench_pipeline import forget_positions, latency_phase
from loadtest.procstats import ProcessSampler, machine


@dataclass
class Drain:
    label: str
    events_per_s: float
    cpu_s_per_million: float
    peak_rss_mib: float


def cluster_env(settings: Settings, taskmanagers: int, readers: int = 16) -> dict[str, str]:
    flink = settings.flink
    return {
        "PIPELINE_RUNNER": "flink",
        "PIPELINE_READERS": str(readers),
        "FLINK_MASTER": f"{flink.host}:{flink.rest_port}",
        "FLINK_ENVIRONMENT": "external",
        "FLINK_TASKMANAGERS": str(taskmanagers),
        "FLINK_SLOTS": "1",
        "FLINK_PARALLELISM": str(taskmanagers),
    }


def start_cluster(settings: Settings, taskmanagers: int) -> FlinkCluster:
    cluster = FlinkCluster(settings)
    cluster.down()
    cluster.up(taskmanagers, log=lambda _: None)
    return cluster


def cluster_pids(cluster: FlinkCluster, taskmanagers: int) -> dict[str, int]:
    pids = {}
    for process in cluster.processes(taskmanagers):
        pid = process.pid()
        if pid is not None:
            pids[process.name.removeprefix("flink-")] = pid  # a pool's tree includes its workers
    return pids


def drain(settings: Settings, label: str, env: dict[str, str], extra_pids: dict[str, int], total: int) -> Drain:
    client = settings.redis.client()
    topic = settings.cdc.engagement_topic
    forget_positions(client)
    sampler = ProcessSampler(dict(extra_pids))
    log = open(REPO_ROOT / ".stack" / "logs" / f"bench-flink-{label}.log", "w")  # noqa: SIM115
    ends = end_offsets(settings.kafka, topic)
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline"],
        cwd=REPO_ROOT,
        env={**os.environ, "PIPELINE_SINKS": "redis", **env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    first = None
    deadline = time.monotonic() + 900
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            positions = stored(client, topic)
            done = sum(positions.values())
            if first is None and done > 0:
                first = (time.monotonic(), done)
                sampler = ProcessSampler({**extra_pids, **children(proc.pid), "supervisor": proc.pid})
            if all(positions.get(p, 0) >= end for p, end in ends.items()):
                break
            sampler.sample()
            time.sleep(0.05)
        last = time.monotonic()
        sampler.sample(force=True)
    finally:
        stop_group(proc)
        log.close()
    done = sum(stored(client, topic).values())
    if first is None or done < total:
        raise SystemExit(f"{label}: the drain failed (exit {proc.returncode}, {done:,} of {total:,} stored)")
    events = done - first[1]
    cpu = sum(sampler.cpu_last[n] - sampler.cpu_start[n] for n in sampler.pids)
    result = Drain(label, events / (last - first[0]), cpu / events * 1e6, sum(sampler.peak_rss.values()))
    say(
        f"  {label:<8} {result.events_per_s:>9,.0f} events/s  {result.cpu_s_per_million:6.1f} CPU s per 1M events"
        f"  peak RSS {result.peak_rss_mib:,.0f} MiB"
    )
    per_process = {n: (sampler.cpu_last[n] - sampler.cpu_start[n]) / events * 1e6 for n in sampler.pids}
    say("    CPU s per 1M events: " + ", ".join(f"{n} {v:.1f}" for n, v in sorted(per_process.items()) if v >= 0.05))
    return result


def cmd_drain(settings: Settings, args: argparse.Namespace) -> None:
    topic = settings.cdc.engagement_topic
    have = sum(end_offsets(settings.kafka, topic).values())
    if have < args.events:
        say(f"topping the topic up with {args.events - have:,} events (it holds {have:,})")
        generator("--burst", str(args.events - have)).communicate()
        time.sleep(5)
    total = sum(end_offsets(settings.kafka, topic).values())
    say(f"{machine()}; {topic} holds {total:,} envelopes; {args.rounds} round(s), alternating")
    configs = args.configs.split(",")
    results: dict[str, list[Drain]] = {("prism" if c == "prism" else f"{c} TM"): [] for c in configs}
    try:
        for round_ in range(1, args.rounds + 1):
            say(f"round {round_}")
            for config in configs:
                if config == "prism":
                    FlinkCluster(settings).down()
                    results["prism"].append(drain(settings, "prism", {"PIPELINE_RUNNER": "prism"}, {}, total))
                    continue
                taskmanagers = int(config)
                cluster = start_cluster(settings, taskmanagers)
                pids = cluster_pids(cluster, taskmanagers)
                label = f"{taskmanagers} TM"
                env = cluster_env(settings, taskmanagers, args.readers)
                results[label].append(drain(settings, label, env, pids, total))
    finally:
        FlinkCluster(settings).down()
    say("| run | events/s (each round) | median | CPU s per 1M events | peak RSS MiB |")
    say("|---|---|---|---|---|")
    medians = {}
    for label, runs in results.items():
        medians[label] = statistics.median(r.events_per_s for r in runs)
        rates = " / ".join(f"{r.events_per_s:,.0f}" for r in runs)
        cpu = statistics.median(r.cpu_s_per_million for r in runs)
        rss = max(r.peak_rss_mib for r in runs)
        say(f"| {label} | {rates} | {medians[label]:,.0f} | {cpu:.1f} | {rss:,.0f} |")
    if "1 TM" in medians and "2 TM" in medians:
        say(f"RATIO 2 TM / 1 TM = {medians['2 TM'] / medians['1 TM']:.2f}")
    if "prism" in medians and "2 TM" in medians:
        say(f"RATIO 2 TM / prism = {medians['2 TM'] / medians['prism']:.2f}")


def cmd_latency(settings: Settings, args: argparse.Namespace) -> None:
    stack = LocalStack(settings)
    try:
        start_cluster(settings, 2)
        say("the 2-TaskManager cluster:")
        latency_phase(settings, stack, args.rate, args.duration, extra_env=cluster_env(settings, 2))
    finally:
        FlinkCluster(settings).down()
    say("Prism:")
    latency_phase(settings, stack, args.rate, args.duration, extra_env={"PIPELINE_RUNNER": "prism"})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_flink", description=(__doc__ or "").split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    drain_parser = sub.add_parser("drain")
    drain_parser.add_argument("--events", type=int, default=2_000_000)
    drain_parser.add_argument("--rounds", type=int, default=2)
    drain_parser.add_argument(
        "--configs", default="1,2,prism", help="what each round drains on, in order: TaskManager counts and prism"
    )
    drain_parser.add_argument("--readers", type=int, default=16, help="PIPELINE_READERS on the cluster (default 16)")
    latency = sub.add_parser("latency")
    latency.add_argument("--rate", type=int, default=3333)
    latency.add_argument("--duration", type=float, default=60)
    args = parser.parse_args(argv)
    settings = Settings()
    {"drain": cmd_drain, "latency": cmd_latency}[args.command](settings, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
