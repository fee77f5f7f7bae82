"""The local HTTP receiver (``infra.http_receiver``) as a native process of the stack.

It runs on the stack's own interpreter (``sys.executable``: the project venv, which has Starlette and
uvicorn), from the repository root: ``-m`` puts the working directory first on ``sys.path``, so it
imports this checkout even where the project is not installed in that venv. It keeps everything in
memory, so it has no folder: a restart, like ``make reset``, starts it empty. The address the stack
shows is the ingest port; readiness is the control port's ``/healthz``, which answers only once
both ports listen.
"""

from __future__ import annotations

import sys
from pathlib import Path

import httpx

from infra.process import ServiceProcess
from infra.settings import REPO_ROOT, HttpReceiverSettings


class HttpReceiver:
    def __init__(self, settings: HttpReceiverSettings, stack_dir: Path) -> None:
        self.settings = settings
        self.process = ServiceProcess.in_stack(
            stack_dir,
            "http_receiver",
            command=[
                sys.executable,
                "-m",
                "infra.http_receiver",
                "--host",
                settings.host,
                "--port",
                str(settings.port),
                "--control-port",
                str(settings.control_port),
            ],
            ready=self.ready,
            host=settings.host,
            port=settings.port,
            cwd=REPO_ROOT,
        )

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.settings.control_url}/healthz", timeout=1.0).status_code == 200
        except httpx.HTTPError:
            return False
