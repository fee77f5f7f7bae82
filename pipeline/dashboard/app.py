"""The live leaderboard page: Starlette, server-sent events, one static HTML page (no JS build).

- ``/``: the page (``page.html``); it opens ``/events`` with the browser's ``EventSource``, which
  reconnects by itself after a restart of this server.
- ``/events``: a snapshot as JSON every ``DASHBOARD_REFRESH_S`` (sse-starlette sends pings too, so
  proxies keep the stream open).
- ``/api/snapshot``: the newest snapshot, for scripts; ``/healthz``: 200 once a first read is done.

One background task reads (``Reader``, in a worker thread: redis-py and confluent-kafka block) and
keeps the newest snapshot; every client is sent that, so clients never multiply the reads.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from infra.settings import Settings
from pipeline.dashboard.reader import Reader
from pipeline.dashboard.snapshot import History, Raw, snapshot

PAGE = Path(__file__).with_name("page.html")


class Board:
    """The newest snapshot, refreshed by one task."""

    def __init__(self, settings: Settings, reader: Reader) -> None:
        self.settings = settings
        self.reader = reader
        self.latest: dict[str, Any] | None = None
        self._previous: Raw | None = None
        self._history = History()
        self.changed = asyncio.Event()

    def refresh(self) -> None:
        raw = self.reader.read(self.settings.dashboard.top)
        latest = snapshot(raw, self._previous, self.settings.leaderboard.window_minutes)
        latest["history"] = self._history.add(latest)
        self.latest = latest
        self._previous = raw

    async def run(self) -> None:
        while True:
            await asyncio.to_thread(self.refresh)
            self.changed.set()
            self.changed = asyncio.Event()
            await asyncio.sleep(self.settings.dashboard.refresh_s)


def create_app(settings: Settings, reader: Reader | None = None) -> Starlette:
    board = Board(settings, reader or Reader(settings))
    page = PAGE.read_text()

    async def index(_: Request) -> Response:
        return HTMLResponse(page)

    async def events(request: Request) -> Response:
        async def stream() -> AsyncIterator[dict[str, str]]:
            while not await request.is_disconnected():
                if board.latest is not None:
                    yield {"event": "snapshot", "data": json.dumps(board.latest)}
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(board.changed.wait(), timeout=settings.dashboard.refresh_s * 2)

        return EventSourceResponse(stream(), ping=15)

    async def api_snapshot(_: Request) -> Response:
        return JSONResponse(board.latest or {}, status_code=200 if board.latest else 503)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"ok": board.latest is not None}, status_code=200 if board.latest else 503)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        task = asyncio.create_task(board.run())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            board.reader.close()

    routes = [
        Route("/", index),
        Route("/events", events),
        Route("/api/snapshot", api_snapshot),
        Route("/healthz", healthz),
    ]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.state.board = board
    return app
