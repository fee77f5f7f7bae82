"""Changes and a scripted endpoint (httpx.MockTransport) for the HTTP sink's unit tests."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import orjson

from infra.settings import HttpSinkSettings, KafkaSettings
from sinks.http import HttpSink
from sinks.http_routes import Route, everything
from sinks.positions import Position
from sinks.records import ContentRow, Contribution, EngagementRow, EnrichedChange, SourcePosition

NOW = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
VIDEO = ContentRow("c-1", "slug", "Title", "video", 600, NOW)


def row(id_: int, event_type: str = "finish", device: str = "ios", duration_ms: int | None = 300_000) -> EngagementRow:
    return EngagementRow(id_, "c-1", "u-1", event_type, NOW, duration_ms, device, None)


def enriched(
    offset: int,
    op: str = "c",
    after: EngagementRow | None = None,
    before: EngagementRow | None = None,
    pct: float | None = 50.0,
    before_pct: float | None = None,
    content: ContentRow | None = VIDEO,
) -> EnrichedChange:
    if op != "d" and after is None:
        after = row(offset)
    contributions = ()
    if before is not None:
        contributions = (Contribution("c-1", "video", 0, before.event_type, 1.0, before_pct, -1),)
    return EnrichedChange(
        SourcePosition("events", 1, offset),
        b"k",
        b"original-%d" % offset,
        op,
        (10, 20 + offset),
        1_764_644_400_000,
        before,
        after,
        content,
        contributions,
        engagement_seconds=300.0,
        engagement_pct=pct,
    )


class Endpoint:
    """Answers requests with a script of handlers (the last one repeats), recording each body."""

    def __init__(self, *script: Callable[[httpx.Request], httpx.Response]) -> None:
        self.script = list(script) or [lambda r: httpx.Response(200)]
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        handler = self.script.pop(0) if len(self.script) > 1 else self.script[0]
        return handler(request)

    def keys(self, index: int = -1) -> list[str]:
        return [c["idempotency_key"] for c in orjson.loads(self.requests[index].content)["changes"]]


class MemoryPositions:
    def __init__(self) -> None:
        self.stored: dict[str, Position] = {}

    def load(self, topics):
        return dict(self.stored)

    def store(self, positions, extras=None):
        self.stored.update(positions)

    def close(self) -> None:
        pass


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Sleeps:
    """A sleep that moves ``clock`` instead of waiting, and records each wait."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.slept: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.clock.now += seconds


def http_sink(
    endpoint: Endpoint,
    settings: HttpSinkSettings | None = None,
    route: Route | None = None,
    clock: Clock | None = None,
) -> HttpSink:
    settings = settings or HttpSinkSettings(url="http://receiver/ingest", concurrency=1)
    route = route or everything("http://receiver/ingest")[0]
    sink = HttpSink(
        route,
        settings,
        KafkaSettings(),
        "group",
        None,
        clock=clock or Clock(),
        client_factory=lambda: httpx.Client(transport=httpx.MockTransport(endpoint)),
        positions_factory=MemoryPositions,
    )
    sink.open()
    return sink
