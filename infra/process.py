"""Start, probe and stop one native service process, across separate CLI invocations.

Shared by the local stack (``infra.stack``) and the pipeline's supervisor (which owns Prism), so it
lives beside them, not in the stack: runtime code does not import the development stack.

We write this small executor instead of using mirakuru because mirakuru owns the child only for the
lifetime of the Python object that started it: ``make up`` starts the stack and exits, and a later
``make down`` (or a pytest fixture's finalizer) must find and stop the same processes. So the state
is a pid file per service, the readiness checks are plain callables (TCP port, HTTP status, a query),
and stopping escalates from SIGTERM to SIGKILL after a timeout, because Kafka Connect can ignore
SIGTERM for over a minute. A pid file records the process's start time and the boot it started in
(``ProcessIdentity``), so a file left by a crash or a reboot never names, and never signals, an
unrelated process that got the same pid later. Every child runs in its own session (``start_new_session``), so Ctrl-C in
the launching shell never reaches the JVMs.

A process that must not outlive the one that started it (the pipeline's Prism and job, owned by its
supervisor) asks the kernel for a parent-death signal (``die_with_parent``): see
``parent_death_signal``.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class StackError(RuntimeError):
    """A problem the user can act on; the CLI prints it without a traceback."""


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return True


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
    except OSError:
        return None


def start_ticks(pid: int) -> int | None:
    """When ``pid`` started, in clock ticks since boot (``/proc/<pid>/stat`` field 22); None if unknown."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as stat:
            # The command name (field 2) may hold spaces and parentheses: split after its last ")".
            return int(stat.read().rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return None


@dataclass(frozen=True)
class ProcessIdentity:
    """What a pid file records: the pid, and when and in which boot that process started.

    A pid alone is not an identity: after a reboot (or once pids wrap) a stale file's pid can belong
    to an unrelated process, and ``make down`` would signal it. The start time of a process never
    changes across ``exec``, and a pid cannot be reused while its process lives, so pid + start time
    + boot id names exactly one process, ever. Files written before this (a pid only) are checked by
    the program's name instead (``ServiceProcess.pid``).
    """

    pid: int
    start: int | None = None
    boot: str | None = None

    @classmethod
    def of(cls, pid: int) -> ProcessIdentity:
        return cls(pid, start_ticks(pid), _boot_id())

    @classmethod
    def parse(cls, text: str) -> ProcessIdentity | None:
        parts = text.split()
        try:
            pid = int(parts[0])
            start = int(parts[1]) if len(parts) > 1 else None
        except (ValueError, IndexError):
            return None
        return cls(pid, start, parts[2] if len(parts) > 2 else None)

    def text(self) -> str:
        return " ".join(str(part) for part in (self.pid, self.start, self.boot) if part is not None) + "\n"

    def matches(self, live: ProcessIdentity) -> bool:
        """True if ``live`` (read now for the same pid) is the process this record was written for."""
        if self.boot is not None and live.boot is not None and self.boot != live.boot:
            return False
        return self.start is None or live.start is None or self.start == live.start


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            return [part.decode("utf-8", "replace") for part in handle.read().split(b"\0") if part]
    except OSError:
        return []


_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def parent_death_signal(sig: signal.Signals = signal.SIGKILL) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the child receive ``sig`` when its parent dies (Linux only; None
    elsewhere).

    Why: a supervisor killed with ``kill -9`` alone (not its process group) cannot stop its children,
    and an orphaned job kept writing beside the one a new supervisor started (issue 14). With
    ``prctl(PR_SET_PDEATHSIG)`` the kernel kills them the moment the parent exits, however it exits;
    a watcher thread polling ``os.getppid()`` would leave them running for a poll interval and could
    itself be stuck. The signal fires when the *thread* that forked the child ends, so call
    ``Popen`` from a thread that lives as long as the parent (the supervisor's main thread). It is
    cleared when the child changes credentials (``setpriv``) or execs a set-user-ID binary, so it is
    no use with ``ServiceProcess.user``. The function is looked up before the fork: the child only
    calls it, and checks that the parent did not die before the call.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl
    parent = os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != parent:  # the parent died between fork and prctl
            os.kill(os.getpid(), sig)

    return preexec


def refuse_if_taken(process: ServiceProcess, what: str, advice: str) -> None:
    """Raise ``StackError`` if ``process``'s port is in use or its pid file names a live process:
    a runner the supervisor did not start itself (one left behind, or another instance's) must never
    get our job beside another. ``what`` names it ("Prism's port"); ``advice`` says what to change."""
    pid = process.pid()
    if pid is not None or port_open(process.host, process.port):
        holder = f"pid {pid} (from {process.pid_file})" if pid is not None else "another process"
        raise StackError(
            f"{what} {process.host}:{process.port} is already in use by {holder}, which this supervisor did not "
            f"start. {advice}"
        )


def tail(path: Path, lines: int = 20) -> str:
    if not path.exists():
        return "(no log yet)"
    with path.open("rb") as handle:
        handle.seek(0, os.SEEK_END)
        handle.seek(max(0, handle.tell() - 16_384))
        text = handle.read().decode("utf-8", "replace")
    return "\n".join(text.splitlines()[-lines:])


def stop_group(proc: subprocess.Popen[Any], timeout: float = 30.0) -> int:
    """Stop a child started with ``start_new_session`` like a Ctrl-C in its terminal (SIGINT to the
    whole group), then SIGKILL the group if it has not exited within ``timeout``."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode


def stop_together(processes: Sequence[ServiceProcess], timeout: float) -> list[ServiceProcess]:
    """Each process's stop signal at once, then SIGKILL to those still alive after ``timeout``;
    return those that were running. Together, because the voters of a Kafka quorum stopped one by one
    leave the last without a majority, and its shutdown then waits the whole timeout."""
    running = []
    for process in processes:
        pid = process.pid()
        if pid is None:
            process.pid_file.unlink(missing_ok=True)
            continue
        process._signal(pid, process.stop_signal)
        running.append((process, pid))
    deadline = time.monotonic() + timeout
    while any(pid_alive(pid) for _, pid in running) and time.monotonic() < deadline:
        time.sleep(0.2)
    for process, pid in running:
        if pid_alive(pid):
            process._signal(pid, signal.SIGKILL)
            while pid_alive(pid):
                time.sleep(0.1)
        process.pid_file.unlink(missing_ok=True)
    return [process for process, _ in running]


@dataclass
class ServiceProcess:
    """One long-running native process with a pid file, a log file and a readiness probe."""

    name: str
    command: Sequence[str]
    pid_file: Path
    log_file: Path
    ready: Callable[[], bool]
    host: str
    port: int
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path | None = None
    user: str | None = None  # run as this OS user (Postgres refuses to run as root)
    stop_signal: signal.Signals = signal.SIGTERM
    # Own session by default, so a Ctrl-C in the launching shell never reaches the service.
    new_session: bool = True
    # SIGKILL when the process that started it dies (parent_death_signal): for services owned by a
    # long-running parent (the supervisor's Prism), never for the stack's, whose launcher exits.
    die_with_parent: bool = False

    @classmethod
    def in_stack(cls, stack_dir: Path, name: str, **kwargs: Any) -> ServiceProcess:
        """A service whose pid and log files follow the stack folder's layout."""
        return cls(
            name=name,
            pid_file=stack_dir / "pids" / f"{name}.pid",
            log_file=stack_dir / "logs" / f"{name}.log",
            **kwargs,
        )

    def pid(self) -> int | None:
        """The pid of this service's live process, or None: the file is missing, its process is gone,
        or its pid now belongs to another process (a reboot or pid reuse since it was written)."""
        try:
            recorded = ProcessIdentity.parse(self.pid_file.read_text())
        except OSError:
            return None
        if recorded is None or not pid_alive(recorded.pid):
            return None
        if recorded.start is None:
            return recorded.pid if self._runs_our_program(recorded.pid) else None
        return recorded.pid if recorded.matches(ProcessIdentity.of(recorded.pid)) else None

    def _runs_our_program(self, pid: int) -> bool:
        """For a pid file from before start times were recorded: the live process runs this service's
        program (the first word of its command line, which Redis and Postgres keep when they retitle
        themselves), or /proc cannot say (not Linux)."""
        if not Path(f"/proc/{pid}").exists():
            return not Path("/proc/self").exists()
        argv = cmdline(pid)
        if not argv:
            return False
        return Path(argv[0].split()[0]).name == Path(self.command[0]).name

    def running(self) -> bool:
        return self.pid() is not None

    def start(self, timeout: float) -> bool:
        """Start unless already running; return True if this call started it."""
        child = self.launch()
        self.wait_ready(timeout, child)
        return child is not None

    def launch(self) -> subprocess.Popen[bytes] | None:
        """Start the process without waiting for it to be ready (None if it runs already): services
        that are only ready together, like the voters of a Kafka quorum, are all launched first and
        then waited for (``wait_ready``)."""
        if self.running():
            return None
        if port_open(self.host, self.port):
            raise StackError(
                f"{self.name}: port {self.host}:{self.port} is already in use by another process. "
                f"Stop that process, or choose another port in .env (see .env.example)."
            )
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.pid_file.parent.mkdir(parents=True, exist_ok=True)
        command = list(self.command)
        if self.user and os.geteuid() == 0:
            # setpriv execs in place (runuser would fork), so the pid we record is the service's.
            command = ["setpriv", f"--reuid={self.user}", f"--regid={self.user}", "--init-groups", *command]
        log = self.log_file.open("ab")
        try:
            child = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                cwd=self.cwd,
                env={**os.environ, **self.env},
                start_new_session=self.new_session,
                preexec_fn=parent_death_signal() if self.die_with_parent else None,
            )
        except FileNotFoundError as exc:
            raise StackError(f"{self.name}: cannot run {command[0]!r}: {exc}. Run `make bootstrap`.") from exc
        finally:
            log.close()
        self.pid_file.write_text(ProcessIdentity.of(child.pid).text())
        return child

    def wait_ready(self, timeout: float, child: subprocess.Popen[bytes] | None = None) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if child is not None and child.poll() is not None:
                raise StackError(
                    f"{self.name} exited with code {child.returncode} during start-up. "
                    f"Last lines of {self.log_file}:\n{tail(self.log_file)}"
                )
            if self.ready():
                return
            time.sleep(0.25)
        raise StackError(
            f"{self.name} was not ready within {timeout:.0f} s. Last lines of {self.log_file}:\n{tail(self.log_file)}"
        )

    def stop(self, timeout: float) -> bool:
        """The stop signal, then SIGKILL after ``timeout``; return True if something was stopped."""
        return bool(stop_together([self], timeout))

    def kill(self) -> bool:
        """``kill -9`` (a crash, for fault tests): no stop signal first; the pid file is left as a
        crash leaves it, and ``start`` copes with that."""
        pid = self.pid()
        if pid is None:
            return False
        self._signal(pid, signal.SIGKILL)
        # A JVM's main thread turns zombie before its other threads are gone and its port is closed.
        deadline = time.monotonic() + 30
        while (pid_alive(pid) or port_open(self.host, self.port)) and time.monotonic() < deadline:
            time.sleep(0.05)
        return True

    @staticmethod
    def _signal(pid: int, sig: signal.Signals) -> None:
        # The whole session: a service's helper children go with it.
        try:
            os.killpg(pid, sig)
        except (ProcessLookupError, PermissionError):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
