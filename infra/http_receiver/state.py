"""What the receiver knows: the changes it recorded, its counters, the faults it injects, its outage.

Pure bookkeeping with no HTTP in it, so the apps stay thin and the rules (what is a duplicate, what
is refused, what a lag percentile means) are in one place.

A change is recorded once, under its idempotency key; a later change with the same key is a
duplicate and is only counted. A recorded change is a ``Record`` with ``__slots__``, not a dict,
because a benchmark may send a million of them: the endpoint name, the operation and the receipt
time are shared objects, so a record costs its own numbers plus its key.

Lag percentiles are nearest-rank (the smallest value with at least p % of the values at or below
it), so each is a lag that was observed, in whole milliseconds.
"""

from __future__ import annotations

import gc
import logging
import math
import random
import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

_log = logging.getLogger("infra.http_receiver")

# Canonical objects, so a million records share four strings.
_OPS = {op: op for op in ("c", "r", "u", "d")}
COUNTERS = (
    "requests",
    "requests_without_key",
    "bad_requests",
    "injected_errors",
    "throttled",
    "ack_lost",
    "hostile_replies",
    "changes",
    "unique",
    "duplicates",
    "rejected",
)
ENDPOINT_COUNTERS = ("requests", "unique", "duplicates", "rejected")
PERCENTILES = (50, 90, 99)
RATES = ("throttle_rate", "error_rate", "ack_loss_rate")
# Replies a hostile or broken endpoint gives, each with a 200 and without recording the changes
# (as a proxy in front of it would): a sender that believes one loses them.
HOSTILE = ("slow", "huge", "deep", "html")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class FaultError(ValueError):
    """A fault update the receiver refuses; ``field`` names the offending field."""

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.field = name


@dataclass
class Faults:
    """The faults applied to every ingest request (the outage is ``Outage``, since it has a clock)."""

    latency_ms: float = 0.0
    throttle_rate: float = 0.0
    retry_after_s: float = 1.0
    error_rate: float = 0.0
    error_status: int = 503
    ack_loss_rate: float = 0.0
    reject_event_types: list[str] = field(default_factory=list)
    seed: int | None = None
    # One of HOSTILE, or None: every ingest request gets that reply (docs/http.md).
    hostile: str | None = None


FAULT_FIELDS = ("down_for_s", *(f.name for f in fields(Faults)))


def _number(name: str, value: Any, low: float, high: float = math.inf) -> float:
    # bool is an int to Python, but `true` is no latency.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise FaultError(name, f"expected a number, got {value!r}")
    if not low <= value <= high:
        bounds = f"from {low:g} to {high:g}" if math.isfinite(high) else f"at least {low:g}"
        raise FaultError(name, f"must be {bounds}, got {value!r}")
    return float(value)


def parse_faults(patch: Any) -> dict[str, Any]:
    """Check a partial fault update and return it normalised; nothing is applied if one field is bad."""
    if not isinstance(patch, dict):
        raise FaultError("body", "expected a JSON object of fault fields")
    parsed: dict[str, Any] = {}
    for name, value in patch.items():
        if name not in FAULT_FIELDS:
            raise FaultError(name, f"unknown fault field (known: {', '.join(FAULT_FIELDS)})")
        if name in RATES:
            parsed[name] = _number(name, value, 0.0, 1.0)
        elif name in ("down_for_s", "latency_ms", "retry_after_s"):
            parsed[name] = _number(name, value, 0.0)
        elif name == "error_status":
            if isinstance(value, bool) or not isinstance(value, int) or not 400 <= value <= 599:
                raise FaultError(name, f"expected an HTTP status from 400 to 599, got {value!r}")
            parsed[name] = value
        elif name == "reject_event_types":
            if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
                raise FaultError(name, f"expected a list of strings, got {value!r}")
            parsed[name] = list(value)
        elif name == "hostile":
            if value is not None and value not in HOSTILE:
                raise FaultError(name, f"expected one of {', '.join(HOSTILE)} or null, got {value!r}")
            parsed[name] = value
        else:  # seed
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise FaultError(name, f"expected an integer or null, got {value!r}")
            parsed[name] = value
    return parsed


class Outage:
    """Whether the ingest port is down, and until when (wall clock, as ``GET /faults`` shows it).

    This base keeps only the deadline, which is enough in-process: the ingest app answers 503 while
    it is down. The server's subclass also closes the listening socket and reopens it on time.
    """

    def __init__(self) -> None:
        self.until_ms: int | None = None

    def is_down(self) -> bool:
        return self.until_ms is not None and now_ms() < self.until_ms

    def down_until_ms(self) -> int | None:
        return self.until_ms if self.is_down() else None

    def down(self, seconds: float) -> None:
        """Down for ``seconds`` from now, replacing any earlier deadline; 0 means up now."""
        if seconds <= 0:
            self.up()
            return
        was_down = self.until_ms is not None
        self.until_ms = now_ms() + round(seconds * 1000)
        _log.info("ingest %s for %.3f s (until %d ms)", "stays down" if was_down else "down", seconds, self.until_ms)
        self._went_down(seconds, was_down)

    def up(self) -> None:
        if self.until_ms is None:
            return
        self.until_ms = None
        _log.info("ingest up")
        self._came_up()

    def _went_down(self, seconds: float, was_down: bool) -> None:
        pass

    def _came_up(self) -> None:
        pass


