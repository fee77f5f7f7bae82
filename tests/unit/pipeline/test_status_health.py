import copy

import pytest

from infra.settings import Settings, StatusSettings
from pipeline.status.health import differences, reason_kind, report
from pipeline.status.render import render

SETTINGS = Settings(status=StatusSettings(max_sink_lag=1_000))
CDC = SETTINGS.cdc
E, C, P = CDC.engagement_topic, CDC.content_topic, CDC.parked_topic
RUNNING = {
    "name": CDC.connector_name,
    "connector": {"state": "RUNNING"},
    "tasks": [{"id": 0, "state": "RUNNING"}],
}
SLOT = {
    "slot": CDC.slot_name,
    "active": True,
    "wal_status": "reserved",
    "lag_bytes": 100,
    "retained_bytes": 200,
    "lag_s": None,
}


def healthy_raw():
    def moving(at, end0, stored0, written):
        return {
            "at": at,
            "ends": {E: {0: end0, 1: 50}, C: {0: 10}, P: {}},
            "stored": {"redis_leaderboard": {E: {0: stored0, 1: 50}, P: {}}, "redis_content": {C: {0: 10}}},
            "metrics": {
                "engagement_source_records_total{}": written,
                'engagement_sink_records_total{outcome="written",sink="redis_leaderboard"}': written,
            },
        }

    return {
        "connector": RUNNING,
        "slot": SLOT,
        "lock": {"host": "h", "pid": 7, "expires_in_s": 9.5},
        "breakers": {},
        "board": {"applied_ms": 1, "commit_ts_ms": 1, "changes": 5, "age_s": 0.2},
        "bigquery": None,
        "letters": {
            CDC.dlq_topic: {
                "total": 3,
                "scanned": 3,
                "by_stage_reason": {
                    "decode_engagement\tbad JSON at 12": 2,
                    "join_content\tcontent 0b9f5e1c-1111-4a2b-9c3d-123456789abc not found": 1,
                },
            }
        },
        "errors": {},
        "first": moving(100.0, 100, 100, 1_000),
        "second": moving(102.0, 300, 300, 1_400),
    }


def test_a_running_pipeline_that_keeps_up_is_healthy_with_rates_and_lag_per_partition():
    result = report(healthy_raw(), SETTINGS)
    assert result["problems"] == []
    assert result["healthy"] is True
    sink = result["sinks"]["redis_leaderboard"]
    assert sink["lag"] == 0
    assert sink["out_per_s"] == 100.0
    assert sink["topics"][E]["partitions"] == {
        "0": {"stored": 300, "end": 300, "lag": 0},
        "1": {"stored": 50, "end": 50, "lag": 0},
    }
    assert result["topics"][E] == {"end": 350, "in_per_s": 100.0}
    assert result["stages"] == {"source: records read": 200.0, "sink: outcome=written,sink=redis_leaderboard": 200.0}
    assert result["dead_letters"][CDC.dlq_topic]["by_stage_reason"] == [
        {"stage": "decode_engagement", "reason": "bad JSON at N", "count": 2},
        {"stage": "join_content", "reason": "content <id> not found", "count": 1},
    ]
    assert "healthy" in render(result).splitlines()[-1]


def test_no_lock_means_no_pipeline_is_running():
    raw = healthy_raw()
    raw["lock"] = None
    assert report(raw, SETTINGS)["problems"] == [
        f"no pipeline is running for consumer group {SETTINGS.pipeline.consumer_group} (nobody holds its instance lock)"
    ]


def test_a_sink_behind_and_not_moving_is_stalled_and_one_far_behind_is_over_the_limit():
    raw = healthy_raw()
    raw["first"]["stored"]["redis_leaderboard"][E][0] = 250
    raw["second"]["stored"]["redis_leaderboard"][E][0] = 250
    assert report(raw, SETTINGS)["problems"] == [
        "sink redis_leaderboard is stalled: 50 changes behind and it did not move in 2.0 s"
    ]
    raw["second"]["ends"][E][0] = 5_000
    result = report(raw, SETTINGS)
    assert result["problems"] == ["sink redis_leaderboard is 4,750 changes behind (limit STATUS_MAX_SINK_LAG=1,000)"]
    assert result["sinks"]["redis_leaderboard"]["topics"][E]["partitions"]["0"] == {
        "stored": 250,
        "end": 5000,
        "lag": 4750,
    }


def test_a_partition_never_stored_counts_from_zero():
    raw = healthy_raw()
    del raw["second"]["stored"]["redis_leaderboard"][E][1]
    result = report(raw, SETTINGS)
    assert result["sinks"]["redis_leaderboard"]["topics"][E]["partitions"]["1"] == {
        "stored": None,
        "end": 50,
        "lag": 50,
    }


