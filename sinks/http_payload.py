"""What the HTTP sink sends, and how it reads the reply: pure functions, no I/O.

A request is ``POST <url>`` with ``Content-Type: application/json`` and the body
``{"endpoint": "<name>", "changes": [<change>, ...]}``. Each change:

```json
{"idempotency_key": "engagement.public.engagement_events/3/1234", "op": "u", "id": 42,
 "content_id": "c-1", "event_type": "complete", "content_type": "video", "device": "tv",
 "user_id": "u-9", "event_ts": "2026-12-02T03:00:00.123000Z", "duration_ms": 300000,
 "engagement_seconds": 300.0, "engagement_pct": 55.6,
 "source": {"topic": "engagement.public.engagement_events", "partition": 3, "offset": 1234,
            "sequence": [35191224, 35191376], "commit_ts_ms": 1764644400123}}
```

``idempotency_key`` is the record's Kafka position, the same on every replay and re-send of that
record. ``source.sequence`` is Debezium's ``(commit LSN of the previous transaction, LSN)``: a
receiver keeps, per ``id``, the change with the highest sequence, so an older change that a replay
delivers late never overwrites a newer one (``null`` for snapshot reads, which come first). The
row fields are the after-image, or the before-image of a delete (``op`` ``d``). Columns added to
``engagement_events`` after this was written come in ``"extra": {"<column>": <value>}``, present
only when the row has any (docs/operations.md, "Schema evolution").

The request's ``Idempotency-Key`` header (draft-ietf-httpapi-idempotency-key-header: a structured
field string) is a digest of its changes' keys, so a retried batch carries the same header.

A receiver may answer 2xx with ``{"results": [{"idempotency_key": k, "status": 422, "error": "..."}]}``
to give each change its own outcome (Elasticsearch's bulk API shape): a 2xx or 409 status is
delivered, a retryable status is retried, any other is dead-lettered. Changes it does not name, or a
2xx reply without ``results``, are delivered.

What a 2xx must carry is the endpoint's contract (``HTTP_SINK_ACCEPT``, ``accept`` per endpoint):
``json-ack`` (the default), an empty body or a JSON object; ``any-2xx``, any body, as before it
existed. Under both, a body that is or may be a JSON object but cannot be read whole (larger than
``HTTP_SINK_MAX_REPLY_BYTES``, nested deeper than the decoder allows, ``results`` of another
shape) raises :class:`BadReplyError`: it may hold refusals, so it is never taken for "delivered".
"""

from __future__ import annotations

import base64
import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any, Final

import msgspec

from sinks.records import EnrichedChange


class Source(msgspec.Struct, gc=False):
    topic: str
    partition: int
    offset: int
    sequence: tuple[int, int] | None
    commit_ts_ms: int


class Change(msgspec.Struct, gc=False, omit_defaults=False):
    idempotency_key: str
    op: str
    id: int | None
    content_id: str | None
    event_type: str | None
    content_type: str | None
    device: str | None
    user_id: str | None
    event_ts: datetime | None
    duration_ms: int | None
    engagement_seconds: float | None
    engagement_pct: float | None
    source: Source
    # Columns added to engagement_events later (schema evolution), only when the row has any.
    extra: dict[str, Any] | msgspec.UnsetType = msgspec.UNSET


_encoder = msgspec.json.Encoder()


def idempotency_key(change: EnrichedChange) -> str:
    return change.identity.record_id


def change_json(change: EnrichedChange) -> bytes:
    """One change as the body carries it (see the module docstring)."""
    row = change.row
    content = change.content
    p = change.identity
    return _encoder.encode(
        Change(
            idempotency_key=p.record_id,
            op=change.op,
            id=row.id if row is not None else None,
            content_id=row.content_id if row is not None else None,
            event_type=row.event_type if row is not None else None,
            content_type=content.content_type if content is not None else None,
            device=row.device if row is not None else None,
            user_id=row.user_id if row is not None else None,
            event_ts=row.event_ts if row is not None else None,
            duration_ms=row.duration_ms if row is not None else None,
            engagement_seconds=change.engagement_seconds,
            engagement_pct=change.engagement_pct,
            source=Source(p.topic, p.partition, p.offset, change.sequence, change.commit_ts_ms),
            extra=dict(row.extra) if row is not None and row.extra else msgspec.UNSET,
        )
    )


