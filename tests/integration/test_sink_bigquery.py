"""The BigQuery sink on the real stack and the emulator: the view equals Postgres after kill -9,
a replay changes nothing, a wrong-typed row is dead-lettered, and an outage is waited out."""

from __future__ import annotations

import random
import re
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from prometheus_client.parser import text_string_to_metric_families

from infra.settings import BigQuerySettings, Settings
from infra.stack.kafka_admin import TopicSpec, admin_client, end_offsets, ensure_topics
from infra.stack.local import LocalStack
from loadtest.bigquery_truth import HAND_MADE_IDS, assert_view_matches_sql, view_rows, wait_bigquery_caught_up
from loadtest.bigquery_truth import positions as stored_offsets
from sinks.bigquery import BigQueryChangesSink
from sinks.bigquery_admin import run_query
from sinks.bigquery_dataset import make_client
from sinks.bigquery_tables import Quarter
from sinks.contract import Batch
from sinks.dead_letter import DeadLetterProducer
from sinks.flush import Flusher
from sinks.kafka_positions import KafkaPositions, group_id
from sinks.positions import Position
from sinks.records import ContentRow, EngagementRow, EnrichedChange, SourcePosition

from .kafka_reader import Record
from .pipeline_helpers import assert_redis_matches_sql, flush_redis, run_bounded, streaming, wait_caught_up
from .test_pipeline import generate, read_dead_letters
from .test_sink_family import read_to_the_end

pytestmark = pytest.mark.integration
BOTH = {"PIPELINE_SINKS": "redis,bigquery"}
TEST_TOPIC = "bqtest"


def own_letters(settings: Settings) -> Settings:
    return settings.model_copy(update={"cdc": settings.cdc.model_copy(update={"topic_prefix": TEST_TOPIC})})


def HAND_MADE(settings: Settings) -> BigQuerySettings:  # noqa: N802 - reads as a constant
    """A dataset of its own for rows made by hand, so they never meet the Postgres comparisons;
    through insertAll, whose per-row errors these tests check (Storage Write has its own below)."""
    return settings.bigquery.model_copy(update={"dataset": "analytics_hand_made", "write_mode": "insert_all"})


def changelog_count(settings: Settings) -> tuple[int, int]:
    """Rows in this quarter's changelog, and how many distinct source positions they come from."""
    bq = settings.bigquery
    table = f"{bq.dataset}.{bq.changes_table}_{Quarter.of(datetime.now(UTC)).suffix}"
    sql = (
        "SELECT COUNT(*) AS n, COUNT(DISTINCT FORMAT('%d/%d', source_partition, source_offset)) AS positions"
        f" FROM {table} WHERE source_topic = '{settings.cdc.engagement_topic}'"
    )
    [row] = run_query(make_client(bq), sql)
    return row["n"], row["positions"]


def test_the_view_equals_postgres_after_three_kill_9(stack: LocalStack, settings: Settings, tmp_path):
    flush_redis(settings)
    rng = random.Random(12)
    with streaming(settings, tmp_path / "pipeline.log", **BOTH) as pipeline:
        generator = generate(settings, "--rate", "90000", "--duration", "24")  # 1,500 events/s
        for _ in range(3):
            time.sleep(rng.uniform(3.0, 7.0))
            pipeline.kill9()
            pipeline.start()
        assert generator.wait(120) == 0, generator.stdout.read() if generator.stdout else ""
        wait_caught_up(settings, timeout=180)
        wait_bigquery_caught_up(settings, timeout=240)
        assert pipeline.alive()
    rows = assert_view_matches_sql(settings)
    assert rows > 30_000  # the workload's inserts, less its deletes
    assert_redis_matches_sql(settings)


@pytest.mark.slow  # about 2 minutes; make test-operations' replay of BigQuery checks the view the same way
def test_a_replay_from_earlier_positions_leaves_the_view_unchanged(stack: LocalStack, settings: Settings):
    assert generate(settings, "--burst", "3000", "--seed", "5").wait(120) == 0
    run_bounded(settings, PIPELINE_SINKS="bigquery")
    wait_bigquery_caught_up(settings, parked=False)
    before_view, before_rows = view_rows(settings), changelog_count(settings)
    topic = settings.cdc.engagement_topic
    store = KafkaPositions(settings.kafka.client_config(), group_id(settings.pipeline.consumer_group, "bigquery"))
    # Back to offset 0 in every partition: every change is written a second time.
    store.store({f"{topic}:{p}": Position(0) for p in end_offsets(settings.kafka, topic)})
    store.close()
    run_bounded(settings, PIPELINE_SINKS="bigquery")
    wait_bigquery_caught_up(settings, parked=False)
    rows, positions = before_rows
    # Every change was written once more (the emulator keeps repeats) ...
    assert changelog_count(settings) == (rows + positions, positions)
    assert view_rows(settings) == before_view  # ... and the view shows none of them
    assert_view_matches_sql(settings)


