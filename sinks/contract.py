"""The one contract every sink implements: positioned, idempotent writes with per-record outcomes.

A sink is a small class (after Quix Streams' ``BatchingSink``): it builds its client in ``open()``,
says what it has stored with ``positions()``, and applies a :class:`Batch` with ``write()``. Everything
else is done once, for every sink, by the driver in ``sinks.base`` (``SinkWriteFn``): skipping
replays and Debezium re-sends (``sinks.positions``), grouping and batch limits, retries under the
sink's :class:`RetryPolicy`, dead letters with the original bytes, and storing positions.

Two ways to store positions, chosen by ``Sink.atomic``:

- ``atomic = True``: ``write`` stores ``batch.positions`` in the same atomic step as the data, and
  only if the stored positions still equal ``batch.expected`` (compare-and-set; otherwise it raises
  :class:`PositionConflict` and applies nothing). Such a write is all or nothing: it applies every
  record, or none and says why for each (rejected or retryable). Effect: exactly once. The Redis
  sinks work this way (one Lua script).
- ``atomic = False``: ``write`` may apply some records and not others; the driver calls
  ``commit(positions, expected)`` once every record of the batch is applied or dead-lettered. The
  target must be idempotent by ``SourcePosition.record_id`` (BigQuery insertIds behind a
  deduplicating view, HTTP idempotency keys), because a crash between the write and the commit
  sends the batch again. Effect: at least once, with idempotent keys.

Outcomes: a write returns an :class:`Outcome` (records not named in it were applied), or raises
:class:`SinkUnavailable` when the target took nothing (connection refused, timeout): every record is
then retryable. A retryable record may say when to try again (``retry_after_s``: 429, a quota, an
open circuit breaker).
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Generic, TypeVar

from tenacity import wait_exponential_jitter

from sinks.positions import Position

if TYPE_CHECKING:
    from sinks.fencing import Fence

T = TypeVar("T")


class SinkUnavailable(Exception):  # noqa: N818 - reads as a state, like ConnectionRefused
    """The target took nothing of this write; the same write may succeed later."""

    def __init__(self, reason: str, retry_after_s: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after_s = retry_after_s


class ClaimGone(Exception):  # noqa: N818 - a state
    """An atomic write found some of ``Batch.claims`` no longer parked (``sinks.parking``): those
    events were applied already. Nothing was applied; the driver drops them and writes the rest."""

    def __init__(self, record_ids: Sequence[str]) -> None:
        super().__init__(", ".join(record_ids))
        self.record_ids = tuple(record_ids)


class PositionConflict(Exception):  # noqa: N818 - a state
    """An atomic write found other positions stored than it expected (a write whose reply was lost
    landed after all, or a second writer): nothing was applied; the driver reloads and re-admits."""


# What a job's output says when a sink found its positions rewound: the supervisor restarts the job
# at once for it (``pipeline.supervisor``), without the back-off of other failures.
REWOUND_MARKER = "PositionsRewound"


class PositionsRewound(Exception):  # noqa: N818 - a state
    """The store holds positions below what this worker stored or read for the same partitions: it
    came back older (a Redis failover to a replica behind the primary, a restore from a snapshot).
    The records in between are applied in no copy the store has now, and the running source will not
    read them again (its restriction only moves forward). Nothing was written. Never retried: it
    fails the job on purpose, and the next run's plan starts each lane at the positions stored now,
    which reads the lost window again, exactly once (the data and positions came back together)."""

    def __init__(self, sink: str, behind: Mapping[str, tuple[int | None, int]]) -> None:
        first = sorted(behind.items())[:4]
        shown = ", ".join(f"{key} stored {'none' if got is None else got} < {had}" for key, (got, had) in first)
        more = f" and {len(behind) - len(first)} more" if len(behind) > len(first) else ""
        super().__init__(
            f"{REWOUND_MARKER}: {sink}: the stored positions went backwards ({shown}{more}): the store came "
            f"back older; the job stops so that every lane reads again from the positions stored now"
        )
        self.sink = sink
        self.behind = dict(behind)


class Fenced(Exception):  # noqa: N818 - a state
    """The write carried an older fencing token than the instance lock's current generation: a newer
    instance has taken over (``sinks.fencing``). Nothing was written. Never retried: it fails the
    bundle, so the stale job stops instead of writing beside the new one."""


@dataclass(frozen=True)
class Retry:
    reason: str
    retry_after_s: float | None = None


@dataclass
class Outcome:
    """What a write did, by index into ``Batch.records``; an index in neither map was applied."""

    rejected: dict[int, str] = field(default_factory=dict)
    retry: dict[int, Retry] = field(default_factory=dict)

    @property
    def complete(self) -> bool:
        return not self.rejected and not self.retry


APPLIED = Outcome()


@dataclass(frozen=True)
class Batch(Generic[T]):
    """Records to write (replays and re-sends already removed), in offset order per partition.

    ``positions`` covers every record the driver has handled up to the end of this batch, including
    ones that were skipped or dead-lettered; ``expected`` is what the sink is believed to hold now
    (``None`` where nothing is stored). Only atomic sinks look at either, and at the parking ids
    (``sinks.parking``): ``parks``, the origin ids this batch parked, to record with the positions;
    ``claims``, the origin ids of returning parked records in ``records``, each of which must still
    be recorded as parked (and is then removed), or the write applies nothing and raises
    :class:`ClaimGone`.
    """

    records: Sequence[T]
    positions: Mapping[str, Position]
    expected: Mapping[str, Position | None]
    claims: Sequence[str] = ()
    parks: Sequence[str] = ()


@dataclass(frozen=True)
class RetryPolicy:
    """How long retryable records are retried: ``budget_s=None`` retries forever (the Redis sinks:
    they hold the boards' truth, and Kafka holds their backlog); otherwise past the budget the
    records go to the dead-letter topic. Backoff is exponential with jitter, capped, and never
    shorter than a target's ``retry_after_s``."""

    initial_s: float = 0.05
    max_backoff_s: float = 5.0
    budget_s: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "_wait", wait_exponential_jitter(initial=self.initial_s, max=self.max_backoff_s))

    def delay(self, attempt: int, retry_after_s: float | None = None) -> float:
        """Seconds to wait before retry number ``attempt`` (1 for the first retry)."""
        state = _AttemptState(attempt)
        backoff = float(self._wait(state))  # type: ignore[attr-defined]
        return max(backoff, retry_after_s or 0.0)

    def exhausted(self, elapsed_s: float) -> bool:
        return self.budget_s is not None and elapsed_s >= self.budget_s

    @classmethod
    def forever(cls, max_backoff_s: float = 5.0) -> RetryPolicy:
        return cls(max_backoff_s=max_backoff_s)


