"""The circuit breaker of one HTTP endpoint (pybreaker 1.4), and where its state is published.

pybreaker does the state machine: closed -> open after ``fail_max`` failed calls in a row ->
half-open after ``reset_timeout`` -> closed on a successful trial, open again on a failed one. Two
things are added here, each small enough not to warrant another library:

- **A failure rate over a window** (pybreaker counts only consecutive failures): a listener keeps
  the outcomes of the last ``window_s`` and opens the breaker when at least ``min_calls`` of them
  failed at ``failure_rate`` or more. 30 % errors never make 5 in a row likely enough to rely on.
- **Time from an injectable monotonic clock**: pybreaker compares ``datetime.now()`` with the
  stored ``opened_at``; the storage below hands it an ``opened_at`` that is as far in the past as
  the clock says, so tests drive the reset timeout without sleeping, and a wall-clock step (NTP)
  cannot shorten or stretch an open period.

A failure is what says the endpoint is unwell: a timeout, a connection error, a 5xx. A 429 or a
4xx is an answer from a healthy endpoint and counts as a success.

State is published to Redis (``BreakerBoard``) for ``make status`` and for ``make http-replay``,
which refuses to run while a pipeline's breaker for the endpoint is open. Entries expire
``BOARD_TTL_S`` after the last write that refreshed them, and a closing sink withdraws its own, so
a stopped pipeline leaves nothing stale for long; publishing is best effort and never delays a write.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Final

import orjson
import pybreaker

from infra import telemetry

_log = logging.getLogger(__name__)
STATES: Final = {pybreaker.STATE_CLOSED: 0, pybreaker.STATE_HALF_OPEN: 1, pybreaker.STATE_OPEN: 2}
# An entry says "recently": a sink refreshes it every few seconds while it writes, so one that is
# stopped, or idle (where an open breaker holds nothing back), is gone from the board soon after.
BOARD_TTL_S: Final = 15
_PUBLISH_EVERY_S: Final = 5.0


class EndpointFailure(Exception):  # noqa: N818 - what the breaker counts
    """Raised inside ``breaker.call`` to count a failed request."""


def report(breaker: pybreaker.CircuitBreaker, failure: str | None) -> None:
    """Count one request that has ended (``failure`` None: it succeeded), from outside the call:
    pybreaker counts a failure when the guarded function raises, so this one raises for it."""

    def ended() -> None:
        if failure is not None:
            raise EndpointFailure(failure)

    with contextlib.suppress(pybreaker.CircuitBreakerError, EndpointFailure):
        breaker.call(ended)


class MonotonicStorage(pybreaker.CircuitMemoryStorage):
    """``opened_at`` measured on ``clock`` (see the module docstring)."""

    def __init__(self, clock: Callable[[], float]) -> None:
        super().__init__(pybreaker.STATE_CLOSED)
        self._clock = clock
        self._opened_clock: float | None = None

    @property  # type: ignore[override]
    def opened_at(self) -> datetime | None:
        if self._opened_clock is None:
            return None
        return datetime.now(UTC) - timedelta(seconds=self._clock() - self._opened_clock)

    @opened_at.setter
    def opened_at(self, _: datetime) -> None:
        self._opened_clock = self._clock()


class FailureRate(pybreaker.CircuitBreakerListener):
    """Opens the breaker when the failure rate over the last ``window_s`` reaches ``rate``."""

    def __init__(self, rate: float, window_s: float, min_calls: int, clock: Callable[[], float]) -> None:
        self._rate = rate
        self._window = window_s
        self._min = min_calls
        self._clock = clock
        self._calls: deque[tuple[float, bool]] = deque()
        self._lock = threading.Lock()

    def success(self, cb: pybreaker.CircuitBreaker) -> None:
        self._add(False)

    def failure(self, cb: pybreaker.CircuitBreaker, exc: BaseException) -> None:
        if self._add(True) and cb.current_state == pybreaker.STATE_CLOSED:
            cb.open()

    def state_change(self, cb: pybreaker.CircuitBreaker, old: Any, new: Any) -> None:
        if new is not None and new.name == pybreaker.STATE_CLOSED:
            with self._lock:
                self._calls.clear()  # a closed breaker starts a fresh window

    def _add(self, failed: bool) -> bool:
        """Record one outcome; True when the window's failure rate now calls for opening."""
        now = self._clock()
        with self._lock:
            self._calls.append((now, failed))
            while self._calls and self._calls[0][0] < now - self._window:
                self._calls.popleft()
            failures = sum(1 for _, f in self._calls if f)
            return len(self._calls) >= self._min and failures / len(self._calls) >= self._rate


