"""The pure parts of rebuild-redis and replay: how far behind a copy is, replay ranges, refusals, stops."""

from __future__ import annotations

import pytest

from infra.settings import Settings
from pipeline.job import stop_at
from pipeline.rebuild import behind
from pipeline.replay import REFUSED_EXIT, ReplayRefused, find, main, offsets_arg, replay_range, timestamp_ms
from pipeline.sources.partition_offsets import UNBOUNDED, PartitionSpec


def test_behind_counts_only_what_the_copy_lacks_and_never_what_it_has_beyond():
    target = {"redis_leaderboard": {"e:0": 10, "e:1": 5, "p:0": 3}, "redis_content": {"c:0": 7}}
    copy = {"redis_leaderboard": {"e:0": 4, "e:1": 9}, "redis_content": {"c:0": 7}}
    assert behind(copy, target) == 6 + 0 + 3 + 0
    assert behind(target, target) == 0


def test_replay_range_is_from_the_start_to_the_live_position_and_skips_empty_partitions():
    starts = {0: 5, 1: 10, 2: 0, 3: 4}
    stops = {0: 9, 1: 10, 3: 2}  # 1: nothing new; 2: the live sink has no position; 3: start past it
    assert replay_range(starts, stops) == {0: (5, 9)}


def test_from_offset_and_timestamp_arguments():
    assert offsets_arg("0") == 0
    assert offsets_arg("3:1200,7:0") == {3: 1200, 7: 0}
    with pytest.raises(ReplayRefused):
        offsets_arg("3-1200")
    assert timestamp_ms("2026-12-06T10:00:00Z") == 1_796_551_200_000
    with pytest.raises(ReplayRefused, match="zone"):
        timestamp_ms("2026-12-06T10:00:00")


def test_the_redis_sinks_are_refused_with_a_pointer_to_rebuild_and_bigquery_is_found():
    settings = Settings()
    for sink in ("redis_leaderboard", "redis_content"):
        with pytest.raises(ReplayRefused, match="rebuild-redis"):
            find(sink, settings)
    with pytest.raises(ReplayRefused, match="only BigQuery and HTTP"):
        find("faulty", settings)
    assert find("bigquery", settings)[0] == "bigquery"
    assert find("bigquery_content", settings)[1].topic == "content"


def test_replay_of_a_redis_sink_exits_2_and_says_why(capsys):
    assert main(["--sink", "redis_leaderboard", "--from-offset", "0"]) == REFUSED_EXIT
    assert "make rebuild-redis" in capsys.readouterr().err


def test_stop_offsets_read_only_the_named_partitions_up_to_their_offset():
    specs = [PartitionSpec("t", 0, 5, 100), PartitionSpec("t", 1, 0, 50), PartitionSpec("p", 0, 7, UNBOUNDED)]
    assert stop_at(specs, {"t:0": 20, "t:1": 80}) == [
        PartitionSpec("t", 0, 5, 20),
        PartitionSpec("t", 1, 0, 50),  # never past the end taken at start
        PartitionSpec("p", 0, 7, 7),  # not named: nothing
    ]


def test_the_copys_progress_is_its_first_lag_plus_what_the_targets_moved_less_the_lag_now():
    from pipeline.rebuild import copied

    assert copied(1_000, 50_000, 1_000, 50_000) == (0, 1_000)  # the start
    assert copied(1_000, 50_000, 400, 50_200) == (800, 1_200)  # the live sinks wrote 200 more
    assert copied(1_000, 50_000, 0, 50_000) == (1_000, 1_000)  # caught up
    assert copied(1_000, 50_000, 1_500, 50_000) == (0, 1_000)  # never below nothing