@pytest.fixture
def bigquery_flusher(stack: LocalStack, settings: Settings) -> Iterator[Flusher]:
    # A topic of its own: the sink's positions are committed offsets, which need a topic to exist.
    # And a dead-letter topic of its own, which the other tests' letter checks never see.
    ensure_topics(
        admin_client(settings.kafka), [TopicSpec(TEST_TOPIC, 1), TopicSpec(own_letters(settings).cdc.dlq_topic, 1)]
    )
    sink = BigQueryChangesSink(HAND_MADE(settings), settings.kafka, f"flusher-{time.time_ns()}")
    sink.open()
    letters = DeadLetterProducer(settings.kafka.client_config(), own_letters(settings).cdc.dlq_topic, 1_000_000)
    flusher = Flusher(sink, letters, [TEST_TOPIC], owns_upstream_letters=True)
    flusher.load()
    try:
        yield flusher
    finally:
        sink.close()
        letters.close()


def _change(offset: int, duration: object) -> EnrichedChange:
    event_id = 800_000_000 + offset
    row = EngagementRow(event_id, "c-bq", None, "play", datetime.now(UTC), duration, "web", None)  # type: ignore[arg-type]
    content = ContentRow("c-bq", "slug", "Title", "video", 100, None)
    key = b'{"id": %d}' % event_id
    return EnrichedChange(
        SourcePosition(TEST_TOPIC, 0, offset), key, b'{"v": %d}' % offset, "c", (1, offset), 0, None, row, content, ()
    )


def test_a_wrong_typed_row_is_dead_lettered_and_the_rest_is_written(bigquery_flusher: Flusher, settings: Settings):
    started = time.monotonic()
    report = bigquery_flusher.flush([_change(1, 1000), _change(2, "not a number"), _change(3, 3000)])
    assert time.monotonic() - started < 30  # one bad row does not make the client retry for minutes
    assert (report.written, dict(report.letters)) == (2, {"bigquery": 1})
    [letter] = read_dead_letters(own_letters(settings), expected=1, timeout=30, stage="bigquery")
    assert letter["offset_key"] == "0:2"
    # The emulator names the first column, not the wrong one (docs/bigquery.md); BigQuery names it.
    assert letter["reason"] == "BigQuery insertErrors: invalid at op: Cannot convert value to string (bad value): c"
    assert (letter["key"], letter["value"]) == (b'{"id": 800000002}', b'{"v": 2}')
    bq = HAND_MADE(settings)
    ids = {r["id"] for r in run_query(make_client(bq), f"SELECT id FROM {bq.dataset}.{bq.view}")}
    assert {800_000_001, 800_000_003} <= ids and 800_000_002 not in ids
    key = f"{TEST_TOPIC}:0"
    assert bigquery_flusher.sink.positions([TEST_TOPIC]) == {key: bigquery_flusher.stored[key]}
    assert bigquery_flusher.stored[key].next_offset == 4


def test_a_30_s_emulator_outage_is_waited_out_and_the_board_is_unaffected(
    stack: LocalStack, settings: Settings, tmp_path
):
    flush_redis(settings)
    emulator = stack.bigquery
    assert emulator is not None
    with streaming(settings, tmp_path / "pipeline.log", **BOTH) as pipeline:
        wait_bigquery_caught_up(settings)
        generator = generate(settings, "--rate", "60000", "--duration", "12")  # 1,000 events/s
        time.sleep(3)
        emulator.process.kill()
        down_at = time.monotonic()
        assert generator.wait(60) == 0, generator.stdout.read() if generator.stdout else ""
        # While BigQuery is still gone, the leaderboards have every change and equal SQL.
        wait_caught_up(settings, timeout=25)
        assert_redis_matches_sql(settings)
        # The job's metrics tell the two lanes apart: the leaderboards read to the end, the
        # BigQuery lane waits for its sink while the topic grew.
        during = source_lag(settings, settings.cdc.engagement_topic)
        assert time.monotonic() - down_at < 30  # the checks above ran during the outage
        assert set(during["leaderboards"].values()) == {0}
        assert sum(during["bigquery"].values()) > 0, during["bigquery"]
        assert set(during["leaderboards"]) == set(during["bigquery"]) == set(range(16))
        time.sleep(max(0.0, 30 - (time.monotonic() - down_at)))
        emulator.process.start(settings.stack.start_timeout_s)
        wait_bigquery_caught_up(settings, timeout=240)
        assert pipeline.alive()
        assert set(source_lag(settings, settings.cdc.engagement_topic)["bigquery"].values()) == {0}
    assert_view_matches_sql(settings)


