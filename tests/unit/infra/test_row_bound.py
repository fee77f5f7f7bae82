"""The row size bound: the SQL constraints, the worst-case arithmetic and the one Kafka limit agree."""

import json
import re

import pytest
from pydantic import ValidationError

from infra import row_bound
from infra.settings import REPO_ROOT, CdcSettings, KafkaSettings, PipelineSettings, Settings
from infra.stack.connect import connector_config
from infra.stack.kafka_admin import topic_specs
from sinks.dead_letter import message
from sinks.records import DeadLetter, SourcePosition

SQL = (REPO_ROOT / "infra" / "sql" / "002_row_bound.sql").read_text()


def sql_bound(constraint: str) -> int:
    match = re.search(rf"'{constraint}',\s*'octet_length\((\w+)(?:::text)?\) <= (\d+)'", SQL)
    assert match, f"{constraint} not found in 002_row_bound.sql"
    return int(match.group(2))


@pytest.mark.parametrize(
    ("constraint", "bound"),
    [
        ("engagement_events_raw_payload_size", row_bound.RAW_PAYLOAD_MAX_BYTES),
        ("engagement_events_device_size", row_bound.DEVICE_MAX_BYTES),
        ("content_title_size", row_bound.TITLE_MAX_BYTES),
        ("content_slug_size", row_bound.SLUG_MAX_BYTES),
    ],
)
def test_the_sql_enforces_the_bound_the_arithmetic_assumes(constraint, bound):
    assert sql_bound(constraint) == bound


def worst_payload(text_bytes: int) -> str:
    """JSON text of exactly ``text_bytes`` octets (even) made only of quotes and backslashes."""
    return '"' + "\\\\" * ((text_bytes - 2) // 2) + '"'


def compact(value: object) -> int:
    # Python's json writes what Kafka's JsonConverter (Jackson) writes for ASCII: \" \\ and \u00XX.
    return len(json.dumps(value, separators=(",", ":")).encode())


def test_jsonb_text_doubles_at_worst_and_text_grows_sixfold():
    payload = worst_payload(1_000)
    assert len(payload) == 1_000
    assert compact(payload) == row_bound.jsonb_field_bytes(1_000) == 2_002
    assert compact("\x01" * 100) == row_bound.text_field_bytes(100) == 602


def test_engagement_row_arithmetic_matches_a_worst_case_row():
    row = {
        "id": -(2**63),
        "content_id": "00000000-0000-0000-0000-000000000000",
        "user_id": "00000000-0000-0000-0000-000000000000",
        "event_type": "finish",
        "event_ts": "294276-12-31T23:59:59.999999Z",
        "duration_ms": -(2**31),
        "device": "\x01" * 40,
        "raw_payload": worst_payload(500),
    }
    assert compact(row) == row_bound.engagement_row_bytes(500, 40)


def test_content_row_arithmetic_matches_a_worst_case_row():
    row = {
        "id": "00000000-0000-0000-0000-000000000000",
        "slug": "\x1f" * 30,
        "title": "\x02" * 70,
        "content_type": "newsletter",
        "length_seconds": -(2**31),
        "publish_ts": "294276-12-31T23:59:59.999999Z",
    }
    assert compact(row) == row_bound.content_row_bytes(70, 30)


def test_the_bound_in_numbers():
    # The figures docs/delivery.md quotes ("Row size bound").
    assert row_bound.engagement_row_bytes() == 2_098_936
    assert row_bound.change_value_bytes(row_bound.engagement_row_bytes()) == 4_201_968
    assert row_bound.record_bytes(row_bound.engagement_row_bytes()) == 4_206_064
    assert row_bound.change_value_bytes(row_bound.content_row_bytes()) == 65_872
    assert row_bound.required_max_message_bytes() == 4_218_352
    assert KafkaSettings().max_message_bytes == 5_242_880


def test_a_limit_below_the_worst_case_is_refused():
    with pytest.raises(ValidationError, match="greater than or equal to 4218352"):
        KafkaSettings(max_message_bytes=1_048_576)


def test_letters_may_not_be_larger_than_the_topics_take():
    with pytest.raises(ValidationError, match="PIPELINE_DEAD_LETTER_MAX_BYTES"):
        Settings(pipeline=PipelineSettings(dead_letter_max_bytes=6_000_000))
    assert Settings().pipeline.dead_letter_max_bytes == Settings().kafka.max_message_bytes


def test_the_letter_of_a_worst_case_change_is_kept_whole():
    value = b"v" * row_bound.change_value_bytes(row_bound.engagement_row_bytes())
    key = b'{"id":-9223372036854775808}'
    letter = DeadLetter(SourcePosition("t", 15, 2**40), "decode_engagement", "r" * 1_000, key, value)
    _, kept, headers = message(letter, Settings().pipeline.dead_letter_max_bytes)
    assert kept == value and "dlq.truncated" not in dict(headers)


def test_one_limit_reaches_every_topic_the_producer_and_the_clients():
    limit = 6_000_000
    settings = Settings(kafka=KafkaSettings(max_message_bytes=limit))
    specs = topic_specs(CdcSettings(), max_message_bytes=limit)
    assert specs and all(spec.config["max.message.bytes"] == str(limit) for spec in specs)
    assert connector_config(settings)["producer.override.max.request.size"] == str(limit)
    assert settings.kafka.client_config(**{"group.id": "g"})["message.max.bytes"] == limit
