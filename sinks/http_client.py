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
- a 2xx whose per-change ``results`` cannot be read: retried (it may say which changes it refused);
- a reply that cannot be read at all (a broken ``Content-Encoding``): retried, and the endpoint
  failed;
- any other status outside 2xx: every change is refused, with the status and the body's start;
- a 2xx: every change is delivered, unless the reply gives per-change results
  (``sinks.http_payload``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import httpx

from sinks.http_payload import (
    UnreadableResultsError,
    batch_key,
    excerpt,
    record_results,
    request_body,
    retry_after_s,
    verdict,
)

MAX_SPLITS = 32


@dataclass
class Sent:
    """What happened to each change of a group, by index into it; ``status`` labels say why."""

    delivered: list[int] = field(default_factory=list)
    rejected: dict[int, tuple[str, str]] = field(default_factory=dict)  # index -> (status, reason)
    retry: dict[int, tuple[str, str, float | None]] = field(default_factory=dict)  # + retry_after_s
    endpoint_failed: bool = False
    failure: str = ""
    requests: int = 0

    def merge(self, other: Sent, offset: int) -> None:
        self.delivered += [offset + i for i in other.delivered]
        self.rejected.update({offset + i: v for i, v in other.rejected.items()})
        self.retry.update({offset + i: v for i, v in other.retry.items()})
        self.endpoint_failed = self.endpoint_failed or other.endpoint_failed
        self.failure = self.failure or other.failure
        self.requests += other.requests


@dataclass(frozen=True)
class ClientPolicy:
    retryable: frozenset[int]
    split: frozenset[int]
    body_excerpt_bytes: int
    max_retry_after_s: float


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
        body = request_body(self.endpoint, changes)
        headers = {**self._headers, "Idempotency-Key": batch_key(keys)}
        everything = range(len(changes))
        try:
            reply = self._client.post(self.url, content=body, headers=headers)
        except httpx.TimeoutException as exc:
            return self._all_retry(everything, "timeout", f"timed out: {type(exc).__name__}", None, failed=True)
        except httpx.TransportError as exc:
            why = f"connection error: {type(exc).__name__}: {exc}"
            return self._all_retry(everything, "connection", why, None, failed=True)
        except httpx.HTTPError as exc:  # a reply we cannot read (a bad Content-Encoding...): never fail the job
            why = f"unreadable reply: {type(exc).__name__}: {exc}"
            return self._all_retry(everything, "unreadable", why, None, failed=True)
        status = reply.status_code
        if 200 <= status < 300:
            try:
                return self._per_change(keys, reply.content)
            except UnreadableResultsError as exc:
                why = f"HTTP {status} from {self.endpoint} with unreadable per-change results: {exc}"
                return self._all_retry(everything, "unreadable", why, None, failed=False)
        reason = f"HTTP {status} from {self.endpoint}: {excerpt(reply.content, self._policy.body_excerpt_bytes)}"
        if status in self._policy.retryable:
            wait = retry_after_s(reply.headers.get("Retry-After"))
            if wait is not None:
                wait = min(wait, self._policy.max_retry_after_s)
            return self._all_retry(everything, str(status), reason, wait, failed=status >= 500 or status == 408)
        if status in self._policy.split and len(changes) > 1 and splits[0] > 0:
            splits[0] -= 1
            half = len(changes) // 2
            sent = Sent(requests=1)
            sent.merge(self.post(keys[:half], changes[:half], splits), 0)
            sent.merge(self.post(keys[half:], changes[half:], splits), half)
            return sent
        return Sent(rejected=dict.fromkeys(everything, (str(status), reason)), requests=1)

    def _per_change(self, keys: Sequence[str], body: bytes) -> Sent:
        results = record_results(body)
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
        )


def make_client(
    connect_timeout_s: float, request_timeout_s: float, concurrency: int, user_agent: str = "engagement-pipeline"
) -> httpx.Client:
    return httpx.Client(
        timeout=httpx.Timeout(request_timeout_s, connect=connect_timeout_s),
        limits=httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency),
        headers={"User-Agent": user_agent},
        follow_redirects=False,
    )
