"""Kafka 4 in KRaft mode (one JVM is broker and controller) and the project's topics.

Topic auto-creation is off, so every topic the system uses is created here, explicitly and
idempotently, with the settings the design depends on: the engagement topic has 16 partitions and
``cleanup.policy=delete`` (its delete tombstones carry a key, so it must never be compacted); the
content topic is compacted (it is the catalogue's changelog, read from the beginning); Debezium's
heartbeat topic and the dead-letter topic exist before anything writes to them. Every topic takes
the stack's one size limit as ``max.message.bytes``. An existing topic with fewer partitions is
grown, and any config that drifted is set again (an incremental alter: `make up` on an older dev
stack raises the size limit in place); one with more partitions, or that cannot be brought to the
wanted config, is reported instead of silently used.
"""

from __future__ import annotations

import base64
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

from infra.process import ServiceProcess, StackError, port_open
from infra.settings import CdcSettings, KafkaSettings

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def topic_specs(cdc: CdcSettings, *, max_message_bytes: int) -> list[TopicSpec]:
    """Every topic the system needs, with the settings that matter to correctness.

    Each takes ``max.message.bytes`` explicitly (KAFKA_MAX_MESSAGE_BYTES, docs/delivery.md "Row size
    bound"): a topic created before the limit was raised keeps its old value otherwise, and the
    compacted topic's cleaner sizes its buffers from it.
    """
    size = {"max.message.bytes": str(max_message_bytes)}
    specs = [
        TopicSpec(
            cdc.engagement_topic,
            cdc.engagement_partitions,
            {"cleanup.policy": "delete", "retention.ms": str(cdc.engagement_retention_ms)},
        ),
        TopicSpec(
            cdc.content_topic,
            cdc.content_partitions,
            {
                "cleanup.policy": "compact",
                # Roll segments hourly so compaction can run on a small local catalogue, and keep
                # delete tombstones a day so a reader restarting from the beginning still sees them.
                "segment.ms": "3600000",
                "min.cleanable.dirty.ratio": "0.1",
                "delete.retention.ms": "86400000",
            },
        ),
        TopicSpec(cdc.heartbeat_topic, 1, {"cleanup.policy": "delete", "retention.ms": "86400000"}),
        TopicSpec(
            cdc.dlq_topic, cdc.dlq_partitions, {"cleanup.policy": "delete", "retention.ms": str(cdc.dlq_retention_ms)}
        ),
        TopicSpec(
            cdc.http_dlq_topic,
            cdc.dlq_partitions,
            {"cleanup.policy": "delete", "retention.ms": str(cdc.dlq_retention_ms)},
        ),
        # Keyed by content id, like the events; kept as long as the events, so a replay of the
        # event topic still finds what was parked from it.
        TopicSpec(
            cdc.parked_topic,
            cdc.parked_partitions,
            {"cleanup.policy": "delete", "retention.ms": str(cdc.engagement_retention_ms)},
        ),
    ]
    return [TopicSpec(spec.name, spec.partitions, {**spec.config, **size}) for spec in specs]


def admin_client(settings: KafkaSettings) -> AdminClient:
    return AdminClient({"bootstrap.servers": settings.bootstrap_servers, "socket.connection.setup.timeout.ms": 3000})


def end_offsets(settings: KafkaSettings, topic: str) -> dict[int, int]:
    """``{partition: offset the next record will get}`` for every partition of ``topic``."""
    consumer = Consumer({"bootstrap.servers": settings.bootstrap_servers, "group.id": "engagement-tools"})
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
    finally:
        consumer.close()


