"""One POST of encoded changes to one endpoint, and what it meant for each change.

Shared by the HTTP sink and its replay, so that both classify replies the same way:

- a timeout or a connection error: every change is retried, and the endpoint failed;
- a retryable status (``HTTP_SINK_RETRYABLE_STATUSES``; 408, 425, 429 and 5xx by default): every
  change is retried after the reply's ``Retry-After`` at least; a 5xx or 408 counts as a failure of
  the endpoint, a 429 or 425 does not (the endpoint answered: it is alive, only busy);
- a status in ``HTTP_SINK_SPLIT_STATUSES`` (400, 413, 422) for more than one change: the batch is
  split in halves and each half sent again, until the refused change is alone, so one bad change
  does not take 499 good ones to the dead-letter topic (at most ``MAX_SPLITS`` splits per group:
  an endpoint that refuses every change alike gets 65 requests, not 999);
- a 2xx whose body is not what the endpoint's contract says (``HTTP_SINK_ACCEPT``: an HTML page
  under ``json-ack``, a reply over ``HTTP_SINK_MAX_REPLY_BYTES`` or nested too deep that may hold
  per-change results, ``results`` that cannot be read): retried, or dead-lettered at once with
  ``HTTP_SINK_BAD_REPLY=dead_letter``; never delivered, and never a failure of the endpoint (it
  answered), so the retry budget, not the breaker, decides;
- a reply that cannot be read at all (a broken ``Content-Encoding``): retried, and the endpoint
  failed;
- any other status outside 2xx: every change is refused, with the status and the body's start;
- a 2xx: every change is delivered, unless the reply gives per-change results
  (``sinks.http_payload``).

A hostile endpoint cannot hold a request or the memory it uses: at most
``HTTP_SINK_MAX_REPLY_BYTES`` of a reply are read (it is streamed, and the connection dropped past
the limit), and every socket operation of a request, from connecting to the last byte of the reply,
must end within ``HTTP_SINK_REQUEST_DEADLINE_S`` of its start (``DeadlineBackend``): a server that
trickles a byte every few seconds times out like one that says nothing. Any exception while a reply
is read or parsed becomes a retry of its changes (status ``error``), never an exception of the sink.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpcore
import httpx

from sinks.http_payload import (
    ACCEPT_JSON,
    BadReplyError,
    batch_key,
    excerpt,
    record_results,
    request_body,
    retry_after_s,
    verdict,
)
from sinks.http_redact import scrub, url_secrets

MAX_SPLITS = 32
_deadline = threading.local()  # the monotonic time the current thread's request must end by


@dataclass
class Sent:
    """What happened to each change of a group, by index into it; ``status`` labels say why."""

    delivered: list[int] = field(default_factory=list)
    rejected: dict[int, tuple[str, str]] = field(default_factory=dict)  # index -> (status, reason)
    retry: dict[int, tuple[str, str, float | None]] = field(default_factory=dict)  # + retry_after_s
    endpoint_failed: bool = False
    failure: str = ""
    requests: int = 0
    problems: Counter[str] = field(default_factory=Counter)  # requests by what went wrong (not a status)

    def merge(self, other: Sent, offset: int) -> None:
        self.problems.update(other.problems)
        self.delivered += [offset + i for i in other.delivered]
        self.rejected.update({offset + i: v for i, v in other.rejected.items()})
        self.retry.update({offset + i: v for i, v in other.retry.items()})
        self.endpoint_failed = self.endpoint_failed or other.endpoint_failed
        self.failure = self.failure or other.failure
        self.requests += other.requests

    def scrubbed(self, url: str) -> Sent:
        """These outcomes with every secret of ``url`` out of their reasons (sinks/http_redact.py):
        an exception's message or the endpoint's reply may quote the URL, and reasons reach dead
        letters, logs and the breaker state ``make status`` shows."""
        if not url_secrets(url):
            return self
        self.rejected = {i: (label, scrub(why, url)) for i, (label, why) in self.rejected.items()}
        self.retry = {i: (label, scrub(why, url), wait) for i, (label, why, wait) in self.retry.items()}
        self.failure = scrub(self.failure, url)
        return self


@dataclass(frozen=True)
class ClientPolicy:
    retryable: frozenset[int]
    split: frozenset[int]
    body_excerpt_bytes: int
    max_retry_after_s: float
    max_reply_bytes: int = 1_048_576
    deadline_s: float = 15.0
    accept: str = ACCEPT_JSON
    bad_reply: str = "retry"  # or dead_letter


class EndpointClient:
    """POSTs groups of encoded changes to one URL over a shared ``httpx.Client`` (thread-safe)."""

    def __init__(
        self, endpoint: str, url: str, headers: Mapping[str, str], client: httpx.Client, policy: ClientPolicy
    ) -> None:
        self.endpoint = endpoint
        self.url = url
        self._headers = {**headers, "Content-Type": "application/json"}
        self._client = client
        self._policy = policy

    def post(self, keys: Sequence[str], changes: Sequence[bytes], splits: list[int] | None = None) -> Sent:
        # Splits left for this group: enough to isolate a few bad changes among 500 (18 requests
        # each), not the 999 requests a group takes when the endpoint refuses everything alike.
        splits = [MAX_SPLITS] if splits is None else splits
        everything = range(len(changes))
        try:
            return self._post(keys, changes, splits).scrubbed(self.url)
        except Exception as exc:  # noqa: BLE001 - whatever a reply holds, it never fails the job
            why = f"error while handling the reply of {self.endpoint}: {type(exc).__name__}: {exc}"
            return self._all_retry(everything, "error", why[:1000], None, failed=False).scrubbed(self.url)

    def _post(self, keys: Sequence[str], changes: Sequence[bytes], splits: list[int]) -> Sent:
        policy = self._policy
        body = request_body(self.endpoint, changes)
        headers = {**self._headers, "Idempotency-Key": batch_key(keys)}
        everything = range(len(changes))
        began = time.monotonic()
        try:
            with (
                request_deadline(policy.deadline_s),
                self._client.stream("POST", self.url, content=body, headers=headers) as reply,
            ):
                status = reply.status_code
                content, complete = read_capped(reply, policy.max_reply_bytes)
        except httpx.TimeoutException as exc:
            late = time.monotonic() - began >= policy.deadline_s
            which = f" (HTTP_SINK_REQUEST_DEADLINE_S, {policy.deadline_s:g} s)" if late else ""
            why = f"timed out{which}: {type(exc).__name__}: {exc}"
            return self._all_retry(everything, "timeout", why, None, failed=True)
        except httpx.TransportError as exc:
            why = f"connection error: {type(exc).__name__}: {exc}"
            return self._all_retry(everything, "connection", why, None, failed=True)
        except httpx.HTTPError as exc:  # a reply we cannot read (a bad Content-Encoding...): never fail the job
            why = f"unreadable reply: {type(exc).__name__}: {exc}"
            return self._all_retry(everything, "unreadable", why, None, failed=True)
        if 200 <= status < 300:
            try:
                return self._per_change(keys, content, complete)
            except BadReplyError as exc:
                why = f"HTTP {status} from {self.endpoint} is not an acknowledgement ({policy.accept}): {exc}"
                if policy.bad_reply == "dead_letter":
                    return Sent(
                        rejected=dict.fromkeys(everything, (exc.label, why)), requests=1, problems=Counter([exc.label])
                    )
                return self._all_retry(everything, exc.label, why, None, failed=False)
        reason = f"HTTP {status} from {self.endpoint}: {excerpt(content, policy.body_excerpt_bytes)}"
        if status in policy.retryable:
            wait = retry_after_s(reply.headers.get("Retry-After"))
            if wait is not None:
                wait = min(wait, policy.max_retry_after_s)
            return self._all_retry(everything, str(status), reason, wait, failed=status >= 500 or status == 408)
        if status in policy.split and len(changes) > 1 and splits[0] > 0:
            splits[0] -= 1
            half = len(changes) // 2
            sent = Sent(requests=1)
            sent.merge(self.post(keys[:half], changes[:half], splits), 0)
            sent.merge(self.post(keys[half:], changes[half:], splits), half)
            return sent
        return Sent(rejected=dict.fromkeys(everything, (str(status), reason)), requests=1)

    def _per_change(self, keys: Sequence[str], body: bytes, complete: bool = True) -> Sent:
        results = record_results(body, complete, self._policy.accept)
        sent = Sent(requests=1)
        for i, key in enumerate(keys):
            if key not in results:
                sent.delivered.append(i)
                continue
            status, error = results[key]
            outcome = verdict(status, self._policy.retryable)
            reason = f"HTTP {status} for this change from {self.endpoint}: {error}"
            if outcome.delivered:
                sent.delivered.append(i)
            elif outcome.retry:
                sent.retry[i] = (str(status), reason, None)
            else:
                sent.rejected[i] = (str(status), reason)
        return sent

    @staticmethod
    def _all_retry(indexes: range, status: str, reason: str, wait: float | None, *, failed: bool) -> Sent:
        return Sent(
            retry=dict.fromkeys(indexes, (status, reason, wait)),
            endpoint_failed=failed,
            failure=reason if failed else "",
            requests=1,
            problems=Counter() if status.isdigit() else Counter([status]),
        )


def read_capped(reply: httpx.Response, limit: int) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of ``reply``'s body, and whether that is all of it: past the limit the
    rest is never read (closing the reply drops the connection)."""
    chunks: list[bytes] = []
    size = 0
    for chunk in reply.iter_bytes():
        chunks.append(chunk)
        size += len(chunk)
        if size > limit:
            return b"".join(chunks)[:limit], False
    return b"".join(chunks), True


