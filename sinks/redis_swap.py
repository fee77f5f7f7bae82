"""Swap a complete copy of the Redis sinks' keys (written under a key prefix) over another prefix's
keys in one atomic step, and pause the writers of a prefix while it happens.

Used by ``pipeline.rebuild`` (``make rebuild-redis``): the Redis sinks run under
``REDIS_KEY_PREFIX=rebuild:<id>:`` and fill a fresh copy; ``swap`` then renames every key of that
copy to its live name, positions hashes and parked ids included, and deletes the live keys the copy
does not have (a stale minute bucket, content deleted meanwhile), all in one Lua script. A reader
sees either the old keys or the new ones, never a mix, never a missing board. Anything else that
fills a copy under a prefix (a backfill) can swap it in the same way.

API (``client`` is a redis-py client; names from ``sinks.redis_keys.RedisKeys``):

- ``pause(client, keys, ttl_ms) -> Pause``: the Redis sinks writing under ``keys`` refuse every
  write while the pause key exists (``lua/positions.lua``; they raise ``SinkUnavailable`` and retry
  forever), so their positions stop moving. The TTL ends a pause whose owner died. ``release``
  deletes it if it is still the caller's.
- ``swap(client, source, target, window_minutes, pause=...) -> Swapped``: one script. It first checks
  that for every position the target's sinks have stored, the source's is at least as far (else it
  raises ``PositionsBehind`` and changes nothing: the target's sinks would otherwise skip the records
  in between as replays and never apply them). Then it deletes the target's keys that the source does
  not have, renames each source key over its target name (TTLs travel with the keys), and deletes
  ``pause`` if it is still the caller's. The source must be quiet while its keys are listed: pause it
  too (its writers then apply nothing more), or stop them.

Why a script and not MULTI/EXEC: the positions check and the renames must be one step, and a
transaction cannot branch on what it reads. The script's cost is one ``RENAME`` per key: the whole
copy moves while Redis serves nobody else (measured in docs/operations.md).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

import redis

from sinks.redis_keys import REDIS_SINKS, RedisKeys, scan

_SWAP = """
-- KEYS: pause, then n_check pairs (source positions, target positions), then n_rename pairs
-- (source, target), then n_delete target keys. ARGV: pause token ('' = none), n_check, n_rename, n_delete.
local n_check, n_rename, n_delete = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local k = 2
for _ = 1, n_check do
  local source, target = KEYS[k], KEYS[k + 1]
  local stored = redis.call('HGETALL', target)
  for j = 1, #stored, 2 do
    local field, live = stored[j], stored[j + 1]
    local copy = redis.call('HGET', source, field)
    local live_next = tonumber(string.match(live, '^%d+'))
    if not copy or tonumber(string.match(copy, '^%d+')) < live_next then
      return {-1, target, field, live, copy or ''}
    end
  end
  k = k + 2
end
for _ = 1, n_rename do
  local source, target = KEYS[k], KEYS[k + 1]
  if redis.call('EXISTS', source) == 1 then
    redis.call('RENAME', source, target)
  else
    redis.call('DEL', target)
  end
  k = k + 2
end
for _ = 1, n_delete do
  redis.call('DEL', KEYS[k])
  k = k + 1
end
local released = 0
if ARGV[1] ~= '' and redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  released = 1
end
return {1, n_rename, n_delete, released}
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class PauseHeld(Exception):  # noqa: N818 - a state
    """Another pause of the same prefix is in force (another rebuild is swapping)."""


class PositionsBehind(Exception):  # noqa: N818 - a state
    """The copy's positions are behind the target's: swapping would lose the records in between."""


@dataclass(frozen=True)
class Pause:
    key: str
    token: str


@dataclass(frozen=True)
class Swapped:
    renamed: int  # source keys moved (or target keys the source lacks among the fixed names, deleted)
    deleted: int  # target keys the source did not have
    released: bool  # the pause was still the caller's and is gone


def pause(client: redis.Redis, keys: RedisKeys, ttl_ms: int) -> Pause:
    """Pause the Redis sinks writing under ``keys`` for at most ``ttl_ms``."""
    token = secrets.token_hex(8)
    if not client.set(keys.pause, token, px=ttl_ms, nx=True):
        raise PauseHeld(f"{keys.pause} is set (another rebuild is swapping); its TTL ends it")
    return Pause(keys.pause, token)


def extend(client: redis.Redis, held: Pause, ttl_ms: int) -> bool:
    """Give the pause ``ttl_ms`` more, if it is still the caller's."""
    script = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end return 0"
    return bool(client.eval(script, 1, held.key, held.token, ttl_ms))


def release(client: redis.Redis, held: Pause) -> bool:
    """End the pause if it is still the caller's."""
    return bool(client.eval(_RELEASE, 1, held.key, held.token))


def plan(
    client: redis.Redis,
    source: RedisKeys,
    target: RedisKeys,
    window_minutes: int,
    sinks: Sequence[str] = REDIS_SINKS,
) -> tuple[list[tuple[str, str]], list[str]]:
    """What ``swap`` does: ``(source, target)`` renames and the target keys to delete.

    The fixed names (boards, positions, parked ids) are always in the renames, so a target key of
    those that the source lacks is deleted even if a writer created it after the scan (a board
    roller); every other key is listed by SCAN."""
    fixed = [*source.board_keys(window_minutes)]
    for sink in sinks:
        fixed += [source.positions(sink), source.parked(sink)]
    names = list(dict.fromkeys([*fixed, *scan(client, source.patterns(window_minutes, tuple(sinks)))]))
    renames = [(key, source.rename(key, target)) for key in names]
    moved = {to for _, to in renames}
    deletes = [key for key in scan(client, target.patterns(window_minutes, tuple(sinks))) if key not in moved]
    return renames, deletes


def swap(
    client: redis.Redis,
    source: RedisKeys,
    target: RedisKeys,
    window_minutes: int,
    *,
    pause: Pause | None = None,
    sinks: Sequence[str] = REDIS_SINKS,
) -> Swapped:
    """Move the copy under ``source`` over ``target`` atomically (module docstring)."""
    if source.prefix == target.prefix:
        raise ValueError("source and target prefixes must differ")
    renames, deletes = plan(client, source, target, window_minutes, sinks)
    checks = [(source.positions(sink), target.positions(sink)) for sink in sinks]
    keys = [pause.key if pause else target.pause]
    for pair in (*checks, *renames):
        keys += pair
    keys += deletes
    args = [pause.token if pause else "", len(checks), len(renames), len(deletes)]
    result = client.eval(_SWAP, len(keys), *keys, *args)
    if int(result[0]) == -1:
        live, copy = result[3].decode(), result[4].decode()
        raise PositionsBehind(
            f"{result[1].decode()} {result[2].decode()}: the target holds {live!r}, the copy {copy or 'nothing'!r}"
        )
    return Swapped(renamed=int(result[1]), deleted=int(result[2]), released=bool(result[3]))
