"""Redis leaderboards and per-content hashes, written exactly once per source position.

Layout (``W`` = window minutes, 10 by default; redis-cli examples in the README):

- ``top_engagement:{W}min``: sorted set, member content id, score = sum of engagement_seconds of
  events whose ``event_ts`` lies in the last W minutes (whole minutes, the current one included);
  ``top_engagement:{W}min:{podcast|newsletter|video|unknown}`` the same per content type;
  ``top_engagement:{W}min:from``: the first minute the boards include.
- ``engagement:minute:{epoch minute}`` (and ``...:{type}``): the per-minute buckets the boards are
  built from; they expire W + allowed-lateness minutes after their minute.
- ``engagement:content:{id}``: hash of events, plays, pauses, finishes, clicks, total_seconds,
  pct_sum, pct_count, avg_pct, over_100; its TTL is refreshed on every write.
- ``content:{id}``: metadata hash (title, slug, content_type, length_seconds), from the content topic.
- ``engagement:offsets``: hash ``topic:partition`` -> next offset applied.

Each flush is one Lua script: the increments and the new offsets land together or not at all, and
increments for offsets below the stored one are skipped, so replays after ``kill -9`` count
nothing twice (docs/delivery.md). Redis runs with ``appendfsync always`` for the same reason: an
acknowledged script survives a Redis crash, so the stored offsets never run ahead of the data.

A committed event reaches the board in the same script that applies it (no periodic rebuild on the
hot path); a roller thread calls a second script four times a second so that minutes leave the
window on time even when nothing arrives. Late events older than the window but within the allowed
lateness still update their minute bucket and the content totals; older ones only the totals.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis

from infra.settings import LeaderboardSettings, RedisSettings
from infra.stack.redis_server import client as connect
from pipeline.model import ContentChange, EnrichedChange, Skipped
from sinks.base import SinkUnavailable
from sinks.leaderboard_deltas import Deltas, aggregate

LUA_DIR = Path(__file__).resolve().parent / "lua"
OFFSETS_KEY = "engagement:offsets"
_TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, redis.ReadOnlyError)


def board_key(window_minutes: int) -> str:
    return f"top_engagement:{window_minutes}min"


class _RedisPositioned:
    """What both Redis sinks share: the client, the stored positions, transient-error mapping."""

    name = "redis"

    def __init__(self, settings: RedisSettings) -> None:
        self._settings = settings
        self._client: redis.Redis | None = None

    def open(self) -> None:
        self._client = connect(self._settings)

    @property
    def client(self) -> redis.Redis:
        # Connect only: a subclass's open() also loads scripts and state that positions() needs not.
        if self._client is None:
            self._client = connect(self._settings)
        return self._client

    def positions(self) -> dict[str, int]:
        return {k.decode(): int(v) for k, v in self.client.hgetall(OFFSETS_KEY).items()}

    def _run(self, script: Any, args: list[Any]) -> Any:
        try:
            return script(args=args, client=self.client)
        except _TRANSIENT as exc:
            raise SinkUnavailable(str(exc)) from exc

    def close(self) -> None:
        if self._client is not None:
            self._client.close()


def _group_by_partition(batch: Sequence[Any]) -> dict[str, list[Any]]:
    groups: dict[str, list[Any]] = {}
    for item in batch:
        groups.setdefault(item.position.partition_key, []).append(item)
    return groups


class RedisLeaderboardSink(_RedisPositioned):
    """``PositionedSink[EnrichedChange]`` for the leaderboards and content metrics."""

    name = "redis_leaderboard"

    def __init__(
        self,
        settings: RedisSettings,
        board: LeaderboardSettings,
        clock: Callable[[], float] = time.time,
        roll_in_background: bool = True,
    ) -> None:
        super().__init__(settings)
        self._board = board
        self._clock = clock
        self._roll_in_background = roll_in_background
        self._stop = threading.Event()

    def _open_scripts(self) -> None:
        super().open()
        window = (LUA_DIR / "window.lua").read_text()
        self._apply = self.client.register_script(window + (LUA_DIR / "leaderboard_apply.lua").read_text())
        self._roll = self.client.register_script(window + (LUA_DIR / "leaderboard_roll.lua").read_text())
        if self._roll_in_background:
            threading.Thread(target=self._roller, name="leaderboard-roller", daemon=True).start()

    @property
    def key(self) -> str:
        return board_key(self._board.window_minutes)

    def now_minute(self) -> int:
        return int(self._clock() // 60)

    def open(self) -> None:
        self._open_scripts()
        self._stored = self.positions()

    def write(self, batch: Sequence[EnrichedChange]) -> tuple[int, int]:
        """Apply the batch; return (records applied, records skipped as replays)."""
        while True:
            deltas = aggregate(batch, self._stored)
            if not deltas.partitions:
                return 0, deltas.skipped_replays
            result = self._run(self._apply, self._arguments(deltas))
            if int(result[0]) >= 0:
                for key, (_, next_offset) in deltas.partitions.items():
                    self._stored[key] = next_offset
                return deltas.records, deltas.skipped_replays
            # Someone stored a later position (a replay overlapping a write that did land, or a
            # second writer): learn it and drop what it covers.
            self._stored[result[1].decode()] = int(result[2])

    def _arguments(self, deltas: Deltas) -> list[Any]:
        now = self.now_minute()
        b = self._board
        args: list[Any] = [
            now,
            b.window_minutes,
            now - b.window_minutes - b.allowed_lateness_minutes + 1,
            b.metrics_ttl_s,
            b.window_minutes + b.allowed_lateness_minutes,
            self.key,
            OFFSETS_KEY,
            len(deltas.partitions),
        ]
        for key, (first, next_offset) in deltas.partitions.items():
            args += [key, first, next_offset]
        args.append(len(deltas.content))
        for content_id, delta in deltas.content.items():
            args.append(content_id)
            args += [repr(v) if isinstance(v, float) else v for v in delta.values]
        args.append(len(deltas.buckets))
        for (minute, content_id, content_type), seconds in deltas.buckets.items():
            args += [minute, content_id, content_type, repr(seconds)]
        return args

    def roll(self) -> bool:
        return bool(self._run(self._roll, [self.now_minute(), self._board.window_minutes, self.key]))

    def _roller(self) -> None:
        while not self._stop.wait(self._board.roll_interval_s):
            try:
                self.roll()
            except SinkUnavailable:
                continue  # the next flush or tick retries; the apply script also moves the window

    def close(self) -> None:
        self._stop.set()
        super().close()


class RedisContentSink(_RedisPositioned):
    """``PositionedSink[ContentChange]``: the ``content:{id}`` metadata hashes."""

    name = "redis_content"

    def open(self) -> None:
        super().open()
        self._apply = self.client.register_script((LUA_DIR / "content_apply.lua").read_text())

    def write(self, batch: Sequence[ContentChange | Skipped]) -> int:
        groups = _group_by_partition(batch)
        args: list[Any] = [OFFSETS_KEY, len(groups)]
        for partition_key, items in groups.items():
            # Tombstones only move the stored position.
            changes = [c for c in items if isinstance(c, ContentChange)]
            args += [partition_key, items[-1].position.offset + 1, len(changes)]
            for change in changes:
                row = change.after or change.before
                assert row is not None
                args += [
                    change.position.offset,
                    row.id,
                    "1" if change.after is None else "0",
                    row.title or "",
                    row.slug or "",
                    row.content_type or "",
                    "" if row.length_seconds is None else row.length_seconds,
                ]
        return int(self._run(self._apply, args))
