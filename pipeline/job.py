"""The streaming job: Debezium topics -> decode -> join content -> sinks, in lanes.

```
for each lane of PIPELINE_SINKS (sinks.registry), e.g. "redis":
  Leaderboards:     ReadEngagement ─> Decode ─> JoinContent ─> WriteLeaderboards     (Redis, exactly once) ─┐
  ContentMetadata:  ReadContent ────> Decode ─────────────────> WriteContentMetadata (Redis, exactly once) ─┤
  LeaderboardsParked: ReadParked ──> Unpark ─────────────────> WriteLeaderboards (events back from parking) ─┴─> Done
dead letters (decode, join, sink) ─> the dead-letter topic, produced by the lane's sink, confirmed
```

Each lane reads its topic from the lowest position its sinks stored (``plan``) and is fused into one
stage (``pipeline.lanes``), so a slow or unavailable sink in one lane never delays another: Kafka
holds each lane's backlog. On Prism each lane is also dealt by partition into shards
(``PIPELINE_LANE_SHARDS``, ``pipeline.lanes.shards``): ``Leaderboards-1`` and ``Leaderboards-2``
read half the partitions each, each its own stage, and with ``PIPELINE_PRISM_WORKERS`` in a
worker process each (a resource hint, ``pipeline.runners.WORKER_HINT``). ``build`` is runner-agnostic;
``pipeline.runners`` holds the options that differ between Prism, Flink and Dataflow.

Run it through the supervisor: ``python -m pipeline`` (``--help`` lists the options).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping

import apache_beam as beam
from apache_beam.options.pipeline_options import PipelineOptions

from infra.settings import Settings
from pipeline.lanes import LanePlan, RunLane, consumer_config, lane_shards, prism_workers, shards, topic_name
from pipeline.runners import WORKER_HINT
from pipeline.sources import kafkaio
from pipeline.sources.discovery import end_offsets
from pipeline.sources.kafka_partitions import UNBOUNDED, PartitionSpec, discover_partitions
from sinks.fencing import Fence, guard
from sinks.positions import Position, parking_floors, resume_offsets
from sinks.registry import Lane, SinkSpec, lanes

_log = logging.getLogger(__name__)


def stored_positions(settings: Settings, lane: Lane, topic: str) -> list[dict[str, Position]]:
    """What each sink of ``lane`` has stored for ``topic``."""
    stored = []
    for spec in lane.sinks:
        sink = spec.build(settings)
        sink.open()
        try:
            stored.append(sink.positions([topic]))
        finally:
            sink.close()
    return stored


def store_floor(settings: Settings, spec: SinkSpec, floor: Mapping[str, int]) -> dict[str, Position]:
    """Store a sink's floor on the parking topic as its positions there, under the job's fence: so a
    restart resumes from it, and its lag (``make status``, the truth checks) is measured from it."""
    positions = {key: Position(offset) for key, offset in floor.items()}
    sink = guard(spec.build(settings), Fence.of(settings))
    sink.open()
    try:
        sink.commit(positions, dict.fromkeys(positions))
    finally:
        sink.close()
    _log.info("%s starts over: the parking topic from its end, %s", spec.name, dict(floor))
    return positions


def lane_reads(settings: Settings) -> list[tuple[Lane, bool, str]]:
    """``(lane, parked, topic)`` for each read of the job: every lane of PIPELINE_SINKS, and for an
    event lane also its parked twin, on the parking topic (``pipeline.lanes``)."""
    return [
        (lane, parked, topic_name(settings, lane, parked=parked))
        for lane in lanes(settings.pipeline.sinks, settings)
        for parked in ((False, True) if lane.topic == "engagement" else (False,))
    ]


def plan(settings: Settings, *, bounded: bool = False) -> list[LanePlan]:
    """Each lane starts every partition at the lowest next offset over its sinks; on the parking
    topic, a sink that starts over begins at its end (``sinks.positions.parking_floors``)."""
    plans = []
    on_events: dict[Lane, list[dict[str, Position]]] = {}  # read for the lane, used again for its twin
    for lane, parked, topic in lane_reads(settings):
        stored = stored_positions(settings, lane, topic)
        if not parked:
            on_events[lane] = stored
        else:
            events = on_events[lane]
            by_sink = parking_floors(topic, stored, events, end_offsets(consumer_config(settings), topic))
            stored = [
                store_floor(settings, spec, floor) if floor else positions
                for spec, positions, floor in zip(lane.sinks, stored, by_sink, strict=True)
            ]
        resume = resume_offsets(topic, stored)
        specs = discover_partitions(consumer_config(settings), topic, resume, bounded=bounded)
        if bounded and settings.pipeline.stop_offsets is not None:
            specs = stop_at(specs, settings.pipeline.stop_offsets)
        read = tuple({key: position.next_offset for key, position in positions.items()} for positions in stored)
        plans += shards(LanePlan(lane, specs, parked, read), lane_shards(settings), prism_workers(settings))
    return plans


def stop_at(specs: list[PartitionSpec], stops: Mapping[str, int]) -> list[PartitionSpec]:
    """A bounded run that reads only the partitions ``stops`` names, each up to its offset there
    (``PIPELINE_STOP_OFFSETS``, set by ``pipeline.replay``): the others stop where they start."""
    return [
        dataclasses.replace(spec, stop=max(spec.start, min(spec.stop, stops.get(f"{spec.topic}:{spec.partition}", 0))))
        for spec in specs
    ]


def offline_plans(settings: Settings, partitions: Mapping[str, int] | None = None) -> list[LanePlan]:
    """``plan`` without Kafka or the sinks: every partition of each topic (``partitions``: topic ->
    count, by default the counts the stack creates the topics with) from offset 0, unbounded. For
    building the graph offline (``pipeline.dataflow_graph``)."""
    cdc = settings.cdc
    if partitions is None:
        partitions = {
            cdc.engagement_topic: cdc.engagement_partitions,
            cdc.content_topic: cdc.content_partitions,
            cdc.parked_topic: cdc.parked_partitions,
        }
    return [
        LanePlan(lane, [PartitionSpec(topic, p, 0) for p in range(partitions[topic])], parked)
        for lane, parked, topic in lane_reads(settings)
    ]


def build(p: beam.Pipeline, settings: Settings, lane_plans: list[LanePlan]) -> None:
    """Add one composite step per lane to ``p``; reads like the diagram in the module docstring."""
    written: dict[int, list[beam.PCollection]] = {}
    for lane_plan in lane_plans:
        step = lane_plan.label >> RunLane(lane_plan, settings)
        if lane_plan.worker:
            step = step.with_resource_hints(**{WORKER_HINT: str(lane_plan.worker)})
        written.setdefault(lane_plan.worker, []).append(p | step)
    # Why a step that receives nothing: on Prism 2.77, when no stage has a consumer of its output,
    # Prism itself used 0.8-0.9 of a core at 3,333 events/s and the board's p50 doubled (88-138 ms
    # against 53 ms); with the sinks' empty outputs flattened into one step, Prism used 0.11 cores
    # (docs/benchmarks.md, "Lanes"). No element ever reaches it. One per worker process, in its
    # environment: nothing crosses from one worker to another.
    for worker, outputs in sorted(written.items()):
        suffix = f"-{worker + 1}" if worker else ""
        done = f"Done{suffix}" >> beam.Map(_discard)
        if worker:
            done = done.with_resource_hints(**{WORKER_HINT: str(worker)})
        _ = tuple(outputs) | f"Written{suffix}" >> beam.Flatten() | done


def _discard(element: object) -> None:
    return None


def run(settings: Settings, options: PipelineOptions, *, bounded: bool = False) -> beam.runners.runner.PipelineResult:
    lane_plans = plan(settings, bounded=bounded)
    for lane_plan in lane_plans:
        for spec in lane_plan.partitions:
            _log.info(
                "%s: %s[%d] from offset %d%s",
                lane_plan.label,
                spec.topic,
                spec.partition,
                spec.start,
                "" if spec.stop == UNBOUNDED else f" to {spec.stop}",
            )
    if settings.pipeline.source == "kafkaio":
        # KafkaIO starts at its group's committed offsets: put the plan there (pipeline.sources.kafkaio).
        for lane_plan in lane_plans:
            kafkaio.check_plans(lane_plan.partitions)
            kafkaio.seed_group_offsets(consumer_config(settings, lane_plan.lane), lane_plan.partitions)
    p = beam.Pipeline(options=options)
    build(p, settings, lane_plans)
    return p.run()
