"""A lane dealt by partition into shards (pipeline.lanes.shards): one stage each on Prism."""

import apache_beam as beam

from infra.settings import PipelineSettings, Settings
from pipeline.job import build
from pipeline.lanes import LanePlan, lane_shards, prism_workers, shards
from pipeline.runners import WorkerHint
from pipeline.sources.kafka_partitions import PartitionSpec
from sinks.registry import lanes

REDIS = lanes("redis")[0]


def plan(partitions: int) -> LanePlan:
    return LanePlan(REDIS, [PartitionSpec("t", p, 10 * p) for p in range(partitions)], read=({"t:0": 0},))


def test_partitions_are_dealt_so_each_belongs_to_exactly_one_shard():
    parts = shards(plan(5), 2)
    assert [[s.partition for s in part.partitions] for part in parts] == [[0, 2, 4], [1, 3]]
    assert [(part.label, part.shard, part.shard_count) for part in parts] == [
        ("Leaderboards-1", 0, 2),
        ("Leaderboards-2", 1, 2),
    ]
    assert [s.start for s in parts[1].partitions] == [10, 30]  # where each partition starts is kept
    assert all(part.read == ({"t:0": 0},) and part.lane is REDIS for part in parts)


def test_shards_are_spread_over_the_worker_processes():
    assert [part.worker for part in shards(plan(8), 4, 2)] == [0, 1, 0, 1]
    assert [part.worker for part in shards(plan(8), 2)] == [0, 0]


def test_a_lane_of_one_partition_or_one_shard_stays_whole_and_keeps_its_label():
    assert shards(plan(1), 2) == [plan(1)]
    assert shards(plan(16), 1) == [plan(16)]
    assert shards(plan(1), 2)[0].label == "Leaderboards"


def test_a_parked_twin_stays_whole():
    parked = LanePlan(REDIS, plan(4).partitions, parked=True)
    assert shards(parked, 2) == [parked] and parked.label == "LeaderboardsParked"


def test_never_more_shards_than_partitions():
    assert [len(part.partitions) for part in shards(plan(3), 8)] == [1, 1, 1]


def test_only_prism_with_our_source_shards_lanes():
    for runner, expected in (("prism", 2), ("flink", 1), ("dataflow", 1), ("direct", 1)):
        settings = Settings(pipeline=PipelineSettings(runner=runner, lane_shards=2))
        assert lane_shards(settings) == expected, runner
    assert lane_shards(Settings(pipeline=PipelineSettings(source="kafkaio", lane_shards=2))) == 1
    assert lane_shards(Settings(pipeline=PipelineSettings(prism_workers=1))) == 1  # off unless asked for
    assert lane_shards(Settings(pipeline=PipelineSettings())) == 2  # two worker processes by default


def test_workers_take_at_least_one_shard_each_and_only_where_lanes_are_sharded():
    settings = Settings(pipeline=PipelineSettings(prism_workers=2))
    assert (lane_shards(settings), prism_workers(settings)) == (2, 2)
    flink = Settings(pipeline=PipelineSettings(runner="flink", prism_workers=2))
    assert (lane_shards(flink), prism_workers(flink)) == (1, 1)


def test_each_worker_process_gets_its_own_environment_and_its_own_done_step():
    settings = Settings(pipeline=PipelineSettings(sinks="redis"))
    p = beam.Pipeline()
    build(p, settings, shards(plan(4), 2, 2))
    proto = p.to_runner_api()
    envs = {t.unique_name: t.environment_id for t in proto.components.transforms.values() if t.environment_id}
    first, second = envs["Leaderboards-1/Decode"], envs["Leaderboards-2/Decode"]
    assert first != second
    assert envs["Done"] == first and envs["Done-2"] == second
    hints = proto.components.environments[second].resource_hints
    assert hints[WorkerHint.urn] == b"1" and WorkerHint.urn not in proto.components.environments[first].resource_hints


def test_each_shard_is_its_own_step_of_the_graph():
    settings = Settings(pipeline=PipelineSettings(sinks="redis"))
    p = beam.Pipeline()
    build(p, settings, shards(plan(4), 2))
    found: set[str] = set()

    class Visitor(beam.pipeline.PipelineVisitor):
        def enter_composite_transform(self, node) -> None:
            found.add(node.full_label)

    p.visit(Visitor())
    assert {"Leaderboards-1", "Leaderboards-2"} <= found and "Leaderboards" not in found


def test_a_lane_s_source_calls_last_as_long_as_its_sinks_batch():
    # A bundle's end flushes every sink of the lane: BigQuery's batches would otherwise be flushed
    # after every 10 ms lull, in small appends.
    from pipeline.lanes import tuning

    settings = Settings(bigquery={"linger_ms": 2_000}, pipeline={"sink_flush_ms": 10, "max_call_ms": 1_000})
    apart = {lane.label: tuning(settings, lane) for lane in lanes("redis,bigquery", settings)}
    assert (apart["Leaderboards"].quiet_ms, apart["Leaderboards"].max_call_ms) == (10, 1_000)
    assert (apart["BigQuery"].quiet_ms, apart["BigQuery"].max_call_ms) == (2_000, 2_000)
    # One lane with both: the shortest wait rules, so the board is not held back.
    together = lanes("redis+bigquery", settings)[0]
    assert together.label == "Leaderboards+BigQuery"
    assert (tuning(settings, together).quiet_ms, tuning(settings, together).max_call_ms) == (10, 1_000)
    assert tuning(settings).quiet_ms == 10
