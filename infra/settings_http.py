"""The HTTP sink's and the local receiver's settings groups, part of the one config in ``infra.settings``
(which re-exports them): kept in a module of their own because the sink has many knobs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings

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


class HttpSinkSettings(BaseSettings):
    """The HTTP sink (docs/http.md): where it posts, how it batches, retries and trips its breaker.

    Off unless ``HTTP_SINK_URL`` (one endpoint, named ``default``, gets every change) or
    ``HTTP_SINK_ROUTES_FILE`` (YAML routing rules, ``infra/http/routes.example.yaml``) is set. The
    numbers below apply to every endpoint; a routes file sets each endpoint's URL and headers.
    """

    model_config = _config("HTTP_SINK_")

    url: str = ""
    routes_file: Path | None = None
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
    auth_token: SecretStr | None = None
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

    @field_validator("routes_file", mode="before")
    @classmethod
    def _unset(cls, value: Any) -> Any:
        return None if value == "" else value  # HTTP_SINK_ROUTES_FILE= turns routing off

    @field_validator("retryable_statuses", "split_statuses")
    @classmethod
    def _statuses(cls, value: str) -> str:
        parse_statuses(value)
        return value

    @property
    def enabled(self) -> bool:
        return bool(self.url or self.routes_file)

    @property
    def retryable(self) -> frozenset[int]:
        return parse_statuses(self.retryable_statuses)

    @property
    def split(self) -> frozenset[int]:
        return parse_statuses(self.split_statuses)


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
