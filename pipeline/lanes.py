"""A lane: one read of a topic, decoded (and joined, for events), feeding one or more sinks.

```
a lane of the event topic:    Read ─> Decode ─> JoinContent ─> Write<Sink> (one per sink in the lane)
a lane of the content topic:  Read ─> Decode ──────────────────> Write<Sink>
its parked twin (events):     ReadParked ─> Unpark ───────────> Write<Sink> (the same sinks)
```

An event whose content is not known yet is parked by the lane's sinks (``sinks.parking``); the
twin lane reads the parking topic and brings it back (``pipeline.transforms.unpark``), so waiting
for content never holds the event lane.

Each lane is fused into one stage on Prism (and on Flink), without keyed state or shuffles: the
join is a lookup in the worker's content view, shared by all lanes of a process. Dead letters from
decode and join travel in the stream to the lane's sinks (``pipeline.transforms.enrich``).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import apache_beam as beam

from infra.settings import Settings
from pipeline.sources import kafkaio
from pipeline.sources.kafka_partitions import PartitionSpec, ReadKafkaPartitions, SourceTuning
from pipeline.transforms.enrich import DecodeFn, JoinContentFn
from pipeline.transforms.unpark import UnparkFn
from sinks.base import SinkWriteFn
from sinks.dead_letter import DeadLetterProducer
from sinks.fencing import Fence
from sinks.parking import PARK_STAGE
from sinks.registry import Lane, SinkSpec


@dataclass(frozen=True)
class LanePlan:
    """A lane and where its source starts (and, when bounded, stops) each partition."""

    lane: Lane
    partitions: list[PartitionSpec]
    parked: bool = False  # the lane's twin on the parking topic
    # Per sink of the lane, the next offsets the plan read from it: its first load must not be lower
    # (``sinks.flush``: a store that came back older in between).
    read: tuple[dict[str, int], ...] = ()
    # Which of the lane's ``shards`` this plan is (``shards``).
    shard: int = 0
    shard_count: int = 1
    # Which of the job's worker processes runs it (``shards``); 0 is the job process itself.
    worker: int = 0

    @property
    def label(self) -> str:
        label = f"{self.lane.label}Parked" if self.parked else self.lane.label
        return label if self.shard_count == 1 else f"{label}-{self.shard + 1}"


def shards(plan: LanePlan, count: int, workers: int = 1) -> list[LanePlan]:
    """The plan dealt by partition into at most ``count`` plans, each its own stage: a partition
    belongs to exactly one, so each sink position still has one writer. A lane of one partition
    stays whole, and so does a parked twin: it carries a trickle, and Prism runs at most eight
    bundles at a time over the whole job, so a stage that is mostly idle would only take a turn
    from a busy one.

    Why on Prism: a stage's reader is one element whose bundles run one after another (each ends
    with its sinks' flush, then its residual goes back to Prism before the next begins), so one
    stage per lane leaves the worker idle between bundles; with two, one shard's bundle decodes
    while the other's waits. Shard ``k`` runs in worker process ``k % workers``."""
    count = min(count, len(plan.partitions))
    if count <= 1 or plan.parked:
        return [plan]
    return [
        dataclasses.replace(plan, partitions=plan.partitions[k::count], shard=k, shard_count=count, worker=k % workers)
        for k in range(count)
    ]


def lane_shards(settings: Settings) -> int:
    """``PIPELINE_LANE_SHARDS`` (at least one per worker process) on Prism with our source; one
    elsewhere, where the runner spreads the readers over its workers itself (``PIPELINE_READERS``),
    and with KafkaIO, which reads every partition of its topic whatever the plan holds."""
    ps = settings.pipeline
    return max(ps.lane_shards, ps.prism_workers) if ps.runner == "prism" and ps.source == "sdf" else 1


def prism_workers(settings: Settings) -> int:
    """The job's worker processes: ``PIPELINE_PRISM_WORKERS`` where lanes are sharded, else one."""
    return settings.pipeline.prism_workers if lane_shards(settings) > 1 else 1


def lane_name(lane: Lane) -> str:
    """The lane in its consumer group's name and in the ``lane`` label of the source's lag."""
    return lane.label.lower()


def consumer_config(settings: Settings, lane: Lane | None = None) -> dict[str, str]:
    """Each lane has its own consumer group (``<PIPELINE_CONSUMER_GROUP>.<lane>``): its own
    consumers in the source's pool, and its own lag in ordinary Kafka tooling (the source commits
    there for monitoring only; positions live in the sinks)."""
    group = settings.pipeline.consumer_group
    if lane is not None:
        group = f"{group}.{lane_name(lane)}"
    return settings.kafka.client_config(**{"group.id": group})


