"""The instance lock: one job per consumer group at a time, and a fencing token for each holder.

- **The lock** is redis-py's ``Lock`` on ``engagement:pipeline:lock:<group>``: its value is the
  holder's token ``host:pid:nonce``, and redis-py's Lua scripts refresh (``reacquire``) and release
  it only while that token is still the value, so an instance that lost it can never take it back
  by refreshing. The refresh runs on a thread every third of the TTL (``thread_local=False`` for
  that reason).
- **Acquisition** is one Lua script (``ACQUIRE_LUA``) that sets the lock only if its value is what
  the caller saw (nothing, or the exact token of a holder it found dead) and, in the same step,
  raises the group's generation in ``engagement:pipeline:fence:<group>``. Two instances that find
  the same dead holder both try to replace *that* token: one wins, the other sees the winner and
  refuses. The generation is the job's fencing token (``sinks.fencing``): every sink write carries
  it, and a newer one stored makes Redis refuse it.
- **Dead holders.** A holder on this host whose pid is gone (``kill -9``) is replaced at once
  instead of after its TTL; on another host only the TTL can tell.
- **Loss.** If Redis answers that another instance holds the lock (expired and taken), the lock is
  lost for good (``LOST``): the supervisor stops the job and exits. If the lock is gone, or holds a
  token of this process or of a dead holder on this host (``MISSING``), Redis lost it or came back
  older (a failover to a replica behind the primary, a restore from a snapshot): nobody else holds
  it, so the supervisor stops the job and takes the lock again at once, as a new generation, and
  starts the job again (which then reads what the older Redis lacks). If Redis cannot be
  reached for most of a TTL, the lock may have expired meanwhile (``UNCONFIRMED``): the supervisor
  stops the job as well, because another instance may take over now, and acquires the lock again
  like a starting instance once Redis answers (a new generation; refused if someone else holds it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from typing import Literal

import redis
from redis.exceptions import LockNotOwnedError
from redis.lock import Lock

from infra.process import pid_alive
from sinks.fencing import fence_key, lock_key

_log = logging.getLogger("pipeline.instance_lock")
Loss = Literal["lost", "unconfirmed", "missing"]
LOST: Loss = "lost"
UNCONFIRMED: Loss = "unconfirmed"
MISSING: Loss = "missing"
# Give up on an unconfirmed lock this far into its TTL (counted from the last refresh that Redis
# confirmed, as sent), so the job is stopped before the lock can expire and pass to another instance.
UNCONFIRMED_SHARE = 0.8

ACQUIRE_LUA = """
-- KEYS: lock, fence. ARGV: token, ttl_ms, the holder the caller saw ('' = the lock must be free).
local holder = redis.call('GET', KEYS[1]) or ''
if holder ~= ARGV[3] then return {0, holder, redis.call('PTTL', KEYS[1])} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
-- The next generation, and never one that was issued before even if the counter key was lost
-- (FLUSHALL, a Redis without persistence): at least the server's clock in milliseconds.
local t = redis.call('TIME')
local now_ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local generation = math.max(tonumber(redis.call('GET', KEYS[2]) or '0') + 1, now_ms)
redis.call('SET', KEYS[2], string.format('%d', generation))
return {1, string.format('%d', generation)}
"""


class LockHeld(RuntimeError):  # noqa: N818 - a state, reported to the user as it is
    pass


def parse_holder(value: str) -> tuple[str, int | None]:
    """``(host, pid)`` of a lock value ``host:pid:nonce`` (or the older ``host:pid``)."""
    parts = value.split(":")
    if len(parts) >= 3 and parts[-2].isdigit():
        return ":".join(parts[:-2]), int(parts[-2])
    if len(parts) >= 2 and parts[-1].isdigit():
        return ":".join(parts[:-1]), int(parts[-1])
    return value, None


class _FencedLock(Lock):
    """redis-py's ``Lock`` whose acquisition is ``ACQUIRE_LUA``: compare-and-set, and a generation."""

    def __init__(self, client: redis.Redis, name: str, fence: str, ttl_s: float) -> None:
        super().__init__(client, name, timeout=ttl_s, thread_local=False)
        self.fence = fence
        self.expected = ""  # the holder acquire() may replace ('' = none)
        self.generation: int | None = None
        self.seen: tuple[str, int] = ("", -2)  # the holder and its PTTL when acquisition was refused
        self._acquire_script = client.register_script(ACQUIRE_LUA)

    def do_acquire(self, token: str) -> bool:
        assert self.timeout is not None
        reply = self._acquire_script(
            keys=[self.name, self.fence], args=[token, int(self.timeout * 1000), self.expected], client=self.redis
        )
        if int(reply[0]) == 1:
            self.generation = int(reply[1])
            return True
        self.seen = (reply[1].decode() if isinstance(reply[1], bytes) else str(reply[1]), int(reply[2]))
        return False