def source_lag(settings: Settings, topic: str) -> dict[str, dict[int, float]]:
    """``{lane: {partition: records behind}}`` for ``topic``, from one scrape of the job's endpoint."""
    lag: dict[str, dict[int, float]] = {}
    for family in text_string_to_metric_families(httpx.get(settings.metrics.url, timeout=10).text):
        if family.name == "engagement_source_lag_records":
            for sample in family.samples:
                if sample.labels["topic"] == topic:
                    lag.setdefault(sample.labels["lane"], {})[int(sample.labels["partition"])] = sample.value
    return lag


def test_the_audit_table_keeps_every_envelope_as_it_arrived(stack: LocalStack, settings: Settings):
    ensure_topics(admin_client(settings.kafka), [TopicSpec(TEST_TOPIC, 1)])
    audited = HAND_MADE(settings).model_copy(update={"audit": True})
    sink = BigQueryChangesSink(audited, settings.kafka, f"audit-{time.time_ns()}")
    sink.open()
    envelope = b'{"before": null, "after": {"id": 800000100}, "source": {"lsn": 42}, "op": "c"}'
    change = msgspec.structs.replace(_change(100, 5000), value=envelope)
    try:
        assert sink.write(Batch([change], {}, {})).complete
    finally:
        sink.close()
    bq = audited
    [row] = run_query(
        make_client(bq),
        f"SELECT op, `before`, `after`, source, envelope, key FROM {bq.dataset}.{bq.audit_table}"
        f" WHERE source_topic = '{TEST_TOPIC}' AND source_offset = 100",
    )
    assert (row["op"], row["before"], row["envelope"], row["key"]) == ("c", None, None, '{"id": 800000100}')
    # JSON columns come back parsed.
    assert (row["after"], row["source"]) == ({"id": 800000100}, {"lsn": 42})


def test_storage_write_appends_each_change_exactly_once_after_three_kill_9(
    stack: LocalStack, settings: Settings, tmp_path
):
    # Its own dataset and consumer group: the changelog starts empty and the sink from offset 0.
    bq = settings.bigquery.model_copy(update={"dataset": "analytics_storage_write"})
    extra = {
        "PIPELINE_SINKS": "bigquery",
        "BIGQUERY_WRITE_MODE": "storage_write",
        "BIGQUERY_DATASET": bq.dataset,
        "PIPELINE_CONSUMER_GROUP": f"{settings.pipeline.consumer_group}-sw",
    }
    own = settings.model_copy(
        update={
            "bigquery": bq,
            "pipeline": settings.pipeline.model_copy(update={"consumer_group": extra["PIPELINE_CONSUMER_GROUP"]}),
        }
    )
    rng = random.Random(13)
    kills: list[str] = []
    assert stack.bigquery is not None
    emulator_log = stack.bigquery.process.log_file
    emulator_log_from = emulator_log.stat().st_size if emulator_log.exists() else 0
    with streaming(settings, tmp_path / "pipeline.log", **extra) as pipeline:
        generator = generate(settings, "--rate", "60000", "--duration", "20")  # 1,000 events/s
        for _ in range(3):
            time.sleep(rng.uniform(3.0, 6.0))
            pipeline.kill9()
            kills.append(datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3])
            pipeline.start()
        assert generator.wait(120) == 0, generator.stdout.read() if generator.stdout else ""
        wait_bigquery_caught_up(own, timeout=240)
        assert pipeline.alive()
    topic = settings.cdc.engagement_topic
    # The sink, stopped, has handled the whole topic (else Debezium published after the wait: a
    # timing problem of this test, said as such rather than as rows missing).
    assert stored_offsets(own, "bigquery", topic) == {
        p: end for p, end in end_offsets(settings.kafka, topic).items() if end
    }
    client = make_client(bq)
    changelog = " UNION ALL ".join(
        f"SELECT source_partition AS p, source_offset AS o FROM {bq.dataset}.{t.table_id} WHERE id < {HAND_MADE_IDS}"
        for t in client.list_tables(bq.dataset)
        if t.table_id.startswith(f"{bq.changes_table}_")  # every quarter's table and the outliers'
    )
    [counts] = run_query(client, f"SELECT COUNT(*) AS n, COUNT(DISTINCT FORMAT('%d/%d', p, o)) AS d FROM ({changelog})")
    records = [r for r in read_to_the_end(settings) if event_id(r.value) < HAND_MADE_IDS]
    if (counts["n"], counts["d"]) != (len(records), len(records)):  # every change, once
        log = tmp_path / "pipeline.log"
        pytest.fail(storage_write_report(own, client, changelog, records, kills, log, emulator_log, emulator_log_from))
    assert_view_matches_sql(own)


