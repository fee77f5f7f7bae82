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
from pipeline.model import ContentChange, EnrichedChange
from sinks.base import SinkUnavailable

LUA_DIR = Path(__file__).resolve().parent / "lua"
OFFSETS_KEY = "engagement:offsets"
_TRANSIENT = (redis.ConnectionError, redis.TimeoutError, redis.BusyLoadingError, redis.ReadOnlyError)


def board_key(window_minutes: int) -> str:
    return f"top_engagement:{window_minutes}min"


def _fmt(value: float | None) -> str:
    return "" if value is None else repr(value)


def connect(settings: RedisSettings) -> redis.Redis:
    return redis.Redis(
        host=settings.host,
        port=settings.port,
        password=settings.password.get_secret_value(),
        socket_connect_timeout=2,
        socket_timeout=10,
        health_check_interval=10,
    )


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
        if self._client is None:
            self.open()
        assert self._client is not None
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

    def open(self) -> None:
        super().open()
        self._apply = self.client.register_script((LUA_DIR / "leaderboard_apply.lua").read_text())
        self._roll = self.client.register_script((LUA_DIR / "leaderboard_roll.lua").read_text())
        if self._roll_in_background:
            threading.Thread(target=self._roller, name="leaderboard-roller", daemon=True).start()

    @property
    def key(self) -> str:
        return board_key(self._board.window_minutes)

    def now_minute(self) -> int:
        return int(self._clock() // 60)

    def write(self, batch: Sequence[EnrichedChange]) -> tuple[int, int]:
        """Apply the batch; return (contributions applied, contributions skipped as replays)."""
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
        ]
        groups = _group_by_partition(batch)
        args.append(len(groups))
        for partition_key, changes in groups.items():
            contributions = [(c.position.offset, k) for c in changes for k in c.contributions]
            args += [partition_key, changes[-1].position.offset + 1, len(contributions)]
            for offset, k in contributions:
                args += [
                    offset,
                    k.content_id,
                    k.content_type or "",
                    k.minute,
                    k.event_type or "",
                    _fmt(k.seconds),
                    _fmt(k.pct),
                    k.sign,
                ]
        applied, skipped = self._run(self._apply, args)
        return int(applied), int(skipped)

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

    def write(self, batch: Sequence[ContentChange]) -> int:
        groups = _group_by_partition(batch)
        args: list[Any] = [OFFSETS_KEY, len(groups)]
        for partition_key, changes in groups.items():
            args += [partition_key, changes[-1].position.offset + 1, len(changes)]
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
