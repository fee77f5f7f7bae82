"""Keeps one instance of the job running: owns Prism, restarts the job after failures, holds a lock.

- **One instance per consumer position.** The instance lock (``pipeline.instance_lock``) is taken
  before anything starts; a second instance refuses to start and says who holds it (host:pid, and
  when the lock expires). A dead holder on this host (``kill -9``) is taken over at once. Each
  acquisition is a new generation, passed to the job as its fencing token
  (``PIPELINE_FENCE_TOKEN``): the sinks refuse the writes of a job whose generation is not the
  newest (``sinks.fencing``), so even a job that somehow outlived its supervisor cannot write.
- **Losing the lock.** If the lock turns out to be someone else's, the job is killed at once and the
  supervisor exits with ``LOCK_LOST_EXIT``. If the lock is gone from Redis (Redis lost it or came
  back older: ``MISSING`` in ``pipeline.instance_lock``), nobody else holds it: the job is killed,
  the lock taken again as a new generation and the job started again at once. If Redis could not be
  reached for most of a TTL, the job is killed too (the lock may be passing to another instance),
  and the lock is taken again once Redis answers; refused if another instance has it by then.
- **Prism is ours.** For the local runner the supervisor starts the Prism binary itself and stops it
  by pid on exit (for ``--runner flink``, Beam's Flink job server the same way:
  ``pipeline.flink_job_server``); if it dies, it is started again before the job is. The job is
  given that Prism's endpoint, and nothing else: if the Prism port is already taken when it starts
  (by any process, including a Prism an older supervisor left behind), it refuses to start rather
  than submit a second job into a Prism it does not own. Beam's own PrismRunner leaves Prism
  running when the launcher is killed.
- **Children die with it.** Prism and the job get a parent-death signal (``infra.process.
  parent_death_signal``): a ``kill -9`` of the supervisor alone kills them too, so a new supervisor
  never finds an orphaned job still writing. They also share its process group: killing the group
  kills all three.
- **Restarts.** The job runs in a child process (``python -m pipeline.worker``). If it exits with
  an error, the supervisor logs why (the child's last lines), waits with exponential backoff (1 s
  doubling to 60 s; reset after 5 minutes of health) and starts it again; the new run resumes from
  the positions the sinks stored, so nothing is lost or counted twice. A bounded run that exits 0 ends
  the supervisor. One failure is restarted at once, without back-off: a sink that found its
  positions rewound (``sinks.contract.PositionsRewound``, named in the job's output by
  ``REWOUND_MARKER``) failed the job on purpose so that the next run reads the records the older
  store lacks; the sooner, the shorter the boards stay behind.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from types import FrameType

import redis

from infra.addresses import address, connect_host
from infra.process import ServiceProcess, StackError, parent_death_signal, port_open, refuse_if_taken
from infra.settings import REPO_ROOT, Settings
from pipeline.instance_lock import LOST, MISSING, InstanceLock, LockHeld, Loss
from sinks.contract import REWOUND_MARKER
from sinks.fencing import quick_client, restarts_key, rewound_key

__all__ = ["LOCK_LOST_EXIT", "LockHeld", "Supervisor", "prism_process"]

_log = logging.getLogger("pipeline.supervisor")
HEALTHY_AFTER_S = 300.0
AT_ONCE_LIMIT = 3
AT_ONCE_WINDOW_S = 120.0
LOCK_LOST_EXIT = 3


def prism_process(settings: Settings) -> ServiceProcess:
    ps = settings.pipeline
    if not ps.prism_binary.exists():
        raise StackError(f"Prism is not built at {ps.prism_binary}. Run `make bootstrap`.")
    stack_dir = settings.stack.dir
    process = ServiceProcess.in_stack(
        stack_dir,
        f"prism-{ps.prism_port}",
        command=[
            str(ps.prism_binary),
            f"--job_port={ps.prism_port}",
            # Loopback by default; Beam's Prism listens on every interface, ours is patched to take
            # a host (infra/prism/listen-host.patch). The web UI stays off: nothing here uses it.
            f"--job_host={ps.bind_host}",
            "--serve_http=false",
            # Beam asks each running bundle for progress every 100 ms; a source's bundle is always
            # running, and every answer gathers the bundle's metrics (infra/prism/progress-tick.patch).
            f"--progress_tick={ps.prism_progress_tick_ms}ms",
            "--log_level=warn",
            "--log_kind=text",
        ],
        ready=lambda: port_open(connect_host(ps.bind_host), ps.prism_port),
        host=connect_host(ps.bind_host),
        port=ps.prism_port,
        stop_signal=signal.SIGINT,
        # Same process group as the supervisor: `kill -9 -<pgid>` must take Prism down too.
        new_session=False,
        # And `kill -9 <supervisor>` alone: an orphaned Prism would keep the orphaned job running.
        die_with_parent=True,
    )
    return process


def start_own_prism(prism: ServiceProcess, timeout: float = 60) -> None:
    """Start Prism, refusing if anything already listens on its port or its pid file names a live
    process: the job must run in the Prism this supervisor started, never beside another job."""
    refuse_if_taken(
        prism,
        "Prism's port",
        "It may be a Prism left behind by an older pipeline, or another instance (another "
        "PIPELINE_CONSUMER_GROUP) on the same PIPELINE_PRISM_PORT. Submitting into it could run a second job, so "
        "this supervisor will not. Stop that process, or set another PIPELINE_PRISM_PORT.",
    )
    prism.start(timeout)


class Supervisor:
    def __init__(self, settings: Settings, worker_args: Sequence[str], *, client: redis.Redis | None = None) -> None:
        self.settings = settings
        self.worker_args = list(worker_args)
        self._client = client
        self._stopping = False
        self._child: subprocess.Popen[str] | None = None
        self._child_lock = threading.Lock()
        self._rewind_seen = False

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True
        if self._child and self._child.poll() is None:
            self._child.terminate()

    def _on_lock_lost(self, how: Loss) -> None:
        """From the lock's refresh thread: nothing may write under a lock we may no longer hold."""
        _log.error("the instance lock is %s: killing the job now", how)
        with self._child_lock:
            if self._child is not None and self._child.poll() is None:
                self._child.kill()

    def run(self) -> int:
        ps = self.settings.pipeline
        # Each call answers within a tenth of the TTL, so a loss is noticed before the lock expires.
        client = self._client or quick_client(self.settings.redis, min(2.0, ps.lock_ttl_s / 10))
        lock = InstanceLock(client, ps.consumer_group, ps.lock_ttl_s)
        generation = lock.acquire()
        lock.start_refresh(self._on_lock_lost)
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        runner_service, start_service = self._runner_service()
        backoff = ps.restart_backoff_initial_s
        at_once: deque[float] = deque(maxlen=AT_ONCE_LIMIT)  # when rewinds were restarted without back-off
        try:
            while not self._stopping:
                if lock.lost == LOST:
                    _log.error("another instance holds the lock now: this supervisor exits")
                    return LOCK_LOST_EXIT
                if lock.lost is not None:
                    how = lock.lost
                    generation = self._acquire_again(lock)
                    if generation is None:
                        return 0
                    if how == MISSING:
                        _log.warning("took the instance lock again (generation %d): restarting the job", generation)
                        record_restart(client, ps.consumer_group, "lock_missing")
                if runner_service is not None and not runner_service.running():
                    _log.info("starting %s on port %d", runner_service.name, runner_service.port)
                    start_service(runner_service)
                started = time.monotonic()
                code, tail, rewound = self._run_worker(generation, lock)
                if self._stopping:
                    return 0
                if lock.lost is not None:
                    continue
                if code == 0:
                    _log.info("job finished")
                    return 0
                if rewound:
                    record_restart(client, ps.consumer_group, "positions_rewound")
                if restart_at_once(code, rewound, at_once, time.monotonic()):
                    _log.error("job stopped because a sink's stored positions went backwards: restarting it now")
                    at_once.append(time.monotonic())
                    lock.confirm()  # a lock the older Redis lost too is taken again before the start
                    continue
                healthy = time.monotonic() - started > HEALTHY_AFTER_S
                backoff = ps.restart_backoff_initial_s if healthy else backoff
                _log.error("job failed with exit code %s; restarting in %.0f s. Last output:\n%s", code, backoff, tail)
                self._sleep(backoff)
                backoff = min(backoff * 2, ps.restart_backoff_max_s)
            return 0
        finally:
            if runner_service is not None:
                runner_service.stop(10)
            lock.release()

    def _runner_service(self) -> tuple[ServiceProcess | None, Callable[[ServiceProcess], None]]:
        """The process the job is submitted to, owned by this supervisor: Prism, or Beam's Flink job
        server (``pipeline.flink_job_server``); None for runners that bring their own."""
        runner = self.settings.pipeline.runner
        if runner == "prism":
            return prism_process(self.settings), start_own_prism
        if runner == "flink":
            # Beam's job API, and so Beam, only here: the supervisor itself imports no Beam.
            from pipeline.flink_job_server import job_server_process, start_own_job_server

            timeout = self.settings.flink.start_timeout_s
            return job_server_process(self.settings), lambda service: start_own_job_server(service, timeout)
        return None, start_own_prism

    def _acquire_again(self, lock: InstanceLock) -> int | None:
        """After losing touch with Redis: the lock again, as a new generation, once Redis answers
        (``LockHeld`` if another instance took it meanwhile); None if stopped while waiting."""
        delay = 0.5
        while not self._stopping:
            try:
                generation = lock.acquire()
            except redis.RedisError as exc:
                _log.warning("waiting for Redis to take the instance lock again: %s", exc)
                self._sleep(delay)
                delay = min(delay * 2, 5.0)
                continue
            lock.start_refresh(self._on_lock_lost)
            return generation
        return None

    def _sleep(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while not self._stopping and time.monotonic() < deadline:
            time.sleep(0.2)

    def worker_command(self) -> list[str]:
        """The job's command line: for Prism, the endpoint of the Prism this supervisor started."""
        ps = self.settings.pipeline
        command = [sys.executable, "-m", "pipeline.worker", "--runner", ps.runner]
        if ps.runner == "prism":
            command += ["--job-endpoint", address(ps.bind_host, ps.prism_port)]
        elif ps.runner == "flink":
            command += ["--job-endpoint", address(ps.bind_host, self.settings.flink.job_port)]
        return command + self.worker_args

    def _run_worker(self, generation: int, lock: InstanceLock) -> tuple[int, str, bool]:
        """Run the job to its end: its exit code, its last lines, and whether it named a rewind."""
        tail: deque[str] = deque(maxlen=30)
        rewound = False
        with self._child_lock:
            # Under the same lock as _on_lock_lost: a loss is either seen here or kills this child.
            if lock.lost is not None:
                return -1, "(not started: the instance lock was lost)", False
            self._child = subprocess.Popen(
                self.worker_command(),
                cwd=REPO_ROOT,
                env={**os.environ, "PIPELINE_FENCE_TOKEN": str(generation)},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                # From this (the main) thread, which lives as long as the supervisor: see
                # parent_death_signal for why the job must not outlive it.
                preexec_fn=parent_death_signal(),
            )
        assert self._child.stdout is not None
        watch = self._watch_rewind(generation) if self._restarted_by_runner() else None
        for line in self._child.stdout:
            tail.append(line.rstrip())
            rewound = rewound or REWOUND_MARKER in line
            sys.stdout.write(line)
            sys.stdout.flush()
        code = self._child.wait()
        if watch is not None:
            watch.set()
            rewound = rewound or self._rewind_seen
        return code, "\n".join(tail), rewound

    def _restarted_by_runner(self) -> bool:
        """The runner restarts a failed job itself, from a checkpoint (the Flink cluster)."""
        return self.settings.pipeline.runner == "flink" and self.settings.flink.restarts != 0

    def _watch_rewind(self, generation: int) -> threading.Event:
        """While the job runs, watch for a sink's rewind (``sinks.fencing.rewound_key``): the runner's
        own restart would resume from a checkpoint past what the older store lacks, so the job is
        stopped here and submitted again from the stored positions, like any rewind."""
        done = threading.Event()
        self._rewind_seen = False
        key = rewound_key(self.settings.pipeline.consumer_group)
        client = self._client or quick_client(self.settings.redis, 2.0)

        def watch() -> None:
            while not done.wait(1.0):
                try:
                    if client.get(key) != str(generation).encode():
                        continue
                    client.delete(key)
                except redis.RedisError:
                    continue
                _log.error("a sink found its stored positions rewound: stopping the job to submit it again")
                self._rewind_seen = True
                with self._child_lock:
                    if self._child is not None and self._child.poll() is None:
                        self._child.terminate()
                return

        threading.Thread(target=watch, name="rewind-watch", daemon=True).start()
        return done


def record_restart(client: redis.Redis, group: str, cause: str) -> None:
    """Count a restart for a Redis that came back older where ``make status`` reads it; best effort:
    the restart never waits on it."""
    key = restarts_key(group)
    try:
        pipe = client.pipeline()
        pipe.hincrby(key, cause, 1)
        pipe.hset(key, mapping={"last_cause": cause, "last_at_ms": int(time.time() * 1000)})
        pipe.execute()
    except redis.RedisError as exc:
        _log.warning("could not record the restart in %s: %s", key, exc)


def restart_at_once(code: int, rewound: bool, recent: Sequence[float], now: float) -> bool:
    """A failed job is restarted without back-off only when a sink found its positions rewound: its
    next run is what reads the records the older store lacks. Other failures keep the back-off, and
    so do rewinds once ``AT_ONCE_LIMIT`` of them were restarted at once within ``AT_ONCE_WINDOW_S``
    (a Redis that keeps going back, or a bug: never a tight restart loop)."""
    if code == 0 or not rewound:
        return False
    return sum(1 for t in recent if now - t < AT_ONCE_WINDOW_S) < AT_ONCE_LIMIT
