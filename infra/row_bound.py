"""The largest row the schema allows, and the largest Kafka record such a row can become.

Postgres refuses a row above the bound at write time (the CHECK constraints of
``infra/sql/002_row_bound.sql``, whose numbers a unit test holds equal to the constants here), so
every change Debezium can capture fits the one Kafka limit, ``KAFKA_MAX_MESSAGE_BYTES``, that the
broker, every topic, Connect's producer, the pipeline's consumers and the dead-letter producer
share. ``KafkaSettings`` refuses a limit below ``required_max_message_bytes()``.

Worst case of one change, in the JSON Debezium's converter writes (docs/delivery.md, "Row size
bound", has the arithmetic with the numbers):

- an update carries the whole row twice (REPLICA IDENTITY FULL: before and after); a delete carries
  it once, a create once;
- the JSONB column arrives as a JSON *string* holding the column's text (``raw_payload::text``). That
  text has no raw control characters (Postgres escapes them itself), so the converter escapes at
  most ``"`` and ``\\``, one extra byte each: at most ``2 n + 2`` bytes for ``n`` bytes of text;
- a text column can hold any character but NUL; a control character becomes ``\\u00XX``, six bytes:
  at most ``6 n + 2``;
- the other columns have a fixed largest width (uuid, bigint, timestamptz, the CHECKed enums);
- the envelope (``op``, ``ts_*``, the ``source`` block) and the record's key, headers and framing
  get a budget each, which the integration test measures against.

A dead letter carries the record's key and value and adds its ``dlq.*`` headers (the reason among
them): ``sinks/dead_letter.py`` cuts a value only if the letter would not fit ``max_bytes``.
"""

from __future__ import annotations

import json
from typing import Any

# --- the bound: what infra/sql/002_row_bound.sql enforces (octets of each column's text) --------
RAW_PAYLOAD_MAX_BYTES = 1_048_576  # octet_length(raw_payload::text), i.e. 1 MiB of JSON text
DEVICE_MAX_BYTES = 256
TITLE_MAX_BYTES = 4_096
SLUG_MAX_BYTES = 1_024

# --- budgets for what is not a column ----------------------------------------------------------
# op, ts_ms/us/ns, transaction and the source block (names, LSNs, sequence): about 450 bytes measured.
ENVELOPE_BUDGET_BYTES = 4_096
# The record's key ({"id": ...}), Connect's headers and the record and batch framing (about 90 bytes).
RECORD_FRAMING_BUDGET_BYTES = 4_096
# A dead letter's key, its dlq.* headers with the reason, a sink's own headers, and the headroom
# sinks/dead_letter.py keeps before it would cut the value (HEADROOM_BYTES, 4 KiB).
LETTER_BUDGET_BYTES = 16_384

# The widest value of each fixed-width type as Debezium writes it (timestamptz: its last instant).
_UUID = "00000000-0000-0000-0000-000000000000"
_TIMESTAMP = "294276-12-31T23:59:59.999999Z"
_BIGINT = -(2**63)
_INT = -(2**31)


def jsonb_field_bytes(text_bytes: int) -> int:
    """Largest JSON string for a JSONB value of ``text_bytes`` octets of text: quotes and
    backslashes doubled, plus the two quotes around it."""
    return 2 * text_bytes + 2


def text_field_bytes(text_bytes: int) -> int:
    """Largest JSON string for a text value of ``text_bytes`` octets: every octet a control
    character written as ``\\u00XX``, plus the two quotes."""
    return 6 * text_bytes + 2


def _compact_json_bytes(value: dict[str, Any]) -> int:
    return len(json.dumps(value, separators=(",", ":")).encode())


def engagement_row_bytes(raw_payload_max: int = RAW_PAYLOAD_MAX_BYTES, device_max: int = DEVICE_MAX_BYTES) -> int:
    """One image of an ``engagement_events`` row at the bound, as JSON."""
    fixed = {
        "id": _BIGINT,
        "content_id": _UUID,
        "user_id": _UUID,
        "event_type": "finish",
        "event_ts": _TIMESTAMP,
        "duration_ms": _INT,
        "device": "",
        "raw_payload": "",
    }
    # The empty strings above already count their quotes.
    return _compact_json_bytes(fixed) + jsonb_field_bytes(raw_payload_max) - 2 + text_field_bytes(device_max) - 2


def content_row_bytes(title_max: int = TITLE_MAX_BYTES, slug_max: int = SLUG_MAX_BYTES) -> int:
    """One image of a ``content`` row at the bound, as JSON."""
    fixed = {
        "id": _UUID,
        "slug": "",
        "title": "",
        "content_type": "newsletter",
        "length_seconds": _INT,
        "publish_ts": _TIMESTAMP,
    }
    return _compact_json_bytes(fixed) + text_field_bytes(title_max) - 2 + text_field_bytes(slug_max) - 2


def change_value_bytes(row_bytes: int) -> int:
    """The largest change value for a row image of ``row_bytes``: an update (before and after)."""
    return 2 * row_bytes + ENVELOPE_BUDGET_BYTES


def record_bytes(row_bytes: int) -> int:
    """What Kafka's limits see for that change: value, key, headers and framing."""
    return change_value_bytes(row_bytes) + RECORD_FRAMING_BUDGET_BYTES


def letter_bytes(row_bytes: int) -> int:
    """The dead letter of that change, uncut."""
    return change_value_bytes(row_bytes) + LETTER_BUDGET_BYTES


def required_max_message_bytes() -> int:
    """The smallest Kafka limit that carries every change at the bound, and its dead letter, whole."""
    rows = (engagement_row_bytes(), content_row_bytes())
    return max(max(record_bytes(r), letter_bytes(r)) for r in rows)
