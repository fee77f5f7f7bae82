"""The secure stack (``STACK_SECURE=1``): the integration tests' stack, started the normal way
(``LocalStack.up``, connector included) with secure mode on, so every service listens with TLS and
authenticates (docs/security.md).

Its own folder (``.stack-secure-test``, with the local CA under ``tls/``) and ports (the plain test
stack's + 200), so it never meets the plain test stack even when both suites run in one session;
``make test-integration`` runs this folder in a pytest run of its own after the rest, so the two
stacks are never up together. Reset before starting and again at the end: nothing stays running.
The BigQuery emulator runs too (plain HTTP on loopback, as BigQuery itself is only reached over
Google's TLS): the pipeline test writes every sink.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from infra.settings import REPO_ROOT, Settings, StackSettings
from infra.stack.local import LocalStack
from tests.integration.conftest import make_test_settings

# The plain test stack's ports + 200 (+ 300 in all): the fault stack (loadtest/fault_stack.py) has + 200.
SHIFT = 200


def _shifted(group: Any, *ports: str) -> Any:
    return group.model_copy(update={port: getattr(group, port) + SHIFT for port in ports})


def make_secure_settings() -> Settings:
    plain = make_test_settings()
    return Settings(
        postgres=_shifted(plain.postgres, "port"),
        kafka=_shifted(plain.kafka, "port", "controller_port"),
        connect=_shifted(plain.connect, "port"),
        redis=_shifted(plain.redis, "port"),
        bigquery=plain.bigquery.model_copy(update={"emulator_host": f"http://127.0.0.1:{59150 + SHIFT}"}),
        http_receiver=_shifted(plain.http_receiver, "port", "control_port"),
        cdc=plain.cdc,
        stack=StackSettings(dir=REPO_ROOT / ".stack-secure-test", stop_timeout_s=60.0, secure=True),
        generator=plain.generator,
        metrics=_shifted(plain.metrics, "port"),
        dashboard=_shifted(plain.dashboard, "port"),
        flink=plain.flink.shifted(SHIFT),
        pipeline=_shifted(plain.pipeline, "prism_port"),
    )


def _log(message: str) -> None:
    print(message, flush=True)


@pytest.fixture(scope="session")
def secure_settings() -> Settings:
    return make_secure_settings()


@pytest.fixture(scope="session")
def secure_stack(secure_settings: Settings) -> Iterator[LocalStack]:
    local = LocalStack(secure_settings, log=_log)
    local.reset()
    try:
        local.up()
        yield local
    finally:
        local.reset()
