"""Kafka 4 in KRaft mode (each JVM is broker and controller; one, or three): its processes.

One node (the default) is formatted ``--standalone``: a quorum of one voter. Three
(``KAFKA_BROKERS=3``) are formatted with the same cluster id and ``--initial-controllers`` naming all
three voters with the directory id each will have (KIP-853's dynamic quorum, as ``--standalone`` is
for one), each with its own folder (``kafka/``, ``kafka-2/``, ``kafka-3/``), ports (10 apart), pid
file and log. A voter is only ready once a majority of the quorum runs, so the three are launched
together and then waited for. Their topics have replication factor 3 and ``min.insync.replicas=2``:
with every producer at ``acks=all`` (``KafkaSettings.producer_config``, Connect's worker config), an
acknowledged write is on two brokers, and one broker can die without losing it or stopping writes.
Storage formatted for one count is refused under the other (``make reset`` first).

The topics, users and ACLs of the running cluster: ``infra.stack.kafka_admin``.

Secure mode (``STACK_SECURE=1``, docs/security.md): every listener is SASL_SSL with the stack's
certificates (``infra/stack/certificates.py``). Clients and the brokers among themselves authenticate
with SCRAM-SHA-512; the controller listener with PLAIN over TLS (Kafka has no SCRAM between KRaft
controllers). The admin user (the brokers themselves, and the stack when it creates topics, users and
ACLs) is a super user whose SCRAM credential is written at format time (``--add-scram``); the
pipeline's and Connect's users are created over the admin API after start
(``kafka_admin.ensure_users``) and get only the ACLs ``kafka_admin.acl_bindings`` lists. Storage
formatted in one mode is refused in the other.
"""

from __future__ import annotations

import base64
import subprocess
import uuid
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import (
    AdminClient,
)

from infra.process import ServiceProcess, StackError, port_open
from infra.settings import KafkaSettings
from infra.stack.certificates import TlsFiles

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


class KafkaNode:
    """One broker+controller JVM: node ``node_id`` (1-based) of the cluster, its folder, ports and process."""

    def __init__(self, settings: KafkaSettings, stack_dir: Path, lib_dir: Path, node_id: int) -> None:
        self.settings = settings
        self.node_id = node_id
        # Node 1 keeps the single-broker stack's names, so a stack made before three existed is node 1.
        name = "kafka" if node_id == 1 else f"kafka-{node_id}"
        self.port = settings.port + 10 * (node_id - 1)
        self.controller_port = settings.controller_port + 10 * (node_id - 1)
        self.root = stack_dir / name
        self.data = self.root / "data"
        self.properties = self.root / "server.properties"
        self.classpath = str(lib_dir / "kafka" / "*")
        self.process = ServiceProcess.in_stack(
            stack_dir,
            name,
            command=[
                "java",
                f"-Xmx{settings.heap}",
                "-Xms128m",
                "-XX:+UseG1GC",
                "-XX:MaxGCPauseMillis=20",
                "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={CONF_DIR / 'log4j2.properties'}",
                "-Dkafka.logs.dir=" + str(self.root / "logs"),
                "-cp",
                self.classpath,
                "kafka.Kafka",
                str(self.properties),
            ],
            ready=self.ready,
            host=settings.host,
            port=self.port,
        )

    @property
    def formatted(self) -> bool:
        return (self.data / "meta.properties").exists()

    def ready(self) -> bool:
        """This broker answers on its own listener, which it opens only once it is registered and
        unfenced by the quorum (asked of it alone, not of the cluster)."""
        if not port_open(self.settings.host, self.port):
            return False
        admin = AdminClient(
            self.settings.client_config(
                admin=True,
                **{
                    "bootstrap.servers": f"{self.settings.host}:{self.port}",
                    "socket.connection.setup.timeout.ms": 3000,
                },
            )
        )
        try:
            return self.node_id in admin.list_topics(timeout=2).brokers
        except KafkaException:
            return False


