"""The fault suite (issue 14): each fault under load, then every sink compared with SQL. Slow.

    make faults                                   # every fault, about 35 minutes on 2 cores
    python -m loadtest.faults --only kafka-kill9 --rate 1500 --duration 40

For each fault, from a clean stack of its own (``loadtest.fault_stack``: ``.stack-faults/``, ports
200 above the defaults, reset before and after): the catalogue is seeded, the streaming pipeline
starts with the Redis, BigQuery and HTTP sinks (``HTTP_SINK_URL`` at the local receiver, one
endpoint taking every change), the generator writes ``--rate`` events/s for ``--duration`` s
(inserts, 2 % updates, 1 % deletes), the fault is injected ``INJECT_AT_S`` into the load, the load
stops, and once every sink has caught up (time from the generator's end) the suite compares:

- Redis with SQL: every content total, live per-minute bucket and the window board
  (``loadtest.truth``);
- BigQuery with SQL: the view row by row and seed 004's query (``loadtest.bigquery_truth``);
- the HTTP receiver with SQL: every event's latest change (``loadtest.http_truth``).

Dead letters are the records on the dead-letter topics (the pipeline's and the HTTP sink's): a
fault should produce none. The table is printed as Markdown (docs/delivery.md keeps one run's).
Exit status 1 if any check failed. Every process started here is stopped at the end, even on
failure or Ctrl-C: the pipeline and generator process groups, then the stack (``reset``).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from infra.http_receiver.client import ReceiverClient
from infra.process import StackError
from infra.settings import Settings
from infra.stack.flink_cluster import FlinkCluster
from infra.stack.kafka_admin import end_offsets
from infra.stack.local import LocalStack
from loadtest import fault_flink, fault_http, fault_redis, fault_sequence, poison
from loadtest.bigquery_truth import assert_view_matches_sql, wait_bigquery_caught_up
from loadtest.fault_stack import (
    ENDPOINT,
    STACK_DIR,
    THREE_BROKERS,
    Processes,
    broker_kill9,
    fault_settings,
    group_members,
)
from loadtest.http_truth import assert_http_matches_sql, wait_http_caught_up
from loadtest.procstats import machine
from loadtest.truth import assert_redis_matches_sql, wait_caught_up

INJECT_AT_S = 10.0
REDIS_OUTAGE_S = 60.0
CATCH_UP_TIMEOUT_S = 300.0


def say(message: str) -> None:
    print(message, flush=True)


@dataclass
class Run:
    """One fault's stack, processes and what the fault itself noticed."""

    settings: Settings
    stack: LocalStack
    procs: Processes
    notes: list[str] = field(default_factory=list)
    # Dead letters the fault makes by design (poison records, a forged record); any other is a failure.
    expected_letters: int = 0
    # A fault of one record must not make the job fail (and be restarted by the supervisor).
    restarts_fail: bool = False
    _supervisor: subprocess.Popen[bytes] | None = None

    @property
    def supervisor(self) -> subprocess.Popen[bytes]:
        """The current ``python -m pipeline``."""
        assert self._supervisor is not None, "the pipeline was never started"
        return self._supervisor

    def start_pipeline(self) -> None:
        self._supervisor = self.procs.pipeline()

    def restart_pipeline(self) -> None:
        """A new ``python -m pipeline``, as an operator would start one; noted if it does not stay up."""
        if not self.procs.wait_prism_port_free():
            self.notes.append("Prism port still taken 20 s after the kill")
        self.start_pipeline()
        time.sleep(10)
        if self.supervisor.poll() is not None:
            self.notes.append(f"new pipeline exited {self.supervisor.returncode}; started again")
            self.procs.wait_prism_port_free()
            self.start_pipeline()


def kill9(service: str) -> Callable[[Run], None]:
    def inject(run: Run) -> None:
        process = getattr(run.stack, service).process
        process.kill()
        process.start(run.settings.stack.start_timeout_s)
        if service in ("kafka", "connect"):
            run.stack.connect.wait_running(run.settings.stack.start_timeout_s)

    return inject


def postgres_fast_restart(run: Run) -> None:
    # `pg_ctl restart -m fast` through the stack's process object: its stop signal is SIGINT, the
    # fast shutdown (as tests/integration/test_generator_writes.py does).
    run.stack.postgres.process.stop(run.settings.stack.stop_timeout_s)
    run.stack.postgres.process.start(run.settings.stack.start_timeout_s)


def pipeline_group_kill9(run: Run) -> None:
    os.killpg(run.supervisor.pid, signal.SIGKILL)
    run.supervisor.wait()
    run.restart_pipeline()


def supervisor_kill9(run: Run) -> None:
    old = run.supervisor
    os.kill(old.pid, signal.SIGKILL)
    old.wait()
    time.sleep(3)
    left = group_members(old.pid)
    run.notes.append(f"{len(left)} of its children alive 3 s after" if left else "its Prism and job died with it")
    run.restart_pipeline()