class Record:
    """One first-seen change: what the tests compare with the source, and when it arrived."""

    __slots__ = (
        "endpoint",
        "engagement_seconds",
        "id",
        "lag_ms",
        "offset",
        "op",
        "partition",
        "received_at_ms",
        "sequence",
    )

    def __init__(
        self,
        endpoint: str,
        change: dict[str, Any],
        received_at_ms: int,
    ) -> None:
        source = change.get("source")
        if not isinstance(source, dict):
            source = {}
        sequence = source.get("sequence")
        commit_ts_ms = source.get("commit_ts_ms")
        seconds = change.get("engagement_seconds")
        self.endpoint = endpoint
        self.id: int = change["id"]
        self.op: str = _OPS[change["op"]]
        self.sequence: tuple[int, ...] | None = (
            tuple(sequence) if isinstance(sequence, list) and all(type(item) is int for item in sequence) else None
        )
        self.partition = _int_or_none(source.get("partition"))
        self.offset = _int_or_none(source.get("offset"))
        self.engagement_seconds: float | None = float(seconds) if _is_number(seconds) else None
        self.received_at_ms = received_at_ms
        self.lag_ms: int | None = received_at_ms - round(commit_ts_ms) if _is_number(commit_ts_ms) else None

    def as_dict(self, key: str) -> dict[str, Any]:
        return {
            "idempotency_key": key,
            "endpoint": self.endpoint,
            "id": self.id,
            "op": self.op,
            "sequence": None if self.sequence is None else list(self.sequence),
            "partition": self.partition,
            "offset": self.offset,
            "engagement_seconds": self.engagement_seconds,
            "received_at_ms": self.received_at_ms,
        }


def _is_number(value: Any) -> bool:
    return not isinstance(value, bool) and isinstance(value, int | float)


def _int_or_none(value: Any) -> int | None:
    return value if type(value) is int else None


def _refusal(change: Any, rejected_types: frozenset[str]) -> str | None:
    """Why a change is refused (per-record 422), or None to accept it."""
    if not isinstance(change, dict):
        return "change must be a JSON object"
    key = change.get("idempotency_key")
    if not isinstance(key, str) or not key:
        return "idempotency_key must be a non-empty string"
    if type(change.get("id")) is not int:
        return "id must be an integer"
    if change.get("op") not in _OPS:
        return "op must be one of c, r, u, d"
    event_type = change.get("event_type")
    if event_type in rejected_types:
        return f"event_type {event_type!r} is refused (fault reject_event_types)"
    return None


def lag_summary(lags: list[int]) -> dict[str, int | None]:
    """Count, nearest-rank p50/p90/p99 and max; null values when there is nothing to summarise."""
    if not lags:
        return {"count": 0, **{f"p{p}": None for p in PERCENTILES}, "max": None}
    lags.sort()
    ranks = {f"p{p}": lags[max(1, math.ceil(p / 100 * len(lags))) - 1] for p in PERCENTILES}
    return {"count": len(lags), **ranks, "max": lags[-1]}


FREEZE_EVERY = 20_000