def test_services_that_do_not_answer_and_capture_problems_are_listed():
    raw = healthy_raw()
    raw["errors"] = {"connect": "ConnectError: refused", "metrics": "ConnectError: refused"}
    raw["connector"] = None
    raw["slot"] = {**SLOT, "active": False}
    result = report(raw, SETTINGS)
    assert result["problems"] == [
        "connect did not answer: ConnectError: refused",
        "Kafka Connect is unreachable: nothing captures changes",
        f"replication slot {CDC.slot_name} is inactive (no consumer connected)",
    ]
    assert result["notes"] == [
        f"the job's metrics endpoint ({SETTINGS.metrics.url}) did not answer: ConnectError: refused"
    ]


@pytest.mark.parametrize("state", ["open", "half-open"])
def test_a_breaker_that_is_not_closed_is_a_problem(state):
    raw = healthy_raw()
    raw["breakers"] = {"events": [{"instance": "a", "state": state, "failures": 5, "detail": "HTTP 503"}]}
    assert report(raw, SETTINGS)["problems"] == [
        f"HTTP endpoint events: circuit breaker {state} (5 failure(s) in a row): HTTP 503"
    ]


def test_differences_ignore_counters_that_went_down_or_are_new():
    assert differences({"a": 10, "b": 5}, {"a": 30, "b": 1, "c": 4}, 2.0) == {"a": 10.0}
    assert differences(None, {"a": 1}, 2.0) == {}


def test_reason_kind_drops_ids_and_numbers():
    assert (
        reason_kind("value 5.5 at offset 17 for 0b9f5e1c-1111-4a2b-9c3d-123456789abc") == "value N at offset N for <id>"
    )


def test_render_lists_the_problems_last():
    raw = copy.deepcopy(healthy_raw())
    raw["lock"] = None
    lines = render(report(raw, SETTINGS)).splitlines()
    assert lines[0] == f"pipeline: not running for {SETTINGS.pipeline.consumer_group}"
    group = SETTINGS.pipeline.consumer_group
    assert lines[-2:] == [
        "UNHEALTHY:",
        f"  - no pipeline is running for consumer group {group} (nobody holds its instance lock)",
    ]


def test_sequence_marks_replaced_by_the_sinks_are_noted_per_sink_and_partition():
    raw = healthy_raw()
    sample = 'engagement_sink_sequence_regressions_total{kind="later_commit",partition="%s:3",sink="redis_leaderboard"}'
    raw["second"]["metrics"][sample % E] = 2.0
    result = report(raw, SETTINGS)
    assert result["healthy"]  # handled: a note, not a problem
    assert result["sequence_regressions"] == [
        {"kind": "later_commit", "partition": f"{E}:3", "sink": "redis_leaderboard", "count": 2}
    ]
    [note] = result["notes"]
    assert note.startswith(f"sink redis_leaderboard, partition {E}:3: 2 sequence mark(s) replaced")
    assert "restore or failover" in note
    assert report(healthy_raw(), SETTINGS)["sequence_regressions"] == []


def with_view(raw, restarts_before: int, restarts_after: int, polled_at: float):
    restarts, poll = (
        f'engagement_content_view_reader_restarts_total{{topic="{C}"}}',
        f'engagement_content_view_last_poll_timestamp_seconds{{topic="{C}"}}',
    )
    raw["first"]["metrics"].update({restarts: restarts_before, poll: polled_at})
    raw["second"]["metrics"].update({restarts: restarts_after, poll: polled_at})
    raw["second"]["wall"] = 1_000.0
    return raw


def test_a_content_view_reader_that_restarted_before_the_sample_is_a_note_and_keeps_healthy():
    out = report(with_view(healthy_raw(), 2, 2, 999.9), SETTINGS)
    assert out["healthy"]
    assert out["content_views"] == [{"topic": C, "restarts": 2, "restarted_in_sample": 0, "poll_age_s": 0.1}]
    assert any("content view reader of" in note and "restarted 2 time(s)" in note for note in out["notes"])


def test_a_content_view_reader_that_restarts_during_the_sample_or_stops_polling_is_a_problem():
    restarted = report(with_view(healthy_raw(), 2, 3, 999.9), SETTINGS)
    assert restarted["problems"] == [f"the content view reader of {C} failed and restarted during the sample"]
    stuck = report(with_view(healthy_raw(), 0, 0, 900.0), SETTINGS)
    assert stuck["problems"] == [
        f"the content view of {C} has not read its topic for 100 s: its reader is stuck; events wait parked until "
        "it reads again"
    ]