def redis_down(run: Run) -> None:
    process = run.stack.redis.process
    process.stop(run.settings.stack.stop_timeout_s)
    time.sleep(REDIS_OUTAGE_S)
    process.start(run.settings.stack.start_timeout_s)


def redis_older_copy(age_s: float) -> Callable[[Run], None]:
    def inject(run: Run) -> None:
        fault_redis.older_copy(run.stack, run.settings, run.procs.logs / "pipeline.log", run.notes, age_s)

    return inject


def forged_sequence(run: Run) -> None:
    # Dead letters by design: the forged record's content never arrives (loadtest/fault_sequence.py),
    # and each of the three event sinks parks it itself, so each gives one letter at its deadline.
    fault_sequence.inject(run.settings, run.procs.logs / "pipeline.log", 3, run.notes)
    run.expected_letters, run.restarts_fail = 3, True


def poison_records(run: Run) -> None:
    run.expected_letters, run.restarts_fail = poison.inject(run.settings, run.notes), True


def http_hostile(run: Run) -> None:
    # A hostile reply must neither fail the job nor be believed; nothing is dead-lettered by design.
    run.restarts_fail = True
    fault_http.inject(run.settings, run.supervisor.pid, run.notes)


FAULTS: dict[str, Callable[[Run], None]] = {
    "kafka-kill9": kill9("kafka"),
    "kafka-broker-kill9": lambda run: broker_kill9(run.stack, run.notes),
    "connect-kill9": kill9("connect"),
    "redis-kill9": kill9("redis"),
    "postgres-fast-restart": postgres_fast_restart,
    "pipeline-group-kill9": pipeline_group_kill9,
    "supervisor-kill9": supervisor_kill9,
    "redis-down-60s": redis_down,
    "redis-older-copy": redis_older_copy(20.0),
    "redis-older-copy-5s": redis_older_copy(5.0),
    "forged-sequence": forged_sequence,
    "poison-records": poison_records,
    "http-hostile": http_hostile,
    "flink-cluster-kill9": fault_flink.flink_cluster_kill9,
}


@dataclass
class Row:
    fault: str
    events: str = "-"
    catch_up: str = "-"
    redis: str = "not run"
    bigquery: str = "not run"
    http: str = "not run"
    letters: str = "-"
    notes: list[str] = field(default_factory=list)
    expected_letters: int = 0
    restarts_failed: bool = False

    @property
    def passed(self) -> bool:
        sinks = all(check == "yes" for check in (self.redis, self.bigquery, self.http))
        return sinks and self.letters == str(self.expected_letters) and not self.restarts_failed


def check(name: str, compare: Callable[[], object]) -> str:
    try:
        compare()
    except Exception as exc:  # noqa: BLE001 - a failed comparison or an unreachable sink: a "no" with its reason
        first = str(exc).replace("\n", " ").replace("|", "/")
        say(f"    {name}: {first[:500]}")
        return f"no: {first[:160]}"
    return "yes"


def dead_letters(settings: Settings) -> int:
    return sum(
        sum(end_offsets(settings.kafka, t).values()) for t in (settings.cdc.dlq_topic, settings.cdc.http_dlq_topic)
    )


def workload_jobs(procs: Processes) -> int:
    """Job processes still alive in the groups this fault started (two would double-write)."""
    jobs = 0
    for proc in procs.started:
        for pid in group_members(proc.pid):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as cmd:
                    jobs += b"pipeline.worker" in cmd.read()
            except OSError:
                continue
    return jobs


def generator_summary(run: Run, row: Row) -> None:
    text = (run.procs.logs / "generator.log").read_text(errors="replace")
    summaries = [line for line in text.splitlines() if line.startswith("continuous:")]
    if not summaries:
        row.notes.append("generator printed no summary")
        return
    summary = summaries[-1]
    if match := re.search(r"continuous: ([\d,]+) events", summary):
        row.events = match.group(1)
    if (match := re.search(r"(\d+) retried writes in (\d+) outages", summary)) and match.group(1) != "0":
        row.notes.append(f"generator retried {match.group(1)} writes in {match.group(2)} outage(s)")


def start_stack(stack: LocalStack) -> str | None:
    """A clean stack; started twice at most, because its ports are in the ephemeral range and a
    client socket of the machine's other work can hold one for a moment (EADDRINUSE)."""
    stack.reset()
    try:
        stack.up()
    except StackError as exc:
        first = str(exc).splitlines()[0]
        say(f"  stack did not start ({first}); once more")
        stack.reset()
        time.sleep(5)
        stack.up()
        return f"stack started at the second try ({first.split('.')[0]})"
    return None


