"""The hot-path cost of TLS and SASL in one run: ``loadtest.bench_pipeline``'s drain and latency on a
plain stack and on a secure one (``STACK_SECURE=1``), alternately, then the medians and their ratio.

    make bench-security                                   # about 11 minutes (2 rounds; 3 rounds: 13)
    python -m loadtest.bench_security --rounds 2 --events 300000 --rate 3333 --duration 60

Each mode has a stack of its own, never the development stack: the plain one in
``.stack-bench-plain/`` on the default ports + 400, the secure one in ``.stack-bench-secure/``
(its own CA under ``tls/``) on + 500, so neither meets the test (+ 100, secure + 300) or fault
(+ 200) stacks. The BigQuery emulator is off and the pipeline runs the Redis lanes only, as in
``make bench-pipeline``. The machine has two cores, so the two stacks are never up together: every
round starts its mode's stack, measures, and stops it. The first round of a mode resets the stack
(a new cluster, topics, users and certificates) and fills the topic with ``--events`` envelopes
(a generator burst, waited for until Debezium has published all of it); later rounds start the
same stack again on its kept data and send a ``--warmup`` burst the same way first (without it,
the restarted Connect's cold JVM stalled the capture for the first 30 s of the latency load:
commit -> topic p99 4-8 s in both modes). At the end both stacks are reset (stopped, state removed), also
when a round fails.

Rounds alternate (plain, secure, plain, secure, ...) so that a machine that gets busier or quieter
weighs on both alike. In each round:

- drain: ``bench_pipeline drain`` reads the whole topic with ``pipeline --bounded`` from offset 0,
  events/s from the first to the last stored position, and the CPU seconds of the stack's processes,
  Prism and the job from the bounded run's start to its end; then a bare confluent-kafka + orjson
  consumer over the same topic (what SASL_SSL costs a Kafka client alone). The latency load and the
  warm-up of a round stay on the topic, so each round drains about ``--rate * --duration +
  --warmup`` more envelopes than the one before, in both modes alike (hence CPU s per 100k).
- latency: ``bench_pipeline latency``: the streaming pipeline while the generator writes ``--rate``
  events/s for ``--duration`` s, commit -> board p50/p95/p99, split into commit -> topic (the
  capture) and topic -> board (the pipeline), and the CPU cores of each process.

Every round's full output goes to ``.bench/security/``; the figures are read from its lines as
``loadtest.compare_commits`` reads them. Run it alone on a quiet machine
(``flock /tmp/engagement-stack.lock make bench-security`` where several people share it).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from typing import Any

from infra.settings import REPO_ROOT, Settings, StackSettings
from infra.stack.kafka_admin import end_offsets
from infra.stack.local import LocalStack, child_environment
from loadtest.bench_harness import generator, say
from loadtest.compare_commits import figures as latency_and_drain_figures
from loadtest.compare_commits import median_table
from loadtest.procstats import machine

MODES = ("plain", "secure")
SHIFTS = {"plain": 400, "secure": 500}
OUTPUT = REPO_ROOT / ".bench" / "security"
ROUND_TIMEOUT_S = 1200.0  # one bench_pipeline command; a hang must not hold the stack lock for good

_ENVELOPES = re.compile(r"PIPELINE DRAIN: ([\d,]+) envelopes")
_DRAIN_CPU = re.compile(r"CPU s of the bounded run \(.*\): .*; in all ([\d.]+)")
_PLAIN = re.compile(r"PLAIN confluent-kafka \+ orjson consume-and-decode: ([\d,]+) events/s")
_CAPTURE = re.compile(r"commit -> on the Kafka topic: p50 (\d+) ms, p95 (\d+) ms, p99 (\d+) ms")
_CORES = re.compile(r"^\s+(\S+)\s+cpu\s+([\d.]+) cores", re.MULTILINE)

# The summary's order; per-process CPU lines follow.
ORDER = (
    "drain envelopes",
    "drain events/s",
    "drain CPU s (stack, Prism, job)",
    "drain CPU s per 100k envelopes",
    "bare consumer events/s",
    "commit->board p50 ms",
    "commit->board p95 ms",
    "commit->board p99 ms",
    "topic->board p50 ms",
    "topic->board p95 ms",
    "topic->board p99 ms",
    "commit->topic p50 ms",
    "commit->topic p95 ms",
    "commit->topic p99 ms",
    "latency CPU cores, all",
)


def _shifted(group: Any, shift: int, *ports: str) -> Any:
    return group.model_copy(update={port: getattr(group, port) + shift for port in ports})


def bench_settings(mode: str) -> Settings:
    """The stack of one mode: its folder and ports, TLS and authentication on when ``secure``."""
    base, shift = Settings(), SHIFTS[mode]
    return Settings(
        postgres=_shifted(base.postgres, shift, "port"),
        kafka=_shifted(base.kafka, shift, "port", "controller_port"),
        connect=_shifted(base.connect, shift, "port"),
        redis=_shifted(base.redis, shift, "port"),
        bigquery=base.bigquery.model_copy(update={"emulator_host": ""}),  # not measured: not started
        http_receiver=_shifted(base.http_receiver, shift, "port", "control_port"),
        cdc=base.cdc,
        stack=StackSettings(dir=REPO_ROOT / f".stack-bench-{mode}", stop_timeout_s=60.0, secure=mode == "secure"),
        generator=base.generator,
        metrics=_shifted(base.metrics, shift, "port"),
        dashboard=_shifted(base.dashboard, shift, "port"),
        flink=base.flink.shifted(shift),
        pipeline=base.pipeline.model_copy(
            update={"prism_port": base.pipeline.prism_port + shift, "runner": "prism", "sinks": "redis"}
        ),
    )


def parse(output: str) -> dict[str, float]:
    """What one round's drain and latency printed, by name."""
    found = latency_and_drain_figures(output)
    for pattern, name in (
        (_ENVELOPES, "drain envelopes"),
        (_DRAIN_CPU, "drain CPU s (stack, Prism, job)"),
        (_PLAIN, "bare consumer events/s"),
    ):
        if match := pattern.search(output):
            found[name] = float(match.group(1).replace(",", ""))
    if "drain envelopes" in found and "drain CPU s (stack, Prism, job)" in found:
        found["drain CPU s per 100k envelopes"] = (
            found["drain CPU s (stack, Prism, job)"] / found["drain envelopes"] * 100_000
        )
    if match := _CAPTURE.search(output):
        found.update(zip((f"commit->topic p{q} ms" for q in (50, 95, 99)), map(float, match.groups()), strict=True))
    # The latency phase's process report comes after its COMMIT -> LEADERBOARD line.
    _, _, latency_part = output.partition("COMMIT -> LEADERBOARD")
    cores = {name: float(value) for name, value in _CORES.findall(latency_part)}
    if cores:
        found.update({f"latency CPU cores, {name}": value for name, value in cores.items()})
        found["latency CPU cores, all"] = sum(cores.values())
    return found