def server_properties(
    template: str, settings: KafkaSettings, node: KafkaNode, *, secure: str = "", tls: TlsFiles | None = None
) -> str:
    """``infra/conf/server.properties`` filled for ``node`` of the cluster ``settings`` describe; in
    secure mode (``tls`` given) followed by ``secure``, ``infra/conf/server-secure.properties``."""
    quorum = ",".join(f"{settings.host}:{port}" for port in settings.controller_ports)
    plain = template.format(
        listener="PLAINTEXT" if tls is None else "SASL_SSL",
        node_id=node.node_id,
        host=settings.host,
        port=node.port,
        controller_port=node.controller_port,
        quorum_bootstrap=quorum,
        log_dirs=node.data,
        max_message_bytes=settings.max_message_bytes,
        replication_factor=settings.replication_factor,
        min_insync_replicas=settings.min_insync_replicas,
    )
    if tls is None:
        return plain
    admin = settings.admin_username
    return (
        plain
        + "\n"
        + secure.format(
            admin_user=jaas_quote(admin),
            admin_name=admin,
            admin_password=jaas_quote(settings.admin_password.get_secret_value()),
            keystore=tls.server_keystore,
            truststore=tls.ca_cert,
        )
    )


def jaas_quote(value: str) -> str:
    """A JAAS option value in double quotes (inside ``sasl.jaas.config``)."""
    if any(c in value for c in '"\\\n\r'):
        raise StackError("a Kafka user name or password may not contain quotes, backslashes or line breaks")
    return f'"{value}"'


def scram_argument(user: str, password: str) -> str:
    """The storage tool's ``--add-scram`` value (KIP-900), which has no quoting: refuse what breaks it."""
    if any(c in user + password for c in ',[]="\\\n\r'):
        raise StackError('KAFKA_ADMIN_USERNAME and KAFKA_ADMIN_PASSWORD may not contain , [ ] = " \\ or line breaks')
    return f"{SCRAM_MECHANISM}=[name={user},password={password}]"


SCRAM_MECHANISM = "SCRAM-SHA-512"
SCRAM_ITERATIONS = 8192


def initial_controllers(settings: KafkaSettings, directory_ids: list[str]) -> str:
    """The storage tool's ``--initial-controllers``: ``id@host:port:directory-id`` of every voter."""
    return ",".join(
        f"{n}@{settings.host}:{port}:{directory}"
        for n, (port, directory) in enumerate(zip(settings.controller_ports, directory_ids, strict=True), start=1)
    )


