"""The Dataflow job, built offline by DataflowRunner with --dry_run: no submission, no network, no services.

The lanes' plans come from ``pipeline.job.offline_plans`` (configured partition counts, offset 0),
so neither Kafka nor the sinks are asked; sockets are closed for the whole test to prove it.
"""

import socket
from typing import ClassVar

import apache_beam as beam
import pytest

from infra.settings import PipelineSettings, Settings
from infra.settings_http import HttpSinkSettings
from pipeline.dataflow_graph import dry_run
from pipeline.job import offline_plans
from pipeline.sources import kafkaio
from pipeline.sources.kafka_partitions import ReadPartitionsFn
from sinks.base import SinkWriteFn

ENGAGEMENT, CONTENT, PARKED = "engagement.public.engagement_events", "engagement.public.content", "engagement.parked"


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"the offline graph build opened a connection: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def settings(sinks="redis,bigquery,http", **pipeline) -> Settings:
    return Settings(
        pipeline=PipelineSettings(sinks=sinks, **pipeline),
        http_sink=HttpSinkSettings(url="http://127.0.0.1:9/changes"),
    )


def event_lane(lane: str, sink: str) -> set[str]:
    return {
        lane,
        f"{lane}/Read",
        f"{lane}/Read/Readers",
        f"{lane}/Read/ReadPartitions",
        f"{lane}/Decode",
        f"{lane}/JoinContent",
        f"{lane}/Write",
        f"{lane}/Write/Write{sink}",
        f"{lane}Parked",
        f"{lane}Parked/ReadParked",
        f"{lane}Parked/ReadParked/Readers",
        f"{lane}Parked/ReadParked/ReadPartitions",
        f"{lane}Parked/Unpark",
        f"{lane}Parked/Write",
        f"{lane}Parked/Write/Write{sink}",
    }


def content_lane(lane: str) -> set[str]:
    return {
        lane,
        f"{lane}/Read",
        f"{lane}/Read/Readers",
        f"{lane}/Read/ReadPartitions",
        f"{lane}/Decode",
        f"{lane}/Write",
        f"{lane}/Write/Write{lane}",
    }


def test_every_lane_of_every_sink_is_a_step_of_the_streaming_job():
    result = dry_run(settings())
    assert result.streaming
    assert result.steps() == (
        event_lane("Leaderboards", "Leaderboards")
        | content_lane("ContentMetadata")
        | event_lane("BigQuery", "BigQuery")
        | content_lane("BigQueryContent")
        | event_lane("HttpDefault", "HttpDefault")
        | {"Written", "Done"}
    )


def test_a_shared_lane_reads_once_and_writes_to_each_of_its_sinks():
    steps = dry_run(settings("redis+bigquery")).steps()
    assert {
        "Leaderboards+BigQuery/Read",
        "Leaderboards+BigQuery/Write/WriteLeaderboards",
        "Leaderboards+BigQuery/Write/WriteBigQuery",
        "Leaderboards+BigQuery/Write/Written",
    } <= steps
    assert not any(step.startswith(("BigQuery/", "Leaderboards/")) for step in steps)


def test_the_sinks_and_the_source_unpickle_from_the_job_as_a_worker_gets_them():
    result = dry_run(settings("redis,bigquery,http", fence_token=7, readers=4))
    fns = dict(result.dofns())
    writers = {step: fn for step, fn in fns.items() if isinstance(fn, SinkWriteFn)}
    assert sorted(writers) == [
        "BigQuery/Write/WriteBigQuery",
        "BigQueryContent/Write/WriteBigQueryContent",
        "BigQueryParked/Write/WriteBigQuery",
        "ContentMetadata/Write/WriteContentMetadata",
        "HttpDefault/Write/WriteHttpDefault",
        "HttpDefaultParked/Write/WriteHttpDefault",
        "Leaderboards/Write/WriteLeaderboards",
        "LeaderboardsParked/Write/WriteLeaderboards",
    ]
    for fn in writers.values():
        # The fencing token travels with the job: a worker's writes carry the launch's generation.
        assert fn._fence is not None and fn._fence.token == 7
    # Each factory builds its sink from the settings pickled with it (nothing is opened).
    built = {step: type(fn._factory()).__name__ for step, fn in writers.items()}
    assert built["Leaderboards/Write/WriteLeaderboards"] == "RedisLeaderboardSink"
    assert built["ContentMetadata/Write/WriteContentMetadata"] == "RedisContentSink"
    assert built["HttpDefault/Write/WriteHttpDefault"] == "HttpSink"
    assert built["BigQuery/Write/WriteBigQuery"].startswith("BigQuery")
    readers = [step for step, fn in fns.items() if isinstance(fn, ReadPartitionsFn)]
    assert len(readers) == 8  # one source per read: five lanes' reads and three parked twins


def test_the_job_runs_in_the_container_it_is_given():
    default = dry_run(settings("redis")).container_images()
    assert default == {"gcr.io/cloud-dataflow/v1beta3/beam_python3.11_sdk:2.77.0"}
    image = "europe-docker.pkg.dev/p/r/engagement-pipeline-worker:1"
    assert dry_run(settings("redis"), extra=[f"--sdk_container_image={image}"]).container_images() == {image}


def test_offline_plans_cover_every_partition_of_each_topic_from_the_start():
    plans = offline_plans(settings("redis"), {ENGAGEMENT: 3, CONTENT: 1, PARKED: 2})
    assert [(p.label, [(s.topic, s.partition, s.start) for s in p.partitions]) for p in plans] == [
        ("Leaderboards", [(ENGAGEMENT, 0, 0), (ENGAGEMENT, 1, 0), (ENGAGEMENT, 2, 0)]),
        ("LeaderboardsParked", [(PARKED, 0, 0), (PARKED, 1, 0)]),
        ("ContentMetadata", [(CONTENT, 0, 0)]),
    ]


