"""``python -m pipeline.demo``: the main job end to end on the local stack, with a live leaderboard.

Starts the pipeline (under its supervisor) and the generator at seed 004's rate, prints the
leaderboard every few seconds, then stops both. ``make demo`` runs it after ``make up``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from infra.process import stop_group
from infra.settings import REPO_ROOT, Settings
from sinks.leaderboard_view import render


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of generated traffic")
    parser.add_argument("--rate", type=int, default=200_000, help="events per minute (seed 004: 200,000)")
    parser.add_argument("--every", type=float, default=5.0, help="seconds between leaderboard prints")
    args = parser.parse_args(argv)
    settings = Settings()
    logs = settings.stack.dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "pipeline-demo.log", "w") as log:
        print(f"==> starting the pipeline (log: {log.name})", flush=True)
        pipeline = subprocess.Popen(
            [sys.executable, "-m", "pipeline"],
            cwd=REPO_ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            time.sleep(8)  # Prism, job submission, the content view loading
            if pipeline.poll() is not None:
                print(f"error: the pipeline exited with {pipeline.returncode}; see {log.name}", file=sys.stderr)
                return 1
            print(f"==> generator at {args.rate:,} events/min for {args.duration:g} s", flush=True)
            generator = subprocess.Popen(
                [sys.executable, "-m", "generator", "--rate", str(args.rate), "--duration", str(args.duration)],
                cwd=REPO_ROOT,
            )
            client = settings.redis.client()
            while generator.poll() is None:
                time.sleep(args.every)
                print("\n" + render(client, settings.leaderboard), flush=True)
            time.sleep(1)
            print("\n" + render(client, settings.leaderboard), flush=True)
            for content_type in ("podcast", "newsletter", "video"):
                print("\n" + render(client, settings.leaderboard, 3, content_type), flush=True)
            return generator.returncode or 0
        finally:
            stop_group(pipeline)
            print("==> pipeline stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
