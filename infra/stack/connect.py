"""Kafka Connect (distributed, one worker) and the Debezium PostgreSQL connector on it.

The worker's internal topics take ``KAFKA_BROKERS`` replicas, and its producers ``acks=all`` with
idempotence (``infra/conf/connect.properties``), so with three brokers Connect loses nothing when one dies.

The connector's configuration is data: ``infra/connectors/engagement-postgres.json``. ``${NAME}``
placeholders are filled from settings when it is registered (``PUT /connectors/{name}/config``,
which creates or updates, so registering is idempotent, and an update restarts the task with the
new config, e.g. a raised ``producer.override.max.request.size``, without restarting the worker).
The password stays a ``${env:...}`` reference that the worker resolves from its own environment,
so it is never stored in the config topic. Readiness is the connector *and* its task reporting
RUNNING over REST; Debezium's "Processing messages" log line only appears once a change arrives,
so it is no readiness signal.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import httpx

from infra.capture_health import read_connector
from infra.process import ServiceProcess, StackError, port_open
from infra.settings import Settings

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
CONNECTOR_FILE = Path(__file__).resolve().parent.parent / "connectors" / "engagement-postgres.json"
_PLACEHOLDER = re.compile(r"\$\{([A-Z][A-Z0-9_]*)\}")


def connector_config(settings: Settings, template: Path = CONNECTOR_FILE) -> dict[str, str]:
    """The connector JSON with ``${NAME}`` filled from settings; ``${env:...}`` left to Connect. A key
    whose value fills to nothing is left out, so Debezium's default applies (``database.sslmode`` and
    ``database.sslrootcert`` outside secure mode)."""
    pg = settings.postgres
    values = {
        "POSTGRES_HOST": settings.postgres.host,
        "POSTGRES_PORT": str(settings.postgres.port),
        "POSTGRES_DB": settings.postgres.db,
        "POSTGRES_CDC_USER": settings.postgres.cdc_user,
        # TLS to Postgres as every other client's (PostgresSettings.conninfo): verify-full in secure mode.
        "POSTGRES_SSLMODE": pg.effective_sslmode or "",
        "POSTGRES_SSLROOTCERT": str(pg.effective_sslrootcert or ""),
        "CDC_TOPIC_PREFIX": settings.cdc.topic_prefix,
        "CDC_SLOT_NAME": settings.cdc.slot_name,
        "CDC_PUBLICATION_NAME": settings.cdc.publication_name,
        "CDC_POLL_INTERVAL_MS": str(settings.cdc.poll_interval_ms),
        "CDC_HEARTBEAT_INTERVAL_MS": str(settings.cdc.heartbeat_interval_ms),
        # The task's producer takes the stack's one size limit (docs/delivery.md, "Row size bound").
        "KAFKA_MAX_MESSAGE_BYTES": str(settings.kafka.max_message_bytes),
    }

    def fill(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in values:
            raise StackError(f"{template.name}: unknown placeholder ${{{name}}}")
        return values[name]

    config = json.loads(template.read_text())
    filled = {key: _PLACEHOLDER.sub(fill, str(value)) for key, value in config.items()}
    return {key: value for key, value in filled.items() if value != ""}


class Connect:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        stack_dir = settings.stack.dir
        self.root = stack_dir / "connect"
        self.properties = self.root / "connect.properties"
        self.url = settings.connect.url
        # Ids of tasks that failed before a config change restarts them (see register).
        self._restarting: set[int] = set()
        self.process = ServiceProcess.in_stack(
            stack_dir,
            "connect",
            command=[
                "java",
                f"-Xmx{settings.connect.heap}",
                "-Xms128m",
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={CONF_DIR / 'log4j2.properties'}",
                "-cp",
                str(settings.stack.lib_dir / "kafka" / "*"),
                "org.apache.kafka.connect.cli.ConnectDistributed",
                str(self.properties),
            ],
            ready=self.ready,
            host=settings.connect.host,
            port=settings.connect.port,
            env={"POSTGRES_CDC_PASSWORD": settings.postgres.cdc_password.get_secret_value()},
        )

    def write_config(self) -> None:
        plugin_path = self.settings.stack.lib_dir / "connect-plugins"
        if not (plugin_path / "debezium-postgres").is_dir():
            raise StackError("The Debezium connector plugin is missing. Run `make bootstrap`.")
        self.root.mkdir(parents=True, exist_ok=True)
        s = self.settings.connect
        self.properties.write_text(
            (CONF_DIR / "connect.properties")
            .read_text()
            .format(
                bootstrap_servers=self.settings.kafka.bootstrap_servers,
                replication_factor=self.settings.kafka.replication_factor,
                group_id=s.group_id,
                host=s.host,
                port=s.port,
                plugin_path=plugin_path,
                exactly_once="enabled" if s.exactly_once_source else "disabled",
            )
        )

    def ready(self) -> bool:
        if not port_open(self.settings.connect.host, self.settings.connect.port):
            return False
        try:
            return httpx.get(f"{self.url}/connectors", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    # --- connector ---------------------------------------------------------------------------
    def register(self) -> None:
        name = self.settings.cdc.connector_name
        config = connector_config(self.settings)
        stored = httpx.get(f"{self.url}/connectors/{name}/config", timeout=30)
        before = self.status()
        response = httpx.put(f"{self.url}/connectors/{name}/config", json=config, timeout=30)
        if response.status_code not in (200, 201):
            raise StackError(f"registering connector {name} failed ({response.status_code}): {response.text}")
        changed = stored.status_code != 200 or {k: v for k, v in stored.json().items() if k != "name"} != config
        if changed and before:
            # A new config restarts the tasks, e.g. one FAILED on a change above an older size limit;
            # until the restart shows, REST still reports the old FAILED, which is no verdict on it.
            self._restarting = {t["id"] for t in before.get("tasks", []) if t["state"] == "FAILED"}

    def status(self) -> dict[str, Any] | None:
        try:
            return read_connector(self.url, self.settings.cdc.connector_name)
        except httpx.HTTPError:
            return None

    def wait_running(self, timeout: float) -> None:
        """Until the connector and all its tasks are RUNNING; a FAILED task raises with its trace."""
        deadline = time.monotonic() + timeout
        state = "unknown"
        while time.monotonic() < deadline:
            status = self.status()
            if status:
                tasks = status.get("tasks", [])
                states = [status["connector"]["state"], *(t["state"] for t in tasks)]
                state = ", ".join(states)
                self._restarting -= {t["id"] for t in tasks if t["state"] != "FAILED"}
                failed = [t for t in tasks if t["state"] == "FAILED" and t["id"] not in self._restarting]
                if failed or status["connector"]["state"] == "FAILED":
                    trace = (failed[0] if failed else status["connector"]).get("trace", "")
                    raise StackError(f"connector {status['name']} FAILED:\n{trace[:3000]}")
                if tasks and all(s == "RUNNING" for s in states):
                    return
            time.sleep(0.5)
        raise StackError(f"connector not RUNNING within {timeout:.0f} s (last state: {state})")

    def delete(self) -> bool:
        name = self.settings.cdc.connector_name
        try:
            response = httpx.delete(f"{self.url}/connectors/{name}", timeout=30)
        except httpx.HTTPError:
            return False
        return response.status_code in (200, 204)

    def pause(self) -> None:
        self._lifecycle("pause", "PAUSED")

    def resume(self) -> None:
        self._lifecycle("resume", "RUNNING")

    def _lifecycle(self, verb: str, state: str, timeout: float = 30.0) -> None:
        name = self.settings.cdc.connector_name
        httpx.put(f"{self.url}/connectors/{name}/{verb}", timeout=30).raise_for_status()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = self.status()
            if status and all(t["state"] == state for t in [status["connector"], *status.get("tasks", [])]):
                return
            time.sleep(0.1)
        raise StackError(f"connector {name} did not reach {state} within {timeout:.0f} s")

    def restart(self) -> None:
        """Restart the connector and its tasks (e.g. after a database outage)."""
        name = self.settings.cdc.connector_name
        httpx.post(f"{self.url}/connectors/{name}/restart?includeTasks=true", timeout=30).raise_for_status()
