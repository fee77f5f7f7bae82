"""How long ``sinks.redis_swap.swap`` takes (and so the live Redis sinks' pause of a rebuild grows)
with the number of keys: a copy of N content ids (``engagement:content:*`` and ``content:*``), 20
minute buckets and the positions, swapped over live keys, on a throwaway ``redis-server`` of its own.

    python -m loadtest.bench_swap [--contents 1000 10000 100000] [--port 56999]

Prints, per size, the keys renamed, the time of ``swap()`` (the SCANs that list both prefixes and
the script) and the script's own time in Redis (SLOWLOG), during which Redis serves nobody else.
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
import time

import redis

from sinks.redis_keys import RedisKeys
from sinks.redis_swap import pause, swap

MINUTE = 29_000_000


def fill(client: redis.Redis, contents: int, copy: RedisKeys, live: RedisKeys) -> None:
    client.flushall()
    pipe = client.pipeline(transaction=False)
    for i in range(contents):
        pipe.hset(copy.content_metrics(str(i)), mapping={"events": 1, "total_seconds": 2.5})
        pipe.hset(copy.content(str(i)), mapping={"title": "t"})
        pipe.hset(live.content_metrics(str(i)), mapping={"events": 9})
        if i % 1000 == 999:
            pipe.execute()
    members = {str(i): 1.0 for i in range(0, contents, max(1, contents // 500))}
    for m in range(20):
        pipe.zadd(copy.minute(MINUTE + m), members)
    pipe.hset(copy.positions("redis_leaderboard"), "t:0", "5")
    pipe.hset(live.positions("redis_leaderboard"), "t:0", "5")
    pipe.execute()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m loadtest.bench_swap", description=(__doc__ or "").split("\n")[0])
    parser.add_argument("--contents", type=int, nargs="+", default=[1_000, 10_000, 100_000])
    parser.add_argument("--port", type=int, default=56999)
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as data:
        server = subprocess.Popen(
            ["redis-server", "--port", str(args.port), "--save", "", "--appendonly", "no", "--dir", data],
            stdout=subprocess.DEVNULL,
        )
        try:
            client = redis.Redis(port=args.port)
            deadline = time.monotonic() + 10
            while True:
                try:
                    client.ping()
                    break
                except redis.ConnectionError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.1)
            client.config_set("slowlog-log-slower-than", 0)
            copy, live = RedisKeys("rebuild:bench:"), RedisKeys("")
            for contents in args.contents:
                fill(client, contents, copy, live)
                held = pause(client, live, 60_000)
                client.slowlog_reset()
                began = time.perf_counter()
                done = swap(client, copy, live, 10, pause=held)
                took_ms = (time.perf_counter() - began) * 1000
                script_ms = max(entry["duration"] for entry in client.slowlog_get(128)) / 1000
                print(
                    f"{contents:>8,} content ids: {done.renamed:>8,} keys renamed; swap() {took_ms:,.0f} ms "
                    f"(the script {script_ms:,.0f} ms of it, Redis serving nobody else)"
                )
        finally:
            server.terminate()
            server.wait(30)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
