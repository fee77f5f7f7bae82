"""The HTTP sink's and the local receiver's settings groups, part of the one config in ``infra.settings``
(which re-exports them): kept in a module of their own because the sink has many knobs."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings

from infra.secrets import Secret
from infra.settings_base import Group
from infra.settings_base import config as _config


def parse_statuses(text: str) -> frozenset[int]:
    """``"408,429,500-599"`` -> the set of those HTTP statuses; a bad part raises ``ValueError``."""
    statuses: set[int] = set()
    for part in (p.strip() for p in text.split(",")):
        if not part:
            continue
        low, _, high = part.partition("-")
        try:
            first, last = int(low), int(high or low)
        except ValueError:
            raise ValueError(f"{part!r} is not a status or a range like 500-599") from None
        if not 100 <= first <= last <= 599:
            raise ValueError(f"{part!r}: statuses are 100-599, low to high")
        statuses.update(range(first, last + 1))
    return frozenset(statuses)


class HttpSinkSettings(Group):
    """The HTTP sink (docs/http.md): where it posts, how it batches, retries and trips its breaker.

    Off unless ``HTTP_SINK_URL`` (one endpoint, named ``default``, gets every change) or
    ``HTTP_SINK_ROUTES_FILE`` (YAML routing rules, ``infra/http/routes.example.yaml``) is set. The
    numbers below apply to every endpoint; a routes file sets each endpoint's URL and headers.
    """

    model_config = _config("HTTP_SINK_")

    url: str = ""
    routes_file: Path | None = None
    # ${NAME} in the routing file may read only variables named HTTP_SINK_ROUTE_* and these (commas);
    # any other is refused at start (sinks/http_routes.py), so the file cannot read other secrets.
    routes_env_allow: str = "HTTP_RECEIVER_URL"
    # Changes per POST and bytes of JSON per POST; one flush sends up to `concurrency` POSTs at once.
    batch_max_records: int = Field(default=500, ge=1, le=50_000)
    batch_max_bytes: int = Field(default=1_000_000, ge=1_024)
    concurrency: int = Field(default=4, ge=1, le=64)
    # How long a change may wait for more to fill its batch.
    linger_ms: int = Field(default=50, gt=0)
    connect_timeout_s: float = Field(default=2.0, gt=0)
    request_timeout_s: float = Field(default=10.0, gt=0)
    # A batch retries for this long at most (backoff with jitter, Retry-After honoured), then its
    # changes go to the HTTP dead-letter topic.
    budget_s: float = Field(default=30.0, gt=0)
    initial_backoff_s: float = Field(default=0.2, gt=0)
    max_backoff_s: float = Field(default=5.0, gt=0)
    # Statuses retried (commas, ranges): any other status below 200 or from 300 on is final.
    retryable_statuses: str = "408,425,429,500-599"
    # A refused batch with one of these is split in halves until the refused change is alone.
    split_statuses: str = "400,413,422"
    # Extra headers on every request, as JSON ({"X-Tenant": "newsroom"}); a token goes in auth_token.
    headers: dict[str, str] = Field(default_factory=dict)
    auth_token: Secret | None = None
    # The breaker opens after breaker_fail_max failed requests in a row, or when at least
    # breaker_min_calls requests in breaker_window_s failed at breaker_failure_rate or more. Open,
    # it dead-letters at once; after breaker_reset_timeout_s one trial request may close it.
    breaker_fail_max: int = Field(default=5, ge=1)
    breaker_failure_rate: float = Field(default=0.5, gt=0, le=1)
    breaker_window_s: float = Field(default=30.0, gt=0)
    breaker_min_calls: int = Field(default=20, ge=1)
    breaker_reset_timeout_s: float = Field(default=10.0, gt=0)
    # Bytes of a refusing response's body kept in the dead letter.
    body_excerpt_bytes: int = Field(default=512, ge=0, le=65_536)
    # A hostile or broken endpoint (docs/http.md, "What a reply must be"): at most this many bytes
    # of a reply are read (a results list for 500 changes is about 40 KB), and a request, reply
    # included, ends within request_deadline_s however slowly the bytes come (a `timeout`).
    max_reply_bytes: int = Field(default=1_048_576, ge=1_024)
    request_deadline_s: float = Field(default=15.0, gt=0)
    # What a 2xx must carry to count as delivered: json-ack (an empty body or a JSON object) or
    # any-2xx (any body, as before). A routes file may set `accept` per endpoint. A 2xx that is not
    # what the contract says is retried under the budget (bad_reply=retry) or dead-lettered at once.
    accept: Literal["json-ack", "any-2xx"] = "json-ack"
    bad_reply: Literal["retry", "dead_letter"] = "retry"
    # While the breaker is open the lane pauses (Kafka holds the backlog) and this budget runs; the
    # retry budget above does not. Unset (the default): a change waits out any outage.
    outage_budget_s: float | None = Field(default=None, gt=0)
    # Where an endpoint's sink starts when it has stored no position yet (a new endpoint):
    # earliest, latest, or an ISO 8601 time (the first change committed to Kafka at or after it).
    start: str = "earliest"

    @field_validator("routes_file", mode="before")
    @classmethod
    def _unset(cls, value: Any) -> Any:
        return None if value == "" else value  # HTTP_SINK_ROUTES_FILE= turns routing off

    @field_validator("outage_budget_s", mode="before")
    @classmethod
    def _forever(cls, value: Any) -> Any:
        return None if value in ("", 0, "0") else value  # HTTP_SINK_OUTAGE_BUDGET_S= waits for ever

    @field_validator("start")
    @classmethod
    def _start(cls, value: str) -> str:
        start_ms(value)
        return value

    @field_validator("retryable_statuses", "split_statuses")
    @classmethod
    def _statuses(cls, value: str) -> str:
        parse_statuses(value)
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.url or self.routes_file)

    @property
    def routes_env_names(self) -> frozenset[str]:
        return frozenset(name.strip() for name in self.routes_env_allow.split(",") if name.strip())

    @property
    def retryable(self) -> frozenset[int]:
        return parse_statuses(self.retryable_statuses)

    @property
    def split(self) -> frozenset[int]:
        return parse_statuses(self.split_statuses)

    @property
    def start_ms(self) -> int | None:
        """``start`` as epoch milliseconds; None for earliest, -1 for latest."""
        return start_ms(self.start)


def start_ms(text: str) -> int | None:
    """``earliest`` -> None, ``latest`` -> -1, an ISO 8601 time -> epoch ms (UTC when it has no zone)."""
    value = text.strip().lower()
    if value == "earliest":
        return None
    if value == "latest":
        return -1
    try:
        when = datetime.fromisoformat(text.strip())
    except ValueError:
        raise ValueError(f"{text!r} is not earliest, latest or an ISO 8601 time") from None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return int(when.timestamp() * 1000)


class HttpReceiverSettings(BaseSettings):
    """The local HTTP receiver (``infra/http_receiver``): the demo's and the tests' endpoint.

    Changes are posted to ``http://HOST:PORT/ingest/<endpoint>``; counts, received changes and fault
    injection are on the control port, which stays up while the ingest port is "down".
    """

    model_config = _config("HTTP_RECEIVER_")

    host: str = "127.0.0.1"
    port: int = 58088
    control_port: int = 58089

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def control_url(self) -> str:
        return f"http://{self.host}:{self.control_port}"
