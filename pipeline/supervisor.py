"""Keeps one instance of the job running: owns Prism, restarts the job after failures, holds a lock.

- **One instance per consumer position.** A lock in Redis (``engagement:pipeline:lock:<group>``,
  value ``host:pid``, a TTL refreshed every third of it) is taken before anything starts; a second
  instance refuses to start and says who holds it. A holder on this host whose pid is gone (``kill
  -9``) is taken over at once instead of waiting for the TTL.
- **Prism is ours.** For the local runner the supervisor starts the Prism binary itself and stops it
  by pid on exit, so no Prism is left orphaned on its port (Beam's own PrismRunner leaves it running
  when the launcher is killed). The supervisor, Prism and the job share one process group: killing
  the group kills all three.
- **Restarts.** The job runs in a child process (``python -m pipeline.worker``). If it exits with
  an error, the supervisor logs why (the child's last lines), waits with exponential backoff (1 s
  doubling to 60 s; reset after 5 minutes of health) and starts it again; the new run resumes from
  the positions the sinks stored, so nothing is lost or counted twice. A bounded run that exits 0 ends
  the supervisor.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Sequence
from types import FrameType

import redis

from infra.process import ServiceProcess, StackError, pid_alive, port_open
from infra.settings import REPO_ROOT, Settings

_log = logging.getLogger("pipeline.supervisor")
HEALTHY_AFTER_S = 300.0


class LockHeld(RuntimeError):  # noqa: N818 - a state, reported to the user as it is
    pass


class InstanceLock:
    def __init__(self, client: redis.Redis, group: str, ttl_s: float) -> None:
        self._client = client
        self.key = f"engagement:pipeline:lock:{group}"
        self.owner = f"{socket.gethostname()}:{os.getpid()}"
        self._ttl_ms = int(ttl_s * 1000)
        self._stop = threading.Event()

    def acquire(self) -> None:
        if self._client.set(self.key, self.owner, nx=True, px=self._ttl_ms):
            return self._start_refresh()
        holder = (self._client.get(self.key) or b"").decode()
        host, _, pid = holder.rpartition(":")
        if host == socket.gethostname() and pid.isdigit() and not pid_alive(int(pid)):
            # A dead instance on this machine (kill -9): its lock would only expire later.
            self._client.set(self.key, self.owner, px=self._ttl_ms)
            _log.info("took over the lock of dead instance %s", holder)
            return self._start_refresh()
        ttl = self._client.pttl(self.key)
        raise LockHeld(
            f"another pipeline instance ({holder}) holds the consumer position of group "
            f"{self.key.rsplit(':', 1)[1]!r} (lock {self.key}, expires in {max(ttl, 0) / 1000:.1f} s unless "
            f"refreshed). Stop it first, or use another PIPELINE_CONSUMER_GROUP."
        )

    def _start_refresh(self) -> None:
        threading.Thread(target=self._refresh, name="instance-lock", daemon=True).start()

    def _refresh(self) -> None:
        while not self._stop.wait(self._ttl_ms / 3000):
            try:
                self._client.set(self.key, self.owner, px=self._ttl_ms)
            except redis.RedisError as exc:
                _log.warning("could not refresh the instance lock: %s", exc)

    def release(self) -> None:
        self._stop.set()
        try:
            if (self._client.get(self.key) or b"").decode() == self.owner:
                self._client.delete(self.key)
        except redis.RedisError:
            pass


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
            "--serve_http=false",
            "--log_level=warn",
            "--log_kind=text",
        ],
        ready=lambda: port_open("127.0.0.1", ps.prism_port),
        host="127.0.0.1",
        port=ps.prism_port,
        stop_signal=signal.SIGINT,
        # Same process group as the supervisor: `kill -9 -<pgid>` must take Prism down too.
        new_session=False,
    )
    return process


class Supervisor:
    def __init__(self, settings: Settings, worker_args: Sequence[str]) -> None:
        self.settings = settings
        self.worker_args = list(worker_args)
        self._stopping = False
        self._child: subprocess.Popen[str] | None = None

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stopping = True
        if self._child and self._child.poll() is None:
            self._child.terminate()

    def run(self) -> int:
        ps = self.settings.pipeline
        lock = InstanceLock(self.settings.redis.client(), ps.consumer_group, ps.lock_ttl_s)
        lock.acquire()
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        prism = prism_process(self.settings) if ps.runner == "prism" else None
        backoff = ps.restart_backoff_initial_s
        try:
            while not self._stopping:
                if prism is not None and not prism.running():
                    _log.info("starting Prism on port %d", ps.prism_port)
                    prism.stop(5)  # a stale pid file or an orphan of an earlier instance
                    prism.start(60)
                started = time.monotonic()
                code, tail = self._run_worker()
                if self._stopping:
                    return 0
                if code == 0:
                    _log.info("job finished")
                    return 0
                healthy = time.monotonic() - started > HEALTHY_AFTER_S
                backoff = ps.restart_backoff_initial_s if healthy else backoff
                _log.error("job failed with exit code %s; restarting in %.0f s. Last output:\n%s", code, backoff, tail)
                deadline = time.monotonic() + backoff
                while not self._stopping and time.monotonic() < deadline:
                    time.sleep(0.2)
                backoff = min(backoff * 2, ps.restart_backoff_max_s)
            return 0
        finally:
            if prism is not None:
                prism.stop(10)
            lock.release()

    def _run_worker(self) -> tuple[int, str]:
        tail: deque[str] = deque(maxlen=30)
        self._child = subprocess.Popen(
            [sys.executable, "-m", "pipeline.worker", *self.worker_args],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert self._child.stdout is not None
        for line in self._child.stdout:
            tail.append(line.rstrip())
            sys.stdout.write(line)
            sys.stdout.flush()
        return self._child.wait(), "\n".join(tail)