# --- PIPELINE_SOURCE=kafkaio: everything short of a Java expansion service (none can be had here) ---


def test_kafkaio_without_an_expansion_service_stops_the_build_and_says_what_to_set():
    with pytest.raises(kafkaio.KafkaIOUnavailable, match="PIPELINE_KAFKAIO_EXPANSION_SERVICE"):
        dry_run(settings("redis", source="kafkaio"))


@pytest.mark.parametrize(
    ("value", "error"),
    [("", "needs a Java expansion service"), ("/nowhere/io.jar", "no jar at"), ("localhost", "expected host:port")],
)
def test_kafkaio_expansion_service_setting_is_checked(value, error):
    with pytest.raises(kafkaio.KafkaIOUnavailable, match=error):
        kafkaio.expansion_service(value)


def test_kafkaio_expansion_service_forms():
    from apache_beam.transforms.external import BeamJarExpansionService

    assert kafkaio.expansion_service("localhost:8097") == "localhost:8097"
    assert isinstance(kafkaio.expansion_service("auto"), BeamJarExpansionService)  # nothing downloaded yet


def test_kafkaio_jar_path_is_run_with_java(tmp_path):
    from apache_beam.transforms.external import JavaJarExpansionService

    jar = tmp_path / "expansion.jar"
    jar.write_bytes(b"")
    assert isinstance(kafkaio.expansion_service(str(jar)), JavaJarExpansionService)


class FakeReadFromKafka(beam.PTransform):
    """Stands in for the cross-language transform (whose construction calls the expansion service)."""

    calls: ClassVar[list] = []
    create_time_policy = "CreateTime"

    def __init__(self, **kwargs):
        super().__init__()
        FakeReadFromKafka.calls.append(kwargs)

    def expand(self, pbegin):
        return pbegin | beam.Create([beam.Row(topic="t", partition=1, offset=2, timestamp=3, key=b"k", value=b"v")])


def test_kafkaio_is_the_read_step_of_each_lane_with_the_lane_group(monkeypatch):
    import apache_beam.io.kafka

    FakeReadFromKafka.calls = []
    monkeypatch.setattr(apache_beam.io.kafka, "ReadFromKafka", FakeReadFromKafka)
    result = dry_run(settings("redis", source="kafkaio", kafkaio_expansion_service="localhost:8097"))
    assert {
        "Leaderboards/Read/ReadFromKafka",
        "Leaderboards/Read/ToBatches",
        "Leaderboards/Decode",
        "LeaderboardsParked/ReadParked/ReadFromKafka",
        "ContentMetadata/Read/ReadFromKafka",
    } <= result.steps()
    assert not any(step.endswith("ReadPartitions") for step in result.steps())
    assert [(c["topics"], c["consumer_config"]["group.id"]) for c in FakeReadFromKafka.calls] == [
        ([ENGAGEMENT], "engagement-pipeline.leaderboards"),
        ([PARKED], "engagement-pipeline.leaderboards"),
        ([CONTENT], "engagement-pipeline.contentmetadata"),
    ]
    call = FakeReadFromKafka.calls[0]
    assert call["with_metadata"] is True
    assert call["commit_offset_in_finalize"] is True
    assert call["expansion_service"] == "localhost:8097"
    assert call["consumer_config"] == {
        "bootstrap.servers": "127.0.0.1:59092",
        "group.id": "engagement-pipeline.leaderboards",
        "enable.auto.commit": "false",
        "auto.offset.reset": "earliest",
    }


def test_kafkaio_rows_become_the_batches_decode_reads():
    row = beam.Row(topic=ENGAGEMENT, partition=3, offset=41, timestamp=1_700_000_000_123, key=b"k", value=b"v")
    assert kafkaio.to_batch(row) == (ENGAGEMENT, [(3, 41, b"k", b"v", 1_700_000_000_123)])


def test_kafkaio_refuses_a_bounded_plan():
    from pipeline.sources.kafka_partitions import PartitionSpec

    kafkaio.check_plans([PartitionSpec(ENGAGEMENT, 0, 5)])
    with pytest.raises(kafkaio.KafkaIOUnavailable, match="--bounded needs PIPELINE_SOURCE=sdf"):
        kafkaio.check_plans([PartitionSpec(ENGAGEMENT, 0, 5, 9)])


def test_kafkaio_starts_where_the_sinks_stored_by_seeding_the_lane_group(monkeypatch):
    from pipeline.sources.kafka_partitions import PartitionSpec

    made = []

    class FakeConsumer:
        def __init__(self, config):
            self.config, self.commits, self.closed = config, [], False
            made.append(self)

        def commit(self, offsets, asynchronous):
            self.commits.append(([(tp.topic, tp.partition, tp.offset) for tp in offsets], asynchronous))

        def close(self):
            self.closed = True

    monkeypatch.setattr(kafkaio, "Consumer", FakeConsumer)
    kafkaio.seed_group_offsets(
        {"bootstrap.servers": "b:1", "group.id": "g.leaderboards"},
        [PartitionSpec(ENGAGEMENT, 0, 120), PartitionSpec(ENGAGEMENT, 1, 0)],
    )
    (consumer,) = made
    assert consumer.config == {"bootstrap.servers": "b:1", "group.id": "g.leaderboards", "enable.auto.commit": False}
    assert consumer.commits == [([(ENGAGEMENT, 0, 120), (ENGAGEMENT, 1, 0)], False)]
    assert consumer.closed
