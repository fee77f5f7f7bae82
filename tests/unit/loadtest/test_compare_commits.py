"""compare_commits reads the figures of a round from what bench_pipeline printed."""

from loadtest.compare_commits import figures

ROUND = """\
  COMMIT -> LEADERBOARD at 3,333 events/s for 45 s: p50 158 ms, p95 474 ms, p99 686 ms, max 718 ms over 146 probes
    of which commit -> on the Kafka topic: p50 52 ms, p95 172 ms, p99 219 ms, max 324 ms over 146 probes
    and on the topic -> on the board (the pipeline): p50 94 ms, p95 343 ms, p99 537 ms, max 589 ms over 146 probes
    bigquery   cpu  0.23 cores   peak rss     733 MiB
    kafka      cpu  0.19 cores   peak rss     448 MiB
    prism      cpu  0.14 cores   peak rss      47 MiB
    job        cpu  0.54 cores   peak rss     611 MiB
  SINKS WITH KAFKA POSITIONS, caught up 3.3 s after the load; peak lag: bigquery 35,112 records (10.5 s of input), \
bigquery_content 1 records (0.0 s of input)
"""


def test_a_latency_round_with_other_lanes_gives_the_board_the_cpu_and_the_peak_lags():
    assert figures(ROUND) == {
        "commit->board p50 ms": 158.0,
        "commit->board p95 ms": 474.0,
        "commit->board p99 ms": 686.0,
        "topic->board p50 ms": 94.0,
        "topic->board p95 ms": 343.0,
        "topic->board p99 ms": 537.0,
        "bigquery cores": 0.23,
        "prism cores": 0.14,
        "job cores": 0.54,
        "job peak rss MiB": 611.0,
        "bigquery peak lag records": 35_112.0,
        "bigquery_content peak lag records": 1.0,
    }


def test_an_http_latency_round_gives_commit_to_received():
    line = "  COMMIT -> RECEIVED at 3,333 events/s: p50 95 ms, p90 180 ms, p99 259 ms, max 400 ms over 150,000 changes"
    assert figures(line) == {
        "commit->received p50 ms": 95.0,
        "commit->received p90 ms": 180.0,
        "commit->received p99 ms": 259.0,
    }


def test_a_bigquery_latency_round_gives_commit_to_visible_and_the_last_phase_s_board():
    output = (
        "  COMMIT -> LEADERBOARD at 3,333 events/s for 45 s: p50 40 ms, p95 90 ms, p99 121 ms, max 150 ms\n"
        "  COMMIT -> LEADERBOARD at 3,333 events/s for 45 s: p50 49 ms, p95 153 ms, p99 308 ms, max 333 ms\n"
        "COMMIT -> VISIBLE IN BIGQUERY (storage_write) at 3,333 events/s: p50 1836 ms, p95 3851 ms, p99 4850 ms,"
        " max 5350 ms over 258 probes\n"
    )
    assert figures(output) == {
        "commit->board p50 ms": 49.0,
        "commit->board p95 ms": 153.0,
        "commit->board p99 ms": 308.0,
        "commit->visible p50 ms": 1836.0,
        "commit->visible p95 ms": 3851.0,
        "commit->visible p99 ms": 4850.0,
    }
