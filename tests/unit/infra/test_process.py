"""The service executor against real (tiny) processes: no mocks needed, nothing left running."""

import signal
import socket
import subprocess
import sys
import time

import pytest

from infra.process import ProcessIdentity, ServiceProcess, StackError, pid_alive, port_open, start_ticks


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def server(tmp_path, port: int, code: str | None = None, **kwargs) -> ServiceProcess:
    script = (
        code
        or f"import http.server as h; h.HTTPServer(('127.0.0.1', {port}), h.BaseHTTPRequestHandler).serve_forever()"
    )
    return ServiceProcess(
        name="demo",
        command=[sys.executable, "-c", script],
        pid_file=tmp_path / "demo.pid",
        log_file=tmp_path / "demo.log",
        ready=lambda: port_open("127.0.0.1", port),
        host="127.0.0.1",
        port=port,
        **kwargs,
    )


def test_start_is_idempotent_and_stop_by_pid(tmp_path):
    port = free_port()
    proc = server(tmp_path, port)
    try:
        assert proc.start(timeout=10) is True
        pid = proc.pid()
        assert pid and pid_alive(pid)
        # A second executor (another CLI invocation) finds it by its pid file.
        again = server(tmp_path, port)
        assert again.start(timeout=10) is False
        assert again.stop(timeout=5) is True
        assert not pid_alive(pid)
        assert not proc.pid_file.exists()
    finally:
        proc.stop(timeout=5)


def test_port_in_use_is_a_clear_error(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        with pytest.raises(StackError, match="already in use"):
            server(tmp_path, port).start(timeout=5)


def test_child_dying_during_start_reports_its_log(tmp_path):
    proc = server(tmp_path, free_port(), code="import sys; print('bad config line 3'); sys.exit(3)")
    with pytest.raises(StackError, match="exited with code 3") as info:
        proc.start(timeout=10)
    assert "bad config line 3" in str(info.value)


def test_missing_binary_is_a_clear_error(tmp_path):
    proc = server(tmp_path, free_port())
    proc.command = ["/nonexistent/binary"]
    with pytest.raises(StackError, match="make bootstrap"):
        proc.start(timeout=5)


def test_stop_escalates_to_sigkill(tmp_path):
    port = free_port()
    stubborn = (
        "import signal, http.server as h; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"h.HTTPServer(('127.0.0.1', {port}), h.BaseHTTPRequestHandler).serve_forever()"
    )
    proc = server(tmp_path, port, code=stubborn)
    proc.start(timeout=10)
    pid = proc.pid()
    began = time.monotonic()
    assert proc.stop(timeout=1) is True
    assert 0.9 < time.monotonic() - began < 10
    assert not pid_alive(pid)


def test_custom_stop_signal(tmp_path):
    port = free_port()
    proc = server(tmp_path, port, stop_signal=signal.SIGINT)
    proc.start(timeout=10)
    pid = proc.pid()
    assert proc.stop(timeout=5)
    assert not pid_alive(pid)


def test_stale_pid_file_is_ignored(tmp_path):
    proc = server(tmp_path, free_port())
    proc.pid_file.write_text("999999\n")
    assert proc.pid() is None
    assert proc.stop(timeout=1) is False


@pytest.fixture
def bystander():
    """An unrelated live process (not started by any ServiceProcess), as after a reboot."""
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def test_a_pid_file_from_an_earlier_start_never_names_the_process_now_on_that_pid(tmp_path, bystander):
    # Same pid, other start time: what a reboot (or pid reuse) leaves; make down must not signal it.
    proc = server(tmp_path, free_port())
    start = start_ticks(bystander.pid)
    proc.pid_file.write_text(f"{bystander.pid} {start - 1} {ProcessIdentity.of(bystander.pid).boot}\n")
    assert proc.pid() is None
    assert proc.stop(timeout=1) is False
    assert proc.kill() is False
    assert bystander.poll() is None


def test_a_pid_file_from_another_boot_never_names_a_live_process(tmp_path, bystander):
    proc = server(tmp_path, free_port())
    proc.pid_file.write_text(f"{bystander.pid} {start_ticks(bystander.pid)} another-boot-id\n")
    assert proc.pid() is None
    assert proc.stop(timeout=1) is False
    assert bystander.poll() is None


def test_an_old_pid_only_file_names_a_live_process_only_if_it_runs_our_program(tmp_path, bystander):
    proc = server(tmp_path, free_port())
    proc.pid_file.write_text(f"{bystander.pid}\n")
    assert proc.pid() == bystander.pid  # both run this Python
    proc.command = ["/usr/bin/redis-server", "redis.conf"]
    assert proc.pid() is None
    assert proc.stop(timeout=1) is False
    assert bystander.poll() is None


def test_start_records_the_identity_and_a_restart_after_a_crash_replaces_it(tmp_path):
    port = free_port()
    proc = server(tmp_path, port)
    try:
        proc.start(timeout=10)
        recorded = ProcessIdentity.parse(proc.pid_file.read_text())
        assert recorded == ProcessIdentity.of(recorded.pid)
        assert recorded.start is not None and recorded.boot
        assert proc.kill() is True
        assert proc.pid() is None
        assert proc.start(timeout=10) is True
        assert ProcessIdentity.parse(proc.pid_file.read_text()).pid != recorded.pid
    finally:
        proc.stop(timeout=5)


def test_a_stack_object_needs_no_local_binaries_until_a_process_is_used(monkeypatch, tmp_path):
    # `python -m infra.stack provision` runs in a Docker image without Postgres or Redis installed.
    from infra.process import StackError
    from infra.settings import Settings, StackSettings
    from infra.stack import local, postgres, redis_server

    def missing(*_):
        raise StackError("not installed")

    monkeypatch.setattr(postgres, "pg_bin", missing)
    monkeypatch.setattr(redis_server, "redis_server_binary", missing)
    stack = local.LocalStack(Settings(stack=StackSettings(dir=tmp_path)))
    with pytest.raises(StackError):
        _ = stack.redis.process  # looked up when the process is first used


def test_stop_together_signals_all_at_once_and_kills_the_stubborn(tmp_path):
    from infra.process import stop_together

    ports = [free_port(), free_port()]
    stubborn = (
        "import signal, http.server as h; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        f"h.HTTPServer(('127.0.0.1', {ports[1]}), h.BaseHTTPRequestHandler).serve_forever()"
    )
    polite = server(tmp_path, ports[0])
    for folder in ("b", "c"):
        (tmp_path / folder).mkdir()
    rude = server(tmp_path / "b", ports[1], code=stubborn)
    never_started = server(tmp_path / "c", free_port())
    try:
        polite.start(timeout=10)
        rude.start(timeout=10)
        pids = [polite.pid(), rude.pid()]
        began = time.monotonic()
        assert stop_together([polite, rude, never_started], timeout=1) == [polite, rude]
        # One timeout for all, not one each.
        assert time.monotonic() - began < 5
        assert not any(pid_alive(pid) for pid in pids)
        assert not polite.pid_file.exists() and not rude.pid_file.exists()
    finally:
        polite.stop(timeout=5)
        rude.stop(timeout=5)
