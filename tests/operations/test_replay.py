"""``python -m pipeline replay``: the BigQuery sink re-sends exactly the records from a time up to its
stored positions, its positions do not move, and the view still equals Postgres."""

from __future__ import annotations

import json
import time
from collections import Counter
from datetime import UTC, datetime

import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from infra.settings import Settings
from infra.stack.local import LocalStack
from loadtest.bigquery_truth import assert_view_matches_sql, wait_bigquery_caught_up
from sinks.bigquery_admin import run_query
from sinks.bigquery_dataset import make_client
from sinks.bigquery_tables import Quarter
from sinks.kafka_positions import KafkaPositions, group_id
from tests.integration.pipeline_helpers import run_bounded, run_pipeline, wait_topic_settled
from tests.integration.test_pipeline import generate

pytestmark = pytest.mark.integration


def rows_per_position(settings: Settings) -> Counter[tuple[int, int]]:
    """Changelog rows of the event topic per source position (the emulator keeps repeats)."""
    bq = settings.bigquery
    table = f"{bq.dataset}.{bq.changes_table}_{Quarter.of(datetime.now(UTC)).suffix}"
    sql = (
        f"SELECT source_partition AS p, source_offset AS o, COUNT(*) AS n FROM {table}"
        f" WHERE source_topic = '{settings.cdc.engagement_topic}' GROUP BY source_partition, source_offset"
    )
    return Counter({(int(r["p"]), int(r["o"])): int(r["n"]) for r in run_query(make_client(bq), sql)})


def records_in(settings: Settings, ranges: dict[int, tuple[int, int]]) -> dict[tuple[int, int], bool]:
    """Each position in ``ranges`` of the event topic -> whether it holds a value (not a tombstone)."""
    consumer = Consumer({**settings.kafka.client_config(), "group.id": "replay-test", "enable.auto.commit": False})
    topic = settings.cdc.engagement_topic
    consumer.assign([TopicPartition(topic, p, start) for p, (start, stop) in ranges.items() if start < stop])
    wanted = sum(stop - start for start, stop in ranges.values())
    found: dict[tuple[int, int], bool] = {}
    deadline = time.monotonic() + 60
    while len(found) < wanted and time.monotonic() < deadline:
        for message in consumer.consume(1000, timeout=0.5):
            if message.error() is None and message.offset() < ranges[message.partition()][1]:
                found[(message.partition(), message.offset())] = message.value() is not None
    consumer.close()
    assert len(found) == wanted
    return found


def test_replay_of_bigquery_from_a_timestamp_re_sends_exactly_that_range(stack: LocalStack, settings: Settings):
    assert generate(settings, "--burst", "2000", "--seed", "21").wait(120) == 0
    wait_topic_settled(settings)
    time.sleep(1.5)
    since = datetime.now(UTC)
    time.sleep(1.5)
    assert generate(settings, "--burst", "1500", "--seed", "22").wait(120) == 0
    wait_topic_settled(settings)
    run_bounded(settings, PIPELINE_SINKS="bigquery")
    wait_bigquery_caught_up(settings, parked=False)
    topic = settings.cdc.engagement_topic
    live_group = group_id(settings.pipeline.consumer_group, "bigquery")
    live = KafkaPositions(settings.kafka.client_config(), live_group)
    stored_before = live.load([topic])
    before = rows_per_position(settings)
    # Where the range starts, asked of Kafka independently of the command.
    lookup = Consumer({**settings.kafka.client_config(), "group.id": "replay-test"})
    ms = int(since.timestamp() * 1000)
    starts = {
        tp.partition: tp.offset
        for tp in lookup.offsets_for_times([TopicPartition(topic, p, ms) for p in range(16)], timeout=10)
    }
    lookup.close()

    result = run_pipeline(
        settings, "replay", "--sink", "bigquery", "--from-timestamp", since.isoformat(), "--json", timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    ranges = {int(p): (start, report["stop_offsets"][p]) for p, start in report["from_offsets"].items()}
    stops = {int(k.rpartition(":")[2]): v.next_offset for k, v in stored_before.items()}
    assert ranges == {p: (starts[p], stops[p]) for p in starts if 0 <= starts[p] < stops.get(p, 0)}
    assert report["records"] == sum(stop - start for start, stop in ranges.values()) > 1000

    after = rows_per_position(settings)
    resent = {position: after[position] - before[position] for position in after if after[position] != before[position]}
    in_range = records_in(settings, ranges)
    values = {position for position, has_value in in_range.items() if has_value}
    # Every record of the range with a value was written exactly once more, and nothing else.
    assert set(resent) == values and set(resent.values()) == {1}
    print(
        f"replay: {report['records']} records in the range ({len(values)} with a value, "
        f"{len(in_range) - len(values)} tombstones) re-sent in {report['took_s']} s"
    )
    # The live sink's positions did not move; the replay's group is gone; the view is unchanged.
    assert live.load([topic]) == stored_before
    live.close()
    assert_view_matches_sql(settings)
    admin = AdminClient(settings.kafka.client_config())
    groups = [g.group_id for g in admin.list_consumer_groups().result(timeout=10).valid]
    assert [g for g in groups if ".replay-" in g] == []
