import base64
import uuid

from infra.settings import CdcSettings
from infra.stack.kafka import topic_specs, uuid_to_kafka_id


def test_topic_specs_encode_the_design():
    specs = {s.name: s for s in topic_specs(CdcSettings())}
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
