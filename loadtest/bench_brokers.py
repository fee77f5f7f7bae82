"""What three Kafka brokers cost here: start-up, memory and CPU against one, at the fault suite's load.

    flock /tmp/engagement-stack.lock .venv/bin/python -m loadtest.bench_brokers   # 1 and 3 brokers, ~5 min

For each broker count, on the fault suite's own stack (``loadtest.fault_stack``: ``.stack-faults/``,
ports plus 200, reset before and after): the stack is started from nothing and Kafka's part of the
start is timed (formatting the storage, then every broker ready); the catalogue is seeded, the
streaming pipeline runs with the Redis, BigQuery and HTTP sinks, and the generator writes ``--rate``
events/s for ``--duration`` s while the brokers' and Connect's CPU and peak RSS are sampled from /proc
(from ``WARM_UP_S`` into the load to its end). Prints one table; docs/operations.md keeps one run's.
"""

from __future__ import annotations

import argparse
import time

from infra.stack.local import LocalStack
from loadtest.fault_stack import STACK_DIR, Processes, fault_settings
from loadtest.procstats import ProcessSampler, machine

WARM_UP_S = 10.0


def measure(brokers: int, rate: int, duration: float) -> dict[str, str]:
    settings = fault_settings(brokers=brokers)
    stack = LocalStack(settings)
    procs = Processes(settings, STACK_DIR / "runs" / f"bench-brokers-{brokers}")
    try:
        stack.reset()
        began = time.monotonic()
        stack.kafka.write_config()
        stack.kafka.ensure_formatted()
        formatted = time.monotonic() - began
        stack.kafka.start(settings.stack.start_timeout_s)
        kafka_up = time.monotonic() - began
        stack.up()
        if procs.generator("--seed-only", "--seed", "14").wait(120) != 0:
            raise RuntimeError("seeding the catalogue failed")
        procs.pipeline()
        time.sleep(12)  # Prism, job submission, the content snapshot reaching the join
        gen = procs.generator("--rate", str(rate * 60), "--duration", str(duration), "--seed", "15")
        time.sleep(WARM_UP_S)
        pids = {p.name: p.pid() for p in [*stack.kafka.processes, stack.connect.process]}
        sampler = ProcessSampler({name: pid for name, pid in pids.items() if pid is not None})
        sampler.sample_in_background()
        gen.wait(duration + 120)
        lines = sampler.report()
        kafka = [name for name in sampler.pids if name.startswith("kafka")]
        elapsed = time.monotonic() - sampler.started
        cores = sum(sampler.cpu_last[n] - sampler.cpu_start[n] for n in kafka) / elapsed
        peak_rss = sum(sampler.peak_rss[n] for n in kafka)
        return {
            "brokers": str(brokers),
            "format": f"{formatted:.1f} s",
            "Kafka ready": f"{kafka_up:.1f} s",
            "Kafka CPU": f"{cores:.2f} cores",
            "Kafka peak RSS": f"{peak_rss:,.0f} MiB",
            "Connect CPU": f"{(sampler.cpu_last['connect'] - sampler.cpu_start['connect']) / elapsed:.2f} cores",
            "detail": "; ".join(" ".join(line.split()) for line in lines),
        }
    finally:
        procs.stop_all()
        stack.reset()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_brokers", description=__doc__.split("\n")[0])
    parser.add_argument("--brokers", type=int, choices=(1, 3), action="append", help="default: 1 and 3")
    parser.add_argument("--rate", type=int, default=1500, help="generator events per second (default 1,500)")
    parser.add_argument("--duration", type=float, default=40, help="seconds of load (default 40)")
    args = parser.parse_args(argv)
    print(f"{machine()}; {args.rate:,} events/s for {args.duration:g} s", flush=True)
    rows = [measure(n, args.rate, args.duration) for n in args.brokers or (1, 3)]
    header = list(rows[0])
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join(row[h] for h in header) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
