"""The running cluster's topics, users and ACLs, through the admin API (the brokers themselves:
``infra.stack.kafka``).

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

from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from infra.process import StackError
from infra.settings import CdcSettings, KafkaSettings
from infra.stack.kafka import SCRAM_ITERATIONS


@dataclass(frozen=True)
class TopicSpec:
    name: str
    partitions: int
    config: dict[str, str] = field(default_factory=dict)


def topic_specs(cdc: CdcSettings, *, max_message_bytes: int, min_insync_replicas: int = 1) -> list[TopicSpec]:
    """Every topic the system needs, with the settings that matter to correctness.

    Each takes ``max.message.bytes`` explicitly (KAFKA_MAX_MESSAGE_BYTES, docs/delivery.md "Row size
    bound"): a topic created before the limit was raised keeps its old value otherwise, and the
    compacted topic's cleaner sizes its buffers from it. ``min.insync.replicas`` too (2 with three
    brokers): what an ``acks=all`` write waits for.
    """
    size = {"max.message.bytes": str(max_message_bytes), "min.insync.replicas": str(min_insync_replicas)}
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
    """The stack's own admin client: as the admin user in secure mode (topics, users, ACLs)."""
    return AdminClient(settings.client_config(admin=True, **{"socket.connection.setup.timeout.ms": 3000}))


def end_offsets(settings: KafkaSettings, topic: str) -> dict[int, int]:
    """``{partition: offset the next record will get}`` for every partition of ``topic``."""
    consumer = Consumer(settings.client_config(**{"group.id": "engagement-tools"}))
    try:
        partitions = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        return {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in partitions}
    finally:
        consumer.close()


def ensure_topics(
    admin: AdminClient, specs: list[TopicSpec], timeout: float = 30.0, *, replication_factor: int = 1
) -> list[str]:
    """Create missing topics, grow short ones, align configs; return what was changed. A topic with
    fewer replicas than ``replication_factor`` is reported: Kafka cannot add them in place."""
    changes: list[str] = []
    existing = admin.list_topics(timeout=timeout).topics
    missing = [s for s in specs if s.name not in existing]
    if missing:
        futures = admin.create_topics(
            [
                NewTopic(s.name, num_partitions=s.partitions, replication_factor=replication_factor, config=s.config)
                for s in missing
            ],
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
        replicas = min((len(p.replicas) for p in existing[spec.name].partitions.values()), default=replication_factor)
        if replicas < replication_factor:
            raise StackError(
                f"topic {spec.name} has {replicas} replica(s), fewer than the {replication_factor} configured "
                f"(KAFKA_BROKERS); delete the topic (make reset) or lower the setting"
            )
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


def topic_health(meta: Any, config: dict[str, str]) -> dict[str, Any]:
    """What ``make status`` shows of a topic (``meta``: its ``TopicMetadata``): partitions, policy,
    replicas, and partitions whose in-sync replicas are short of all replicas (a broker down or
    catching up) or that have no leader (no broker of theirs is up: reads and writes stop)."""
    partitions = list(meta.partitions.values())
    return {
        "partitions": len(partitions),
        "cleanup.policy": config.get("cleanup.policy"),
        "replicas": min((len(p.replicas) for p in partitions), default=0),
        "min.insync.replicas": config.get("min.insync.replicas"),
        "under_replicated": sum(len(p.isrs) < len(p.replicas) for p in partitions),
        "offline": sum(p.leader < 0 for p in partitions),
    }


def describe_topic_config(admin: AdminClient, topic: str) -> dict[str, str]:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    entries = admin.describe_configs([resource])[resource].result()
    return {name: entry.value for name, entry in entries.items()}


def ensure_users(admin: AdminClient, users: dict[str, str], timeout: float = 30.0) -> list[str]:
    """Create or update each user's SCRAM-SHA-512 credential (``{name: password}``); idempotent, and
    a changed password takes effect. Returns the names."""
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, SCRAM_ITERATIONS)
    upserts = [UserScramCredentialUpsertion(name, info, password.encode()) for name, password in users.items()]
    for name, future in admin.alter_user_scram_credentials(upserts, request_timeout=timeout).items():
        try:
            future.result()
        except KafkaException as exc:
            raise StackError(f"could not set Kafka user {name}'s credential: {exc}") from exc
    return list(users)