class InstanceLock:
    """See the module docstring. ``acquire`` returns the generation; ``start_refresh`` keeps it."""

    def __init__(
        self,
        client: redis.Redis,
        group: str,
        ttl_s: float,
        *,
        host: str | None = None,
        pid: int | None = None,
        is_alive: Callable[[int], bool] = pid_alive,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.group = group
        self.key = lock_key(group)
        self.fence_key = fence_key(group)
        self._host = host or socket.gethostname()
        self._pid = os.getpid() if pid is None else pid
        self._ttl_s = ttl_s
        self._is_alive = is_alive
        self._clock = clock
        self._lock = _FencedLock(client, self.key, self.fence_key, ttl_s)
        self._previous = ""  # our own last token: after an unconfirmed loss we may replace it
        self._confirmed = 0.0
        self._failing = False  # the last refresh could not reach Redis
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_lost: Callable[[Loss], None] | None = None
        self.lost: Loss | None = None

    @property
    def token(self) -> str:
        value = self._lock.local.token
        return value.decode() if isinstance(value, bytes) else (value or "")

    def acquire(self) -> int:
        """Take the lock (free, held by a dead instance of this host, or by our own earlier token);
        return the new generation, or raise ``LockHeld`` naming the holder."""
        token = f"{self._host}:{self._pid}:{uuid.uuid4().hex}"
        sent = self._clock()
        self._lock.expected = ""
        if not self._lock.acquire(blocking=False, token=token):
            holder, _ = self._lock.seen
            if not self._replaceable(holder):
                self._refuse()
            self._lock.expected = holder
            if not self._lock.acquire(blocking=False, token=token):
                self._refuse()  # another instance replaced it first
            if holder == self._previous:
                _log.info("took the lock again after losing touch with Redis")
            else:
                _log.info("took over the lock of dead instance %s", holder)
        assert self._lock.generation is not None
        self._previous, self._confirmed, self.lost = token, sent, None
        _log.info("holding %s as generation %d", self.key, self._lock.generation)
        return self._lock.generation

    def _replaceable(self, holder: str) -> bool:
        """Ours (any token of this process: an older Redis can hold one we replaced since), or a dead
        holder on this host."""
        if holder and holder == self._previous:
            return True
        host, pid = parse_holder(holder)
        return host == self._host and pid is not None and (pid == self._pid or not self._is_alive(pid))

    def _refuse(self) -> None:
        holder, pttl = self._lock.seen
        raise LockHeld(
            f"another pipeline instance ({holder or 'unknown'}) holds the consumer position of group "
            f"{self.group!r} (lock {self.key}, expires in {max(pttl, 0) / 1000:.1f} s unless refreshed). "
            f"Stop it first, or use another PIPELINE_CONSUMER_GROUP."
        )

    def refresh(self) -> bool:
        """One refresh; False once the lock is lost (``self.lost`` says how)."""
        if self.lost is not None:
            return False
        sent = self._clock()
        try:
            self._lock.reacquire()
        except LockNotOwnedError:
            try:
                holder = self._read_holder()
            except redis.RedisError as exc:
                return self._unreached(sent, exc)  # the next refresh asks again
            if holder is None or self._replaceable(holder):
                self.lost = MISSING
                _log.error(
                    "the instance lock %s is gone from Redis (it holds %r): Redis lost it or came back older; "
                    "taking it again",
                    self.key,
                    holder,
                )
            else:
                self.lost = LOST
                _log.error("lost the instance lock %s: Redis holds %r, not our token", self.key, holder)
            return False
        except redis.RedisError as exc:
            return self._unreached(sent, exc)
        self._confirmed, self._failing = sent, False
        return True

    def _unreached(self, sent: float, exc: redis.RedisError) -> bool:
        self._failing = True
        if sent - self._confirmed >= UNCONFIRMED_SHARE * self._ttl_s:
            self.lost = UNCONFIRMED
            _log.error("could not refresh the instance lock %s for %.1f s: %s", self.key, sent - self._confirmed, exc)
            return False
        _log.warning("could not refresh the instance lock: %s", exc)
        return True

    def _read_holder(self) -> str | None:
        value = self._lock.redis.get(self.key)
        return value.decode() if isinstance(value, bytes) else value

    def confirm(self) -> Loss | None:
        """One refresh now, from the caller's thread (the refresh thread is paused meanwhile): after
        the job stopped for a Redis that came back older, a lock that copy lost too shows as
        ``lost`` before the next job starts, instead of killing it a moment later."""
        on_lost = self._on_lost
        self.stop_refresh()
        self.refresh()
        if self.lost is None and on_lost is not None:
            self.start_refresh(on_lost)
        return self.lost

    def start_refresh(self, on_lost: Callable[[Loss], None]) -> None:
        self._on_lost = on_lost
        self._stop.clear()

        def loop() -> None:
            interval = self._ttl_s / 3
            while not self._stop.wait(interval):
                if not self.refresh():
                    assert self.lost is not None
                    on_lost(self.lost)
                    return
                # While Redis does not answer, try more often: each success restarts the TTL.
                interval = min(1.0, self._ttl_s / 10) if self._failing else self._ttl_s / 3

        self._thread = threading.Thread(target=loop, name="instance-lock", daemon=True)
        self._thread.start()

    def stop_refresh(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        self._thread = None

    def release(self) -> None:
        """Stop refreshing and delete the lock if it is still ours (never someone else's)."""
        self.stop_refresh()
        if self._lock.local.token is None:
            return
        with contextlib.suppress(LockNotOwnedError, redis.RedisError):
            self._lock.release()  # a compare-and-delete on our token
