"""The pipeline's speed on the local stack: drain rate, end-to-end latency, highest sustained rate, burst.

    make bench-pipeline                                   # everything, about 15-20 minutes
    python -m loadtest.bench_pipeline drain --events 1000000 --rounds 2
    python -m loadtest.bench_pipeline latency --rate 3333 --duration 300
    python -m loadtest.bench_pipeline latency --rate 3333 --duration 60 --sinks redis,bigquery,http
    python -m loadtest.bench_pipeline max-rate --rates 5000,7500,10000,12500,15000 --step-duration 60
    python -m loadtest.bench_pipeline burst --events 100000
    python -m loadtest.bench_pipeline idle --sinks redis,bigquery,http --base-env PIPELINE_IDLE_WAIT_MS=250

- drain: the engagement topic holds at least ``--events`` real Debezium envelopes (the generator
  tops it up). Alternating, ``--rounds`` times each: the pipeline reads all of them with
  ``--bounded`` from offset 0 with the Redis lanes (the Redis keys of the run are cleared first),
  timed from the first to the last position stored in Redis; and ``loadtest.baseline_consumer``, a
  hand-written at-least-once consumer doing the same Redis work without Beam, timed from its first
  fetch. A table gives each round, the medians and the ratio pipeline/baseline: events/s, CPU
  seconds of the consumer side (Prism and the worker, or the baseline process), its peak RSS, and
  the CPU seconds Kafka and Redis spent meanwhile.
- latency: the streaming pipeline runs while the generator writes ``--rate`` events/s; every 100 ms a
  probe row is committed for a probe content item and the time until ``top_engagement:10min`` shows
  it is measured (commit returned -> ZSCORE sees it). ``--sinks`` is ``PIPELINE_SINKS`` for the run
  (the Redis lanes by default). With other lanes, the load starts once the sinks that store their
  positions in Kafka (BigQuery, HTTP) have caught up, their lag (records past their stored
  positions) is sampled every 2 s, and the pipeline runs on after the load until they catch up:
  their peak lag, in records and in seconds of input, says whether they kept up.
- max-rate: latency steps at increasing rates; the highest whose p99 stays under 1 s.
- burst: ``--events`` rows as fast as Postgres takes them; time from the last commit until the
  stored positions in Redis cover every record.
- idle: what the streaming job costs with nothing to read. Alternating, ``--rounds`` times each,
  the job with ``--base-env`` (``NAME=VALUE``, repeatable) and with the defaults: once its lanes
  have caught up, the CPU of Prism and of the job's processes over ``--seconds``, and the ratio.

CPU (cores) and peak RSS of every process are printed for each phase, and the consumer lag (topic end
minus stored position, summed over partitions) every 10 s. Run on a quiet machine (no tests, no other
benchmark); the stack must be up (``make up``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import orjson
import redis

from infra.process import stop_group
from infra.settings import REPO_ROOT, Settings
from infra.stack.kafka_admin import end_offsets
from infra.stack.local import LocalStack
from loadtest.bench_harness import (
    SERIES_DIR,
    children,
    generator,
    lag,
    say,
    stack_sampler,
    stored,
    streaming_pipeline,
    wait_until_caught_up,
)
from loadtest.compare_commits import median_table
from loadtest.probes import Prober
from loadtest.procstats import ProcessSampler, describe, machine, percentile
from pipeline.lanes import topic_name
from sinks.kafka_positions import SinksLag
from sinks.redis_leaderboard import RedisLeaderboardSink
from sinks.redis_store import positions_key
from sinks.registry import lanes


def burst_then_drain(
    stack: LocalStack,
    events: int,
    left: Callable[[], int],
    extra_env: dict[str, str],
    log_name: str,
    on_start: Callable[[], None] | None = None,
) -> tuple[int, float, ProcessSampler]:
    """A burst of ``events`` rows, then ``pipeline --bounded`` with ``extra_env`` until it exits;
    ``left()`` is what the measured sink still has to write. Returns the records it had when it
    started moving, the seconds from then to the end, and the CPU samples (``on_start`` runs then)."""
    gen = generator("--burst", str(events))
    assert gen.wait(900) == 0, gen.stdout.read() if gen.stdout else ""
    total, previous = left(), -1
    while total != previous:  # until Debezium has published the whole burst
        time.sleep(3)
        previous, total = total, left()
    say(f"{total:,} records for the sink")
    sampler = stack_sampler(stack)
    log = open(REPO_ROOT / ".stack" / "logs" / log_name, "w")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", "--bounded"],
        cwd=REPO_ROOT,
        env={**os.environ, **extra_env},
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    first: tuple[float, int] | None = None
    try:
        while proc.poll() is None:
            remaining = left()
            if first is None and remaining < total:
                first = (time.monotonic(), remaining)
                for name, pid in children(proc.pid).items():
                    sampler.add(name, pid)
                if on_start is not None:
                    on_start()
            sampler.sample()
            time.sleep(0.5)
    finally:
        stop_group(proc)
        log.close()
    remaining = left()
    if proc.returncode != 0 or first is None or remaining:
        raise SystemExit(f"bounded run failed (exit {proc.returncode}, {remaining:,} records left)")
    return first[1], time.monotonic() - first[0], sampler


def latency_phase(
    settings: Settings,
    stack: LocalStack,
    rate: int,
    duration: float,
    *,
    extra_env: dict[str, str] | None = None,
    during: Callable[[float], None] | None = None,
    sampler: ProcessSampler | None = None,
    with_prober: Callable[[Prober], None] | None = None,
    linger: Callable[[], bool] | None = None,
    linger_timeout_s: float = 180.0,
    before_load: Callable[[], None] | None = None,
    record_as: str | None = None,
) -> Prober:
    """Probes at ``rate`` for ``duration`` s; ``during(elapsed_s)`` is called about 5 times a second,
    ``with_prober(prober)`` once the probes start (to watch them reach another sink too), and
    ``linger()`` after the load, until it returns True, while the pipeline still runs;
    ``before_load()`` once the leaderboards have caught up, before the load starts. ``record_as``
    names the JSON time series (probes, and once a second the sink's applied and the topic's
    total records) written to ``.bench/`` for ``loadtest.charts``."""
    client = settings.redis.client()
    sampler = sampler or stack_sampler(stack)
    with streaming_pipeline(extra_env) as supervisor:
        time.sleep(8)  # Prism, job submission, content view
        for name, pid in children(supervisor.pid).items():
            sampler.add(name, pid)
        wait_until_caught_up(settings, client, 600)
        if before_load is not None:
            before_load()
        gen = generator("--rate", str(rate * 60), "--duration", str(duration))
        sampler.add("generator", gen.pid)
        began = time.monotonic()
        with Prober(settings) as prober:
            if with_prober is not None:
                with_prober(prober)
            next_lag = began + 10
            next_count = began
            throughput: list[tuple[float, int, int]] = []  # (s into the run, applied by the sink, on the topic)
            while gen.poll() is None:
                if record_as is not None and time.monotonic() >= next_count:
                    topic = settings.cdc.engagement_topic
                    on_topic = sum(end_offsets(settings.kafka, topic).values())
                    throughput.append((time.monotonic() - began, sum(stored(client, topic).values()), on_topic))
                    next_count += 1.0
                sampler.sample()
                if during is not None:
                    during(time.monotonic() - began)
                if time.monotonic() >= next_lag:
                    say(f"    t={time.monotonic() - began:5.0f} s  consumer lag {lag(settings, client):,} records")
                    next_lag += 10
                time.sleep(0.2)
        deadline = time.monotonic() + linger_timeout_s
        while linger is not None and not linger() and time.monotonic() < deadline:
            time.sleep(1.0)
        output = gen.stdout.read() if gen.stdout else ""
    if record_as is not None:
        path = record_series(record_as, rate, duration, prober.timed, throughput)
        say(f"  time series: {path} (make bench-charts draws it)")
    summary = [line for line in output.splitlines() if line.startswith("continuous:")]
    say(f"  {summary[-1] if summary else output[-500:]}")
    say(
        f"  COMMIT -> LEADERBOARD at {rate:,} events/s for {duration:g} s: {describe(prober.latencies, 'probes')}"
        + (f", {prober.timeouts} probes over 10 s" if prober.timeouts else "")
    )
    say(f"    of which commit -> on the Kafka topic: {describe(prober.to_kafka, 'probes')}")
    say(f"    and on the topic -> on the board (the pipeline): {describe(prober.from_kafka, 'probes')}")
    say("  slowest probes: " + ", ".join(f"{ms:,.0f} ms at t={t:.0f} s" for ms, t in prober.slowest))
    for line in sampler.report():
        say(f"  {line}")
    return prober


def record_series(
    name: str, rate: int, duration: float, probes: list[tuple[float, float]], throughput: list[tuple[float, int, int]]
) -> Path:
    SERIES_DIR.mkdir(exist_ok=True)
    path = SERIES_DIR / f"{name}.json"
    run = {"name": name, "rate": rate, "duration_s": duration, "probes": probes, "throughput": throughput}
    path.write_bytes(orjson.dumps(run))
    return path


class KafkaSinksLag:
    """The lag of the sinks of ``sinks`` whose positions are Kafka committed offsets, per sink."""

    def __init__(self, settings: Settings, sinks: str) -> None:
        topics = {
            spec.name: topic_name(settings, lane)
            for lane in lanes(sinks, settings)
            for spec in lane.sinks
            if spec.positions_in == "kafka"
        }
        self._lag = SinksLag(settings.kafka.client_config(), settings.pipeline.consumer_group, topics)
        self.peak = dict.fromkeys(topics, 0)
        self._next = 0.0

    def now(self) -> dict[str, int]:
        lags = self._lag.now()
        for name, behind in lags.items():
            self.peak[name] = max(self.peak[name], behind)
        return lags

    def sample(self, elapsed_s: float) -> None:
        if elapsed_s >= self._next:
            self.now()
            self._next = elapsed_s + 2.0

    def wait_caught_up(self, timeout_s: float = 600.0) -> None:
        deadline = time.monotonic() + timeout_s
        while any((lags := self.now()).values()) and time.monotonic() < deadline:
            say("    catching up before the load: " + ", ".join(f"{k} {v:,}" for k, v in lags.items() if v))
            time.sleep(5)
        self.peak = dict.fromkeys(self.peak, 0)

    def close(self) -> None:
        self._lag.close()


def cmd_latency(settings: Settings, stack: LocalStack, args: argparse.Namespace) -> None:
    name = args.record_as or f"pipeline-latency-{args.rate}"
    env = {"PIPELINE_SINKS": args.sinks}
    others = KafkaSinksLag(settings, args.sinks)
    if not others.peak:
        latency_phase(settings, stack, args.rate, args.duration, extra_env=env, record_as=name)
        return
    ended: list[float] = []

    def caught_up() -> bool:
        if not ended:
            ended.append(time.monotonic())
        return not any(others.now().values())

    try:
        latency_phase(
            settings,
            stack,
            args.rate,
            args.duration,
            extra_env=env,
            during=others.sample,
            before_load=others.wait_caught_up,
            linger=caught_up,
            record_as=name,
        )
        after = time.monotonic() - ended[0] if ended else 0.0
        say(
            f"  SINKS WITH KAFKA POSITIONS, caught up {after:.1f} s after the load; peak lag: "
            + ", ".join(f"{k} {v:,} records ({v / args.rate:.1f} s of input)" for k, v in others.peak.items())
        )
    finally:
        others.close()


def cmd_max_rate(settings: Settings, stack: LocalStack, args: argparse.Namespace) -> None:
    best = None
    for rate in (int(r) for r in args.rates.split(",")):
        say(f"step {rate:,} events/s for {args.step_duration:g} s")
        latencies = latency_phase(
            settings,
            stack,
            rate,
            args.step_duration,
            extra_env={"PIPELINE_SINKS": args.sinks},
            record_as=f"pipeline-max-rate-{rate}",
        ).latencies
        if latencies and percentile(latencies, 99) < 1000:
            best = rate
        else:
            break
    say(f"HIGHEST SUSTAINED RATE WITH p99 < 1 s: {best:,} events/s" if best else "no rate held p99 < 1 s")


def cmd_burst(settings: Settings, stack: LocalStack, args: argparse.Namespace) -> None:
    client = settings.redis.client()
    sampler = stack_sampler(stack)
    with streaming_pipeline() as supervisor:
        time.sleep(8)
        for name, pid in children(supervisor.pid).items():
            sampler.add(name, pid)
        wait_until_caught_up(settings, client, 600)
        gen = generator("--burst", str(args.events))
        sampler.add("generator", gen.pid)
        sampler.sample_in_background()
        output = gen.communicate()[0]
        last_commit = time.monotonic()
        caught_up = wait_until_caught_up(settings, client, 600)
    say(f"  {[line for line in output.splitlines() if line.startswith('burst:')][-1]}")
    say(
        f"BURST of {args.events:,}: last commit -> all of it in Redis: {caught_up:.2f} s "
        f"(measured {time.monotonic() - last_commit - caught_up:.2f} s after)"
    )
    for line in sampler.report():
        say(f"  {line}")


def forget_positions(client: redis.Redis) -> None:
    """Start from offset 0: forget the leaderboard sink's positions and everything it wrote."""
    for pattern in ("engagement:minute:*", "engagement:content:*", "top_engagement:*"):
        for key in client.scan_iter(pattern, count=1000):
            client.delete(key)
    client.delete(positions_key(RedisLeaderboardSink.name))


