"""Read the live leaderboards back from Redis: what a dashboard (or ``make demo``) shows.

    python -m sinks.leaderboard_view            # top 10 of the last 10 minutes, overall and per type
    python -m sinks.leaderboard_view --top 5 --type podcast

The same data with redis-cli (see the README):
    ZREVRANGE top_engagement:10min 0 9 WITHSCORES
    HGETALL content:<id>        HGETALL engagement:content:<id>
"""

from __future__ import annotations

import argparse
import sys

import redis

from infra.settings import LeaderboardSettings, Settings
from sinks.redis_leaderboard import board_key


def render(client: redis.Redis, board: LeaderboardSettings, top: int = 10, content_type: str | None = None) -> str:
    key = board_key(board.window_minutes) + (f":{content_type}" if content_type else "")
    rows = client.zrevrange(key, 0, top - 1, withscores=True)
    title = f"{key}  (engagement seconds of events in the last {board.window_minutes} minutes)"
    lines = [title, "-" * len(title)]
    if not rows:
        lines.append("  (empty: is the pipeline running? `make pipeline`)")
    for rank, (member, score) in enumerate(rows, start=1):
        content_id = member.decode()
        meta = {k.decode(): v.decode() for k, v in client.hgetall(f"content:{content_id}").items()}
        metrics = {k.decode(): v.decode() for k, v in client.hgetall(f"engagement:content:{content_id}").items()}
        avg_pct = float(metrics.get("avg_pct", "nan"))
        lines.append(
            f"{rank:>3}. {score:>12,.1f} s  {meta.get('content_type', '?'):<10} "
            f"{meta.get('title', content_id)[:48]:<48}  plays {metrics.get('plays', 0):>6}  "
            f"finishes {metrics.get('finishes', 0):>5}  avg {avg_pct:5.1f} %"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the live engagement leaderboard from Redis.")
    parser.add_argument("--top", type=int, default=10)
    parser.add_argument("--type", choices=["podcast", "newsletter", "video"], default=None)
    args = parser.parse_args(argv)
    settings = Settings()
    client = settings.redis.client()
    try:
        print(render(client, settings.leaderboard, args.top, args.type))
    except redis.RedisError as exc:
        print(f"error: cannot read Redis at {settings.redis.host}:{settings.redis.port}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