@contextlib.contextmanager
def request_deadline(seconds: float) -> Iterator[None]:
    """Every socket operation on this thread must end within ``seconds`` from now (``DeadlineBackend``)."""
    previous = getattr(_deadline, "at", None)
    _deadline.at = time.monotonic() + seconds
    try:
        yield
    finally:
        _deadline.at = previous


def _left(timeout: float | None) -> float | None:
    """``timeout`` cut to what the current request's deadline leaves; raises once it has passed."""
    at = getattr(_deadline, "at", None)
    if at is None:
        return timeout
    left = at - time.monotonic()
    if left <= 0:
        raise httpcore.ReadTimeout("the request's deadline (HTTP_SINK_REQUEST_DEADLINE_S) passed")
    return left if timeout is None else min(timeout, left)


class DeadlineStream(httpcore.NetworkStream):
    """A connection whose reads and writes never outlast the deadline of the request using it."""

    def __init__(self, stream: httpcore.NetworkStream) -> None:
        self._stream = stream

    def read(self, max_bytes: int, timeout: float | None = None) -> bytes:
        return self._stream.read(max_bytes, _left(timeout))

    def write(self, buffer: bytes, timeout: float | None = None) -> None:
        self._stream.write(buffer, _left(timeout))

    def close(self) -> None:
        self._stream.close()

    def start_tls(self, *args: Any, **kwargs: Any) -> httpcore.NetworkStream:
        return DeadlineStream(self._stream.start_tls(*args, **kwargs))

    def get_extra_info(self, info: str) -> Any:
        return self._stream.get_extra_info(info)


