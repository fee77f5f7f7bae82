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

Secure mode (docs/security.md): when the clients use SASL_SSL (``KafkaSettings``), the worker, its
producers, consumers and admin clients (``producer.``/``consumer.``/``admin.``, which the connector's
own clients inherit: Debezium's Postgres connector has no Kafka client of its own here, no schema
history, and topic creation is off) authenticate as Connect's user (``CONNECT_KAFKA_USERNAME``) and
check the brokers against the stack's CA. When ``ConnectSettings.effective_rest_auth`` is on, the REST
API answers 401 without HTTP basic credentials (Kafka's ``BasicAuthSecurityRestExtension``, users in
a 0600 file under the stack), and every call made here passes ``CONNECT_USERNAME``/``CONNECT_PASSWORD``;
with ``effective_rest_tls`` it listens on HTTPS only, with the stack's server certificate (a PKCS12
copy, as Jetty reads no PEM), and callers check it against the stack's CA.
"""

from __future__ import annotations

import json
import re
import secrets
import time
from pathlib import Path
from typing import Any

import httpx
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.serialization import pkcs12

from infra.capture_health import read_connector
from infra.process import ServiceProcess, StackError, port_open
from infra.settings import KafkaSettings, Settings
from infra.stack.certificates import TlsFiles
from infra.stack.kafka import jaas_quote

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


REST_AUTH_EXTENSION = "org.apache.kafka.connect.rest.basic.auth.extension.BasicAuthSecurityRestExtension"
CLIENT_PREFIXES = ("", "producer.", "consumer.", "admin.")


def worker_security(kafka: KafkaSettings, username: str, password: str) -> str:
    """The worker's lines for SASL_SSL to the brokers, for itself and each client prefix (empty with
    PLAINTEXT). The password is in the file (0600), which only the worker reads."""
    if kafka.effective_security_protocol == "PLAINTEXT":
        return ""
    jaas = (
        "org.apache.kafka.common.security.scram.ScramLoginModule required "
        f"username={jaas_quote(username)} password={jaas_quote(password)};"
    )
    lines = ["", "# Secure mode: SASL_SSL as Connect's own user, for the worker and every client it makes."]
    for prefix in CLIENT_PREFIXES:
        lines += [
            f"{prefix}security.protocol=SASL_SSL",
            f"{prefix}sasl.mechanism={kafka.sasl_mechanism}",
            f"{prefix}sasl.jaas.config={jaas}",
        ]
        if kafka.effective_ssl_ca_location:
            lines += [
                f"{prefix}ssl.truststore.type=PEM",
                f"{prefix}ssl.truststore.location={kafka.effective_ssl_ca_location}",
            ]
    return "\n".join(lines) + "\n"


def properties_escape(value: str, *, key: bool = False) -> str:
    """``value`` as java.util.Properties reads it back (a key also escapes its separators)."""
    if "\n" in value or "\r" in value:
        raise StackError("a Connect user name or password may not contain line breaks")
    value = value.replace("\\", "\\\\")
    if key:
        for c in "=: #!":
            value = value.replace(c, "\\" + c)
    return value


class Connect:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        stack_dir = settings.stack.dir
        self.root = stack_dir / "connect"
        self.properties = self.root / "connect.properties"
        # REST authentication: the JAAS configuration naming the users file (PropertyFileLoginModule).
        self.rest_jaas = self.root / "rest-jaas.conf"
        self.rest_users = self.root / "rest-users.properties"
        self.rest_keystore = self.root / "rest-keystore.p12"
        self.url = settings.connect.url
        jaas = [f"-Djava.security.auth.login.config={self.rest_jaas}"] if settings.connect.effective_rest_auth else []
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
                *jaas,
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

    @property
    def http(self) -> dict[str, Any]:
        """``auth`` and ``verify`` of every REST call (read when used: the CA exists once ``up`` made it)."""
        return self.settings.connect.http_options()

    def write_config(self) -> None:
        plugin_path = self.settings.stack.lib_dir / "connect-plugins"
        if not (plugin_path / "debezium-postgres").is_dir():
            raise StackError("The Debezium connector plugin is missing. Run `make bootstrap`.")
        self.root.mkdir(parents=True, exist_ok=True)
        s = self.settings.connect
        text = (
            (CONF_DIR / "connect.properties")
            .read_text()
            .format(
                bootstrap_servers=self.settings.kafka.bootstrap_servers,
                replication_factor=self.settings.kafka.replication_factor,
                group_id=s.group_id,
                scheme="https" if s.effective_rest_tls else "http",
                host=s.host,
                port=s.port,
                plugin_path=plugin_path,
                exactly_once="enabled" if s.exactly_once_source else "disabled",
            )
        )
        text += worker_security(self.settings.kafka, s.kafka_username, s.kafka_password.get_secret_value())
        if s.effective_rest_auth:
            text += (
                "\n# Secure mode: the REST API asks for HTTP basic credentials (rest-users.properties).\n"
                f"rest.extension.classes={REST_AUTH_EXTENSION}\n"
            )
            _write_private(
                self.rest_jaas,
                "KafkaConnect {\n  org.apache.kafka.connect.rest.basic.auth.extension.PropertyFileLoginModule "
                f'required\n  file="{self.rest_users}";\n}};\n',
            )
            _write_private(
                self.rest_users,
                f"{properties_escape(s.username, key=True)}={properties_escape(s.password.get_secret_value())}\n",
            )
        if s.effective_rest_tls:
            # A fresh random password each time: it only guards the copy of the key beside it.
            password = secrets.token_urlsafe(24)
            write_rest_keystore(TlsFiles(self.settings.stack.tls_dir), self.rest_keystore, password)
            text += (
                "\n# Secure mode: the REST API on HTTPS only, the stack's server certificate (PKCS12 for Jetty).\n"
                "rest.advertised.listener=https\n"
                "listeners.https.ssl.keystore.type=PKCS12\n"
                f"listeners.https.ssl.keystore.location={self.rest_keystore}\n"
                f"listeners.https.ssl.keystore.password={password}\n"
                f"listeners.https.ssl.key.password={password}\n"
            )
        _write_private(self.properties, text)

    def ready(self) -> bool:
        if not port_open(self.settings.connect.host, self.settings.connect.port):
            return False
        try:
            return httpx.get(f"{self.url}/connectors", timeout=2, **self.http).status_code == 200
        except httpx.HTTPError:
            return False

    # --- connector ---------------------------------------------------------------------------
    def register(self) -> None:
        name = self.settings.cdc.connector_name
        config = connector_config(self.settings)
        stored = httpx.get(f"{self.url}/connectors/{name}/config", timeout=30, **self.http)
        before = self.status()
        response = httpx.put(f"{self.url}/connectors/{name}/config", json=config, timeout=30, **self.http)
        if response.status_code not in (200, 201):
            raise StackError(f"registering connector {name} failed ({response.status_code}): {response.text}")
        changed = stored.status_code != 200 or {k: v for k, v in stored.json().items() if k != "name"} != config
        if changed and before:
            # A new config restarts the tasks, e.g. one FAILED on a change above an older size limit;
            # until the restart shows, REST still reports the old FAILED, which is no verdict on it.
            self._restarting = {t["id"] for t in before.get("tasks", []) if t["state"] == "FAILED"}

    def status(self) -> dict[str, Any] | None:
        try:
            return read_connector(self.url, self.settings.cdc.connector_name, **self.http)
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
            response = httpx.delete(f"{self.url}/connectors/{name}", timeout=30, **self.http)
        except httpx.HTTPError:
            return False
        return response.status_code in (200, 204)

    def pause(self) -> None:
        self._lifecycle("pause", "PAUSED")

    def resume(self) -> None:
        self._lifecycle("resume", "RUNNING")

    def _lifecycle(self, verb: str, state: str, timeout: float = 30.0) -> None:
        name = self.settings.cdc.connector_name
        httpx.put(f"{self.url}/connectors/{name}/{verb}", timeout=30, **self.http).raise_for_status()
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
        httpx.post(
            f"{self.url}/connectors/{name}/restart?includeTasks=true", timeout=30, **self.http
        ).raise_for_status()


def write_rest_keystore(tls: TlsFiles, path: Path, password: str) -> None:
    """The stack's server key and certificate (and the CA) as PKCS12 for Connect's Jetty, 0600."""
    if not tls.server_key.exists():
        raise StackError(f"no server certificate under {tls.dir}: the stack makes it when it starts in secure mode")
    key = serialization.load_pem_private_key(tls.server_key.read_bytes(), password=None)
    cert = x509.load_pem_x509_certificate(tls.server_cert.read_bytes())
    ca = x509.load_pem_x509_certificate(tls.ca_cert.read_bytes())
    blob = pkcs12.serialize_key_and_certificates(
        b"connect-rest", key, cert, [ca], serialization.BestAvailableEncryption(password.encode())
    )
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_bytes(blob)


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path``, readable by its owner only (it holds passwords in secure mode)."""
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(text)
