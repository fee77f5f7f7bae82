import base64
import uuid

from infra.settings import CdcSettings
from infra.stack.kafka import new_cluster_id, uuid_to_kafka_id
from infra.stack.kafka_admin import topic_specs


def test_topic_specs_encode_the_design():
    specs = {s.name: s for s in topic_specs(CdcSettings(), max_message_bytes=5_242_880)}
    events = specs["engagement.public.engagement_events"]
    assert events.partitions == 16
    # Delete tombstones carry a key on this topic: compaction would erase real history.
    assert events.config["cleanup.policy"] == "delete"
    assert specs["engagement.public.content"].config["cleanup.policy"] == "compact"
    assert "__debezium-heartbeat.engagement" in specs
    assert "engagement.dlq" in specs


def test_kafka_cluster_id_format():
    value = uuid.UUID("12345678-1234-5678-1234-567812345678")
    cluster_id = uuid_to_kafka_id(value)
    assert len(cluster_id) == 22 and "=" not in cluster_id
    assert base64.urlsafe_b64decode(cluster_id + "==") == value.bytes


def test_new_cluster_ids_never_start_with_a_dash(monkeypatch):
    # uuid4 values whose base64 begins with "-" (byte 0 >> 2 == 62) must be skipped, as Kafka does.
    dashed = uuid.UUID(bytes=bytes([0xF8]) + bytes(15))
    plain = uuid.UUID(bytes=bytes([0x10]) + bytes(15))
    values = iter([dashed, dashed, plain])
    assert uuid_to_kafka_id(dashed).startswith("-")
    monkeypatch.setattr(uuid, "uuid4", lambda: next(values))
    assert new_cluster_id() == uuid_to_kafka_id(plain)


def three_brokers(tmp_path):
    from infra.settings import KafkaSettings
    from infra.stack.kafka import Kafka

    return Kafka(KafkaSettings(brokers=3), tmp_path, tmp_path / "lib")


def test_every_topic_waits_for_the_configured_in_sync_replicas():
    specs = topic_specs(CdcSettings(), max_message_bytes=5_242_880, min_insync_replicas=2)
    assert {s.config["min.insync.replicas"] for s in specs} == {"2"}
    assert {s.config["min.insync.replicas"] for s in topic_specs(CdcSettings(), max_message_bytes=5_242_880)} == {"1"}


def test_three_brokers_each_have_their_folder_ports_and_files_and_one_quorum(tmp_path):
    from infra.stack.kafka import CONF_DIR, initial_controllers, server_properties

    kafka = three_brokers(tmp_path)
    assert [p.name for p in kafka.processes] == ["kafka", "kafka-2", "kafka-3"]
    assert [p.port for p in kafka.processes] == [59092, 59102, 59112]
    assert [n.root.name for n in kafka.nodes] == ["kafka", "kafka-2", "kafka-3"]
    assert len({p.pid_file for p in kafka.processes} | {p.log_file for p in kafka.processes}) == 6
    template = (CONF_DIR / "server.properties").read_text()
    props = dict(
        line.split("=", 1)
        for line in server_properties(template, kafka.settings, kafka.nodes[1]).splitlines()
        if line and not line.startswith("#")
    )
    assert props["node.id"] == "2"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:59102,CONTROLLER://127.0.0.1:59103"
    assert props["controller.quorum.bootstrap.servers"] == "127.0.0.1:59093,127.0.0.1:59103,127.0.0.1:59113"
    assert props["log.dirs"] == str(tmp_path / "kafka-2" / "data")
    for key in (
        "default.replication.factor",
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
    ):
        assert props[key] == "3"
    assert props["min.insync.replicas"] == props["transaction.state.log.min.isr"] == "2"
    assert initial_controllers(kafka.settings, ["a", "b", "c"]) == (
        "1@127.0.0.1:59093:a,2@127.0.0.1:59103:b,3@127.0.0.1:59113:c"
    )


def test_storage_formatted_for_one_broker_is_refused_for_three(tmp_path):
    import pytest

    from infra.process import StackError

    kafka = three_brokers(tmp_path)
    (tmp_path / "kafka" / "data").mkdir(parents=True)
    (tmp_path / "kafka" / "data" / "meta.properties").write_text("node.id=1\n")
    with pytest.raises(StackError, match="formatted for 1 broker"):
        kafka.ensure_formatted()


def test_topic_health_counts_partitions_short_of_in_sync_replicas_and_without_leader():
    from types import SimpleNamespace

    from infra.stack.kafka_admin import topic_health

    def partition(leader, isrs):
        return SimpleNamespace(leader=leader, replicas=[1, 2, 3], isrs=isrs)

    meta = SimpleNamespace(
        partitions={0: partition(1, [1, 2, 3]), 1: partition(3, [3, 1]), 2: partition(-1, []), 3: partition(1, [1, 3])}
    )
    config = {"cleanup.policy": "delete", "min.insync.replicas": "2"}
    assert topic_health(meta, config) == {
        "partitions": 4,
        "cleanup.policy": "delete",
        "replicas": 3,
        "min.insync.replicas": "2",
        "under_replicated": 3,
        "offline": 1,
    }
