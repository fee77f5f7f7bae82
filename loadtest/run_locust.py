"""``make loadtest``: the streaming pipeline, then locust headless against it, then the figures.

    python -m loadtest.run_locust --users 8 --spawn-rate 8 --duration 60s --rate 3333 [-- more locust flags]

The stack must be up (``make loadtest`` depends on ``make up``). The catalogue is seeded if empty,
the pipeline is started as the benchmarks start it (``bench_harness.streaming_pipeline``, the
Redis lanes) and the run waits until a probe reaches the board, so the SLA user measures a live
pipeline, not its start-up. Locust's options are in ``loadtest/locust.conf``; its CSV, HTML and final JSON
statistics go to ``.loadtest/``. The exit status is locust's: 1 when any request failed (an SLA miss included).
"""

from __future__ import annotations

import argparse
import subprocess
import sys

from infra.settings import REPO_ROOT, Settings
from loadtest.bench_harness import streaming_pipeline
from loadtest.locust_pacing import positive_float, positive_int
from loadtest.locust_report import read_stats, summary
from loadtest.probes import wait_until_live

CONFIG = REPO_ROOT / "loadtest" / "locust.conf"
STATS_JSON = REPO_ROOT / ".loadtest" / "locust.json"  # json-file in locust.conf, plus locust's suffix


def locust_command(args: argparse.Namespace, extra: list[str]) -> list[str]:
    return [
        sys.executable,
        "-m",
        "locust",
        "--config",
        str(CONFIG),
        "--users",
        str(args.users),
        "--spawn-rate",
        str(args.spawn_rate),
        "--run-time",
        args.duration,
        "--events-per-second",
        str(args.rate),
        *extra,
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--users", type=positive_int, default=8, help="users: one SLA user, the rest write")
    parser.add_argument("--spawn-rate", type=positive_float, default=8.0, help="users started per second")
    parser.add_argument("--duration", default="60s", help="locust's --run-time (60s, 5m, ...)")
    parser.add_argument("--rate", type=positive_float, default=3333.0, help="events per second over all writers")
    args, extra = parser.parse_known_args(argv)
    extra = [flag for flag in extra if flag != "--"]
    if args.users < 2:
        parser.error("--users must be at least 2: one SLA user and a writer")
    settings = Settings()
    (REPO_ROOT / ".loadtest").mkdir(exist_ok=True)
    STATS_JSON.unlink(missing_ok=True)
    # Seeded before the pipeline starts, so its content view has the catalogue from the first event.
    subprocess.run([sys.executable, "-m", "generator", "--seed-only"], cwd=REPO_ROOT, check=True)
    with streaming_pipeline(log_name="loadtest-pipeline.log"):
        print(f"pipeline live: a probe reached the board in {wait_until_live(settings):.1f} s", flush=True)
        code = subprocess.run(locust_command(args, extra), cwd=REPO_ROOT, check=False).returncode
    if STATS_JSON.exists():
        print("\n".join(["", "load test figures:", *(f"  {line}" for line in summary(read_stats(STATS_JSON)))]))
    print(f"CSV and HTML report in {STATS_JSON.parent}/ (locust exit status {code})")
    return code


if __name__ == "__main__":
    raise SystemExit(main())
