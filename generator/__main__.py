"""``python -m generator``: seed the catalogue, then write engagement events into Postgres.

Continuous mode writes ``--rate`` rows a minute (``GENERATION_RATE``; seed 004's default 200,000 a
minute is 3,333 a second) until ``--duration`` seconds pass or Ctrl-C; burst mode (``--burst N``,
or ``BURST_MODE=true`` with ``BURST_COUNT``) writes N rows as fast as the database takes them.
Every flag has an environment variable (see .env.example); flags win.

A Postgres restart does not end a run: the write is retried with backoff on a new connection and
the outage reported (``generator.retry``). Exit status: 0 done, 1 an error (Postgres unreachable at
the start or for longer than ``GENERATOR_RETRY_GIVE_UP_S``, a write refused in burst mode, any
non-transient error), 2 bad configuration, 130 interrupted.
"""

from __future__ import annotations

import argparse
import random
import signal
import sys
from types import FrameType

import psycopg
from pydantic import ValidationError

from generator.events import EventFactory
from generator.retry import BatchRefusedError, OutageTooLongError, RetryingWriter, RetryPolicy
from generator.runner import ensure_catalogue, run_burst, run_continuous
from generator.writer import PostgresWriter, UnreachableDatabaseError, connect, open_connection
from infra.settings import GeneratorSettings, Settings


def _positive_int(text: str) -> int:
    try:
        value = int(text.replace("_", "").replace(",", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return value


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {value}")
    return value


def parse_args(argv: list[str] | None, defaults: GeneratorSettings) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m generator", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--rate",
        type=_positive_int,
        default=None,
        help=f"rows per minute in continuous mode (GENERATION_RATE, default {defaults.generation_rate:,})",
    )
    parser.add_argument(
        "--burst",
        type=_positive_int,
        default=None,
        metavar="N",
        help="write N rows as fast as possible, then stop (BURST_MODE=true + BURST_COUNT)",
    )
    parser.add_argument(
        "--duration",
        type=_positive_float,
        default=None,
        metavar="SECONDS",
        help="stop continuous mode after this many seconds (default: run until Ctrl-C)",
    )
    parser.add_argument("--seed", type=int, default=None, help="random seed, for a reproducible catalogue and stream")
    parser.add_argument(
        "--content",
        type=_positive_int,
        default=None,
        metavar="N",
        help=f"catalogue size to seed when the content table is empty (default {defaults.content_count})",
    )
    parser.add_argument("--seed-only", action="store_true", help="seed the catalogue and exit")
    return parser.parse_args(argv)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    # SIGTERM behaves like Ctrl-C: the open transaction rolls back, the summary is printed.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        print(f"error: invalid configuration in the environment:\n{exc}", file=sys.stderr)
        return 2
    args = parse_args(argv, settings.generator)
    overrides: dict[str, object] = {}
    if args.rate is not None:
        overrides["generation_rate"] = args.rate
    if args.burst is not None:
        overrides.update(burst_mode=True, burst_count=args.burst)
    if args.duration is not None:
        overrides["duration_s"] = args.duration
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.content is not None:
        overrides["content_count"] = args.content
    gen = settings.generator.model_copy(update=overrides)

    def report(message: str) -> None:
        print(message, flush=True)

    signal.signal(signal.SIGTERM, _raise_interrupt)
    rng = random.Random(gen.seed)
    conninfo = settings.postgres.conninfo()
    writer: PostgresWriter | None = None
    try:
        writer = PostgresWriter(connect(conninfo), gen, rng)
        catalogue = ensure_catalogue(writer, gen, rng, report)
        report(f"catalogue: {len(catalogue)} content items")
        if args.seed_only:
            return 0
        factory = EventFactory(catalogue, gen, rng)
        retrying = RetryingWriter(writer, lambda: open_connection(conninfo), RetryPolicy.from_settings(gen), report)
        if gen.burst_mode:
            report(f"burst: writing {gen.burst_count:,} events in transactions of {gen.burst_batch_size:,}")
            stats = run_burst(retrying, factory, catalogue, gen.burst_count, gen.burst_batch_size, report)
        else:
            until = f"for {gen.duration_s:g} s" if gen.duration_s else "until Ctrl-C"
            report(f"continuous: {gen.generation_rate:,} rows/min ({gen.rate_per_second:,.0f}/s) {until}")
            try:
                stats = run_continuous(retrying, factory, catalogue, gen, report)
            except KeyboardInterrupt:
                report("interrupted: the open batch was rolled back")
                return 130
        report(stats.summary())
        return 0
    except (UnreachableDatabaseError, OutageTooLongError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except BatchRefusedError as exc:
        print(f"error: {exc}; not retried", file=sys.stderr)
        return 1
    except psycopg.Error as exc:
        print(f"error: Postgres refused a write ({type(exc).__name__}, not retried): {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: the open batch was rolled back", file=sys.stderr)
        return 130
    finally:
        if writer is not None:
            writer.conn.close()


if __name__ == "__main__":
    sys.exit(main())