def request_body(endpoint: str, changes: Sequence[bytes]) -> bytes:
    """The body for already encoded changes: joined, not re-encoded (replays send stored bytes)."""
    return b'{"endpoint":' + _encoder.encode(endpoint) + b',"changes":[' + b",".join(changes) + b"]}"


def batch_key(keys: Sequence[str]) -> str:
    """The ``Idempotency-Key`` header value: a structured-field string, digest of the batch's keys."""
    digest = hashlib.sha256("\n".join(keys).encode()).digest()
    return '"' + base64.urlsafe_b64encode(digest[:24]).decode() + '"'


ACCEPT_JSON: Final = "json-ack"
ACCEPT_ANY: Final = "any-2xx"


class BadReplyError(ValueError):
    """A 2xx reply is not what the endpoint's contract says; ``label`` is its ``dlq.http.status``."""

    label = "bad_reply"


class UnreadableResultsError(BadReplyError):
    """A 2xx reply has ``results`` we cannot read: nobody can say which changes it took."""

    label = "unreadable"


class TooLargeError(BadReplyError):
    label = "too_large"


class TooDeepError(BadReplyError):
    label = "too_deep"


def record_results(body: bytes, complete: bool = True, accept: str = ACCEPT_ANY) -> dict[str, tuple[int, str]]:
    """Per-change outcomes a 2xx reply gives, by key; ``{}`` when it gives none. ``complete`` is
    False when only the first ``len(body)`` bytes were read. A body the contract ``accept`` does
    not take raises :class:`BadReplyError` (see the module docstring): treating it as "all
    delivered" would believe a proxy's page, or drop the refusals it holds."""
    text = body.removeprefix(b"\xef\xbb\xbf").lstrip(b" \t\r\n")
    if complete and not text:
        return {}  # no body (a 204): an ack with nothing to misread, under either contract
    if not text.startswith(b"{"):
        if accept == ACCEPT_ANY:
            return {}
        raise BadReplyError(f"the body is not a JSON object: {excerpt(text, 80)}")
    if not complete:
        raise TooLargeError(f"the body is over {len(body)} bytes (HTTP_SINK_MAX_REPLY_BYTES): not read whole")
    try:
        parsed = msgspec.json.decode(text)
    except RecursionError:
        raise TooDeepError("the body's JSON is nested deeper than the decoder allows") from None
    except msgspec.DecodeError as exc:
        if accept == ACCEPT_ANY:
            return {}
        raise BadReplyError(f"the body is not valid JSON: {exc}") from None
    if not isinstance(parsed, dict) or parsed.get("results") is None:
        return {}
    results = parsed["results"]
    if not isinstance(results, list):
        raise UnreadableResultsError(f"results is a {type(results).__name__}, not a list")
    outcomes: dict[str, tuple[int, str]] = {}
    for i, result in enumerate(results):
        key = result.get("idempotency_key") if isinstance(result, dict) else None
        status = result.get("status") if isinstance(result, dict) else None
        if isinstance(status, str) and status.isascii() and status.isdigit():
            status = int(status)
        if not isinstance(key, str) or not isinstance(status, int) or isinstance(status, bool):
            raise UnreadableResultsError(f"results[{i}] has no string idempotency_key and integer status")
        error = result.get("error")
        outcomes[key] = (
            status,
            error if isinstance(error, str) else "" if error is None else _encoder.encode(error).decode(),
        )
    return outcomes


@dataclass(frozen=True)
class Verdict:
    """What one status means for a change: delivered, retried, or dead-lettered."""

    delivered: bool
    retry: bool


def verdict(status: int, retryable: frozenset[int]) -> Verdict:
    if 200 <= status < 300 or status == 409:  # 409: the receiver already has it
        return Verdict(delivered=True, retry=False)
    return Verdict(delivered=False, retry=status in retryable)


def retry_after_s(value: str | None, now: datetime | None = None) -> float | None:
    """A ``Retry-After`` header in seconds: delta-seconds or an HTTP-date (RFC 9110 10.2.3)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    seconds = (when - (now or datetime.now(UTC))).total_seconds()
    return max(0.0, math.ceil(seconds))


def excerpt(body: bytes, limit: int) -> str:
    """The start of a refusing reply's body for a dead letter, on one line."""
    text = body[:limit].decode("utf-8", errors="replace")
    return " ".join(text.split()) + ("..." if len(body) > limit else "")