def tuning(settings: Settings, lane: Lane | None = None) -> SourceTuning:
    """The source's tuning; for a lane, a call ends after a lull as long as the shortest batching
    wait of its sinks, and lasts at least that long. A bundle's end flushes every sink of the lane,
    so shorter bundles would flush a sink that batches for a second (BigQuery) several times a
    second, in small appends, each bundle costing Prism and the worker besides."""
    ps = settings.pipeline
    quiet = SourceTuning.quiet_ms
    if lane is not None:
        quiet = max(quiet, min(spec.max_latency_ms or ps.sink_flush_ms for spec in lane.sinks))
    return SourceTuning(
        readers=ps.readers,
        subtasks=settings.flink.job_parallelism if ps.runner == "flink" else 1,
        max_records=ps.max_records_per_call,
        max_call_ms=max(ps.max_call_ms, quiet),
        quiet_ms=quiet,
        idle_wait_ms=ps.idle_wait_ms,
        idle_resume_ms=ps.idle_resume_ms,
    )


def topic_name(settings: Settings, lane: Lane, *, parked: bool = False) -> str:
    if parked:
        return settings.cdc.parked_topic
    return settings.cdc.engagement_topic if lane.topic == "engagement" else settings.cdc.content_topic


def source(plan: LanePlan, settings: Settings) -> beam.PTransform:
    """The lane's read (``PIPELINE_SOURCE``): our SDF source at the plan's offsets, or KafkaIO, which
    starts at the same offsets once ``pipeline.sources.kafkaio.seed_group_offsets`` committed them."""
    config = consumer_config(settings, plan.lane)
    if settings.pipeline.source == "kafkaio":
        kafkaio.check_plans(plan.partitions)
        service = kafkaio.expansion_service(settings.pipeline.kafkaio_expansion_service)
        return kafkaio.ReadWithKafkaIO(topic_name(settings, plan.lane, parked=plan.parked), config, service)
    return ReadKafkaPartitions(plan.partitions, config, tuning(settings, plan.lane), lane_name(plan.lane))


class WriteLane(beam.PTransform):
    """Fans a lane's stream out to one ``SinkWriteFn`` per sink (each at its own positions)."""

    def __init__(self, plan: LanePlan, settings: Settings) -> None:
        super().__init__()
        self._plan = plan
        self._settings = settings

    def expand(self, stream: beam.PCollection) -> beam.PCollection:
        lane, s = self._plan.lane, self._settings
        letters = letter_producer(s, lane.sinks)
        written = []
        for index, spec in enumerate(lane.sinks):
            written.append(
                stream
                | f"Write{spec.label}"
                >> beam.ParDo(
                    SinkWriteFn(
                        functools.partial(spec.build, s),
                        letters,
                        [topic_name(s, lane, parked=self._plan.parked)],
                        owns_upstream_letters=lane.owns_upstream_letters and index == 0,
                        max_latency_ms=spec.max_latency_ms or s.pipeline.sink_flush_ms,
                        fence=Fence.of(s),
                        sequence_tolerance_ms=s.pipeline.sequence_tolerance_ms,
                        planned=self._plan.read[index] if self._plan.read else None,
                    )
                )
            )
        # The sink steps emit nothing; their (empty) outputs exist only to end in pipeline.job's Done.
        return written[0] if len(written) == 1 else tuple(written) | "Written" >> beam.Flatten()


def letter_producer(settings: Settings, specs: Sequence[SinkSpec]) -> functools.partial[DeadLetterProducer]:
    """How the sinks of ``specs`` build their dead-letter producer on a worker: the dead-letter
    topic, the parking topic for parked events, and the topics of sinks that have their own."""
    s = settings
    return functools.partial(
        DeadLetterProducer,
        s.kafka.client_config(),
        s.cdc.dlq_topic,
        s.pipeline.dead_letter_max_bytes,
        stage_topics={
            PARK_STAGE: s.cdc.parked_topic,
            **{spec.name: spec.dead_letter_topic for spec in specs if spec.dead_letter_topic},
        },
    )


class RunLane(beam.PTransform):
    """``PBegin -> PCollection`` (empty, see ``WriteLane``): the lane in the module docstring."""

    def __init__(self, plan: LanePlan, settings: Settings) -> None:
        super().__init__()
        self._plan = plan
        self._settings = settings

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        s, ps, lane = self._settings, self._settings.pipeline, self._plan.lane
        if self._plan.parked:
            unpark = UnparkFn(
                consumer_config(s),
                s.cdc.content_topic,
                ps.late_content_timeout_s,
                ps.view_startup_timeout_s,
                poll_s=ps.park_poll_s,
                view_fault=ps.content_view_fault,
            )
            return (
                pbegin
                | "ReadParked" >> source(self._plan, s)
                | "Unpark" >> beam.ParDo(unpark)
                | "Write" >> WriteLane(self._plan, s)
            )
        changes = pbegin | "Read" >> source(self._plan, s) | "Decode" >> beam.ParDo(DecodeFn(lane.topic))
        if lane.topic == "engagement":
            join = JoinContentFn(
                consumer_config(s),
                s.cdc.content_topic,
                ps.late_content_timeout_s,
                ps.view_startup_timeout_s,
                view_fault=ps.content_view_fault,
            )
            changes = changes | "JoinContent" >> beam.ParDo(join)
        return changes | "Write" >> WriteLane(self._plan, s)
