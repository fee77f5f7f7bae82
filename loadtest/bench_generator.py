"""How fast one generator process writes engagement events into the local Postgres.

Prints the generation-only rate (no database), then the rate of bursts written through COPY while
Debezium streams them (the realistic case: they share two cores), as a median of --repeat runs.

    make bench-generator            # or: python -m loadtest.bench_generator --rows 100000 --repeat 3
"""

from __future__ import annotations

import argparse
import random
import statistics
import time
from datetime import UTC, datetime

from generator.events import EventFactory
from generator.runner import ensure_catalogue, run_burst
from generator.writer import PostgresWriter, connect
from infra.settings import Settings
from loadtest.procstats import machine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=5_000)
    args = parser.parse_args(argv)

    settings = Settings()
    gen = settings.generator
    print(machine())
    rng = random.Random(1)
    with connect(settings.postgres.conninfo()) as conn:
        writer = PostgresWriter(conn, gen, rng)
        catalogue = ensure_catalogue(writer, gen, rng, print)
        factory = EventFactory(catalogue, gen, rng)

        began = time.perf_counter()
        for _ in range(args.rows // args.batch):
            factory.batch(args.batch, datetime.now(UTC))
        print(f"generation only (no database): {args.rows / (time.perf_counter() - began):,.0f} rows/s")

        rates = []
        for run in range(1, args.repeat + 1):
            stats = run_burst(writer, factory, catalogue, args.rows, args.batch, lambda _: None)
            rates.append(stats.rate)
            print(f"run {run}: {stats.summary()}")
    print(
        f"generator into Postgres, {args.rows:,} rows in transactions of {args.batch:,}: "
        f"median {statistics.median(rates):,.0f} rows/s (min {min(rates):,.0f}, max {max(rates):,.0f})"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