def acl_bindings(cdc: CdcSettings, *, pipeline_user: str, connect_user: str, connect_group: str) -> list[AclBinding]:
    """What each user may do, and nothing more (the admin is a super user and needs none).

    - Connect: everything on its own internal topics (``<group>-configs`` ...), transactional ids
      and group; write the capture topics and Debezium's heartbeat topic; describe the cluster.
    - The pipeline and the tools: read and write the project's topics (``<CDC_TOPIC_PREFIX>.*``: the
      capture topics, dead letters, parked events) and use consumer groups (each lane, sink
      positions, tools: many names, so any group); create and grow only the backfill's empty
      position topics (``<prefix>.backfill.*``, pipeline/backfill). They cannot create or delete
      other topics, alter configs or ACLs, or touch Connect's topics.
    """
    prefix = f"{cdc.topic_prefix}."
    allow = AclPermissionType.ALLOW

    def grant(user: str, kind: ResourceType, name: str, pattern: ResourcePatternType, *ops: AclOperation) -> list:
        return [AclBinding(kind, name, pattern, f"User:{user}", "*", op, allow) for op in ops]

    topic, group, txn = ResourceType.TOPIC, ResourceType.GROUP, ResourceType.TRANSACTIONAL_ID
    cluster = ResourceType.BROKER  # librdkafka's name for Kafka's CLUSTER resource ("kafka-cluster")
    literal, prefixed = ResourcePatternType.LITERAL, ResourcePatternType.PREFIXED
    op = AclOperation
    return [
        *grant(connect_user, topic, f"{connect_group}-", prefixed, op.ALL),
        *grant(connect_user, topic, prefix, prefixed, op.WRITE, op.DESCRIBE, op.DESCRIBE_CONFIGS),
        *grant(connect_user, topic, cdc.heartbeat_topic, literal, op.WRITE, op.DESCRIBE, op.DESCRIBE_CONFIGS),
        *grant(connect_user, group, connect_group, prefixed, op.ALL),
        # Exactly-once source (CONNECT_EXACTLY_ONCE_SOURCE): the tasks' and the leader's transactions.
        *grant(connect_user, txn, connect_group, prefixed, op.ALL),
        *grant(connect_user, txn, f"connect-cluster-{connect_group}", prefixed, op.ALL),
        *grant(connect_user, cluster, "kafka-cluster", literal, op.DESCRIBE, op.DESCRIBE_CONFIGS, op.IDEMPOTENT_WRITE),
        *grant(pipeline_user, topic, prefix, prefixed, op.READ, op.WRITE, op.DESCRIBE, op.DESCRIBE_CONFIGS),
        *grant(pipeline_user, topic, f"{prefix}backfill.", prefixed, op.CREATE, op.ALTER),
        *grant(pipeline_user, group, "*", literal, op.READ, op.DESCRIBE, op.DELETE),
        *grant(pipeline_user, cluster, "kafka-cluster", literal, op.DESCRIBE),
    ]


def ensure_acls(admin: AdminClient, bindings: list[AclBinding], timeout: float = 30.0) -> int:
    """Create the ACLs that are missing (creating an existing one is a no-op); returns how many were new."""
    existing = {
        (b.restype, b.name, b.resource_pattern_type, b.principal, b.operation)
        for b in admin.describe_acls(
            AclBindingFilter(
                ResourceType.ANY,
                None,
                ResourcePatternType.ANY,
                None,
                None,
                AclOperation.ANY,
                AclPermissionType.ANY,
            ),
            request_timeout=timeout,
        ).result()
    }
    missing = [
        b for b in bindings if (b.restype, b.name, b.resource_pattern_type, b.principal, b.operation) not in existing
    ]
    if missing:
        for future in admin.create_acls(missing, request_timeout=timeout).values():
            future.result()
    return len(missing)
