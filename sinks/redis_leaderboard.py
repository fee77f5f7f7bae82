"""Redis leaderboards and per-content hashes, written exactly once per source position.

Layout (``W`` = window minutes, 10 by default; redis-cli examples in the README):

- ``top_engagement:{W}min``: sorted set, member content id, score = sum of engagement_seconds of
  events whose ``event_ts`` lies in the last W minutes (whole minutes, the current one included);
  ``top_engagement:{W}min:{podcast|newsletter|video|unknown}`` the same per content type;
  ``top_engagement:{W}min:from``: the first minute the boards include.
- ``engagement:minute:{epoch minute}`` (and ``...:{type}``): the per-minute buckets the boards are
  built from; they expire W + allowed-lateness minutes after their minute.
- ``engagement:content:{id}``: hash of events, plays, pauses, finishes, clicks, total_seconds,
  pct_sum, pct_count, avg_pct, over_100; no TTL by default (``LEADERBOARD_METRICS_TTL_S``): a
  total that expired while the positions stay would go negative on a later delete.
- Events from the future: an ``event_ts`` more than ``LEADERBOARD_MAX_CLOCK_SKEW_MINUTES`` ahead of
  the sink's clock counts in the totals only; it gets no minute bucket, so no key lives longer than
  the skew plus the window and lateness, and it never reaches the board. Taking such an event back
  later (update, delete) skips its bucket too: what a before-image takes back is applied only where
  the bucket holds the member or the same batch adds to it (``future_buckets_skipped`` counts the
  skipped bucket updates). What after-images add is applied whatever its sign: a negative
  ``duration_ms`` is valid, and a content whose minute sums below zero has a negative score on the
  board, as in SQL. Buckets keep a member whose score comes back to zero (it still says the member
  has a bucket); the boards drop it.
- Content types outside ``podcast``, ``newsletter`` and ``video`` count on the ``unknown`` typed
  board (``sinks.leaderboard_deltas.board_type``), like content without a type.
- ``top_engagement:{W}min:updated``: hash of ``applied_ms`` (when a flush last applied changes, by
  the sink's clock), ``commit_ts_ms`` (the newest Postgres commit among the changes applied) and
  ``changes`` (a running count): the freshness ``make status`` and the live page show.
- ``content:{id}``: metadata hash (title, slug, content_type, length_seconds), from the content topic.
- ``engagement:positions:redis_leaderboard``: the sink's positions (``sinks.redis_store``).

Every name is under ``REDIS_KEY_PREFIX`` (empty for the live boards; ``sinks.redis_keys``).

Each flush is one Lua script: the increments and the new positions land together or not at all
(compare-and-set on the positions), and the driver has already dropped replays and Debezium's
re-sends, so nothing is counted twice after a ``kill -9`` of the job or of Kafka Connect
(docs/delivery.md). Redis runs with ``appendfsync always`` for the same reason: an
acknowledged script survives a Redis crash, so the stored positions never run ahead of the data.

A committed event reaches the board in the same script that applies it (no periodic rebuild on the
hot path); a roller thread calls a second script four times a second so that minutes leave the
window on time even when nothing arrives. Late events older than the window but within the allowed
lateness still update their minute bucket and the content totals; older ones only the totals.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from infra import telemetry
from infra.settings import LeaderboardSettings, RedisSettings
from sinks.contract import APPLIED, Batch, Outcome, SinkUnavailable
from sinks.leaderboard_deltas import Deltas, aggregate
from sinks.records import EnrichedChange
from sinks.redis_keys import BOARD_TYPES
from sinks.redis_store import RedisSink, lua

_log = logging.getLogger(__name__)


def within_skew(
    buckets: dict[tuple[int, str, str], float], last_minute: int
) -> tuple[dict[tuple[int, str, str], float], int]:
    """The bucket deltas up to ``last_minute`` (now plus the clock skew), and how many were beyond."""
    kept = {key: seconds for key, seconds in buckets.items() if key[0] <= last_minute}
    return kept, len(buckets) - len(kept)


def bucket_args(added: dict[tuple[int, str, str], float], taken: dict[tuple[int, str, str], float]) -> list[Any]:
    """Per bucket (added's first, then taken's): the keys' order, and ARGV minute, added, taken,
    content id, where '' says the batch has no such part (``lua/leaderboard_apply.lua``)."""
    args: list[Any] = []
    for key in {**added, **taken}:
        add, take = added.get(key), taken.get(key)
        args += [key[0], "" if add is None else repr(add), "" if take is None else repr(take), key[1]]
    return args


def board_key(window_minutes: int) -> str:
    return f"top_engagement:{window_minutes}min"


class RedisLeaderboardSink(RedisSink):
    """The leaderboards and content metrics, from enriched engagement changes."""

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
        self.future_buckets_skipped = 0
        self._future_skipped = telemetry.counter("engagement_leaderboard_future_buckets_skipped", sink=self.name)

    @property
    def key(self) -> str:
        return self.keys.board(self._board.window_minutes)

    def now_minute(self) -> int:
        return int(self._clock() // 60)

    def open(self) -> None:
        super().open()
        self._apply = self.client.register_script(lua("window.lua", "positions.lua", "leaderboard_apply.lua"))
        self._roll = self.client.register_script(lua("window.lua", "leaderboard_roll.lua"))
        if self._roll_in_background:
            threading.Thread(target=self._roller, name="leaderboard-roller", daemon=True).start()

    def write(self, batch: Batch[EnrichedChange]) -> Outcome:
        deltas = aggregate(batch.records)
        keys, args, skipped = self._arguments(deltas, batch)
        self.run(self._apply, keys, args)
        # Counted once applied: a retried batch computes its skips again.
        self.future_buckets_skipped += skipped
        self._future_skipped.inc(skipped)
        return APPLIED

    def _arguments(self, deltas: Deltas, batch: Batch[EnrichedChange]) -> tuple[list[str], list[Any], int]:
        """KEYS and ARGV of ``lua/leaderboard_apply.lua``, and the bucket updates skipped as too
        far in the future."""
        now = self.now_minute()
        b, k = self._board, self.keys
        keys = [*self.position_keys(), *k.board_keys(b.window_minutes), *k.window_keys(now, b.window_minutes)]
        args: list[Any] = [
            now,
            b.window_minutes,
            now - b.window_minutes - b.allowed_lateness_minutes + 1,
            b.metrics_ttl_s,
            b.window_minutes + b.allowed_lateness_minutes,
            int(self._clock() * 1000),
            max((r.commit_ts_ms for r in batch.records), default=0),
            len(batch.records),
            len(BOARD_TYPES),
            *self.batch_position_args(batch),
            len(deltas.content),
        ]
        for content_id, delta in deltas.content.items():
            keys.append(k.content_metrics(content_id))
            args += [repr(v) if isinstance(v, float) else v for v in delta.values]
        added, future = within_skew(deltas.buckets, now + b.max_clock_skew_minutes)
        taken, future_taken = within_skew(deltas.taken, now + b.max_clock_skew_minutes)
        buckets = {**added, **taken}
        args.append(len(buckets))
        for minute, _, content_type in buckets:
            keys += [
                k.minute(minute),
                k.minute_typed(minute, content_type),
                k.board_typed(b.window_minutes, content_type),
            ]
        args += bucket_args(added, taken)
        return keys, args, future + future_taken

    def gauges(self) -> dict[str, int]:
        return {"future_buckets_skipped": self.future_buckets_skipped}

    def roll(self) -> bool:
        now, window = self.now_minute(), self._board.window_minutes
        keys = [*self.keys.board_keys(window), *self.keys.window_keys(now, window)]
        return bool(self.run(self._roll, keys, [now, window, len(BOARD_TYPES)]))

    def _roller(self) -> None:
        while not self._stop.wait(self._board.roll_interval_s):
            try:
                self.roll()
            except SinkUnavailable:
                continue  # the next flush or tick retries; the apply script also moves the window
            except Exception:  # noqa: BLE001 - the thread must keep the window moving, and say why not
                _log.exception("leaderboard roller: rolling the window failed; trying again next tick")

    def close(self) -> None:
        self._stop.set()
        super().close()
