"""The streaming job: Debezium topics -> decode -> join content -> Redis, dead letters -> Kafka.

```
ReadEngagement ─> DecodeEngagement ─> JoinContent ─> WriteLeaderboards (Redis, exactly once)
ReadContent ────> DecodeContent ────────────────────> WriteContentMetadata (Redis)
   every dead_letter output ─> DeadLetters ─> WriteDeadLetters (Kafka, with the reason)
```

Reading, decoding, the join and the Redis sink run fused in one stage per topic, without keyed
state or shuffles (only the dead-letter writer, behind a ``Flatten``, is a stage of its own): the
join is a lookup in the worker's content view (``pipeline.sources.content_view``), and each sink
stores source positions atomically with its writes. ``build`` is runner-agnostic; ``pipeline.runners`` holds the options
that differ between Prism, Flink and Dataflow.

Run it through the supervisor: ``python -m pipeline`` (``--help`` lists the options).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from infra.settings import Settings
from pipeline.sources.kafka_partitions import (
    UNBOUNDED,
    PartitionSpec,
    ReadKafkaPartitions,
    SourceTuning,
    discover_partitions,
)
from pipeline.transforms.enrich import DEAD_LETTER, DecodeFn, JoinContentFn
from sinks.base import SinkWriteFn
from sinks.dead_letter import WriteDeadLetters
from sinks.redis_leaderboard import RedisContentSink, RedisLeaderboardSink

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Plan:
    """Where each partition starts and stops for this run."""

    engagement: list[PartitionSpec]
    content: list[PartitionSpec]


def consumer_config(settings: Settings) -> dict[str, str]:
    return {"bootstrap.servers": settings.kafka.bootstrap_servers, "group.id": settings.pipeline.consumer_group}


def stored_positions(settings: Settings) -> dict[str, int]:
    """The lowest position any sink has stored per ``topic:partition`` (one Redis sink for now)."""
    sink = RedisLeaderboardSink(settings.redis, settings.leaderboard, roll_in_background=False)
    try:
        return sink.positions()
    finally:
        sink.close()


def plan(settings: Settings, *, bounded: bool = False) -> Plan:
    positions = stored_positions(settings)
    config = consumer_config(settings)

    def resume(topic: str) -> dict[int, int]:
        prefix = f"{topic}:"
        return {int(k[len(prefix) :]): v for k, v in positions.items() if k.startswith(prefix)}

    cdc = settings.cdc
    return Plan(
        engagement=discover_partitions(config, cdc.engagement_topic, resume(cdc.engagement_topic), bounded=bounded),
        content=discover_partitions(config, cdc.content_topic, resume(cdc.content_topic), bounded=bounded),
    )


def build(p: beam.Pipeline, settings: Settings, run_plan: Plan) -> None:
    """Add the job's steps to ``p``; reads like the diagram in the module docstring."""
    config = consumer_config(settings)
    ps = settings.pipeline
    tuning = SourceTuning(
        readers=ps.readers,
        max_records=ps.max_records_per_call,
        max_call_ms=ps.max_call_ms,
        idle_wait_ms=ps.idle_wait_ms,
        idle_resume_ms=ps.idle_resume_ms,
    )
    redis_settings, board = settings.redis, settings.leaderboard

    events = (
        p
        | "ReadEngagement" >> ReadKafkaPartitions(run_plan.engagement, config, tuning)
        | "DecodeEngagement" >> beam.ParDo(DecodeFn("engagement")).with_outputs(DEAD_LETTER, main="changes")
    )
    joined = events.changes | "JoinContent" >> beam.ParDo(
        JoinContentFn(config, settings.cdc.content_topic, ps.late_content_timeout_s, ps.view_startup_timeout_s)
    ).with_outputs(DEAD_LETTER, main="enriched")
    leaderboards = joined.enriched | "WriteLeaderboards" >> beam.ParDo(
        SinkWriteFn(lambda: RedisLeaderboardSink(redis_settings, board), max_latency_ms=ps.sink_flush_ms)
    ).with_outputs(DEAD_LETTER, main="written")

    content = (
        p
        | "ReadContent" >> ReadKafkaPartitions(run_plan.content, config, tuning)
        | "DecodeContent" >> beam.ParDo(DecodeFn("content")).with_outputs(DEAD_LETTER, main="changes")
    )
    metadata = content.changes | "WriteContentMetadata" >> beam.ParDo(
        SinkWriteFn(lambda: RedisContentSink(redis_settings), max_latency_ms=ps.sink_flush_ms)
    ).with_outputs(DEAD_LETTER, main="written")

    (
        (events.dead_letter, joined.dead_letter, leaderboards.dead_letter, content.dead_letter, metadata.dead_letter)
        | "DeadLetters" >> beam.Flatten()
        | "WriteDeadLetters"
        >> WriteDeadLetters({"bootstrap.servers": settings.kafka.bootstrap_servers}, settings.cdc.dlq_topic)
    )


def run(settings: Settings, options: PipelineOptions, *, bounded: bool = False) -> beam.runners.runner.PipelineResult:
    run_plan = plan(settings, bounded=bounded)
    for spec in run_plan.engagement + run_plan.content:
        _log.info(
            "%s[%d] from offset %d%s",
            spec.topic,
            spec.partition,
            spec.start,
            "" if spec.stop == UNBOUNDED else f" to {spec.stop}",
        )
    p = beam.Pipeline(options=options)
    build(p, settings, run_plan)
    result = p.run()
    return result