@dataclass(frozen=True)
class _AttemptState:
    """The one field tenacity's wait strategies read from a ``RetryCallState``."""

    attempt_number: int


@dataclass(frozen=True)
class BatchLimits:
    """Largest write, by records and by bytes of the records' original values (0: no byte limit)."""

    max_records: int = 20_000
    max_bytes: int = 0


class Sink(abc.ABC, Generic[T]):
    """Subclass this; see the module docstring. ``name`` namespaces the sink's positions and metrics."""

    name: ClassVar[str]
    atomic: ClassVar[bool]
    retry_policy: RetryPolicy = RetryPolicy.forever()
    limits: BatchLimits = BatchLimits()
    # Set by the driver (``sinks.fencing.guard``) before ``open``; an atomic sink checks it inside its
    # write, and raises ``Fenced`` when refused.
    fence: Fence | None = None

    def open(self) -> None:
        """Build clients here, not in ``__init__``: sinks are pickled to the workers."""

    def close(self) -> None:
        pass

    @abc.abstractmethod
    def positions(self, topics: Sequence[str]) -> dict[str, Position]:
        """``{"topic:partition": Position}`` as stored by this sink for ``topics``."""

    @abc.abstractmethod
    def write(self, batch: Batch[T]) -> Outcome:
        """Apply ``batch.records``; see the module docstring for atomic and non-atomic sinks."""

    @abc.abstractmethod
    def commit(self, positions: Mapping[str, Position], expected: Mapping[str, Position | None]) -> None:
        """Store ``positions``. Non-atomic sinks: after their records are settled. Atomic sinks: only
        called when a batch had nothing left to write (all skipped or dead-lettered), and with a
        keyword ``parks`` (see :class:`Batch`) when the batch parked events."""

    def letter_headers(self, record: Any) -> tuple[tuple[str, bytes], ...]:
        """Headers this sink adds to a record's dead letter after its last write (the HTTP sink: the
        endpoint, the status, and the change as it was sent, which its replay re-sends)."""
        return ()

    def gauges(self) -> Mapping[str, int]:
        """Current values the driver reports as Beam gauges after each flush (a breaker's state)."""
        return {}

    def size_of(self, record: Any) -> int:
        """Bytes a record counts against ``limits.max_bytes``: its original value by default."""
        value = getattr(record, "value", None)
        return 0 if value is None else len(value)