def ensure_topics(admin: AdminClient, specs: list[TopicSpec], timeout: float = 30.0) -> list[str]:
    """Create missing topics, grow short ones, align configs; return what was changed."""
    changes: list[str] = []
    existing = admin.list_topics(timeout=timeout).topics
    missing = [s for s in specs if s.name not in existing]
    if missing:
        futures = admin.create_topics(
            [NewTopic(s.name, num_partitions=s.partitions, replication_factor=1, config=s.config) for s in missing],
            operation_timeout=timeout,
        )
        for name, future in futures.items():
            try:
                future.result()
                changes.append(f"created {name}")
            except KafkaException as exc:
                if exc.args[0].name() != "TOPIC_ALREADY_EXISTS":
                    raise StackError(f"could not create topic {name}: {exc}") from exc
    for spec in specs:
        if spec.name not in existing:
            continue
        have = len(existing[spec.name].partitions)
        if have > spec.partitions:
            raise StackError(
                f"topic {spec.name} has {have} partitions, more than the {spec.partitions} configured; "
                f"partitions cannot shrink: delete the topic (make reset) or raise the setting"
            )
        if have < spec.partitions:
            admin.create_partitions([NewPartitions(spec.name, spec.partitions)])[spec.name].result()
            changes.append(f"grew {spec.name} from {have} to {spec.partitions} partitions")
        current = describe_topic_config(admin, spec.name)
        drift = {k: v for k, v in spec.config.items() if current.get(k) != v}
        if drift:
            resource = ConfigResource(
                ConfigResource.Type.TOPIC,
                spec.name,
                incremental_configs=[
                    ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in drift.items()
                ],
            )
            for future in admin.incremental_alter_configs([resource]).values():
                future.result()
            changes.append(f"set {spec.name} " + ", ".join(f"{k}={v}" for k, v in drift.items()))
    return changes


def describe_topic_config(admin: AdminClient, topic: str) -> dict[str, str]:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    entries = admin.describe_configs([resource])[resource].result()
    return {name: entry.value for name, entry in entries.items()}


class Kafka:
    def __init__(self, settings: KafkaSettings, stack_dir: Path, lib_dir: Path) -> None:
        self.settings = settings
        self.root = stack_dir / "kafka"
        self.data = self.root / "data"
        self.properties = self.root / "server.properties"
        self.classpath = str(lib_dir / "kafka" / "*")
        self.process = ServiceProcess.in_stack(
            stack_dir,
            "kafka",
            command=[
                "java",
                f"-Xmx{settings.heap}",
                "-Xms128m",
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={CONF_DIR / 'log4j2.properties'}",
                "-Dkafka.logs.dir=" + str(self.root / "logs"),
                "-cp",
                self.classpath,
                "kafka.Kafka",
                str(self.properties),
            ],
            ready=self.ready,
            host=settings.host,
            port=settings.port,
        )

    def write_config(self) -> None:
        s = self.settings
        self.root.mkdir(parents=True, exist_ok=True)
        template = (CONF_DIR / "server.properties").read_text()
        self.properties.write_text(
            template.format(
                host=s.host,
                port=s.port,
                controller_port=s.controller_port,
                log_dirs=self.data,
                max_message_bytes=s.max_message_bytes,
            )
        )

    def ensure_formatted(self) -> bool:
        """Format the KRaft storage once; return True if it was formatted now."""
        if (self.data / "meta.properties").exists():
            return False
        if not list(Path(self.classpath[:-2]).glob("kafka_*.jar")):
            raise StackError("Kafka jars are missing. Run `make bootstrap`.")
        cluster_id = new_cluster_id()
        result = subprocess.run(
            [
                "java",
                "-cp",
                self.classpath,
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                cluster_id,
                "-c",
                str(self.properties),
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise StackError(f"formatting Kafka storage failed:\n{result.stdout}{result.stderr}")
        return True

    def ready(self) -> bool:
        if not port_open(self.settings.host, self.settings.port):
            return False
        try:
            admin_client(self.settings).list_topics(timeout=2)
            return True
        except KafkaException:
            return False


def new_cluster_id() -> str:
    """A random cluster id as Kafka's ``Uuid.randomUuid()`` makes them: never starting with ``-``.

    One id in 64 would otherwise begin with a dash, which the storage tool's argument parser takes
    for an option ("argument --cluster-id/-t: expected one argument").
    """
    while True:
        cluster_id = uuid_to_kafka_id(uuid.uuid4())
        if not cluster_id.startswith("-"):
            return cluster_id


def uuid_to_kafka_id(value: uuid.UUID) -> str:
    """Kafka cluster ids are a UUID in URL-safe base64 without padding (what random-uuid prints)."""
    return base64.urlsafe_b64encode(value.bytes).decode("ascii").rstrip("=")
