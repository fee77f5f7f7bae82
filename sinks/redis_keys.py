"""Every key name the Redis sinks write, in one place, under an optional key prefix (``REDIS_KEY_PREFIX``).

The prefix is empty for the live pipeline. A rebuild (``pipeline.rebuild``) runs the same sinks with a
prefix such as ``rebuild:<id>:`` and so writes a complete, separate copy of every key, which
``sinks.redis_swap`` then moves over the live names in one atomic step. Python computes each name and
hands it to the Lua scripts in ``KEYS`` (Redis requires a script to declare the keys it touches; that
is also what lets a prefix change every name without a second copy of the scripts).

The sinks' keys (``W`` = window minutes), each behind the prefix:

| key | what |
|---|---|
| ``top_engagement:{W}min`` (``:podcast``, ``:newsletter``, ``:video``, ``:unknown``) | the boards |
| ``top_engagement:{W}min:from`` / ``:updated`` | first minute in the boards / freshness hash |
| ``engagement:minute:{m}`` (``:{type}``) | per-minute buckets |
| ``engagement:content:{id}`` | per-content totals |
| ``content:{id}`` | content metadata |
| ``engagement:positions:{sink}`` / ``:parked`` | positions, parked ids (``sinks.redis_store``) |
| ``engagement:pause`` | while it exists, the sinks of this prefix write nothing (a rebuild's swap) |

Not prefixed, because they belong to an instance, not to a copy of the data: the instance lock and
fencing keys (``sinks.fencing``), one per consumer group.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import redis

# The boards per content type, the only typed keys the window rebuilds: content with no type, or a
# type outside these, counts on ``unknown`` (``sinks.leaderboard_deltas.board_type``).
BOARD_TYPES = ("podcast", "newsletter", "video", "unknown")
# Key prefixes: letters, digits and ``:_.-`` only, so a prefix never acts as a SCAN pattern.
PREFIX_PATTERN = re.compile(r"^[A-Za-z0-9:_.\-]*$")
REDIS_SINKS = ("redis_leaderboard", "redis_content")


@dataclass(frozen=True)
class RedisKeys:
    """Key names under ``prefix`` (empty: the live keys)."""

    prefix: str = ""

    def __post_init__(self) -> None:
        if not PREFIX_PATTERN.match(self.prefix):
            raise ValueError(f"key prefix {self.prefix!r}: use letters, digits and :_.- only")

    def positions(self, sink: str) -> str:
        return f"{self.prefix}engagement:positions:{sink}"

    def parked(self, sink: str) -> str:
        return f"{self.positions(sink)}:parked"

    @property
    def pause(self) -> str:
        return f"{self.prefix}engagement:pause"

    def board(self, window_minutes: int) -> str:
        return f"{self.prefix}top_engagement:{window_minutes}min"

    def board_typed(self, window_minutes: int, content_type: str) -> str:
        return f"{self.board(window_minutes)}:{content_type}"

    def board_from(self, window_minutes: int) -> str:
        return f"{self.board(window_minutes)}:from"

    def board_updated(self, window_minutes: int) -> str:
        return f"{self.board(window_minutes)}:updated"

    def minute(self, minute: int) -> str:
        return f"{self.prefix}engagement:minute:{minute}"

    def minute_typed(self, minute: int, content_type: str) -> str:
        return f"{self.minute(minute)}:{content_type}"

    def content_metrics(self, content_id: str) -> str:
        return f"{self.prefix}engagement:content:{content_id}"

    def content(self, content_id: str) -> str:
        return f"{self.prefix}content:{content_id}"

    def window_keys(self, now_minute: int, window_minutes: int) -> list[str]:
        """The buckets the boards are built from when the window ends at ``now_minute``: per minute,
        the bucket and then its typed buckets in ``BOARD_TYPES`` order (``lua/window.lua``)."""
        keys: list[str] = []
        for minute in range(now_minute - window_minutes + 1, now_minute + 1):
            keys.append(self.minute(minute))
            keys += [self.minute_typed(minute, t) for t in BOARD_TYPES]
        return keys

    def board_keys(self, window_minutes: int) -> list[str]:
        """``board``, ``from``, ``updated``, then the typed boards in ``BOARD_TYPES`` order."""
        return [
            self.board(window_minutes),
            self.board_from(window_minutes),
            self.board_updated(window_minutes),
            *(self.board_typed(window_minutes, t) for t in BOARD_TYPES),
        ]

    def patterns(self, window_minutes: int, sinks: tuple[str, ...] = REDIS_SINKS) -> list[str]:
        """SCAN patterns that cover every key the Redis sinks write under this prefix (and nothing
        else: not the boards of another window, not other sinks' positions, not the pause key)."""
        found = [
            f"{self.board(window_minutes)}",
            f"{self.board(window_minutes)}:*",
            f"{self.prefix}engagement:minute:*",
            f"{self.prefix}engagement:content:*",
            f"{self.prefix}content:*",
        ]
        for sink in sinks:
            found += [self.positions(sink), self.parked(sink)]
        return found

    def rename(self, key: str, to: RedisKeys) -> str:
        """The same key under another prefix."""
        if not key.startswith(self.prefix):
            raise ValueError(f"{key!r} is not under the prefix {self.prefix!r}")
        return to.prefix + key[len(self.prefix) :]


def scan(client: redis.Redis, patterns: list[str]) -> Iterator[str]:
    """Every existing key matching ``patterns`` (exact names, or a prefix and a final ``*``), each
    once, in one pass of SCAN over the keyspace (SCAN walks every key whatever its MATCH, so one pass
    for all patterns costs a fifth of one pass per pattern)."""
    exact = [p for p in patterns if "*" not in p]
    prefixes = tuple(p[:-1] for p in patterns if "*" in p)
    if any("*" in prefix for prefix in prefixes):
        raise ValueError(f"only a final * is supported: {patterns}")
    seen: set[str] = set()
    if prefixes:
        common = os.path.commonprefix(list(prefixes))  # noqa: RUF071 - key names, character by character
        for raw in client.scan_iter(match=common + "*", count=10_000):
            key = raw.decode() if isinstance(raw, bytes) else raw
            if key.startswith(prefixes) and key not in seen:
                seen.add(key)
                yield key
    for name in exact:
        if name not in seen and client.exists(name):
            seen.add(name)
            yield name
