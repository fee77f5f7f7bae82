import json

import pytest

from infra.process import StackError
from infra.settings import CdcSettings, PostgresSettings, Settings
from infra.stack.connect import connector_config


def test_placeholders_filled_from_settings():
    settings = Settings(
        postgres=PostgresSettings(port=6543, cdc_user="cdc"),
        cdc=CdcSettings(topic_prefix="t1", slot_name="slot_t1", publication_name="pub_t1", poll_interval_ms=25),
    )
    config = connector_config(settings)
    assert config["database.port"] == "6543"
    assert config["database.user"] == "cdc"
    assert config["topic.prefix"] == "t1"
    assert config["slot.name"] == "slot_t1"
    assert config["publication.name"] == "pub_t1"
    assert config["poll.interval.ms"] == "25"
    assert not any("${" in v and "${env:" not in v for v in config.values())


def test_password_stays_a_reference_for_the_worker():
    config = connector_config(Settings())
    assert config["database.password"] == "${env:POSTGRES_CDC_PASSWORD}"
    assert "debezium-local" not in json.dumps(config)


def test_design_choices_are_in_the_file():
    config = connector_config(Settings())
    assert config["plugin.name"] == "pgoutput"
    assert config["snapshot.mode"] == "initial"
    assert config["publication.autocreate.mode"] == "disabled"
    assert config["value.converter.schemas.enable"] == "false"
    assert config["table.include.list"] == "public.content,public.engagement_events"
    assert "message.key.columns" not in config  # keyed by primary key, see docs/architecture.md


def test_unknown_placeholder_is_an_error(tmp_path):
    template = tmp_path / "c.json"
    template.write_text(json.dumps({"x": "${NOT_A_SETTING}"}))
    with pytest.raises(StackError, match="NOT_A_SETTING"):
        connector_config(Settings(), template)


@pytest.mark.parametrize(("enabled", "expected"), [(False, "disabled"), (True, "enabled")])
def test_exactly_once_source_support_is_a_setting(tmp_path, enabled, expected):
    from infra.settings import ConnectSettings, StackSettings
    from infra.stack.connect import Connect

    settings = Settings(connect=ConnectSettings(exactly_once_source=enabled), stack=StackSettings(dir=tmp_path))
    plugins = settings.stack.lib_dir / "connect-plugins" / "debezium-postgres"
    if not plugins.is_dir():
        pytest.skip("needs the Debezium plugin folder (make bootstrap)")
    connect = Connect(settings)
    connect.write_config()
    assert f"exactly.once.source.support={expected}\n" in connect.properties.read_text()
    assert connector_config(settings)["exactly.once.support"] == "requested"


@pytest.mark.parametrize(("brokers", "replicas"), [(1, "1"), (3, "3")])
def test_the_worker_replicates_its_topics_and_produces_with_acks_all(tmp_path, brokers, replicas):
    from infra.settings import KafkaSettings, StackSettings
    from infra.stack.connect import Connect

    settings = Settings(kafka=KafkaSettings(brokers=brokers), stack=StackSettings(dir=tmp_path))
    if not (settings.stack.lib_dir / "connect-plugins" / "debezium-postgres").is_dir():
        pytest.skip("needs the Debezium plugin folder (make bootstrap)")
    connect = Connect(settings)
    connect.write_config()
    props = dict(
        line.split("=", 1) for line in connect.properties.read_text().splitlines() if line and not line.startswith("#")
    )
    assert props["bootstrap.servers"] == settings.kafka.bootstrap_servers
    for topic in ("config", "offset", "status"):
        assert props[f"{topic}.storage.replication.factor"] == replicas
    assert (props["producer.acks"], props["producer.enable.idempotence"]) == ("all", "true")
