"""The BigQuery sink against the emulator: insert rate, drain rate, commit -> visible, and its cost.

    make bench-bigquery                          # all three, both write modes, about 15 minutes
    python -m loadtest.bench_bigquery insert --batches 100,500,1000,2000
    python -m loadtest.bench_bigquery drain --events 100000
    python -m loadtest.bench_bigquery latency --rate 3333 --duration 120
    python -m loadtest.bench_bigquery ceiling --events 400000 --rounds 2

- ``insert``: insertAll alone (no pipeline), changelog rows of the sink's shape into a scratch table,
  per request size: the emulator's ceiling, and its CPU.
- ``drain``: a burst of ``--events`` rows, then a bounded pipeline run with the BigQuery lanes
  only, from the positions the sink had: rows/s through the sink, and the CPU of the job against
  the emulator's, which says which of the two limits the rate.
- ``latency``: two streaming runs at ``--rate`` events/s with probe rows, ``PIPELINE_SINKS=redis``
  then ``redis,bigquery`` (whose load starts once the BigQuery lanes have caught up): commit -> on
  ``top_engagement:10min`` in both (the board's cost of the BigQuery lanes, same run), and
  commit -> in the changelog, which the view reads at query time (so it is also commit -> visible
  in ``analytics.engagement_events``), polled every 250 ms. The polls scan the changelog, so run
  it on a small one (``make reset`` first): on the emulator they cost more as the table grows.
- ``ceiling``: the BigQuery lane's own ceiling against a null BigQuery, apart from the emulator
  (``loadtest.bench_bigquery_ceiling``).

Run on a quiet machine with the stack up (``make up``).
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
import uuid
from datetime import UTC, datetime

from google.cloud import bigquery

from infra.settings import Settings
from infra.stack.local import LocalStack
from loadtest.bench_bigquery_ceiling import cmd_ceiling
from loadtest.bench_harness import say, stack_sampler
from loadtest.bench_pipeline import KafkaSinksLag, burst_then_drain, latency_phase
from loadtest.probes import Prober
from loadtest.procstats import ProcessSampler, describe, machine, percentile
from sinks.bigquery_dataset import make_client
from sinks.bigquery_rows import change_row, insert_id
from sinks.bigquery_tables import CHANGES_SCHEMA, Quarter, changes_table_id
from sinks.records import ContentRow, EngagementRow, EnrichedChange, SourcePosition

CONTENT = ContentRow("bench", "bench", "Benchmark", "video", 600, None)


def sample_rows(n: int, base: int) -> tuple[list[dict], list[str]]:
    rows, ids = [], []
    for i in range(n):
        row = EngagementRow(base + i, "bench", str(uuid.uuid4()), "play", datetime.now(UTC), 61_000, "web", '{"a": 1}')
        change = EnrichedChange(
            SourcePosition("bench", 0, base + i), b"k", b"v", "c", (1, base + i), 0, None, row, CONTENT, (), 61.0, 10.2
        )
        rows.append(change_row(change, "2026-12-02T00:00:00.000000Z"))
        ids.append(insert_id(change.position))
    return rows, ids


def emulator_sampler(stack: LocalStack) -> ProcessSampler:
    if stack.bigquery is None or stack.bigquery.process.pid() is None:
        raise SystemExit("the BigQuery emulator is not running: `make up` (with BIGQUERY_EMULATOR_HOST set)")
    return ProcessSampler({"bigquery": stack.bigquery.process.pid()})  # type: ignore[dict-item]


def cmd_insert(settings: Settings, stack: LocalStack, args: argparse.Namespace) -> None:
    bq = settings.bigquery
    client = make_client(bq)
    for size in (int(x) for x in args.batches.split(",")):
        table = bigquery.Table(f"{bq.dataset_ref}.bench_insert_{size}_{int(time.time())}", schema=CHANGES_SCHEMA)
        client.create_table(table)
        sampler = emulator_sampler(stack)
        batches = [sample_rows(size, k * size) for k in range(max(1, args.rows // size))]
        calls = []
        began = time.monotonic()
        for rows, ids in batches:
            start = time.monotonic()
            errors = client.insert_rows_json(table, rows, row_ids=ids, skip_invalid_rows=True, timeout=60)
            calls.append((time.monotonic() - start) * 1000)
            assert not errors, errors[:1]
            sampler.sample()
        elapsed = time.monotonic() - began
        total = size * len(batches)
        say(
            f"INSERT {size:>5} rows/request: {total / elapsed:,.0f} rows/s over {total:,} rows;"
            f" per request median {percentile(calls, 50):,.0f} ms, p99 {percentile(calls, 99):,.0f} ms"
        )
        for line in sampler.report():
            say(f"  {line}")
        client.delete_table(table)


def cmd_drain(settings: Settings, stack: LocalStack, args: argparse.Namespace) -> None:
    for mode in args.modes.split(","):
        say(f"--- BIGQUERY_WRITE_MODE={mode}")
        drain_once(settings, stack, args.events, mode)


def drain_once(settings: Settings, stack: LocalStack, events: int, mode: str) -> None:
    sinks = KafkaSinksLag(settings, "bigquery")  # one consumer for every poll of the lag

    def lag() -> int:
        return sinks.now()["bigquery"]

    try:
        if behind := lag():
            say(f"  (the BigQuery sink is {behind:,} records behind before the burst; they count too)")
        env = {"PIPELINE_SINKS": "bigquery", "BIGQUERY_WRITE_MODE": mode}
        total, seconds, sampler = burst_then_drain(stack, events, lag, env, "bench-bigquery.log")
    finally:
        sinks.close()
    rate = total / seconds
    say(f"BIGQUERY DRAIN ({mode}): {total:,} records at {rate:,.0f} rows/s (bounded run, BigQuery lanes only)")
    for line in sampler.report():
        say(f"  {line}")


class ChangelogWatch:
    """Polls the changelog for the prober's rows: commit -> visible in BigQuery, per probe."""

    def __init__(self, settings: Settings, prober: Prober, interval: float = 0.25) -> None:
        bq = settings.bigquery
        self._client = make_client(bq)
        self._prober = prober
        self._table = changes_table_id(bq, Quarter.of(datetime.now(UTC)).suffix)
        self._interval = interval
        self.latencies: list[float] = []
        self.seen: set[int] = set()
        self.errors: list[str] = []
        self.query_ms: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        sql = f"SELECT id FROM `{self._table}` WHERE content_id = @c"
        config = bigquery.QueryJobConfig(
            query_parameters=[bigquery.ScalarQueryParameter("c", "STRING", self._prober.content_id)]
        )
        while not self._stop.is_set():
            asked = time.monotonic()
            try:
                rows = list(self._client.query(sql, job_config=config).result(timeout=60))
            except Exception as exc:  # noqa: BLE001 - a slow query is reported, and the watch goes on
                self.errors.append(f"{type(exc).__name__}: {exc}")
                continue
            now = time.monotonic()
            self.query_ms.append((now - asked) * 1000)
            for row in rows:
                committed = self._prober.committed.get(row["id"])
                if row["id"] not in self.seen and committed is not None:
                    self.seen.add(row["id"])
                    self.latencies.append((now - committed) * 1000)
            self._stop.wait(self._interval)

    def close(self) -> None:
        self._stop.set()
        self._thread.join()