def fill_topic(settings: Settings, events: int) -> int:
    """A generator burst of ``events`` rows, then wait until Debezium has published all of it: one
    envelope per row (no updates or deletes), and then no more for 3 s. Waiting for a pause alone
    is not enough: a restarted connector may not have resumed yet, and would then capture the burst
    during the drain."""
    topic = settings.cdc.engagement_topic
    before = sum(end_offsets(settings.kafka, topic).values())
    gen = generator("--burst", str(events), extra_env=child_environment(settings))
    output = gen.communicate(timeout=900)[0]
    if gen.returncode != 0:
        raise SystemExit(f"generator burst failed: {output[-2000:]}")
    deadline = time.monotonic() + 600
    total, previous = sum(end_offsets(settings.kafka, topic).values()), -1
    while total < before + events or total != previous:
        if time.monotonic() > deadline:
            raise SystemExit(f"Debezium published {total - before:,} of the burst's {events:,} rows in 600 s")
        time.sleep(3)
        previous, total = total, sum(end_offsets(settings.kafka, topic).values())
    return total


def bench(settings: Settings, mode: str, round_no: int, command: list[str]) -> str:
    """One ``bench_pipeline`` command against this mode's stack; its output, also kept in OUTPUT."""
    env = {**os.environ, **child_environment(settings)}
    log = OUTPUT / f"{command[0]}-{mode}-{round_no}.log"
    result = subprocess.run(
        [sys.executable, "-m", "loadtest.bench_pipeline", *command],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=ROUND_TIMEOUT_S,
    )
    log.write_text(result.stdout + result.stderr)
    if result.returncode != 0:
        raise SystemExit(f"{mode} round {round_no}: bench_pipeline {command[0]} exit {result.returncode} ({log})")
    return result.stdout