def start_bounded_drain(
    extra_env: dict[str, str] | None = None, log_name: str = "bench-drain.log"
) -> subprocess.Popen[bytes]:
    """The supervisor with ``--bounded`` and the Redis lanes, in its own process group, logging to
    ``.stack/logs/<log_name>``."""
    with open(REPO_ROOT / ".stack" / "logs" / log_name, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "pipeline", "--bounded"],
            cwd=REPO_ROOT,
            env={**os.environ, "PIPELINE_SINKS": "redis", **(extra_env or {})},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def pipeline_drain(settings: Settings, stack: LocalStack, total: int) -> dict[str, float]:
    """One bounded run of the pipeline with the Redis lanes from offset 0, timed from the first to the
    last position stored in Redis."""
    topic = settings.cdc.engagement_topic
    client = settings.redis.client()
    forget_positions(client)
    sampler = stack_sampler(stack)
    proc = start_bounded_drain()
    first = None
    try:
        while proc.poll() is None:
            done = sum(stored(client, topic).values())
            if first is None and done > 0:
                first = (time.monotonic(), done)
                for name, pid in children(proc.pid).items():
                    sampler.add(name, pid)
            sampler.sample()
            time.sleep(0.05)
    finally:
        stop_group(proc)  # a Ctrl-C here must not leave the bounded job running
    last = time.monotonic()
    done = sum(stored(client, topic).values())
    if proc.returncode != 0 or first is None or done < total:
        raise SystemExit(f"bounded run failed (exit {proc.returncode}, {done:,} of {total:,} stored)")
    used = sampler.cpu_seconds()
    return {
        "events/s": (done - first[1]) / (last - first[0]),
        "CPU s, consumer side": used.get("job", 0.0) + used.get("prism", 0.0),
        "CPU s, of which Prism": used.get("prism", 0.0),
        "peak RSS MiB": sampler.peak_rss.get("job", 0.0) + sampler.peak_rss.get("prism", 0.0),
        "CPU s, Kafka": used["kafka"],
        "CPU s, Redis": used["redis"],
    }