class DeadlineBackend(httpcore.NetworkBackend):
    """httpcore's sync backend with every operation bounded by the request's deadline: httpx's own
    timeouts bound each read, not the request, so a trickle of bytes would hold it for ever."""

    def __init__(self) -> None:
        self._backend = httpcore.SyncBackend()

    def connect_tcp(self, host: str, port: int, timeout: float | None = None, **kwargs: Any) -> httpcore.NetworkStream:
        return DeadlineStream(self._backend.connect_tcp(host, port, _left(timeout), **kwargs))

    def connect_unix_socket(self, path: str, timeout: float | None = None, **kwargs: Any) -> httpcore.NetworkStream:
        return DeadlineStream(self._backend.connect_unix_socket(path, _left(timeout), **kwargs))

    def sleep(self, seconds: float) -> None:
        self._backend.sleep(seconds)


def make_client(
    connect_timeout_s: float, request_timeout_s: float, concurrency: int, user_agent: str = "engagement-pipeline"
) -> httpx.Client:
    transport = httpx.HTTPTransport(
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    )
    # httpx has no public way to pass a network backend; its pool (httpcore's) takes one.
    transport._pool._network_backend = DeadlineBackend()
    return httpx.Client(
        transport=transport,
        timeout=httpx.Timeout(request_timeout_s, connect=connect_timeout_s),
        headers={"User-Agent": user_agent, "Accept-Encoding": "identity"},
        follow_redirects=False,
    )