def run_round(mode: str, round_no: int, fresh: bool, args: argparse.Namespace) -> dict[str, float]:
    settings = bench_settings(mode)
    stack_log = (OUTPUT / f"stack-{mode}.log").open("a")
    stack = LocalStack(settings, log=lambda line: print(line, file=stack_log, flush=True))
    say(f"== round {round_no}, {mode} ({settings.stack.dir.name}, {machine().split(': ', 1)[1]})")
    began = time.monotonic()
    try:
        if fresh:
            stack.reset()
        stack.up()
        say(f"   stack up in {time.monotonic() - began:.0f} s")
        filled = time.monotonic()
        total = fill_topic(settings, args.events if fresh else args.warmup)
        what = "topic filled" if fresh else "warm-up burst, topic"
        say(f"   {what}: {total:,} envelopes in {time.monotonic() - filled:.0f} s")
        output = bench(settings, mode, round_no, ["drain", "--events", str(args.events)])
        output += bench(
            settings,
            mode,
            round_no,
            [
                "latency",
                "--rate",
                str(args.rate),
                "--duration",
                str(args.duration),
                "--record-as",
                f"security-{mode}-{round_no}",
            ],
        )
    finally:
        stack.down()
        stack_log.close()
    found = parse(output)
    say(f"   {time.monotonic() - began:.0f} s: " + ", ".join(f"{k} {fmt(v)}" for k, v in found.items() if k in ORDER))
    return found


def fmt(value: float) -> str:
    return f"{value:.2f}" if abs(value) < 10 else f"{value:,.0f}"


def summary(results: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> None:
    names = set().union(*(found for rounds in results.values() for found in rounds))
    ordered = [n for n in ORDER if n in names] + sorted(n for n in names if n not in ORDER)
    say(
        f"\ndrain of the whole topic, then latency --rate {args.rate} --duration {args.duration:g}; "
        f"{args.rounds} rounds each, plain and STACK_SECURE=1 alternately"
    )
    for line in median_table(results, ordered, ("plain", "secure"), fmt, ratio_digits=2):
        say(line)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m loadtest.bench_security", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each mode (default 2)")
    parser.add_argument("--events", type=int, default=300_000, help="envelopes on the topic for the drain")
    parser.add_argument(
        "--warmup", type=int, default=20_000, help="rows of the burst that warms a restarted stack's capture"
    )
    parser.add_argument("--rate", type=int, default=3333, help="events per second during the latency run")
    parser.add_argument("--duration", type=float, default=60, help="seconds of load during the latency run")
    args = parser.parse_args(argv)
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (REPO_ROOT / ".stack" / "logs").mkdir(parents=True, exist_ok=True)  # where bench_pipeline logs its runs
    say(machine())
    results: dict[str, list[dict[str, float]]] = {mode: [] for mode in MODES}
    try:
        for round_no in range(1, args.rounds + 1):
            for mode in MODES:
                results[mode].append(run_round(mode, round_no, round_no == 1, args))
    finally:
        for mode in MODES:
            with (OUTPUT / f"stack-{mode}.log").open("a") as stack_log:
                log = lambda line, out=stack_log: print(line, file=out, flush=True)  # noqa: E731
                LocalStack(bench_settings(mode), log=log).reset()
    summary(results, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