def baseline_drain(stack: LocalStack) -> dict[str, float]:
    """One run of ``loadtest.baseline_consumer`` in its own process."""
    sampler = stack_sampler(stack)
    proc = subprocess.Popen(
        [sys.executable, "-m", "loadtest.baseline_consumer"], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    sampler.add("baseline", proc.pid)
    while proc.poll() is None:
        sampler.sample()
        time.sleep(0.05)
    out = proc.stdout.read() if proc.stdout else ""
    if proc.returncode != 0:
        raise SystemExit(f"the baseline consumer failed (exit {proc.returncode})")
    result = orjson.loads(out.strip().splitlines()[-1])
    used = sampler.cpu_seconds()
    return {
        "events/s": result["events_per_s"],
        "CPU s, consumer side": used["baseline"],
        "CPU s, of which Prism": 0.0,
        "peak RSS MiB": sampler.peak_rss["baseline"],
        "CPU s, Kafka": used["kafka"],
        "CPU s, Redis": used["redis"],
    }


def cmd_drain(settings: Settings, stack: LocalStack, args: argparse.Namespace) -> None:
    topic = settings.cdc.engagement_topic
    have = sum(end_offsets(settings.kafka, topic).values())
    if have < args.events:
        missing = args.events - have
        say(f"topping the topic up with {missing:,} events (it holds {have:,})")
        generator("--burst", str(missing)).communicate()
        time.sleep(5)
    ends = end_offsets(settings.kafka, topic)
    total = sum(ends.values())
    say(f"{topic} holds {total:,} records in {len(ends)} partitions; {args.rounds} rounds, alternating")
    results: dict[str, list[dict[str, float]]] = {"baseline": [], "pipeline": []}
    for n in range(1, args.rounds + 1):
        for name in ("pipeline", "baseline") if n % 2 else ("baseline", "pipeline"):
            if name == "baseline" and args.pipeline_only:
                continue
            result = pipeline_drain(settings, stack, total) if name == "pipeline" else baseline_drain(stack)
            results[name].append(result)
            say(f"round {n}, {name}: " + ", ".join(f"{k} {v:,.1f}" for k, v in result.items()))
            if name == "pipeline":
                say(f"PIPELINE DRAIN: {total:,} envelopes at {result['events/s']:,.0f} events/s")
    if args.pipeline_only:
        return
    say(f"DRAIN of {total:,} envelopes: the pipeline (exactly once) against loadtest.baseline_consumer")
    figures = list(results["pipeline"][0])
    for line in median_table(results, figures, ("baseline", "pipeline"), fmt=lambda x: f"{x:,.1f}", ratio_digits=2):
        print(line, flush=True)


def cmd_idle(settings: Settings, stack: LocalStack, args: argparse.Namespace) -> None:
    base_env = dict(item.split("=", 1) for item in args.base_env)
    labels = ("base", "defaults")
    say(f"base: {' '.join(args.base_env) or 'the defaults'}")
    results: dict[str, list[dict[str, float]]] = {label: [] for label in labels}
    client = settings.redis.client()
    for n in range(1, args.rounds + 1):
        for label, env in zip(labels, (base_env, {}), strict=True):
            others = KafkaSinksLag(settings, args.sinks)
            try:
                with streaming_pipeline({"PIPELINE_SINKS": args.sinks, **env}) as supervisor:
                    time.sleep(8)  # Prism, job submission, content view
                    wait_until_caught_up(settings, client, 600)
                    others.wait_caught_up()
                    time.sleep(5)
                    sampler = ProcessSampler(children(supervisor.pid))
                    time.sleep(args.seconds)
                    sampler.sample(force=True)
                    elapsed = time.monotonic() - sampler.started
                    cores = {name: used / elapsed for name, used in sampler.cpu_seconds().items()}
            finally:
                others.close()
            cores["job + prism"] = sum(cores.values())
            say(f"  round {n}, {label}: " + ", ".join(f"{k} {v:.3f} cores" for k, v in cores.items()))
            results[label].append(cores)
    say(f"IDLE, PIPELINE_SINKS={args.sinks}, {args.seconds:g} s per round (cores)")
    names = ["prism", "job", "job + prism"]
    for line in median_table(results, names, labels, fmt=lambda x: f"{x:.3f}", ratio_digits=2):
        say(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    drain = sub.add_parser("drain")
    drain.add_argument("--events", type=int, default=1_000_000)
    drain.add_argument("--rounds", type=int, default=2, help="rounds of each, alternating")
    drain.add_argument("--pipeline-only", action="store_true", help="leave the baseline out (loadtest.compare_commits)")
    latency = sub.add_parser("latency")
    latency.add_argument("--rate", type=int, default=3333, help="events per second")
    latency.add_argument("--duration", type=float, default=300)
    latency.add_argument("--record-as", help="name of the time series in .bench/ (default pipeline-latency-RATE)")
    latency.add_argument("--sinks", default="redis", help="PIPELINE_SINKS for the run (default: the Redis lanes)")
    max_rate = sub.add_parser("max-rate")
    max_rate.add_argument("--rates", default="5000,7500,10000,12500,15000")
    max_rate.add_argument("--step-duration", type=float, default=60)
    max_rate.add_argument("--sinks", default="redis", help="PIPELINE_SINKS for the run (default: the Redis lanes)")
    burst = sub.add_parser("burst")
    burst.add_argument("--events", type=int, default=100_000)
    idle = sub.add_parser("idle")
    idle.add_argument("--sinks", default="redis,bigquery,http", help="PIPELINE_SINKS for the run")
    idle.add_argument("--seconds", type=float, default=30, help="how long to measure each round")
    idle.add_argument("--rounds", type=int, default=2, help="rounds of each, alternating")
    idle.add_argument("--base-env", action="append", default=[], help="NAME=VALUE for the other runs (repeatable)")
    args = parser.parse_args(argv)
    settings = Settings()
    stack = LocalStack(settings)
    say(machine())
    commands = {
        "drain": cmd_drain,
        "latency": cmd_latency,
        "max-rate": cmd_max_rate,
        "burst": cmd_burst,
        "idle": cmd_idle,
    }
    commands[args.command](settings, stack, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
