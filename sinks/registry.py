"""Which sinks exist, which topic each consumes, and how ``PIPELINE_SINKS`` groups them into lanes.

A *lane* is one read of a topic feeding one or more sinks, in one fused stage. Lanes read at their
own positions (the lowest over the lane's sinks), so a sink that is slow or down holds back only
its own lane: Kafka keeps its backlog, and the other lanes go on. ``PIPELINE_SINKS=redis,faulty``
is two lanes per topic consumed; ``redis+faulty`` is one lane with both sinks (less CPU, no
isolation between them).

A new sink is a module with a ``Sink`` subclass and an entry in ``SINKS``; ``pipeline/`` composes
whatever this module returns and needs no change.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from infra.settings import Settings
from sinks.contract import Sink

Topic = Literal["engagement", "content"]


def _leaderboards(settings: Settings) -> Sink[Any]:
    from sinks.redis_leaderboard import RedisLeaderboardSink

    return RedisLeaderboardSink(settings.redis, settings.leaderboard)


def _content_metadata(settings: Settings) -> Sink[Any]:
    from sinks.redis_content import RedisContentSink

    return RedisContentSink(settings.redis)


def _bigquery_changes(settings: Settings) -> Sink[Any]:
    from sinks.bigquery import BigQueryChangesSink

    return BigQueryChangesSink(settings.bigquery, settings.kafka, settings.pipeline.consumer_group)


def _bigquery_content(settings: Settings) -> Sink[Any]:
    from sinks.bigquery import BigQueryContentSink

    return BigQueryContentSink(settings.bigquery, settings.kafka, settings.pipeline.consumer_group)


def _http_sink(route: Any, settings: Settings) -> Sink[Any]:
    from sinks.http import HttpSink

    return HttpSink(
        route,
        settings.http_sink,
        settings.kafka,
        settings.pipeline.consumer_group,
        settings.redis,
        start_topics=(settings.cdc.engagement_topic, settings.cdc.parked_topic),
    )


def http_routes(settings: Settings) -> list[Any]:
    """The endpoints the HTTP sink posts to: the routing file's, or ``HTTP_SINK_URL`` alone, or none
    (the sink is off). Loading checks the file: a mistake fails the start, naming rule and field."""
    from sinks import http_routes as routes

    hs = settings.http_sink
    if hs.routes_file is not None:
        return routes.load(hs.routes_file, allowed=hs.routes_env_names)
    return routes.everything(hs.url) if hs.url else []


def _http_specs(settings: Settings) -> tuple[SinkSpec, ...]:
    return tuple(
        SinkSpec(
            f"http_{route.endpoint}",
            "engagement",
            "Http" + "".join(part.capitalize() for part in route.endpoint.split("_")),
            functools.partial(_http_sink, route),
            dead_letter_topic=settings.cdc.http_dlq_topic,
            max_latency_ms=settings.http_sink.linger_ms,
            positions_in="kafka",
        )
        for route in http_routes(settings)
    )


def _bigquery_specs(settings: Settings) -> tuple[SinkSpec, ...]:
    linger = settings.bigquery.linger_ms
    return (
        SinkSpec("bigquery", "engagement", "BigQuery", _bigquery_changes, max_latency_ms=linger, positions_in="kafka"),
        SinkSpec(
            "bigquery_content",
            "content",
            "BigQueryContent",
            _bigquery_content,
            max_latency_ms=linger,
            positions_in="kafka",
        ),
    )


def _fault_injection(settings: Settings) -> Sink[Any]:
    from sinks.fault_injection import FaultInjectionSink

    return FaultInjectionSink(settings.redis)


@dataclass(frozen=True)
class SinkSpec:
    name: str  # the sink's own name: its positions and metrics
    topic: Topic
    label: str  # the Beam step
    build: Callable[[Settings], Sink[Any]]
    dead_letter_topic: str | None = None  # the sink's own letters go here (default: the DLQ topic)
    max_latency_ms: int | None = None  # how long a record waits for its batch (PIPELINE_SINK_FLUSH_MS)
    # Where the sink stores its positions: Redis (atomic with the data: sinks.redis_store) or the
    # Kafka consumer group ``group_id(consumer group, name)`` (sinks.kafka_positions). Read by tools.
    positions_in: Literal["redis", "kafka"] = "redis"


SINKS: dict[str, tuple[SinkSpec, ...] | Callable[[Settings], tuple[SinkSpec, ...]]] = {
    "redis": (
        SinkSpec("redis_leaderboard", "engagement", "Leaderboards", _leaderboards),
        SinkSpec("redis_content", "content", "ContentMetadata", _content_metadata),
    ),
    "bigquery": _bigquery_specs,
    # One sink per endpoint, from the settings (none when the HTTP sink is not configured).
    "http": _http_specs,
    "faulty": (SinkSpec("faulty", "engagement", "FaultInjection", _fault_injection),),
}


def specs(name: str, settings: Settings | None) -> tuple[SinkSpec, ...]:
    entry = SINKS[name]
    if callable(entry):
        if settings is None:
            raise ValueError(f"sink {name!r} is configured by the settings: pass them to lanes()")
        return entry(settings)
    return entry


@dataclass(frozen=True)
class Lane:
    topic: Topic
    sinks: tuple[SinkSpec, ...]
    # Decode letters reach every lane of a topic alike; one lane produces them (join letters depend
    # on timing, and every sink produces those it admits: sinks.flush).
    owns_upstream_letters: bool

    @property
    def label(self) -> str:
        return "+".join(spec.label for spec in self.sinks)


def lanes(setting: str, settings: Settings | None = None) -> list[Lane]:
    """The lanes ``PIPELINE_SINKS`` asks for, in order; the first lane of each topic owns its letters.
    A sink with no endpoint configured (``http`` without a URL or routes) has no lane."""
    result: list[Lane] = []
    seen: set[str] = set()
    for group in (part.strip() for part in setting.split(",")):
        names = [name.strip() for name in group.split("+") if name.strip()]
        unknown = [name for name in names if name not in SINKS]
        if unknown or not names:
            raise ValueError(
                f"PIPELINE_SINKS={setting!r}: unknown sink {unknown or group!r}; known: {', '.join(SINKS)}"
            )
        repeated = seen.intersection(names)
        if repeated:
            raise ValueError(f"PIPELINE_SINKS={setting!r}: {', '.join(sorted(repeated))} named twice")
        seen.update(names)
        for topic in ("engagement", "content"):
            chosen = tuple(spec for name in names for spec in specs(name, settings) if spec.topic == topic)
            if chosen:
                first = not any(lane.topic == topic for lane in result)
                result.append(Lane(topic, chosen, owns_upstream_letters=first))
    return result
