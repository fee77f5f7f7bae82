"""Run the ingest and control apps as two uvicorn servers in one asyncio loop, and make "down" real.

One process and one loop because both apps share the receiver's state in memory, and the control
port must keep answering while the ingest port is down. Down closes the ingest listening socket, so
a connect is refused by the kernel (what a sender sees when a service is gone, unlike a 503), and
shuts the open connections the way uvicorn shuts down: an idle keep-alive connection closes at
once, one with a request in flight right after its response. Up starts a fresh uvicorn server on
the same port.

uvicorn installs its own SIGINT/SIGTERM handlers in ``serve`` and restores them on exit; with two
servers, one of them restarted at every outage, those would swap the process's handlers under each
other, so the servers here leave signals alone and the loop's own handler stops both.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Iterator

import uvicorn
from starlette.types import ASGIApp

from infra.http_receiver.app import control_app, ingest_app
from infra.http_receiver.state import Outage, Receiver

_log = logging.getLogger("infra.http_receiver")
_REOPEN_RETRY_S = 1.0


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _config(app: ASGIApp, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="off",
        ws="none",
        # Our logging setup, not uvicorn's dictConfig; no line per request.
        log_config=None,
        log_level="warning",
        access_log=False,
        # Longer than a client's keep-alive expiry (httpx: 5 s, uvicorn's default too), so an idle
        # connection is closed by the sender, not by us just as it reuses it (a spurious error).
        timeout_keep_alive=75,
        # A stop waits this long for a request in flight (a long injected latency), then cancels it.
        timeout_graceful_shutdown=5,
    )


async def _start(server: _Server, tasks: set[asyncio.Task[None]]) -> None:
    """Run ``server`` in a task and return once it listens; OSError if it cannot bind."""

    async def run() -> None:
        # uvicorn logs a bind error and raises SystemExit, which a task would pass to the loop.
        with contextlib.suppress(SystemExit):
            await server.serve()

    task = asyncio.create_task(run())
    tasks.add(task)
    task.add_done_callback(tasks.discard)
    try:
        while not server.started:
            if task.done():
                raise OSError(f"cannot listen on {server.config.host}:{server.config.port}")
            await asyncio.sleep(0.01)
    except asyncio.CancelledError:
        # An outage began while we were reopening: the server stops as soon as it has started.
        server.should_exit = True
        raise


class IngestListener(Outage):
    """The ingest server, closed while the outage lasts and reopened when it ends."""

    def __init__(self, host: str, port: int) -> None:
        super().__init__()
        self.host, self.port = host, port
        self._app: ASGIApp | None = None
        self._server: _Server | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._reopening: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self, app: ASGIApp) -> None:
        self._app = app
        await self._open()

    async def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._reopening is not None:
            self._reopening.cancel()
        self._close()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _open(self) -> None:
        assert self._app is not None, "start() first"
        server = _Server(_config(self._app, self.host, self.port))
        await _start(server, self._tasks)
        self._server = server

    def _close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        # At once, not on uvicorn's next 0.1 s tick: a connect right after `down` must be refused.
        for listener in getattr(server, "servers", []):
            listener.close()
        for connection in list(server.server_state.connections):
            connection.shutdown()
        server.should_exit = True

    def _went_down(self, seconds: float, was_down: bool) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = asyncio.get_running_loop().call_later(seconds, self.up)
        if self._reopening is not None:
            self._reopening.cancel()
            self._reopening = None
        self._close()

    def _came_up(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._reopening is None:
            self._reopening = asyncio.get_running_loop().create_task(self._reopen())

    async def _reopen(self) -> None:
        # Someone may have taken the port while we were down; keep trying until it is free or the
        # next outage begins (which cancels this task).
        try:
            while self._server is None:
                try:
                    await self._open()
                except OSError as exc:
                    _log.error("ingest could not reopen (%s); retrying in %.0f s", exc, _REOPEN_RETRY_S)
                    await asyncio.sleep(_REOPEN_RETRY_S)
        finally:
            self._reopening = None


async def serve(host: str, port: int, control_port: int) -> int:
    """Serve until SIGINT or SIGTERM; 1 if a port cannot be bound."""
    receiver = Receiver()
    ingest = IngestListener(host, port)
    control = _Server(_config(control_app(receiver, ingest), host, control_port))
    control_tasks: set[asyncio.Task[None]] = set()
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        # Ingest first: the stack's readiness probe is the control port, so it answers only once
        # both listen.
        await ingest.start(ingest_app(receiver, ingest))
        await _start(control, control_tasks)
    except OSError as exc:
        _log.error("%s", exc)
        await ingest.stop()
        return 1
    _log.info("ingest on http://%s:%d/ingest/<endpoint>, control on http://%s:%d", host, port, host, control_port)
    await stopping.wait()
    _log.info("stopping")
    control.should_exit = True
    await ingest.stop()
    await asyncio.gather(*control_tasks, return_exceptions=True)
    return 0
