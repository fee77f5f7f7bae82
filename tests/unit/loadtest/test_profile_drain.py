"""Folding py-spy's raw stacks (loadtest.profile_drain)."""

from loadtest.profile_drain import fold, summary

WRITER = "thread (1): writer;Thread.run (threading.py:982);Flusher.flush (sinks/flush.py:145);"
RAW = "\n".join(
    [
        WRITER + "aggregate (sinks/leaderboard_deltas.py:66) 30",
        WRITER + "aggregate (sinks/leaderboard_deltas.py:70) 10",
        "thread (1): writer;Thread.run (threading.py:982);_worker (concurrent/futures/thread.py:81);"
        "Condition.wait (threading.py:320) 60",
        "thread (2): bundle;process (pipeline/sources/kafka_partitions.py:250) 1",
    ]
)


def test_a_wait_in_the_plumbing_is_charged_to_the_frame_that_waits_and_lines_are_merged():
    threads, leaves = fold(RAW)
    assert threads == {"thread (1): writer": 100, "thread (2): bundle": 1}
    assert leaves["thread (1): writer"] == {
        "aggregate (sinks/leaderboard_deltas.py)": 40,
        "_worker (concurrent/futures/thread.py)": 60,
    }


def test_the_summary_gives_cores_per_thread_and_leaves_out_the_idle_ones():
    cpu = RAW.split("\n")[0] + "\n" + RAW.split("\n")[3]
    lines = summary(cpu, RAW, seconds=1, rate=100, top=2)
    assert lines[0] == "thread (1): writer: 0.30 cores"
    assert lines[1] == "    cpu  100.0%  aggregate (sinks/leaderboard_deltas.py)"
    assert lines[2] == "    time  60.0%  _worker (concurrent/futures/thread.py)"
    assert not any("bundle" in line for line in lines)  # 0.01 cores: under 2 % of one
