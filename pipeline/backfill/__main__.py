"""``python -m pipeline backfill [--sinks redis,bigquery]``: fill sinks from the tables, hand over to the stream.

Runs under the pipeline's instance lock (no streaming job of the same consumer group may run), prints
its progress, and exits 0 once the sinks hold the snapshot and the stream positions that follow it;
then start the stream (``python -m pipeline``). Exit 1 with the reason when it refuses or fails.
"""

from __future__ import annotations

import argparse
import logging
import sys

import redis
from pydantic import ValidationError

from infra.process import StackError
from infra.settings import Settings
from pipeline.instance_lock import InstanceLock, LockHeld, Loss
from sinks.fencing import quick_client
from sinks.registry import lanes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipeline backfill", description=(__doc__ or "").split("\n")[0])
    parser.add_argument(
        "--sinks", default=None, help="which sinks to fill, as PIPELINE_SINKS (default: PIPELINE_SINKS)"
    )
    parser.add_argument("--splits", type=int, default=None, help="id ranges of engagement_events (BACKFILL_SPLITS)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("apache_beam").setLevel(logging.WARNING)
    try:
        settings = Settings()
        sink_names = args.sinks or settings.pipeline.sinks
        lanes(sink_names, settings)
        if args.splits is not None:
            settings = settings.model_copy(
                update={"backfill": settings.backfill.model_copy(update={"splits": max(1, args.splits)})}
            )
    except (ValidationError, ValueError) as exc:
        print(f"error: invalid configuration: {exc}", file=sys.stderr)
        return 2
    from pipeline.backfill.coordinator import Backfill, Refused

    ps = settings.pipeline
    try:
        lock = InstanceLock(
            quick_client(settings.redis, min(2.0, ps.lock_ttl_s / 10)), ps.consumer_group, ps.lock_ttl_s
        )
        generation = lock.acquire()
    except LockHeld as exc:
        print(f"error: {exc} (stop the streaming pipeline before a backfill)", file=sys.stderr)
        return 1
    except redis.RedisError as exc:
        print(f"error: cannot reach Redis for the instance lock: {exc}", file=sys.stderr)
        return 1
    lost: list[Loss] = []
    lock.start_refresh(lost.append)
    fenced = settings.model_copy(update={"pipeline": ps.model_copy(update={"fence_token": generation})})
    try:
        report = Backfill(fenced, sink_names).run()
    except (Refused, StackError) as exc:
        print(f"error: backfill refused or failed:\n{exc}", file=sys.stderr)
        return 1
    finally:
        lock.release()
    if lost:
        print("error: the instance lock was lost during the backfill; its writes were fenced", file=sys.stderr)
        return 1
    print(
        f"done: {sum(report.rows.values()):,} rows in {report.job_s:.1f} s ({report.rows_per_s:,.0f} rows/s), "
        f"{report.snapshots} snapshot(s), {report.attempts} job run(s); start the stream with `python -m pipeline`",
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
