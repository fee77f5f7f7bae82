"""The HTTP sink against the local receiver: throughput, commit -> received, and the board's cost.

    make bench-http                                        # all three, about 12 minutes
    python -m loadtest.bench_http throughput --events 200000
    python -m loadtest.bench_http latency --rate 3333 --duration 120
    python -m loadtest.bench_http outage --rate 3333 --duration 120 --outage 60

Every phase posts to one endpoint that takes every change (``HTTP_SINK_URL``: ``default``), with
the sink's default batching (500 changes per POST, 4 POSTs in flight) unless ``HTTP_SINK_*`` says
otherwise; the HTTP sink starts each phase at the topic's end.

- ``throughput``: a burst of ``--events`` rows, then a bounded run with the HTTP lane only:
  changes/s and requests/s through the sink, and the CPU of the job against the receiver's.
- ``latency``: a streaming run of ``PIPELINE_SINKS=redis,http`` at ``--rate`` events/s with the
  board's probes: commit -> received at the receiver, for every change (the receiver subtracts
  Debezium's commit timestamp from its arrival time; same clock), and commit -> on the board.
- ``outage``: two streaming runs of ``redis,http`` at ``--rate``, the receiver up in the first and
  down (connection refused) from t=``--outage-start`` for ``--outage`` s in the second: the board's
  p99 over that window in both. The breaker opens, the changes go to the HTTP dead-letter topic.

Run on a quiet machine with the stack up (``make up``).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from infra.http_receiver.client import ReceiverClient
from infra.settings import Settings
from infra.stack.local import LocalStack
from loadtest.bench_harness import say
from loadtest.bench_pipeline import burst_then_drain, latency_phase
from loadtest.procstats import describe, machine, percentile
from sinks.kafka_positions import KafkaPositions, SinksLag, group_id

SINK = "http_default"  # HTTP_SINK_URL alone: one endpoint, "default"


def sink_env(settings: Settings, sinks: str) -> dict[str, str]:
    return {
        "PIPELINE_SINKS": sinks,
        "HTTP_SINK_URL": f"{settings.http_receiver.url}/ingest/bench",
        "HTTP_SINK_ROUTES_FILE": "",
    }


def positions(settings: Settings) -> KafkaPositions:
    return KafkaPositions(settings.kafka.client_config(), group_id(settings.pipeline.consumer_group, SINK))


def start_at_the_end(settings: Settings) -> dict[int, int]:
    store = positions(settings)
    try:
        return store.start_at_end(settings.cdc.engagement_topic)
    finally:
        store.close()


@contextmanager
def sink_lag(settings: Settings) -> Iterator[Callable[[], int]]:
    """The HTTP sink's lag, polled through one consumer for the whole run."""
    client = settings.kafka.client_config()
    sinks = SinksLag(client, settings.pipeline.consumer_group, {SINK: settings.cdc.engagement_topic})
    try:
        yield lambda: sinks.now()[SINK]
    finally:
        sinks.close()


def cmd_throughput(settings: Settings, stack: LocalStack, receiver: ReceiverClient, args: argparse.Namespace) -> None:
    start_at_the_end(settings)
    receiver.reset()
    started: list[int] = []  # requests the receiver had when the sink started moving
    with sink_lag(settings) as lag:
        total, elapsed, sampler = burst_then_drain(
            stack,
            args.events,
            lag,
            sink_env(settings, "http"),
            "bench-http.log",
            on_start=lambda: started.append(receiver.stats()["requests"]),
        )
    stats = receiver.stats()
    requests = stats["requests"] - started[0]
    say(
        f"HTTP THROUGHPUT: {total / elapsed:,.0f} changes/s, {requests / elapsed:,.1f} requests/s "
        f"({stats['unique']:,} changes received, {stats['duplicates']:,} duplicates, {stats['requests']:,} requests)"
    )
    for line in sampler.report():
        say(f"  {line}")


def cmd_latency(settings: Settings, stack: LocalStack, receiver: ReceiverClient, args: argparse.Namespace) -> None:
    window: dict[str, int] = {}

    def before_load() -> None:
        receiver.reset()
        window["since_ms"] = int(time.time() * 1000)

    start_at_the_end(settings)
    with sink_lag(settings) as lag:
        prober = latency_phase(
            settings,
            stack,
            args.rate,
            args.duration,
            extra_env=sink_env(settings, "redis,http"),
            before_load=before_load,
            linger=lambda: lag() == 0,
        )
    stats = receiver.stats(since_ms=window["since_ms"])
    received = stats["lag_ms"]
    say(
        f"  COMMIT -> RECEIVED at {args.rate:,} events/s: p50 {received['p50']:.0f} ms, p90 {received['p90']:.0f} ms, "
        f"p99 {received['p99']:.0f} ms, max {received['max']:.0f} ms over {received['count']:,} changes "
        f"({stats['requests']:,} requests, {stats['duplicates']:,} duplicates)"
    )
    steady = receiver.stats(since_ms=window["since_ms"] + 15_000)["lag_ms"]
    say(
        f"  of which after the first 15 s: p50 {steady['p50']:.0f} ms, p99 {steady['p99']:.0f} ms, "
        f"max {steady['max']:.0f} ms over {steady['count']:,} changes (a fresh stack's capture warms up first)"
    )
    say(f"  commit -> on the board in the same run: {describe(prober.latencies, 'probes')}")
    late = [ms for t, ms in prober.timed if t >= 15]
    say(f"    of which after the first 15 s: {describe(late, 'probes')}")


def cmd_outage(settings: Settings, stack: LocalStack, receiver: ReceiverClient, args: argparse.Namespace) -> None:
    start, end = args.outage_start, args.outage_start + args.outage
    results = {}
    for phase, down in (("receiver up", False), (f"receiver down t={start:g}-{end:g} s", True)):
        say(f"phase: {phase}")
        receiver.clear_faults()
        start_at_the_end(settings)
        state = {"down": False}

        def outage(elapsed: float, down: bool = down, state: dict[str, bool] = state) -> None:
            if down and not state["down"] and elapsed >= start:
                receiver.down(args.outage)
                state["down"] = True

        prober = latency_phase(
            settings, stack, args.rate, args.duration, extra_env=sink_env(settings, "redis,http"), during=outage
        )
        results[phase] = [ms for t, ms in prober.timed if start <= t < end]
    receiver.clear_faults()
    say("")
    say(f"RESULTS (commit -> top_engagement:10min, t={start:g}-{end:g} s of each run)")
    p99 = {}
    for phase, latencies in results.items():
        p99[phase] = percentile(latencies, 99) if latencies else float("nan")
        say(f"  {phase:<28} {describe(latencies, 'probes')}")
    up, down = p99.values()
    say(f"  p99 down / up: {down / up:.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    throughput = sub.add_parser("throughput")
    throughput.add_argument("--events", type=int, default=200_000)
    for name in ("latency", "outage"):
        p = sub.add_parser(name)
        p.add_argument("--rate", type=int, default=3333)
        p.add_argument("--duration", type=float, default=120)
        if name == "outage":
            p.add_argument("--outage", type=float, default=60)
            p.add_argument("--outage-start", type=float, default=20)
    args = parser.parse_args(argv)
    settings = Settings()
    stack = LocalStack(settings)
    receiver = ReceiverClient(settings.http_receiver.control_url)
    say(machine())
    command = {"throughput": cmd_throughput, "latency": cmd_latency, "outage": cmd_outage}[args.command]
    try:
        command(settings, stack, receiver, args)
    finally:
        receiver.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
