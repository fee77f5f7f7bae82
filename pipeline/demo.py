"""``python -m pipeline.demo``: the main job end to end on the local stack, with a live leaderboard.

Starts the pipeline (under its supervisor), the live leaderboard page (``python -m pipeline
dashboard``, its URL printed) and the generator at seed 004's rate, prints the leaderboard every few
seconds, then (when the BigQuery sink runs) waits for BigQuery to catch up
and prints seed 004's query with its result, then (when the HTTP sink runs) what the local
receiver got per endpoint, then stops both. ``make demo`` runs it after ``make up``.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

from infra.process import stop_group
from infra.settings import REPO_ROOT, Settings
from sinks.leaderboard_view import render
from sinks.registry import lanes


def wait_caught_up(settings: Settings, topics: dict[str, str], what: str, timeout_s: float = 120.0) -> None:
    """Until the non-atomic sinks in ``topics`` (sink -> topic) have stored their topics' end."""
    from sinks.kafka_positions import SinksLag

    lag = SinksLag(settings.kafka.client_config(), settings.pipeline.consumer_group, topics)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            behind = sum(lag.now().values())
            if behind == 0:
                break
            if time.monotonic() > deadline:
                print(f"==> {what} is still {behind:,} changes behind; showing what it has", flush=True)
                break
            print(f"==> {what}: {behind:,} changes to go", flush=True)
            time.sleep(3)
    finally:
        lag.close()


def show_bigquery(settings: Settings) -> None:
    """Wait until the BigQuery sinks have stored the topics' end, then run seed 004's query."""
    from sinks.bigquery_admin import run_query, seed_query
    from sinks.bigquery_dataset import make_client

    topics = {"bigquery": settings.cdc.engagement_topic, "bigquery_content": settings.cdc.content_topic}
    wait_caught_up(settings, topics, "BigQuery")
    bq = settings.bigquery
    client = make_client(bq)
    sql = seed_query(bq)
    count = run_query(client, f"SELECT COUNT(*) AS n FROM {bq.dataset}.{bq.view}")[0]["n"]
    print(f"\n==> BigQuery ({bq.emulator_host or bq.project_id}): {count:,} rows in {bq.dataset}.{bq.view}")
    print(f"    {sql}")
    for row in run_query(client, sql):
        pct = row["avg_engagement_pct"]
        print(f"    {row['content_type'] or '(none)':<11} {'-' if pct is None else f'{pct:6.2f} %'}")


def show_http(settings: Settings, sinks: list[str]) -> None:
    """Wait until the HTTP sinks have stored the topic's end, then show what the receiver got."""
    from infra.http_receiver.client import ReceiverClient

    wait_caught_up(settings, dict.fromkeys(sinks, settings.cdc.engagement_topic), "HTTP")
    receiver = ReceiverClient(settings.http_receiver.control_url)
    try:
        stats = receiver.stats()
        print(f"\n==> HTTP receiver ({settings.http_receiver.url}): {stats['requests']:,} requests", flush=True)
        for endpoint, counts in sorted(stats["by_endpoint"].items()):
            print(
                f"    {endpoint:<12} {counts['unique']:>8,} changes  {counts['duplicates']:>6,} duplicates"
                f"  {counts['rejected']:>4,} refused  ({counts['requests']:,} requests)"
            )
        lag = stats["lag_ms"]
        if lag["count"]:
            print(f"    commit -> received: p50 {lag['p50']:.0f} ms, p99 {lag['p99']:.0f} ms, {lag['count']:,} changes")
        for change in receiver.changes(last=2):
            print(f"    e.g. {change}")
    finally:
        receiver.close()


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
        dashboard = subprocess.Popen(
            [sys.executable, "-m", "pipeline", "dashboard"],
            cwd=REPO_ROOT,
            stdout=subprocess.DEVNULL,
            stderr=log,
            start_new_session=True,
        )
        print(f"==> live leaderboard: {settings.dashboard.url} (open it in a browser while the demo runs)", flush=True)
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
            running = [spec.name for lane in lanes(settings.pipeline.sinks, settings) for spec in lane.sinks]
            if "bigquery" in running:
                show_bigquery(settings)
            http = [name for name in running if name.startswith("http_")]
            if http:
                show_http(settings, http)
            return generator.returncode or 0
        finally:
            stop_group(dashboard)
            stop_group(pipeline)
            print("==> pipeline and live page stopped", flush=True)


if __name__ == "__main__":
    sys.exit(main())
