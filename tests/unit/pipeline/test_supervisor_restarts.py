"""The supervisor's decisions after a job ends, with fakeredis for the lock and tiny Python scripts
for the job: a rewind is restarted at once, other failures after the back-off, a lock gone from
Redis is taken again and the job restarted, a lock held by another instance ends the supervisor."""

from __future__ import annotations

import signal
import sys
import threading

import fakeredis
import pytest

from infra.settings import Settings
from pipeline.supervisor import LOCK_LOST_EXIT, Supervisor, restart_at_once
from sinks.contract import REWOUND_MARKER

KEY = "engagement:pipeline:lock:engagement-pipeline"
FENCE = "engagement:pipeline:fence:engagement-pipeline"
RESTARTS = "engagement:pipeline:restarts:engagement-pipeline"


class ScriptedSupervisor(Supervisor):
    """Runs the n-th script for the n-th start of the job; records the back-off sleeps."""

    def __init__(self, settings: Settings, client: fakeredis.FakeRedis, scripts: list[str]) -> None:
        super().__init__(settings, [], client=client)
        self.scripts = scripts
        self.starts = 0
        self.slept: list[float] = []
        self.tokens: list[str] = []

    def worker_command(self) -> list[str]:
        script = self.scripts[min(self.starts, len(self.scripts) - 1)]
        self.starts += 1
        return [sys.executable, "-c", script]

    def _run_worker(self, generation, lock):  # type: ignore[no-untyped-def]
        self.tokens.append(str(generation))
        return super()._run_worker(generation, lock)

    def _sleep(self, seconds: float) -> None:
        self.slept.append(seconds)


@pytest.fixture(autouse=True)
def _keep_signal_handlers():  # type: ignore[no-untyped-def]
    """``run`` installs its own SIGTERM/SIGINT handlers: give pytest its own back."""
    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    monkeypatch.setenv("PIPELINE_RUNNER", "direct")  # no Prism to start
    monkeypatch.setenv("PIPELINE_CONSUMER_GROUP", "engagement-pipeline")
    monkeypatch.setenv("PIPELINE_LOCK_TTL_S", "1.5")
    monkeypatch.setenv("PIPELINE_RESTART_BACKOFF_INITIAL_S", "7")
    return Settings()


FAIL_REWOUND = f"import sys; print('ERROR sinks.flush: {REWOUND_MARKER}: redis_leaderboard: ...'); sys.exit(1)"
FAIL_OTHER = "import sys; print('ERROR something else'); sys.exit(1)"
DONE = "pass"
LONG = "import time; time.sleep(30)"


def test_a_job_that_found_its_positions_rewound_is_restarted_without_back_off(settings):
    client = fakeredis.FakeRedis()
    supervisor = ScriptedSupervisor(settings, client, [FAIL_REWOUND, DONE])
    assert supervisor.run() == 0
    assert supervisor.starts == 2 and supervisor.slept == []
    restarts = client.hgetall(RESTARTS)
    assert restarts[b"positions_rewound"] == b"1" and restarts[b"last_cause"] == b"positions_rewound"


def test_other_failures_keep_the_back_off(settings):
    supervisor = ScriptedSupervisor(settings, fakeredis.FakeRedis(), [FAIL_OTHER, DONE])
    assert supervisor.run() == 0
    assert supervisor.starts == 2 and supervisor.slept == [7.0]


def test_the_decision_needs_both_a_failure_and_the_marker_and_never_loops_tightly():
    assert restart_at_once(1, True, [], 100.0)
    assert not restart_at_once(1, False, [], 100.0) and not restart_at_once(0, True, [], 100.0)
    assert restart_at_once(1, True, [10.0, 90.0], 100.0)
    assert not restart_at_once(1, True, [10.0, 50.0, 90.0], 100.0)  # three within two minutes
    assert restart_at_once(1, True, [10.0, 50.0, 90.0], 140.0)  # the first is older than that now


def later(seconds: float, action) -> None:  # type: ignore[no-untyped-def]
    timer = threading.Timer(seconds, action)
    timer.daemon = True
    timer.start()