def event_id(value: object) -> int:
    row = (value.get("after") or value.get("before") or {}) if isinstance(value, dict) else {}
    return row.get("id", HAND_MADE_IDS)


EMULATOR_ERROR = re.compile(r"Error|Exception|Traceback")


def storage_write_report(
    settings: Settings,
    client: Any,
    changelog: str,
    records: list[Record],
    kills: list[str],
    log: Path,
    emulator_log: Path,
    emulator_log_from: int,
) -> str:
    """What a failure needs to be understood: the changes missing or repeated (partition and offset
    ranges, with the first's Debezium commit time, against the kill times), the positions and streams
    the sink stored, and the errors the emulator logged during the test."""
    seen = Counter((r["p"], r["o"]) for r in run_query(client, f"SELECT p, o FROM ({changelog})"))
    by_position = {(r.partition, r.offset): r for r in records}
    missing = sorted(set(by_position) - set(seen))
    repeated = sorted(key for key, n in seen.items() if n > 1)
    lines = [
        f"{len(records)} changes on the topic (hand-made ids left out), {sum(seen.values())} changelog rows:"
        f" {len(missing)} missing, {sum(seen[k] - 1 for k in repeated)} repeats,"
        f" {len(set(seen) - set(by_position))} rows of no change; kill -9 at {', '.join(kills)} UTC"
    ]
    for label, keys in (("missing", missing), ("repeated", repeated)):
        for partition, first, last in ranges(keys):
            change = describe_change(by_position.get((partition, first)))
            lines.append(f"  {label}: partition {partition} offsets {first}..{last} (the first: {change})")
    store = KafkaPositions(settings.kafka.client_config(), group_id(settings.pipeline.consumer_group, "bigquery"))
    try:
        stored = store.load_with_extras([settings.cdc.engagement_topic, settings.cdc.parked_topic])
    finally:
        store.close()
    for key, (position, streams) in sorted(stored.items()):
        lines.append(f"  stored {key}: next offset {position.next_offset}, streams {streams or '-'}")
    # The emulator's own errors meanwhile (an append whose insert failed shows here).
    with emulator_log.open("rb") as written:
        written.seek(emulator_log_from)
        text = written.read().decode(errors="replace")
    found = [line for line in text.splitlines() if EMULATOR_ERROR.search(line)]
    lines += [f"  emulator: {line[:300]}" for line in found[-20:]] or ["  emulator: no error logged"]
    lines.append(f"  the pipeline's log: {log}")
    return "\n".join(lines)


def describe_change(record: Record | None) -> str:
    value = None if record is None else record.value
    if not isinstance(value, dict):
        return "no change"
    ts_ms = (value.get("source") or {}).get("ts_ms")
    at = datetime.fromtimestamp(ts_ms / 1000, UTC).strftime("%H:%M:%S.%f")[:-3] if ts_ms else "?"
    return f"op {value.get('op')}, id {event_id(value)}, committed at {at} UTC"


def ranges(keys: list[tuple[int, int]]) -> Iterator[tuple[int, int, int]]:
    """``(partition, first, last)`` for each run of consecutive offsets in sorted ``keys``."""
    run: tuple[int, int, int] | None = None
    for partition, offset in keys:
        if run is not None and (partition != run[0] or offset != run[2] + 1):
            yield run
            run = None
        run = (partition, offset if run is None else run[1], offset)
    if run is not None:
        yield run