class Pauses(pybreaker.CircuitBreakerListener):
    """How long the breaker has not been closed (the lane's pause, which the retry budget does not
    count) and when it last opened, on the breaker's clock."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._paused = 0.0
        self._since: float | None = None  # when it left closed
        self.opened_at: float | None = None  # when it last opened (a failed trial opens it again)

    def state_change(self, cb: pybreaker.CircuitBreaker, old: Any, new: Any) -> None:
        now = self._clock()
        if new is None:
            return
        if new.name == pybreaker.STATE_OPEN:
            self.opened_at = now
            if self._since is None:
                self._since = now
        elif new.name == pybreaker.STATE_CLOSED and self._since is not None:
            self._paused += now - self._since
            self._since = None

    def paused_s(self) -> float:
        """Seconds spent open or half-open so far."""
        return self._paused + (self._clock() - self._since if self._since is not None else 0.0)

    def until_half_open(self, reset_timeout_s: float) -> float:
        """Seconds until the next trial may go (0 when it may go now, or the breaker never opened)."""
        if self.opened_at is None:
            return 0.0
        return max(0.0, reset_timeout_s - (self._clock() - self.opened_at))


@dataclass(frozen=True)
class BreakerConfig:
    fail_max: int
    reset_timeout_s: float
    failure_rate: float
    window_s: float
    min_calls: int


def make_breaker(
    name: str,
    config: BreakerConfig,
    clock: Callable[[], float] = time.monotonic,
    listeners: tuple[pybreaker.CircuitBreakerListener, ...] = (),
) -> pybreaker.CircuitBreaker:
    return pybreaker.CircuitBreaker(
        fail_max=config.fail_max,
        reset_timeout=config.reset_timeout_s,
        state_storage=MonotonicStorage(clock),
        # The caller's listeners first: a publisher must hear of a failure before the rate opens on it.
        listeners=[*listeners, FailureRate(config.failure_rate, config.window_s, config.min_calls, clock)],
        name=name,
    )


class BreakerBoard:
    """Breaker states by endpoint and instance in one Redis hash per endpoint, with a TTL."""

    PREFIX: Final = "http_breaker:"

    def __init__(self, client: Any, clock: Callable[[], float] = time.time) -> None:
        self._redis = client
        self._clock = clock
        self.instance = f"{uuid.uuid4().hex[:8]}"

    def publish(self, endpoint: str, state: str, failures: int, detail: str = "") -> None:
        entry = {"state": state, "failures": failures, "detail": detail[:300], "at": self._clock()}
        key = self.PREFIX + endpoint
        try:
            pipe = self._redis.pipeline(transaction=False)
            pipe.hset(key, self.instance, orjson.dumps(entry))
            pipe.expire(key, BOARD_TTL_S)
            pipe.execute()
        except Exception as exc:  # noqa: BLE001 - status is best effort; a write never waits on it
            _log.debug("breaker state not published: %s", exc)

    def withdraw(self, endpoint: str) -> None:
        """A sink that closes takes its entry off the board."""
        try:
            self._redis.hdel(self.PREFIX + endpoint, self.instance)
        except Exception as exc:  # noqa: BLE001 - best effort, as publish
            _log.debug("breaker state not withdrawn: %s", exc)

    def read(self) -> dict[str, list[dict[str, Any]]]:
        """Fresh entries (published in the last ``BOARD_TTL_S``) by endpoint."""
        now = self._clock()
        board: dict[str, list[dict[str, Any]]] = {}
        for key in self._redis.scan_iter(match=self.PREFIX + "*", count=100):
            endpoint = (key.decode() if isinstance(key, bytes) else key).removeprefix(self.PREFIX)
            for instance, raw in self._redis.hgetall(key).items():
                entry = orjson.loads(raw)
                if now - entry["at"] <= BOARD_TTL_S:
                    entry["instance"] = instance.decode() if isinstance(instance, bytes) else instance
                    board.setdefault(endpoint, []).append(entry)
        return board


class Publisher(pybreaker.CircuitBreakerListener):
    """Publishes on every state change, and again at most every few seconds while calls go on."""

    def __init__(self, board: BreakerBoard | None, endpoint: str, clock: Callable[[], float] = time.monotonic) -> None:
        self._board = board
        self._endpoint = endpoint
        self._clock = clock
        self._last = -1e9
        self.last_failure = ""
        self._states = {
            state: telemetry.gauge("engagement_http_breaker_state", endpoint=endpoint, state=state.replace("-", "_"))
            for state in STATES
        }
        self._show(pybreaker.STATE_CLOSED)

    def _show(self, current: str) -> None:
        for state, series in self._states.items():
            series.set(1 if state == current else 0)

    def state_change(self, cb: pybreaker.CircuitBreaker, old: Any, new: Any) -> None:
        _log.warning(
            "circuit breaker for %s: %s -> %s%s",
            self._endpoint,
            old.name if old is not None else "-",
            new.name,
            f" (last failure: {self.last_failure})" if new.name == pybreaker.STATE_OPEN else "",
        )
        self._show(new.name if new.name in STATES else pybreaker.STATE_OPEN)
        self.touch(cb, force=True, state=new.name)

    def failure(self, cb: pybreaker.CircuitBreaker, exc: BaseException) -> None:
        self.last_failure = str(exc)

    def withdraw(self) -> None:
        if self._board is not None:
            self._board.withdraw(self._endpoint)

    def touch(self, cb: pybreaker.CircuitBreaker, *, force: bool = False, state: str | None = None) -> None:
        now = self._clock()
        if self._board is not None and (force or now - self._last >= _PUBLISH_EVERY_S):
            self._last = now
            self._board.publish(self._endpoint, state or cb.current_state, cb.fail_counter, self.last_failure)
