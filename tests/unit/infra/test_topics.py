import base64
import uuid

from infra.settings import CdcSettings
from infra.stack.kafka import new_cluster_id, topic_specs, uuid_to_kafka_id


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
