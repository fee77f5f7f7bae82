"""The other source: Beam's Java ``ReadFromKafka`` (KafkaIO, cross-language), for ``PIPELINE_SOURCE=kafkaio``.

Our own source (``pipeline.sources.kafka_partitions``) is the default and runs everywhere. KafkaIO is
for users on Dataflow or Flink who prefer the runner's native Kafka reader (its splitting, its
back-pressure, Dataflow's Kafka metrics). It needs a Java expansion service when the job is built
(``PIPELINE_KAFKAIO_EXPANSION_SERVICE``): Beam expands the transform by calling it, so without one
the job cannot even be constructed, and this module says so instead of letting Beam try a download.

Where it starts: KafkaIO takes no per-partition start offsets from Python (only ``start_read_time``,
one timestamp for all partitions, which cannot express the sinks' positions). It starts each
partition at the committed offset of its consumer group. So before the job is submitted,
``seed_group_offsets`` commits each partition's plan start (the lowest position over the lane's
sinks, as for our source) to the lane's group, ``<PIPELINE_CONSUMER_GROUP>.<lane>``; KafkaIO then
starts exactly there. ``commit_offset_in_finalize`` lets KafkaIO commit as it goes, which only
serves lag monitoring: the next launch seeds the group from the sinks again, and the sinks skip
what they already applied (``sinks.positions``), so a commit that runs ahead of a sink loses nothing.

Records: ``with_metadata=True`` gives one row per Kafka record (KafkaIO's ``ByteArrayKafkaRecord``:
topic, partition, offset, timestamp, key, value, headers); ``to_batch`` turns each into the
``RecordBatch`` our decode step reads, so every step after the source is the same for both sources.

Not supported with KafkaIO: ``--bounded`` (its ``max_num_records``/``max_read_time`` bound the whole
read, not each partition at its end offset) and the readers setting (KafkaIO splits by partition
itself).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import apache_beam as beam
from confluent_kafka import Consumer, TopicPartition

from pipeline.sources.kafka_partitions import UNBOUNDED, PartitionSpec, RecordBatch

_log = logging.getLogger(__name__)

AUTO = "auto"


class KafkaIOUnavailable(RuntimeError):  # noqa: N818 - a state, reported to the user as it is
    pass


def expansion_service(setting: str) -> Any:
    """What ``ReadFromKafka(expansion_service=...)`` takes, from ``PIPELINE_KAFKAIO_EXPANSION_SERVICE``."""
    value = setting.strip()
    if not value:
        raise KafkaIOUnavailable(
            "PIPELINE_SOURCE=kafkaio needs a Java expansion service to build the job: set "
            "PIPELINE_KAFKAIO_EXPANSION_SERVICE to host:port of a running one (e.g. the Flink job server's, "
            "port 8097), to the path of a beam-sdks-java-io-expansion-service jar, or to 'auto' (Beam "
            "downloads that jar from Maven Central when the job is built; needs java and internet access). "
            "Or use PIPELINE_SOURCE=sdf, which needs none (docs/operations.md, 'Dataflow')."
        )
    if value == AUTO:
        from apache_beam.io.kafka import default_io_expansion_service

        return default_io_expansion_service()
    if value.endswith(".jar"):
        if not Path(value).is_file():
            raise KafkaIOUnavailable(f"PIPELINE_KAFKAIO_EXPANSION_SERVICE: no jar at {value}")
        from apache_beam.transforms.external import JavaJarExpansionService

        return JavaJarExpansionService(value)
    host, _, port = value.rpartition(":")
    if not host or not port.isdigit():
        raise KafkaIOUnavailable(
            f"PIPELINE_KAFKAIO_EXPANSION_SERVICE={value!r}: expected host:port, a path ending in .jar, or 'auto'"
        )
    return value


def check_plans(partitions: list[PartitionSpec]) -> None:
    """KafkaIO reads unbounded from the group's offsets: a bounded plan cannot be expressed."""
    if any(spec.stop != UNBOUNDED for spec in partitions):
        raise KafkaIOUnavailable(
            "--bounded needs PIPELINE_SOURCE=sdf: KafkaIO bounds a read by record count or time over all "
            "partitions, not each partition at its end offset"
        )


def seed_group_offsets(consumer_config: dict[str, Any], partitions: list[PartitionSpec], timeout: float = 10) -> None:
    """Commit each partition's planned start to the lane's consumer group, where KafkaIO starts.

    KafkaIO assigns partitions itself (no group membership), so the group has no members and
    accepts a commit from this standalone consumer."""
    if not partitions:
        return
    consumer = Consumer({**consumer_config, "enable.auto.commit": False})
    try:
        consumer.commit(
            offsets=[TopicPartition(spec.topic, spec.partition, spec.start) for spec in partitions],
            asynchronous=False,
        )
    finally:
        consumer.close()
    _log.info(
        "kafkaio: %s starts %s at the sinks' positions (committed to group %s)",
        partitions[0].topic,
        ", ".join(f"[{spec.partition}]@{spec.start}" for spec in partitions),
        consumer_config.get("group.id"),
    )


def to_batch(record: Any) -> RecordBatch:
    """One KafkaIO row as the ``RecordBatch`` the decode step reads (a batch of one record)."""
    return (
        record.topic,
        [(int(record.partition), int(record.offset), record.key, record.value, int(record.timestamp))],
    )


def java_consumer_config(consumer_config: dict[str, Any]) -> dict[str, str]:
    """The lane's consumer settings for the Java consumer: the cluster and the group.

    The rest of ours are librdkafka names (``message.max.bytes``, ``queued.max.messages.kbytes``);
    the Java consumer's defaults already fetch a record of any size the topic accepts.

    Not with SASL_SSL (secure mode, docs/security.md): the Java consumer takes its password in
    ``sasl.jaas.config``, which would travel in the job graph; our source resolves it on the worker."""
    if consumer_config.get("security.protocol", "PLAINTEXT") != "PLAINTEXT":
        raise KafkaIOUnavailable(
            "PIPELINE_SOURCE=kafkaio does not support KAFKA_SECURITY_PROTOCOL=SASL_SSL (the Kafka password "
            "would be in the job graph): use PIPELINE_SOURCE=sdf"
        )
    config = {key: str(consumer_config[key]) for key in ("bootstrap.servers", "group.id") if key in consumer_config}
    # KafkaIO commits in finalize itself.
    config["enable.auto.commit"] = "false"
    # A partition without a committed offset in the group (seeding was skipped): read it from the
    # start, never skip records; the sinks skip what they already applied.
    config["auto.offset.reset"] = "earliest"
    return config


class ReadWithKafkaIO(beam.PTransform):
    """``PBegin -> PCollection[RecordBatch]`` of one topic through KafkaIO: the lane's ``Read`` step
    when ``PIPELINE_SOURCE=kafkaio``."""

    def __init__(self, topic: str, consumer_config: dict[str, Any], service: Any) -> None:
        super().__init__()
        self._topic = topic
        self._config = java_consumer_config(consumer_config)
        self._service = service

    def expand(self, pbegin: beam.pvalue.PBegin) -> beam.PCollection:
        from apache_beam.io.kafka import ReadFromKafka

        return (
            pbegin
            | "ReadFromKafka"
            >> ReadFromKafka(
                consumer_config=self._config,
                topics=[self._topic],
                with_metadata=True,
                commit_offset_in_finalize=True,
                # Event time as the broker stamped it, like our source's watermark.
                timestamp_policy=ReadFromKafka.create_time_policy,
                expansion_service=self._service,
            )
            | "ToBatches" >> beam.Map(to_batch)
        )
