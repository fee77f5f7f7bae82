"""The HTTP sink: one per endpoint, posting the changes its routing rules select, as JSON batches.

Built on the contract (``sinks.contract``) as a non-atomic sink: positions are Kafka committed
offsets of its own group, ``<PIPELINE_CONSUMER_GROUP>.sink.http_<endpoint>``, stored once every
change of a flush is delivered or dead-lettered; a crash in between sends those changes again,
with the same idempotency keys (``sinks.http_payload``). Changes its rules do not select count as
applied: they only move its positions.

One flush is split into POSTs of ``HTTP_SINK_BATCH_MAX_RECORDS`` changes (and at most
``HTTP_SINK_BATCH_MAX_BYTES`` of JSON), up to ``HTTP_SINK_CONCURRENCY`` in flight at once. What each
reply means is ``sinks.http_client``; retries, backoff with jitter (never shorter than a
``Retry-After``) and the per-batch budget (``HTTP_SINK_BUDGET_S``, then the HTTP dead-letter
topic) are the driver's, as for every sink.

The budgets are the sink's, not the driver's (its ``RetryPolicy`` retries for ever): a change is
retried for ``HTTP_SINK_BUDGET_S`` of time while the breaker is closed, then dead-lettered; time
with the breaker open does not count. The circuit breaker (``sinks.http_breaker``, one per
endpoint per DoFn instance): while it is open, no request is sent and every change is retried after
the time left until the half-open trial, so the driver's retry loop pauses the lane (its own fused
stage: the other lanes go on) and Kafka holds the backlog; nothing is dead-lettered for the outage
unless ``HTTP_SINK_OUTAGE_BUDGET_S`` is set and a change has waited that long. Past its reset
timeout, the first POST of the next write is the one trial (pybreaker holds its lock for that call,
so no other request of this instance runs with it); the rest goes out only if the trial closed the
breaker. Requests sent while it is closed run concurrently and report to it when they end.

A new endpoint's sink (no stored position for the event topic or its parking topic) starts where
``HTTP_SINK_START`` says: earliest (nothing stored: the lane reads from the start), latest, or a
time; the last two are stored as its positions the first time they are read (``positions``, which
``pipeline.job.plan`` calls before the lanes start).

Each dead letter carries ``dlq.http.endpoint``, ``dlq.http.url`` (its credentials masked,
``sinks.http_redact``; replay posts to the configured URL, not this one), ``dlq.http.status`` (a
status code, ``timeout``, ``connection``, ``circuit_open``, or what was wrong with a 2xx:
``bad_reply``, ``too_large``, ``too_deep``, ``unreadable``, ``error``) and ``dlq.http.change``, the
change exactly as it was sent, which ``make http-replay`` (``sinks.http_replay``) sends again.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pybreaker

from infra import telemetry
from infra.settings import HttpSinkSettings, KafkaSettings, RedisSettings
from sinks.contract import APPLIED, Batch, BatchLimits, Outcome, Retry, RetryPolicy, Sink
from sinks.http_breaker import (
    STATES,
    BreakerBoard,
    BreakerConfig,
    EndpointFailure,
    Pauses,
    Publisher,
    make_breaker,
    report,
)
from sinks.http_client import ClientPolicy, EndpointClient, Sent, make_client
from sinks.http_payload import change_json, idempotency_key
from sinks.http_redact import redact_url
from sinks.http_routes import Route
from sinks.kafka_positions import KafkaPositions, group_id
from sinks.positions import Position
from sinks.records import EnrichedChange

CIRCUIT_OPEN = "circuit_open"
_log = logging.getLogger(__name__)
# What went wrong with a request, as counted in engagement_http_reply_problems_total.
PROBLEMS = ("timeout", "connection", "unreadable", "bad_reply", "too_large", "too_deep", "error")


def breaker_config(settings: HttpSinkSettings) -> BreakerConfig:
    return BreakerConfig(
        fail_max=settings.breaker_fail_max,
        reset_timeout_s=settings.breaker_reset_timeout_s,
        failure_rate=settings.breaker_failure_rate,
        window_s=settings.breaker_window_s,
        min_calls=settings.breaker_min_calls,
    )


def client_policy(settings: HttpSinkSettings, route: Route | None = None) -> ClientPolicy:
    return ClientPolicy(
        settings.retryable,
        settings.split,
        settings.body_excerpt_bytes,
        settings.budget_s,
        max_reply_bytes=settings.max_reply_bytes,
        deadline_s=settings.request_deadline_s,
        accept=(route.accept if route is not None and route.accept else None) or settings.accept,
        bad_reply=settings.bad_reply,
    )


def request_headers(settings: HttpSinkSettings, route: Route) -> dict[str, str]:
    """``HTTP_SINK_HEADERS``, then the endpoint's own, then ``HTTP_SINK_AUTH_TOKEN`` as a bearer token
    unless the endpoint sets ``Authorization`` itself."""
    headers = {**settings.headers, **route.headers}
    if settings.auth_token is not None and not any(k.lower() == "authorization" for k in headers):
        headers["Authorization"] = f"Bearer {settings.auth_token.get_secret_value()}"
    return headers


class HttpSink(Sink[EnrichedChange]):
    atomic = False

    def __init__(
        self,
        route: Route,
        settings: HttpSinkSettings,
        kafka: KafkaSettings,
        consumer_group: str,
        redis: RedisSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        client_factory: Callable[[], Any] | None = None,
        positions_factory: Callable[[], Any] | None = None,
        start_topics: Sequence[str] = (),
    ) -> None:
        self.name = f"http_{route.endpoint}"  # type: ignore[misc] - per instance: one sink per endpoint
        self.route = route
        self._settings = settings
        self._kafka = kafka
        self._group = group_id(consumer_group, self.name)
        self._redis = redis
        self._clock = clock
        self._client_factory = client_factory
        self._positions_factory = positions_factory
        # The topics HTTP_SINK_START applies to (the event topic and its parking topic), not the
        # backfill's, which a sink reads from its start when a backfill runs.
        self._start_topics = frozenset(start_topics)
        # No budget for the driver: the sink keeps its own (see the module docstring).
        self.retry_policy = RetryPolicy(settings.initial_backoff_s, settings.max_backoff_s, None)
        self.limits = BatchLimits(
            max_records=settings.batch_max_records * settings.concurrency,
            max_bytes=settings.batch_max_bytes * settings.concurrency,
        )

    def open(self) -> None:
        s = self._settings
        http = (
            self._client_factory or (lambda: make_client(s.connect_timeout_s, s.request_timeout_s, s.concurrency))
        )()
        self._http = http
        self.client = EndpointClient(
            self.route.endpoint, self.route.url, request_headers(s, self.route), http, client_policy(s, self.route)
        )
        self._pool = ThreadPoolExecutor(max_workers=s.concurrency, thread_name_prefix=f"{self.name}-post")
        self._positions = (
            self._positions_factory or (lambda: KafkaPositions(self._kafka.client_config(), self._group))
        )()
        board = BreakerBoard(self._redis.client(timeout_s=0.5)) if self._redis is not None else None
        self._publisher = Publisher(board, self.route.endpoint, self._clock)
        self._pauses = Pauses(self._clock)
        self.breaker = make_breaker(self.name, breaker_config(s), self._clock, (self._publisher, self._pauses))
        self._letter_info: dict[str, tuple[str, bytes]] = {}
        # key -> (budget time, clock time) of a change's first retry, while it is being retried.
        self._retrying: dict[str, tuple[float, float]] = {}
        self._problems = {
            p: telemetry.counter("engagement_http_reply_problems", endpoint=self.route.endpoint, problem=p)
            for p in PROBLEMS
        }

    def close(self) -> None:
        publisher = getattr(self, "_publisher", None)
        if publisher is not None:
            publisher.withdraw()
        pool = getattr(self, "_pool", None)
        if pool is not None:
            pool.shutdown(wait=True)
        for part in ("_http", "_positions"):
            resource = getattr(self, part, None)
            if resource is not None:
                resource.close()

    def positions(self, topics: Sequence[str]) -> dict[str, Position]:
        stored = self._positions.load(topics)
        start = self._settings.start_ms
        if start is None:
            return stored  # earliest: nothing stored reads from the start
        for topic in topics:
            if topic not in self._start_topics or any(key.startswith(f"{topic}:") for key in stored):
                continue
            # A new endpoint: store where it starts, so the lane and every restart begin there.
            begins = self._positions.start_at_end(topic) if start < 0 else self._positions.start_at_time(topic, start)
            stored.update({f"{topic}:{p}": Position(offset) for p, offset in begins.items()})
            _log.info("%s starts on %s at %s (HTTP_SINK_START=%s)", self.name, topic, begins, self._settings.start)
        return stored

    def commit(self, positions: Mapping[str, Position], expected: Mapping[str, Position | None]) -> None:
        self._positions.store(positions)

    def gauges(self) -> Mapping[str, int]:
        return {"breaker_state": STATES[self.breaker.current_state]}

    def letter_headers(self, record: Any) -> tuple[tuple[str, bytes], ...]:
        status, change = self._letter_info.get(idempotency_key(record), ("", b""))
        return (
            ("dlq.http.endpoint", self.route.endpoint.encode()),
            # Credentials in the URL (userinfo, ?token=...) never reach a letter (sinks/http_redact.py).
            ("dlq.http.url", redact_url(self.route.url).encode()),
            ("dlq.http.status", status.encode()),
            ("dlq.http.change", change),
        )

    def write(self, batch: Batch[EnrichedChange]) -> Outcome:
        self._letter_info = {}
        outcome = Outcome()
        wanted: list[int] = []
        keys: list[str] = []
        changes: list[bytes] = []
        for i, record in enumerate(batch.records):
            try:
                if not self.route.wants(record):
                    continue
                change = change_json(record)
            except Exception as exc:  # noqa: BLE001 - one change that cannot be sent is a letter, not a failed job
                outcome.rejected[i] = f"cannot route or encode this change: {type(exc).__name__}: {exc}"
                continue
            wanted.append(i)
            keys.append(idempotency_key(record))
            changes.append(change)
        if not wanted:
            self._retrying.clear()
            return outcome if outcome.rejected else APPLIED
        groups = self._groups(changes)
        sent: list[tuple[int, int, Sent | None]] = []  # [start, end) in `wanted`; None: not sent
        if self.breaker.current_state != pybreaker.STATE_CLOSED:
            (start, end), groups = groups[0], groups[1:]
            sent.append((start, end, self._trial(keys[start:end], changes[start:end])))
            if self.breaker.current_state != pybreaker.STATE_CLOSED:
                sent += [(start, end, None) for start, end in groups]
                groups = []
        futures = [
            (start, end, self._pool.submit(self._send, keys[start:end], changes[start:end])) for start, end in groups
        ]
        sent += [(start, end, future.result()) for start, end, future in futures]
        self._publisher.touch(self.breaker)
        self._outcome(outcome, wanted, keys, changes, sent)
        self._budgets(outcome, wanted, keys)
        return outcome

    def _groups(self, changes: Sequence[bytes]) -> list[tuple[int, int]]:
        """``[start, end)`` of each POST: at most batch_max_records changes and batch_max_bytes."""
        s = self._settings
        groups, start, size = [], 0, 0
        for i, change in enumerate(changes):
            if i > start and (i - start >= s.batch_max_records or size + len(change) > s.batch_max_bytes):
                groups.append((start, i))
                start, size = i, 0
            size += len(change) + 1
        groups.append((start, len(changes)))
        return groups

    def _send(self, keys: Sequence[str], changes: Sequence[bytes]) -> Sent:
        sent = self.client.post(keys, changes)
        # Only a closed breaker counts concurrent replies: a reply that arrives after another
        # request opened it must not be taken for the half-open trial (only _trial is).
        if self.breaker.current_state == pybreaker.STATE_CLOSED:
            report(self.breaker, sent.failure if sent.endpoint_failed else None)  # a trip shows next write
        return sent

    def _trial(self, keys: Sequence[str], changes: Sequence[bytes]) -> Sent | None:
        """Through the breaker, holding its lock: the half-open trial, or nothing while it is open."""
        result: list[Sent] = []

        def post() -> None:
            result.append(self.client.post(keys, changes))
            _count(result[0])

        with contextlib.suppress(pybreaker.CircuitBreakerError, EndpointFailure):
            self.breaker.call(post)
        return result[0] if result else None

    def _outcome(
        self,
        outcome: Outcome,
        wanted: list[int],
        keys: list[str],
        changes: list[bytes],
        sent: list[tuple[int, int, Sent | None]],
    ) -> None:
        for start, end, result in sent:
            if result is None:
                why = f"circuit breaker open for {self.route.endpoint}: {self._publisher.last_failure or 'failing'}"
                for j in range(start, end):
                    outcome.retry[wanted[j]] = Retry(why)
                    self._letter_info[keys[j]] = (CIRCUIT_OPEN, changes[j])
                continue
            for i, (status, reason) in result.rejected.items():
                outcome.rejected[wanted[start + i]] = reason
                self._letter_info[keys[start + i]] = (status, changes[start + i])
            for i, (status, reason, wait) in result.retry.items():
                outcome.retry[wanted[start + i]] = Retry(reason, wait)
                self._letter_info[keys[start + i]] = (status, changes[start + i])
            for problem, count in result.problems.items():
                self._problems[problem].inc(count)

    def _budgets(self, outcome: Outcome, wanted: list[int], keys: list[str]) -> None:
        """Dead-letter the retried changes past a budget (see the module docstring); while the
        breaker is open, the others wait until its trial may go."""
        s = self._settings
        now = self._clock()
        active = now - self._pauses.paused_s()  # a clock that stops while the breaker is not closed
        key_of = dict(zip(wanted, keys, strict=True))
        retrying = {}
        for i, retry in list(outcome.retry.items()):
            key = key_of[i]
            first_active, first = retrying[key] = self._retrying.get(key, (active, now))
            spent = active - first_active
            reason = None
            if spent >= s.budget_s:
                reason = f"gave up after {s.budget_s:g} s of retries: {retry.reason}"
            elif retry.retry_after_s is not None and retry.retry_after_s > s.budget_s - spent:
                # The endpoint asks for more time than the budget has left: give up now, not after it.
                wait = f"asked to wait {retry.retry_after_s:g} s, past the {s.budget_s:g} s budget"
                reason = f"gave up: {wait}: {retry.reason}"
            elif s.outage_budget_s is not None and now - first >= s.outage_budget_s:
                reason = f"gave up after {s.outage_budget_s:g} s (HTTP_SINK_OUTAGE_BUDGET_S): {retry.reason}"
            if reason is not None:
                del outcome.retry[i], retrying[key]
                outcome.rejected[i] = reason
        # Changes settled (or no longer in the batch: settled earlier) leave the books.
        self._retrying = retrying
        if outcome.retry and self.breaker.current_state != pybreaker.STATE_CLOSED:
            wait = self._pauses.until_half_open(s.breaker_reset_timeout_s)
            for i, retry in outcome.retry.items():
                outcome.retry[i] = Retry(retry.reason, max(retry.retry_after_s or 0.0, wait))


def _count(sent: Sent) -> None:
    """Called inside ``breaker.call``: raising is how pybreaker counts a failure."""
    if sent.endpoint_failed:
        raise EndpointFailure(sent.failure)
