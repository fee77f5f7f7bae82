"""The job's graph from PIPELINE_SINKS, built offline (no runner, no services)."""

import apache_beam as beam

from infra.settings import PipelineSettings, Settings
from pipeline.job import build
from pipeline.lanes import LanePlan
from pipeline.sources.kafka_partitions import PartitionSpec
from sinks.registry import lanes


def labels(sinks: str) -> set[str]:
    settings = Settings(pipeline=PipelineSettings(sinks=sinks))
    plans = [LanePlan(lane, [PartitionSpec("t", 0, 0)]) for lane in lanes(sinks, settings)]
    p = beam.Pipeline()
    build(p, settings, plans)
    found: set[str] = set()

    class Visitor(beam.pipeline.PipelineVisitor):
        def visit_transform(self, node) -> None:
            found.add(node.full_label)

        def enter_composite_transform(self, node) -> None:
            found.add(node.full_label)

    p.visit(Visitor())
    return found


def test_each_lane_reads_decodes_joins_and_writes_on_its_own():
    found = labels("redis,faulty")
    for step in (
        "Leaderboards/Read",
        "Leaderboards/JoinContent",
        "Leaderboards/Write/WriteLeaderboards",
        "ContentMetadata/Decode",
        "ContentMetadata/Write/WriteContentMetadata",
        "FaultInjection/Read",
        "FaultInjection/Write/WriteFaultInjection",
        "Done",
    ):
        assert step in found, step
    assert "ContentMetadata/JoinContent" not in found


def test_a_shared_lane_reads_once_and_fans_out():
    found = labels("redis+faulty")
    assert {"Leaderboards+FaultInjection/Read", "Leaderboards+FaultInjection/Write/WriteFaultInjection"} <= found
    assert not any(label.startswith("FaultInjection/") for label in found)


def test_an_unknown_sink_stops_the_command_at_once(monkeypatch, capsys):
    from pipeline.__main__ import main

    monkeypatch.setenv("PIPELINE_SINKS", "redis,snowflake")
    assert main([]) == 2
    assert "unknown sink ['snowflake']" in capsys.readouterr().err