class Kafka:
    """The cluster: ``KAFKA_BROKERS`` nodes, formatted, started and stopped together."""

    def __init__(self, settings: KafkaSettings, stack_dir: Path, lib_dir: Path, tls: TlsFiles | None = None) -> None:
        self.settings = settings
        self.stack_dir = stack_dir
        # Secure mode: the stack's certificates (None: plaintext listeners, no authentication).
        self.tls = tls
        self.nodes = [KafkaNode(settings, stack_dir, lib_dir, n) for n in range(1, settings.brokers + 1)]
        self.root = self.nodes[0].root
        self.classpath = self.nodes[0].classpath
        # The broker count the storage was formatted for (none: one, as before three existed).
        self.count_file = self.root / "brokers"
        # The listeners' protocol it was formatted for (none: PLAINTEXT, as before secure mode existed).
        self.protocol_file = self.root / "protocol"

    @property
    def protocol(self) -> str:
        return "PLAINTEXT" if self.tls is None else "SASL_SSL"

    @property
    def process(self) -> ServiceProcess:
        """Node 1's process (the only one by default)."""
        return self.nodes[0].process

    @property
    def processes(self) -> list[ServiceProcess]:
        return [node.process for node in self.nodes]

    def leftovers(self) -> list[ServiceProcess]:
        """Nodes of a three-broker run still recorded while this stack is configured for one, so
        ``make down`` and ``make reset`` stop them too."""
        names = {p.name for p in self.processes}
        return [
            ServiceProcess.in_stack(self.stack_dir, path.stem, command=["java"], ready=lambda: False, host="", port=0)
            for path in sorted((self.stack_dir / "pids").glob("kafka-*.pid"))
            if path.stem not in names
        ]

    def write_config(self) -> None:
        template = (CONF_DIR / "server.properties").read_text()
        secure = (CONF_DIR / "server-secure.properties").read_text()
        for node in self.nodes:
            node.root.mkdir(parents=True, exist_ok=True)
            text = server_properties(template, self.settings, node, secure=secure, tls=self.tls)
            # 0600 before anything is written: in secure mode the file holds the admin password.
            node.properties.touch(mode=0o600)
            node.properties.chmod(0o600)
            node.properties.write_text(text)

    def ensure_formatted(self) -> bool:
        """Format the KRaft storage of every node once; return True if it was formatted now."""
        formatted = [node.formatted for node in self.nodes]
        if any(formatted):
            recorded = int(self.count_file.read_text()) if self.count_file.exists() else 1
            if recorded != self.settings.brokers or not all(formatted):
                raise StackError(
                    f"Kafka's storage under {self.stack_dir} was formatted for {recorded} broker(s), and "
                    f"KAFKA_BROKERS is {self.settings.brokers}: set it back, or `make reset` (removes all data)"
                )
            protocol = self.protocol_file.read_text().strip() if self.protocol_file.exists() else "PLAINTEXT"
            if protocol != self.protocol:
                # The admin's SCRAM credential exists only in storage formatted for secure mode.
                raise StackError(
                    f"Kafka's storage under {self.stack_dir} was formatted for {protocol} listeners, and this "
                    f"stack wants {self.protocol} (STACK_SECURE): set it back, or `make reset` (removes all data)"
                )
            return False
        if not list(Path(self.classpath[:-2]).glob("kafka_*.jar")):
            raise StackError("Kafka jars are missing. Run `make bootstrap`.")
        cluster_id = new_cluster_id()
        if self.settings.brokers == 1:
            quorum = ["--standalone"]
        else:
            quorum = [
                "--initial-controllers",
                initial_controllers(self.settings, [new_cluster_id() for _ in self.nodes]),
            ]
        if self.tls is not None:
            # The brokers authenticate to each other as the admin before any client could create it.
            s = self.settings
            quorum += ["--add-scram", scram_argument(s.admin_username, s.admin_password.get_secret_value())]
        # The nodes at once: each format is a JVM start (3-4 s).
        formats = [
            (
                node,
                subprocess.Popen(
                    [*self._storage_tool, "format", *quorum, "-t", cluster_id, "-c", str(node.properties)],
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    text=True,
                ),
            )
            for node in self.nodes
        ]
        for node, run in formats:
            output, _ = run.communicate()
            if run.returncode != 0:
                raise StackError(f"formatting {node.process.name}'s storage failed:\n{output}")
        self.count_file.write_text(f"{self.settings.brokers}\n")
        self.protocol_file.write_text(f"{self.protocol}\n")
        return True

    @property
    def _storage_tool(self) -> list[str]:
        return ["java", "-cp", self.classpath, "kafka.tools.StorageTool"]

    def start(self, timeout: float) -> list[tuple[ServiceProcess, bool]]:
        """Launch every node that is not running, then wait for all: a voter of three is not ready
        before a majority of the quorum runs. Returns each process and whether it was started now."""
        launched = [(node.process, node.process.launch()) for node in self.nodes]
        for process, child in launched:
            process.wait_ready(timeout, child)
        return [(process, child is not None) for process, child in launched]

    def ready(self) -> bool:
        return all(node.ready() for node in self.nodes)


def new_cluster_id() -> str:
    """A random cluster id as Kafka's ``Uuid.randomUuid()`` makes them: never starting with ``-``.

    One id in 64 would otherwise begin with a dash, which the storage tool's argument parser takes
    for an option ("argument --cluster-id/-t: expected one argument").
    """
    while True:
        cluster_id = uuid_to_kafka_id(uuid.uuid4())
        if not cluster_id.startswith("-"):
            return cluster_id


def uuid_to_kafka_id(value: uuid.UUID) -> str:
    """Kafka cluster ids are a UUID in URL-safe base64 without padding (what random-uuid prints)."""
    return base64.urlsafe_b64encode(value.bytes).decode("ascii").rstrip("=")