def run_fault(name: str, rate: int, duration: float) -> Row:
    row = Row(name)
    settings = fault_settings(brokers=3 if name in THREE_BROKERS else 1)
    on_flink = name in fault_flink.FLINK_FAULTS
    if on_flink:
        settings = fault_flink.cluster_settings(settings)
    cluster = FlinkCluster(settings) if on_flink else None
    stack = LocalStack(settings)
    run = Run(settings, stack, Processes(settings, STACK_DIR / "runs" / name))
    load_s = max(duration, INJECT_AT_S + REDIS_OUTAGE_S + 10) if name == "redis-down-60s" else duration
    if on_flink:
        load_s = max(duration, fault_flink.LOAD_S)  # load until both recoveries were measured
    try:
        if retried := start_stack(stack):
            row.notes.append(retried)
        if cluster is not None:
            cluster.up(log=lambda _: None)
        seeded = run.procs.generator("--seed-only", "--seed", "14")
        if seeded.wait(120) != 0:
            raise RuntimeError("seeding the catalogue failed")
        log_from = poison.log_size(run.procs.logs / "pipeline.log")
        run.start_pipeline()
        # Prism (or Flink: staging, scheduling), job submission, the content snapshot reaching the join
        time.sleep(45 if on_flink else 12)
        gen = run.procs.generator("--rate", str(rate * 60), "--duration", str(load_s), "--seed", "15")
        time.sleep(INJECT_AT_S)
        say(f"  injecting {name}")
        began = time.monotonic()
        FAULTS[name](run)
        say(f"  {name} injected in {time.monotonic() - began:.1f} s; load until {load_s:g} s")
        gen.wait(load_s + 300)
        generator_summary(run, row)
        if gen.returncode != 0:
            row.notes.append(f"generator exited {gen.returncode}")
        load_over = time.monotonic()
        try:
            wait_caught_up(settings, timeout=CATCH_UP_TIMEOUT_S)
            wait_bigquery_caught_up(settings, timeout=CATCH_UP_TIMEOUT_S)
            wait_http_caught_up(settings, [ENDPOINT], timeout=CATCH_UP_TIMEOUT_S)
            row.catch_up = f"{time.monotonic() - load_over:.0f} s"
        except AssertionError as exc:
            row.catch_up = "did not"
            row.notes.append(str(exc)[:200])
        if run.supervisor.poll() is not None:
            row.notes.append(f"pipeline exited {run.supervisor.returncode}")
        if (jobs := workload_jobs(run.procs)) != 1:
            row.notes.append(f"{jobs} jobs running at the end")
        row.redis = check("Redis", lambda: assert_redis_matches_sql(settings))
        row.bigquery = check("BigQuery", lambda: assert_view_matches_sql(settings))
        with ReceiverClient(settings.http_receiver.control_url) as receiver:
            row.http = check("HTTP", lambda: assert_http_matches_sql(settings, receiver.changes(ENDPOINT), 0))
        row.letters = str(dead_letters(settings))
        row.expected_letters = run.expected_letters
        if run.expected_letters:
            row.notes.append(f"{run.expected_letters} dead letter(s) by design")
        # Restarts the supervisor made on its own (a job that failed); the faults that kill the
        # pipeline start a new supervisor instead, which is not one.
        restarts = poison.supervisor_restarts(run.procs.logs / "pipeline.log", since=log_from)
        if restarts or run.restarts_fail:
            row.notes.append(f"job restarts: {restarts}")
        row.restarts_failed = run.restarts_fail and restarts > 0
    except Exception as exc:  # noqa: BLE001 - one fault's crash is its row's note; the others still run
        row.notes.append(f"suite error: {type(exc).__name__}: {str(exc)[:200]}")
    finally:
        run.procs.stop_all()
        if cluster is not None:
            cluster.down()
        # The services' logs, kept for a failed row's post-mortem (reset removes the stack's folder).
        if (settings.stack.dir / "logs").is_dir():
            shutil.copytree(settings.stack.dir / "logs", run.procs.logs / "stack", dirs_exist_ok=True)
        stack.reset()
    row.notes = run.notes + row.notes
    return row


HEADER = (
    "fault",
    "events written",
    "catch-up",
    "Redis == SQL",
    "BigQuery == SQL",
    "HTTP == SQL",
    "dead letters",
    "notes",
)


def table(rows: list[Row]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    for r in rows:
        cells = (r.fault, r.events, r.catch_up, r.redis, r.bigquery, r.http, r.letters, "; ".join(r.notes) or "-")
        lines.append("| " + " | ".join(" ".join(c.replace("|", "/").split()) for c in cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.faults", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--only", choices=FAULTS, action="append", help="run this fault only (repeatable)")
    parser.add_argument("--rate", type=int, default=1500, help="generator events per second (default 1,500)")
    parser.add_argument("--duration", type=float, default=40, help="seconds of load per fault (default 40)")
    args = parser.parse_args(argv)
    say(f"{machine()}; {datetime.now(UTC):%Y-%m-%d %H:%M} UTC; {args.rate:,} events/s for {args.duration:g} s")
    rows: list[Row] = []
    try:
        for name in args.only or FAULTS:
            say(f"== {name}")
            began = time.monotonic()
            rows.append(run_fault(name, args.rate, args.duration))
            say(f"  {'PASS' if rows[-1].passed else 'FAIL'} in {time.monotonic() - began:.0f} s")
    finally:
        say(table(rows))
    return 0 if rows and all(r.passed for r in rows) else 1


if __name__ == "__main__":
    raise SystemExit(main())