class Receiver:
    """Records, counters and faults of one receiver process (one asyncio loop, so no locks)."""

    def __init__(self) -> None:
        self.faults = Faults()
        self._rejected_types: frozenset[str] = frozenset()
        self._rng = random.Random()
        self.reset()

    def reset(self) -> None:
        """Forget every change and count; the faults stay."""
        # By (endpoint, key): each endpoint is a receiver of its own, and one change routed to two
        # endpoints carries the same key to both.
        self.records: dict[tuple[str, str], Record] = {}
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.by_endpoint: dict[str, dict[str, int]] = {}
        self._names: dict[str, str] = {}
        self._frozen_at = 0

    # Faults.

    def set_faults(self, values: dict[str, Any]) -> None:
        """Apply fields already checked by ``parse_faults`` (``down_for_s`` is the outage's)."""
        changed = {}
        for name, value in values.items():
            if name == "down_for_s":
                continue
            if getattr(self.faults, name) != value:
                changed[name] = value
            setattr(self.faults, name, value)
        self._rejected_types = frozenset(self.faults.reject_event_types)
        # A seed in the update restarts the sequence even if it is the same seed, so a test can
        # replay the same draws by sending it again.
        if "seed" in values:
            self._rng.seed(self.faults.seed)
        if changed:
            _log.info("faults changed: %s", ", ".join(f"{name}={value!r}" for name, value in changed.items()))

    def clear_faults(self) -> None:
        self.faults = Faults()
        self._rejected_types = frozenset()
        self._rng.seed(None)
        _log.info("faults cleared")

    def faults_view(self, down_until_ms: int | None) -> dict[str, Any]:
        return {"down_until_ms": down_until_ms, **asdict(self.faults)}

    def _draw(self, rate: float) -> bool:
        # No draw at rate 0, so switching one fault on does not shift another's seeded sequence
        # unless both are on.
        return rate > 0 and self._rng.random() < rate

    # One ingest request, step by step (the app calls these in the order of the fault list).

    def arrived(self, endpoint: str, has_key: bool) -> None:
        self.counts["requests"] += 1
        if not has_key:
            self.counts["requests_without_key"] += 1
        self._endpoint(endpoint)["requests"] += 1

    def refused_while_down(self) -> None:
        self.counts["injected_errors"] += 1

    def throttles(self) -> bool:
        if self._draw(self.faults.throttle_rate):
            self.counts["throttled"] += 1
            return True
        return False

    def fails(self) -> bool:
        if self._draw(self.faults.error_rate):
            self.counts["injected_errors"] += 1
            return True
        return False

    def hostile(self) -> str | None:
        mode = self.faults.hostile
        if mode is not None:
            self.counts["hostile_replies"] += 1
        return mode

    def bad_request(self) -> None:
        self.counts["bad_requests"] += 1

    def receive(self, endpoint: str, changes: list[Any], received_at_ms: int) -> list[dict[str, Any]]:
        """Record the first-seen changes; one result per change, in order (201, 200 or 422)."""
        endpoint = self._names.setdefault(endpoint, endpoint)
        counts, per_endpoint = self.counts, self._endpoint(endpoint)
        records, rejected_types = self.records, self._rejected_types
        counts["changes"] += len(changes)
        results: list[dict[str, Any]] = []
        for change in changes:
            error = _refusal(change, rejected_types)
            if error is not None:
                key = change.get("idempotency_key") if isinstance(change, dict) else None
                results.append({"idempotency_key": key, "status": 422, "error": error})
                outcome = "rejected"
            else:
                key = change["idempotency_key"]
                if (endpoint, key) in records:
                    results.append({"idempotency_key": key, "status": 200})
                    outcome = "duplicates"
                else:
                    records[(endpoint, key)] = Record(endpoint, change, received_at_ms)
                    results.append({"idempotency_key": key, "status": 201})
                    outcome = "unique"
            counts[outcome] += 1
            per_endpoint[outcome] += 1
        if len(records) - self._frozen_at >= FREEZE_EVERY:
            # A full collection walks every stored record: at a million that pause is the tail of the
            # latency the benchmarks measure. What is stored stays until a reset; the GC can skip it.
            gc.freeze()
            self._frozen_at = len(records)
        return results

    def loses_ack(self) -> bool:
        if self._draw(self.faults.ack_loss_rate):
            self.counts["ack_lost"] += 1
            return True
        return False

    def _endpoint(self, name: str) -> dict[str, int]:
        counts = self.by_endpoint.get(name)
        if counts is None:
            counts = self.by_endpoint[name] = dict.fromkeys(ENDPOINT_COUNTERS, 0)
        return counts

    # Reports.

    def stats(self, since_ms: int | None = None, until_ms: int | None = None) -> dict[str, Any]:
        """Every counter, per endpoint, and lag of first receipts with ``since_ms <= received_at_ms < until_ms``."""
        low = -math.inf if since_ms is None else since_ms
        high = math.inf if until_ms is None else until_ms
        lags = [r.lag_ms for r in self.records.values() if r.lag_ms is not None and low <= r.received_at_ms < high]
        return {
            **self.counts,
            "by_endpoint": {name: dict(counts) for name, counts in self.by_endpoint.items()},
            "lag_ms": lag_summary(lags),
        }

    def changes(self, endpoint: str | None = None, last: int | None = None) -> list[dict[str, Any]]:
        """First-seen changes in arrival order, of one endpoint or of all; only the ``last`` newest if given
        (a demo showing two examples must not serialise millions)."""
        if last is None:
            return [
                record.as_dict(key)
                for (_, key), record in self.records.items()
                if endpoint is None or record.endpoint == endpoint
            ]
        newest: list[dict[str, Any]] = []
        for (_, key), record in reversed(self.records.items()):
            if len(newest) >= last:
                break
            if endpoint is None or record.endpoint == endpoint:
                newest.append(record.as_dict(key))
        return newest[::-1]
