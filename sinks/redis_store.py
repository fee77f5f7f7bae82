"""What every Redis-backed sink shares: the client, its positions hash, and transient-error mapping.

Positions live in ``engagement:positions:<sink name>``, a hash of ``topic:partition`` -> encoded
``sinks.positions.Position``, one per sink so that sinks never overwrite each other's. They are
stored by compare-and-set inside the same Lua script as the data (``lua/positions.lua``), which
makes these sinks atomic in the sense of ``sinks.contract``. Every key name is under
``REDIS_KEY_PREFIX`` (``sinks.redis_keys``) and reaches the scripts in ``KEYS``.

While ``engagement:pause`` (under the prefix) exists, every script that stores positions refuses
and the sink raises ``SinkUnavailable``: the Redis sinks retry forever, so a rebuild's swap
(``sinks.redis_swap``) freezes them for its duration, and the key's TTL bounds a pause whose
rebuild died.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis

from infra.settings import RedisSettings
from sinks import fencing
from sinks.contract import Batch, ClaimGone, PositionConflict, Sink, SinkUnavailable
from sinks.positions import Position, decode, encode
from sinks.redis_keys import RedisKeys

LUA_DIR = Path(__file__).resolve().parent / "lua"
_TRANSIENT = (
    redis.ConnectionError,
    redis.TimeoutError,
    redis.exceptions.BusyLoadingError,
    redis.exceptions.ReadOnlyError,
    redis.exceptions.TryAgainError,
    redis.exceptions.MasterDownError,
    redis.exceptions.OutOfMemoryError,
)
# Replies that pass: a script running past lua-time-limit (BUSY), a failed AOF write (MISCONF),
# maxmemory reached (OOM); the same write may succeed later.
_TRANSIENT_REPLIES = ("BUSY", "MISCONF", "OOM", "LOADING", "TRYAGAIN", "MASTERDOWN")
# A paused sink asks to be retried this soon: a swap takes milliseconds once the rebuild is there.
PAUSE_RETRY_MS = 50


def is_transient(exc: Exception) -> bool:
    if isinstance(exc, _TRANSIENT):
        return True
    return isinstance(exc, redis.ResponseError) and str(exc).startswith(_TRANSIENT_REPLIES)


def positions_key(sink_name: str, key_prefix: str = "") -> str:
    return RedisKeys(key_prefix).positions(sink_name)


def next_offsets(client: redis.Redis, sink_name: str, topic: str, key_prefix: str = "") -> dict[int, int]:
    """``{partition: next offset}`` a Redis-backed sink has stored for ``topic`` (tools, tests)."""
    prefix = f"{topic}:"
    return {
        int(k.decode()[len(prefix) :]): decode(v).next_offset
        for k, v in client.hgetall(positions_key(sink_name, key_prefix)).items()
        if k.decode().startswith(prefix)
    }


def lua(*names: str) -> str:
    """Script text: ``positions.lua`` (and any other shared snippets) prepended to the script."""
    return "\n".join((LUA_DIR / name).read_text() for name in names)


def position_args(
    positions: Mapping[str, Position],
    expected: Mapping[str, Position | None],
    fence: fencing.Fence | None = None,
    claims: Sequence[str] = (),
    parks: Sequence[str] = (),
    parked_keep_ms: int = 0,
) -> list[Any]:
    """The ``positions.lua`` ARGV block: the fence token (``sinks.fencing``), n, then field, expected,
    new for each partition; then the parking ids (``sinks.parking``): claims, parks, how long to keep
    them."""
    args: list[Any] = [fencing.lua_args(fence)[1], len(positions)]
    for key, position in positions.items():
        before = expected.get(key)
        args += [key, "" if before is None else encode(before), encode(position)]
    args += [len(claims), *claims, len(parks), *parks, parked_keep_ms]
    return args


class RedisSink(Sink[Any]):
    """Base of the Redis sinks: ``open`` connects and loads ``scripts``; ``positions``/``commit``."""

    atomic = True

    def __init__(self, settings: RedisSettings) -> None:
        self._settings = settings
        self._client: redis.Redis | None = None
        self.keys = RedisKeys(settings.key_prefix)

    @property
    def client(self) -> redis.Redis:
        if self._client is None:
            self._client = self._settings.client()
        return self._client

    @property
    def positions_key(self) -> str:
        return self.keys.positions(self.name)

    def position_keys(self) -> list[str]:
        """The ``positions.lua`` KEYS block: positions, parked ids, pause, fence ('' unfenced)."""
        fence_key = fencing.lua_args(self.fence)[0]
        return [self.positions_key, self.keys.parked(self.name), self.keys.pause, fence_key]

    def open(self) -> None:
        self._commit = self.client.register_script(lua("positions.lua", "positions_commit.lua"))

    @contextmanager
    def available(self) -> Iterator[None]:
        """Redis errors that pass (connection refused, timeout, loading) as ``SinkUnavailable``."""
        try:
            yield
        except redis.RedisError as exc:
            if not is_transient(exc):
                raise
            raise SinkUnavailable(str(exc)) from exc

    def positions(self, topics: Sequence[str]) -> dict[str, Position]:
        prefixes = tuple(f"{topic}:" for topic in topics)
        with self.available():
            stored = self.client.hgetall(self.positions_key)
        return {k.decode(): decode(v) for k, v in stored.items() if k.decode().startswith(prefixes)}

    def commit(
        self, positions: Mapping[str, Position], expected: Mapping[str, Position | None], parks: Sequence[str] = ()
    ) -> None:
        args = position_args(positions, expected, self.fence, (), parks, self._settings.parked_keep_ms)
        self.run(self._commit, self.position_keys(), args)

    def batch_position_args(self, batch: Batch[Any]) -> list[Any]:
        """``position_args`` for a write of ``batch``, with its fence and parking ids."""
        return position_args(
            batch.positions, batch.expected, self.fence, batch.claims, batch.parks, self._settings.parked_keep_ms
        )

    def run(self, script: Any, keys: list[str], args: list[Any]) -> Any:
        """Run a script; a refused compare-and-set of positions raises ``PositionConflict``, a refused
        fence ``Fenced``, a pause ``SinkUnavailable`` (retried until the pause ends)."""
        with self.available():
            result = script(keys=keys, args=args, client=self.client)
        if isinstance(result, list) and result:
            if int(result[0]) == -4:
                left_ms = max(int(result[1]), 0)
                raise SinkUnavailable(
                    f"{self.name}: paused while a rebuild swaps its keys in ({self.keys.pause}, "
                    f"{left_ms} ms left at most)",
                    retry_after_s=min(left_ms, PAUSE_RETRY_MS) / 1000,
                )
            if int(result[0]) == -1:
                raise PositionConflict(f"{self.name}: {result[1].decode()} is stored as {result[2].decode()!r}")
            if int(result[0]) == -2 and self.fence is not None:
                raise self.fence.error(self.name, int(result[1]))
            if int(result[0]) == -3:
                raise ClaimGone([r.decode() for r in result[1:]])
        return result

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
