"""``python -m pipeline rebuild-redis`` while the pipeline runs and the generator writes: damaged
boards are rebuilt from the topics into fresh keys and swapped in atomically; Redis equals SQL after
it and after more writes, and a reader polling during the swap never sees a missing or empty board."""

from __future__ import annotations

import json
import threading
import time

import pytest

from infra.settings import Settings
from infra.stack.local import LocalStack
from sinks.redis_keys import RedisKeys
from tests.integration.pipeline_helpers import (
    assert_redis_matches_sql,
    flush_redis,
    run_pipeline,
    streaming,
    wait_caught_up,
)
from tests.integration.test_pipeline import generate

pytestmark = pytest.mark.integration


class BoardWatcher(threading.Thread):
    """Polls the live board and the sink's positions as fast as it can, counting what it missed."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(daemon=True)
        keys = RedisKeys("")
        self.board = keys.board(settings.leaderboard.window_minutes)
        self.positions = keys.positions("redis_leaderboard")
        self.client = settings.redis.client()
        self.stop = threading.Event()
        self.polls = 0
        self.missing: list[tuple[float, int, int]] = []

    def run(self) -> None:
        while not self.stop.is_set():
            pipe = self.client.pipeline(transaction=False)
            pipe.zcard(self.board)
            pipe.hlen(self.positions)
            cards, positions = pipe.execute()
            self.polls += 1
            if cards == 0 or positions == 0:
                self.missing.append((time.time(), cards, positions))


def test_rebuild_swaps_in_a_board_equal_to_sql_while_the_pipeline_writes(
    stack: LocalStack, settings: Settings, tmp_path
):
    flush_redis(settings)
    client = settings.redis.client(decode_responses=True)
    keys = RedisKeys("")
    board = keys.board(settings.leaderboard.window_minutes)
    with streaming(settings, tmp_path / "pipeline.log") as pipeline:
        generator = generate(settings, "--rate", "60000", "--duration", "50")  # 1,000 events/s
        deadline = time.monotonic() + 60
        while client.zcard(board) == 0:
            assert time.monotonic() < deadline, "the board never filled"
            time.sleep(0.2)
        time.sleep(3)
        # Damage: a member that is not content, a stale bucket in the lateness horizon, a lost
        # bucket, wrong and lost totals.
        now_minute = int(time.time() // 60)
        client.zadd(board, {"not-content": 1e6})
        client.zadd(keys.minute(now_minute - 3), {"zombie": 42.0})
        client.zadd(keys.minute(now_minute - 15), {"zombie": 7.0})  # in the lateness horizon
        client.hset(keys.content("not-content"), mapping={"title": "stale"})
        client.delete(keys.minute(now_minute))
        [first, second] = [key for key in client.scan_iter("engagement:content:*", count=1000)][:2]
        client.hincrby(first, "events", 1000)
        client.delete(second)
        watcher = BoardWatcher(settings)
        watcher.start()
        began = time.monotonic()
        rebuild = run_pipeline(settings, "rebuild-redis", "--json", timeout=600)
        took = time.monotonic() - began
        watcher.stop.set()
        watcher.join(10)
        assert rebuild.returncode == 0, rebuild.stdout[-3000:] + rebuild.stderr[-3000:]
        report = json.loads(rebuild.stdout.strip().splitlines()[-1])
        generator_running = generator.poll() is None
        assert generator.wait(180) == 0
        wait_caught_up(settings, timeout=180)
        assert pipeline.alive()
        assert_redis_matches_sql(settings)
        assert client.zscore(board, "not-content") is None
        assert client.zscore(keys.minute(now_minute - 3), "zombie") is None
        # The copy may have that minute (the session's earlier tests wrote events then): the zombie
        # member is gone either way, and so is the hash of content that never existed.
        assert client.zscore(keys.minute(now_minute - 15), "zombie") is None
        assert not client.exists(keys.content("not-content"))
        # More writes after the swap: the live sinks go on from the swapped-in positions.
        assert generate(settings, "--burst", "3000", "--seed", "5").wait(120) == 0
        wait_caught_up(settings, timeout=180)
        checked = assert_redis_matches_sql(settings)
    print(
        f"rebuild: {took:.1f} s for {report['copied']} records (generator still writing at the swap: "
        f"{generator_running}); live sinks paused {report['pause_ms']} ms, swap {report['swap_ms']} ms, "
        f"{report['renamed']} keys renamed, {report['deleted']} deleted; watcher polls {watcher.polls}; {checked}"
    )
    assert report["live_running"] and report["pauses"] >= 1 and report["deleted"] >= 2
    assert watcher.polls > 100 and watcher.missing == []
    assert list(client.scan_iter("rebuild:*")) == []
    assert not client.exists(keys.pause)
