"""The BigQuery emulator under Storage Write appends and REST queries at once: does it keep answering?

    flock /tmp/engagement-stack.lock .venv/bin/python -m loadtest.bqemu_concurrency
    flock /tmp/engagement-stack.lock .venv/bin/python -m loadtest.bqemu_concurrency \\
        --batches 500,2000,5000 --duration 60 --poll 0.25      # the ceiling, with queries
    ... --poll 0                                               # the ceiling, without queries
    ... --rate 3333                                            # the changelog's rate at seed 004

Per batch size, one run of ``--duration`` seconds into a fresh changelog table (the sink's
``CHANGES_SCHEMA``): ``--writers`` threads append Arrow batches through the sink's own
``StorageWriter`` and ``StreamAppender`` to ``--partitions`` COMMITTED streams (one per partition,
as the sink does), as fast as they can or paced to ``--rate`` rows/s in all, while another thread
runs ``SELECT COUNT(*)`` on that table over REST every ``--poll`` seconds. Prints appends/s, rows/s,
append and query latency (p50/p99/max), the emulator's and this client's CPU, and whether anything
hung: no append and no query succeeded for ``--hang-after`` seconds, or a thread still stuck when
the run ends (every call has a timeout, so a stuck call is the emulator's). With ``--dump`` a hang
also saves a py-spy dump of the emulator's threads under ``.bench/``. A COUNT(*) below the rows
acknowledged before it was sent, or above those acknowledged after it plus those in flight, is
counted as wrong (another call's result). At the end, the table's COUNT(*) is compared with the
rows appended.

By default it starts an emulator of its own (the stack's ``BigQueryEmulator``, same launcher and
flags as ``make up``) on ``--port`` with its data in ``<STACK_DIR>/bqemu-concurrency``, and stops
it after; ``--reuse`` uses the one ``make up`` started instead (``BIGQUERY_EMULATOR_HOST``).
Run it under the stack's lock: it takes both cores.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
from google.cloud import bigquery

from infra.settings import REPO_ROOT, BigQuerySettings, Settings
from infra.stack.bigquery_emulator import BigQueryEmulator
from infra.stack.local import LocalStack
from loadtest.bench_bigquery import sample_rows
from loadtest.bench_harness import say
from loadtest.procstats import ProcessSampler, machine, percentile
from sinks.bigquery_dataset import make_client
from sinks.bigquery_storage_write import StorageWriter, StreamAppender, arrow_schema, make_write_client, record_batch
from sinks.bigquery_tables import CHANGES_SCHEMA

PY_SPY = REPO_ROOT / ".venv" / "bin" / "py-spy"


@dataclass
class Calls:
    """Latencies and failures of one kind of call, from several threads."""

    latencies: list[float] = field(default_factory=list)  # ms, successful calls
    errors: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)  # answers that cannot be right
    rows: int = 0
    last_done: float = field(default_factory=time.monotonic)  # of a call that succeeded
    lock: threading.Lock = field(default_factory=threading.Lock)

    def done(self, began: float, rows: int = 0) -> None:
        now = time.monotonic()
        with self.lock:
            self.latencies.append((now - began) * 1000)
            self.rows += rows
            self.last_done = now

    def failed(self, exc: BaseException) -> None:
        with self.lock:
            self.errors.append(f"{type(exc).__name__}: {str(exc)[:160]}")

    def summary(self) -> str:
        if not self.latencies:
            return "none finished"
        values = self.latencies
        return (
            f"p50 {percentile(values, 50):,.0f} ms, p99 {percentile(values, 99):,.0f} ms, max {max(values):,.0f} ms"
            f" over {len(values):,}"
        )


def changelog_batch(size: int) -> pa.RecordBatch:
    rows, _ = sample_rows(size, 0)
    return record_batch(rows, arrow_schema(CHANGES_SCHEMA))


def write(
    writer: StorageWriter,
    table_id: str,
    partitions: list[int],
    batch: pa.RecordBatch,
    seconds_per_batch: float,
    stop: threading.Event,
    appends: Calls,
) -> None:
    """Append ``batch`` to each of ``partitions`` in turn until ``stop``; paced when asked."""
    appender = StreamAppender(writer)  # one per thread, as one per sink instance
    due = time.monotonic()
    while not stop.is_set():
        for partition in partitions:
            if stop.is_set():
                return
            if seconds_per_batch:
                due += seconds_per_batch
                stop.wait(max(0.0, due - time.monotonic()))
            began = time.monotonic()
            try:
                appender.append(f"bench:{partition}", table_id, batch, lambda key: None)
            except Exception as exc:  # noqa: BLE001 - counted and reported; the stream's offset stays
                appends.failed(exc)
            else:
                appends.done(began, batch.num_rows)


def poll(
    client: bigquery.Client,
    sql: str,
    args: argparse.Namespace,
    in_flight: int,
    stop: threading.Event,
    appends: Calls,
    queries: Calls,
) -> None:
    """COUNT(*) every ``--poll`` s. An answer below the rows acknowledged before the query, or above
    those acknowledged after it plus the ``in_flight`` rows, is wrong (another call's result)."""
    while not stop.is_set():
        began, floor = time.monotonic(), appends.rows
        try:
            counted = next(iter(client.query(sql, timeout=args.call_timeout).result(timeout=args.call_timeout)))[0]
        except Exception as exc:  # noqa: BLE001 - a slow or failed query is reported, and polling goes on
            queries.failed(exc)
        else:
            queries.done(began)
            if not floor <= counted <= appends.rows + in_flight:
                queries.wrong.append(f"COUNT(*) {counted:,} while {floor:,}-{appends.rows:,} rows were acknowledged")
        stop.wait(args.poll)


def dump_threads(pid: int, label: str) -> Path:
    """py-spy's dump of the emulator's threads: Python frames, then with native frames (which can
    fail to merge, so both)."""
    out = REPO_ROOT / ".bench" / f"bqemu-concurrency-{label}-{int(time.time())}.txt"
    out.parent.mkdir(parents=True, exist_ok=True)
    dumps = []
    for extra in ([], ["--native"]):
        command = [str(PY_SPY), "dump", "--pid", str(pid), *extra]
        result = subprocess.run(command, capture_output=True, text=True, timeout=60, check=False)
        dumps.append(f"$ {' '.join(command)}\n{result.stdout}{result.stderr}")
    out.write_text("\n".join(dumps))
    return out


def run_once(bq: BigQuerySettings, pid: int, size: int, args: argparse.Namespace) -> None:
    client = make_client(bq)
    table_id = f"{bq.dataset_ref}.bqemu_concurrency_{size}_{uuid.uuid4().hex[:8]}"
    client.create_table(bigquery.Table(table_id, schema=CHANGES_SCHEMA))
    writer = StorageWriter(make_write_client(bq), args.call_timeout, args.call_timeout)
    batch = changelog_batch(size)
    # Paced: every writer sends its share of --rate, one batch at a time.
    seconds_per_batch = args.writers * size / args.rate if args.rate else 0.0
    appends, queries, stop = Calls(), Calls(), threading.Event()
    threads = [
        threading.Thread(
            target=write,
            args=(
                writer,
                table_id,
                list(range(w, args.partitions, args.writers)),
                batch,
                seconds_per_batch,
                stop,
                appends,
            ),
            name=f"writer-{w}",
            daemon=True,
        )
        for w in range(args.writers)
    ]
    if args.poll:
        sql = f"SELECT COUNT(*) FROM `{table_id}`"
        threads.append(
            threading.Thread(
                target=poll,
                args=(make_client(bq), sql, args, args.writers * size, stop, appends, queries),
                name="poller",
                daemon=True,
            )
        )
    sampler = ProcessSampler({"emulator": pid})
    client_cpu = time.process_time()  # this process only (the sampler would count our emulator, a child)
    began = time.monotonic()
    for thread in threads:
        thread.start()
    hung = ""
    while time.monotonic() - began < args.duration:
        time.sleep(0.5)
        sampler.sample()
        quiet = time.monotonic() - max(appends.last_done, queries.last_done)
        if quiet > args.hang_after:
            hung = f"no append and no query succeeded for {quiet:.0f} s, {time.monotonic() - began:.0f} s into the run"
            break
    elapsed = time.monotonic() - began
    report = sampler.report()
    report.append(
        f"  {'client':<10} cpu {(time.process_time() - client_cpu) / elapsed:5.2f} cores   (the writers and the poller)"
    )
    dump = dump_threads(pid, str(size)) if hung and args.dump else None
    stop.set()
    for thread in threads:
        thread.join(timeout=args.call_timeout + 5)
    stuck = [t.name for t in threads if t.is_alive()]
    say(
        f"BATCH {size:,} rows, {args.writers} writers over {args.partitions} streams,"
        f" {'paced to ' + format(args.rate, ',') + ' rows/s' if args.rate else 'unpaced'},"
        f" {'COUNT(*) every ' + format(args.poll, 'g') + ' s' if args.poll else 'no queries'}, {elapsed:.0f} s:"
    )
    say(
        f"  appends: {len(appends.latencies) / elapsed:,.1f}/s, {appends.rows / elapsed:,.0f} rows/s"
        f" ({appends.rows:,} rows); latency {appends.summary()}; {len(appends.errors)} failed"
        + (f" (first: {appends.errors[0]})" if appends.errors else "")
    )
    if args.poll:
        say(
            f"  queries: {queries.summary()}; {len(queries.errors)} failed"
            + (f" (first: {queries.errors[0]})" if queries.errors else "")
            + f"; {len(queries.wrong)} wrong"
            + (f" (first: {queries.wrong[0]})" if queries.wrong else "")
        )
    for line in report:
        say(line)
    if hung or stuck:
        say(f"  HUNG: {hung or 'the run ended'}; threads still stuck: {', '.join(stuck) or 'none'}")
        if dump:
            say(f"  py-spy dump of the emulator: {dump}")
        return
    try:
        counted = next(iter(client.query(f"SELECT COUNT(*) AS n FROM `{table_id}`").result(timeout=60)))["n"]
    except Exception as exc:  # noqa: BLE001 - reported: the emulator stopped answering after the run
        say(f"  HUNG after the run: the final COUNT(*) failed ({type(exc).__name__}: {exc})")
        return
    verdict = "all there" if counted == appends.rows else f"{counted - appends.rows:+,} against the rows appended"
    say(f"  no hang; COUNT(*) {counted:,}: {verdict}")
    client.delete_table(table_id)


@contextmanager
def scratch_emulator(settings: Settings, port: int) -> Iterator[tuple[BigQuerySettings, int]]:
    """An emulator of our own, started as ``make up`` starts it, on fresh data; stopped after."""
    bq = settings.bigquery.model_copy(update={"emulator_host": f"http://127.0.0.1:{port}"})
    stack_dir = settings.stack.dir / "bqemu-concurrency"
    shutil.rmtree(stack_dir, ignore_errors=True)
    emulator = BigQueryEmulator(bq, stack_dir, settings.stack.bigquery_emulator_venv)
    emulator.prepare()
    emulator.process.start(settings.stack.start_timeout_s)
    try:
        client = make_client(bq)
        client.create_dataset(bigquery.Dataset(bq.dataset_ref), exists_ok=True)
        yield bq, emulator.process.pid()  # type: ignore[misc]
    finally:
        emulator.process.stop(settings.stack.stop_timeout_s)
        shutil.rmtree(stack_dir, ignore_errors=True)


@contextmanager
def running_emulator(settings: Settings) -> Iterator[tuple[BigQuerySettings, int]]:
    stack = LocalStack(settings)
    pid = None if stack.bigquery is None else stack.bigquery.process.pid()
    if pid is None:
        raise SystemExit("--reuse: the stack's BigQuery emulator is not running (`make up`)")
    yield settings.bigquery, pid


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--batches", default="500", help="rows per append, one run each")
    parser.add_argument("--writers", type=int, default=4, help="appending threads")
    parser.add_argument("--partitions", type=int, default=16, help="streams, dealt over the writers")
    parser.add_argument("--rate", type=int, default=0, help="rows/s in all (0: as fast as they go)")
    parser.add_argument("--poll", type=float, default=0.25, help="seconds between COUNT(*) queries (0: none)")
    parser.add_argument("--duration", type=float, default=60)
    parser.add_argument("--call-timeout", type=float, default=10.0, help="of each append and each query")
    parser.add_argument("--hang-after", type=float, default=20.0, help="seconds with no call succeeding")
    parser.add_argument("--dump", action="store_true", help="py-spy dump of the emulator when it hangs")
    parser.add_argument("--reuse", action="store_true", help="use the emulator `make up` started")
    parser.add_argument("--port", type=int, default=59350, help="REST port of our own emulator (gRPC: ten above)")
    args = parser.parse_args(argv)
    # A SIGTERM (timeout, Ctrl-C's cousin) still stops our emulator: the context managers' finally.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    settings = Settings()
    say(f"machine: {machine()}")
    emulator = running_emulator(settings) if args.reuse else scratch_emulator(settings, args.port)
    with emulator as (bq, pid):
        for size in (int(x) for x in args.batches.split(",")):
            run_once(bq, pid, size, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