def cmd_latency(settings: Settings, stack: LocalStack, args: argparse.Namespace) -> None:
    modes = args.modes.split(",")
    say(f"--- 1/{len(modes) + 1} PIPELINE_SINKS=redis at {args.rate:,} events/s for {args.duration:g} s")
    alone = latency_phase(settings, stack, args.rate, args.duration, extra_env={"PIPELINE_SINKS": "redis"})
    for n, mode in enumerate(modes, start=2):
        say(
            f"--- {n}/{len(modes) + 1} PIPELINE_SINKS=redis,bigquery BIGQUERY_WRITE_MODE={mode}"
            f" at {args.rate:,} events/s for {args.duration:g} s"
        )
        latency_with_bigquery(settings, stack, args, mode, alone)


def latency_with_bigquery(
    settings: Settings, stack: LocalStack, args: argparse.Namespace, mode: str, alone: Prober
) -> None:
    watches: list[ChangelogWatch] = []
    sampler = stack_sampler(stack)
    probers: list[Prober] = []

    def start_watch(prober: Prober) -> None:
        probers.append(prober)
        watches.append(ChangelogWatch(settings, prober))

    def all_visible() -> bool:
        # After the load the pipeline runs on until BigQuery has every probe: the lag at the end counts.
        watch = watches[0]
        return len(watch.seen) >= len(probers[0].committed)

    def caught_up() -> None:
        # The first phase left the BigQuery lanes behind (they did not run): start level.
        sinks = KafkaSinksLag(settings, "bigquery")
        try:
            sinks.wait_caught_up()
        finally:
            sinks.close()

    both = latency_phase(
        settings,
        stack,
        args.rate,
        args.duration,
        extra_env={"PIPELINE_SINKS": "redis,bigquery", "BIGQUERY_WRITE_MODE": mode},
        sampler=sampler,
        with_prober=start_watch,
        linger=all_visible,
        linger_timeout_s=args.linger,
        before_load=caught_up,
    )
    watch = watches[0]
    watch.close()
    missing = len(both.committed) - len(watch.seen)
    say(
        f"COMMIT -> VISIBLE IN BIGQUERY ({mode}) at {args.rate:,} events/s: {describe(watch.latencies, 'probes')}"
        + (f", {missing} not visible {args.linger:g} s after the load" if missing else "")
        + (f"; {len(watch.errors)} watch queries failed ({watch.errors[0]})" if watch.errors else "")
    )
    # A probe counts from its commit to the end of the query that saw it: this is the resolution.
    say(f"  the watch's queries: {describe(watch.query_ms, 'queries')}")
    if watch.latencies:
        say(f"  the last probe to appear took {watch.latencies[-1]:,.0f} ms (this grows while BigQuery falls behind)")
    p99_alone, p99_both = percentile(alone.latencies, 99), percentile(both.latencies, 99)
    say(
        f"LEADERBOARD p99 with BigQuery ({mode}) {p99_both:,.0f} ms, without {p99_alone:,.0f} ms:"
        f" ratio {p99_both / p99_alone:.2f};"
        f" p50 {percentile(both.latencies, 50):,.0f} vs {percentile(alone.latencies, 50):,.0f} ms"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    insert = commands.add_parser("insert")
    insert.add_argument("--batches", default="100,500,1000,2000")
    insert.add_argument("--rows", type=int, default=20_000, help="rows per request size")
    drain = commands.add_parser("drain")
    drain.add_argument("--events", type=int, default=100_000)
    drain.add_argument("--modes", default="insert_all,storage_write", help="BIGQUERY_WRITE_MODE values, in turn")
    latency = commands.add_parser("latency")
    latency.add_argument("--rate", type=int, default=3333)
    latency.add_argument("--duration", type=float, default=120)
    latency.add_argument("--modes", default="insert_all,storage_write", help="BIGQUERY_WRITE_MODE values, in turn")
    latency.add_argument("--linger", type=float, default=180, help="seconds to wait for BigQuery after the load")
    ceiling = commands.add_parser("ceiling")
    ceiling.add_argument("--events", type=int, default=400_000, help="envelopes per round, from the topic's start")
    ceiling.add_argument("--rounds", type=int, default=2, help="rounds of each mode, alternating")
    ceiling.add_argument("--modes", default="insert_all,storage_write", help="BIGQUERY_WRITE_MODE values, in turn")
    ceiling.add_argument("--port", type=int, default=59150, help="the null endpoint's REST port (gRPC: ten above)")
    args = parser.parse_args(argv)
    settings = Settings()
    stack = LocalStack(settings)
    say(f"machine: {machine()}")
    commands_by_name = {"insert": cmd_insert, "drain": cmd_drain, "latency": cmd_latency, "ceiling": cmd_ceiling}
    commands_by_name[args.command](settings, stack, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