def test_a_lock_gone_from_redis_kills_the_job_takes_the_lock_again_and_restarts_it(settings):
    client = fakeredis.FakeRedis()
    supervisor = ScriptedSupervisor(settings, client, [LONG, DONE])
    later(1.0, lambda: client.delete(KEY, FENCE))  # Redis came back from a copy without them
    assert supervisor.run() == 0
    assert supervisor.starts == 2 and supervisor.slept == []
    first, second = (int(t) for t in supervisor.tokens)
    assert second > first  # a new generation: the first job's writes would be refused
    assert client.hget(RESTARTS, "lock_missing") == b"1"


def test_a_lock_held_by_another_instance_ends_the_supervisor(settings):
    client = fakeredis.FakeRedis()
    supervisor = ScriptedSupervisor(settings, client, [LONG, DONE])
    later(1.0, lambda: client.set(KEY, "elsewhere:4242:abc", px=60_000))
    assert supervisor.run() == LOCK_LOST_EXIT
    assert supervisor.starts == 1
    assert client.get(KEY) == b"elsewhere:4242:abc"  # left alone


def test_after_a_rewind_a_lock_the_older_redis_lost_too_is_taken_again_before_the_next_start(monkeypatch):
    monkeypatch.setenv("PIPELINE_LOCK_TTL_S", "30")  # the refresh thread would not look for 10 s
    client = fakeredis.FakeRedis()
    rewound_later = f"import sys, time; time.sleep(1); print('{REWOUND_MARKER}: ...'); sys.exit(1)"
    supervisor = ScriptedSupervisor(Settings(), client, [rewound_later, DONE])
    later(0.3, lambda: client.delete(KEY))
    assert supervisor.run() == 0
    assert supervisor.starts == 2 and supervisor.slept == []
    first, second = (int(t) for t in supervisor.tokens)
    assert second > first  # the second job already runs under the lock taken again
    restarts = client.hgetall(RESTARTS)
    assert restarts[b"positions_rewound"] == b"1" and restarts[b"lock_missing"] == b"1"


class ClusterSupervisor(ScriptedSupervisor):
    """A job that its runner restarts itself (the Flink cluster), without a job server to start."""

    def _runner_service(self):  # type: ignore[no-untyped-def]
        return None, lambda service: None


def test_a_rewind_announced_by_a_sink_on_the_cluster_stops_the_job_and_submits_it_again(monkeypatch):
    monkeypatch.setenv("PIPELINE_RUNNER", "flink")
    monkeypatch.setenv("FLINK_ENVIRONMENT", "external")
    monkeypatch.setenv("PIPELINE_CONSUMER_GROUP", "engagement-pipeline")
    monkeypatch.setenv("PIPELINE_LOCK_TTL_S", "1.5")
    client = fakeredis.FakeRedis()
    supervisor = ClusterSupervisor(Settings(), client, [LONG, DONE])

    def announce() -> None:  # what sinks.fencing.announce_rewind does, once the job runs
        while not supervisor.tokens:
            threading.Event().wait(0.05)
        client.set("engagement:pipeline:rewound:engagement-pipeline", supervisor.tokens[0], ex=600)

    threading.Thread(target=announce, daemon=True).start()
    assert supervisor.run() == 0
    assert supervisor.starts == 2 and supervisor.slept == []  # at once, not after the back-off
    assert client.get("engagement:pipeline:rewound:engagement-pipeline") is None
    assert client.hget(RESTARTS, "positions_rewound") == b"1"


def test_a_rewind_announced_for_an_older_generation_is_ignored(monkeypatch):
    monkeypatch.setenv("PIPELINE_RUNNER", "flink")
    monkeypatch.setenv("FLINK_ENVIRONMENT", "external")
    monkeypatch.setenv("PIPELINE_CONSUMER_GROUP", "engagement-pipeline")
    client = fakeredis.FakeRedis()
    client.set("engagement:pipeline:rewound:engagement-pipeline", "1", ex=600)
    supervisor = ClusterSupervisor(Settings(), client, ["import time; time.sleep(2.5)", DONE])
    assert supervisor.run() == 0
    assert supervisor.starts == 1


def test_prism_is_started_loopback_with_the_configured_progress_tick(tmp_path):
    from pipeline.supervisor import prism_process

    binary = tmp_path / "prism"
    binary.write_text("")
    settings = Settings(pipeline={"prism_binary": binary, "prism_progress_tick_ms": 2500})
    command = list(prism_process(settings).command)
    assert command[0] == str(binary)
    assert "--job_host=127.0.0.1" in command
    assert "--progress_tick=2500ms" in command
