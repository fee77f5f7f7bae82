"""Fencing tokens: a job started under an instance lock it has since lost cannot write any more.

The supervisor (``pipeline.instance_lock``) takes the lock ``engagement:pipeline:lock:<group>`` and,
in the same Lua script, raises the group's generation in ``engagement:pipeline:fence:<group>``. The
new generation is the job's fencing token (``PIPELINE_FENCE_TOKEN``; no token = unfenced: tests
and benchmarks that drive sinks directly). A write carrying a token older than the stored
generation is refused with ``sinks.contract.Fenced``, which the driver never retries: the bundle
fails, the stale job stops.

- **Atomic sinks** (Redis): the check is inside the sink's own Lua script (``lua/positions.lua``,
  ``check_fence``), so a stale write and the newer instance's lock are ordered by Redis itself:
  refused writes apply nothing.
- **Other sinks** (BigQuery, HTTP: positions in Kafka, ``sinks.kafka_positions``): ``guard`` wraps
  them in ``FencedSink``, which reads the generation before every write and every position commit.
  Best effort, and only that: a takeover between the check and the write, or while Redis cannot be
  reached (the check then lets the write through, since the lock is in Redis too, no new instance
  can take it over then either), lets one more batch through. Those targets are idempotent by
  record id, so that batch is a duplicate delivery, not a wrong count (docs/delivery.md).

Sinks never import the ``pipeline`` package: the key names live here and the supervisor imports them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from infra.settings import RedisSettings, Settings
from sinks.contract import Batch, Fenced, Outcome, Sink
from sinks.positions import Position

_log = logging.getLogger(__name__)
# The non-atomic check must never hold a write up for long: Redis is not their target.
CHECK_TIMEOUT_S = 1.0


def quick_client(settings: RedisSettings, timeout_s: float) -> redis.Redis:
    """A client that answers or fails within ``timeout_s``: redis-py retries a refused connection ten
    times with backoff by default, which would hold a write (or a lock refresh) up for seconds."""
    client = settings.client(timeout_s=timeout_s)
    client.set_retry(Retry(NoBackoff(), 0))
    return client


def lock_key(group: str) -> str:
    return f"engagement:pipeline:lock:{group}"


def fence_key(group: str) -> str:
    return f"engagement:pipeline:fence:{group}"


def restarts_key(group: str) -> str:
    """A hash the supervisor counts its restarts for a Redis that came back older in (by cause, and
    the last one's cause and time), for ``make status``."""
    return f"engagement:pipeline:restarts:{group}"


def rewound_key(group: str) -> str:
    """Set by a sink that found its positions rewound, to the job's generation: the supervisor of a
    job that a runner restarts on its own (Flink, from a checkpoint) submits it again from a new plan."""
    return f"engagement:pipeline:rewound:{group}"


def announce_rewind(fence: Fence, ttl_s: int = 600) -> None:
    """Best effort: the job fails anyway; this only makes a runner's own restart a resubmission."""
    try:
        client = quick_client(fence.redis, CHECK_TIMEOUT_S)
        try:
            client.set(rewound_key(fence.group), fence.token, ex=ttl_s)
        finally:
            client.close()
    except redis.RedisError as exc:
        _log.warning("could not announce the rewind to the supervisor: %s", exc)


@dataclass(frozen=True)
class Fence:
    """The generation a job was started under, and where the current one is stored."""

    key: str
    token: int
    redis: RedisSettings

    @classmethod
    def of(cls, settings: Settings) -> Fence | None:
        """The job's fence from ``PIPELINE_FENCE_TOKEN`` (set by the supervisor), or None."""
        ps = settings.pipeline
        return None if ps.fence_token is None else cls(fence_key(ps.consumer_group), ps.fence_token, settings.redis)

    @property
    def group(self) -> str:
        return self.key.removeprefix(fence_key(""))

    def refused(self, current: int) -> bool:
        """A newer instance has taken the lock since this job's token was issued."""
        return current > self.token

    def error(self, sink: str, current: int) -> Fenced:
        return Fenced(
            f"{sink}: write refused, a newer pipeline instance holds the lock (generation {current} in "
            f"{self.key}, this job's is {self.token}); this job must stop"
        )


def lua_args(fence: Fence | None) -> list[Any]:
    """The fence block of ``lua/positions.lua``: the generation key and the token ('' = unfenced)."""
    return ["", ""] if fence is None else [fence.key, fence.token]


def guard(sink: Sink[Any], fence: Fence | None, client: redis.Redis | None = None) -> Sink[Any]:
    """The sink as the driver should use it under ``fence``: an atomic sink gets the fence for its
    own write; any other is wrapped in ``FencedSink``."""
    if fence is None:
        return sink
    sink.fence = fence
    return sink if sink.atomic else FencedSink(sink, fence, client)


class FencedSink(Sink[Any]):
    """A non-atomic sink that checks the generation before each write and each commit."""

    atomic = False

    def __init__(self, inner: Sink[Any], fence: Fence, client: redis.Redis | None = None) -> None:
        self.inner = inner
        self.name = inner.name  # type: ignore[misc]  # its positions, metrics and letters stay its own
        self.retry_policy = inner.retry_policy
        self.limits = inner.limits
        self._fence = fence
        self._client = client
        self._unverified = 0

    def open(self) -> None:
        if self._client is None:
            self._client = quick_client(self._fence.redis, CHECK_TIMEOUT_S)
        self.inner.open()

    def close(self) -> None:
        self.inner.close()
        if self._client is not None:
            self._client.close()

    def check(self) -> None:
        """Raise ``Fenced`` if a newer generation is stored; let the write through if Redis cannot say."""
        assert self._client is not None, "open() first"
        try:
            current = int(self._client.get(self._fence.key) or 0)
        except redis.RedisError as exc:
            self._unverified += 1
            if self._unverified in (1, 10) or self._unverified % 100 == 0:
                _log.warning("%s: fence not checked (%d times so far): %s", self.name, self._unverified, exc)
            return
        if self._fence.refused(current):
            raise self._fence.error(self.name, current)

    def positions(self, topics: Sequence[str]) -> dict[str, Position]:
        return self.inner.positions(topics)

    def write(self, batch: Batch[Any]) -> Outcome:
        self.check()
        return self.inner.write(batch)

    def commit(self, positions: Mapping[str, Position], expected: Mapping[str, Position | None]) -> None:
        self.check()
        self.inner.commit(positions, expected)

    def letter_headers(self, record: Any) -> tuple[tuple[str, bytes], ...]:
        return self.inner.letter_headers(record)

    def gauges(self) -> Mapping[str, int]:
        return self.inner.gauges()

    def size_of(self, record: Any) -> int:
        return self.inner.size_of(record)
