"""One typed configuration for the whole project, read once from the environment.

Every service address, credential, topic name and knob lives here, grouped per part of the system.
Each group is a frozen pydantic-settings model with its own environment prefix (``POSTGRES_``,
``KAFKA_``, ``CONNECT_``, ``REDIS_``, ``BIGQUERY_``, ``HTTP_SINK_``, ``HTTP_RECEIVER_``, ``CDC_``,
``GENERATOR_``, ``METRICS_``, ``STATUS_``, ``DASHBOARD_``, ``FLINK_``; ``GENERATION_RATE``, ``BURST_MODE``
and ``BURST_COUNT`` keep the names seed 004 gave them). The HTTP groups live in ``infra.settings_http``,
those of the metrics endpoint, the status view and the live page in ``infra.settings_views``; both
are re-exported here. Defaults are safe for a laptop: every service listens on 127.0.0.1 only, on
ports away from the usual ones so that a system Postgres or Redis never collides with ours.
Passwords and tokens are ``infra.secrets.Secret``: never in logs or reprs, and never in the job graph
(they pickle as references to their setting). The local default passwords are refused for any host
that is not loopback.

Read it once at the entry point (``Settings()``) and pass the sub-models down; nothing else in the
code base reads ``os.environ``. ``.env.example`` lists every variable.
"""

from __future__ import annotations

import ssl
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import AliasChoices, Field, PrivateAttr, field_validator, model_validator
from pydantic_settings import BaseSettings

from infra.row_bound import required_max_message_bytes
from infra.secrets import Secret, SecretConfig
from infra.settings_backfill import BackfillSettings as BackfillSettings
from infra.settings_base import REPO_ROOT as REPO_ROOT
from infra.settings_base import Group
from infra.settings_base import config as _config
from infra.settings_bigquery import BigQuerySettings as BigQuerySettings
from infra.settings_flink import FlinkSettings as FlinkSettings
from infra.settings_http import HttpReceiverSettings as HttpReceiverSettings
from infra.settings_http import HttpSinkSettings as HttpSinkSettings
from infra.settings_http import parse_statuses as parse_statuses
from infra.settings_views import DashboardSettings as DashboardSettings
from infra.settings_views import MetricsSettings as MetricsSettings
from infra.settings_views import StatusSettings as StatusSettings

if TYPE_CHECKING:
    import redis

# The runners a job can run on (pipeline/runners.py).
Runner = Literal["prism", "flink", "dataflow", "direct"]


def _none_if_empty(value: Any) -> Any:
    # An empty variable (as .env.example lists them) means unset: the secure-mode default applies.
    return None if value == "" else value


class PostgresSettings(Group):
    """The source database: an application user for writers, a CDC user for Debezium."""

    model_config = _config("POSTGRES_")

    host: str = "127.0.0.1"
    port: int = 55432
    db: str = "engagement_db"
    user: str = "engagement"
    password: Secret = Secret("engagement-local")
    # The bootstrap superuser: used only by the stack supervisor for DDL and roles.
    superuser: str = "postgres"
    superuser_password: Secret = Secret("postgres-local")
    cdc_user: str = "debezium"
    cdc_password: Secret = Secret("debezium-local")
    # What `make status` reads with: pg_monitor (slots, replication stats), no table access.
    monitor_user: str = "engagement_monitor"
    monitor_password: Secret = Secret("monitor-local")
    # TLS to the server: libpq's sslmode and sslrootcert. Unset, they follow STACK_SECURE: verify-full
    # against the stack's CA (<STACK_DIR>/tls/ca.pem) in secure mode, libpq's default (prefer) otherwise.
    sslmode: Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"] | None = None
    sslrootcert: Path | None = None
    # The stack's CA when STACK_SECURE, set by ``Settings`` (a group does not see STACK_SECURE itself).
    _stack_ca: Path | None = PrivateAttr(default=None)

    _empty_is_unset = field_validator("sslmode", "sslrootcert", mode="before")(_none_if_empty)

    @property
    def effective_sslmode(self) -> str | None:
        return self.sslmode or ("verify-full" if self._stack_ca else None)

    @property
    def effective_sslrootcert(self) -> Path | None:
        return self.sslrootcert or self._stack_ca

    def conninfo(self, *, superuser: bool = False, monitor: bool = False, dbname: str | None = None) -> str:
        if superuser and monitor:
            raise ValueError("conninfo: superuser or monitor, not both")
        user = self.superuser if superuser else self.monitor_user if monitor else self.user
        password = self.checked(
            "superuser_password" if superuser else "monitor_password" if monitor else "password", self.host
        )
        tls = ""
        if self.effective_sslmode:
            tls += f" sslmode={self.effective_sslmode}"
        if self.effective_sslrootcert:
            tls += f" sslrootcert={_conninfo_value(str(self.effective_sslrootcert))}"
        return (
            f"host={self.host} port={self.port} dbname={dbname or self.db} user={user} "
            f"password={password.get_secret_value()} connect_timeout=5 application_name=engagement{tls}"
        )


def _conninfo_value(value: str) -> str:
    # libpq's keyword=value syntax: quote a value with spaces, escaping quotes and backslashes.
    if value and not any(c in value for c in " '\\"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


class KafkaSettings(Group):
    """KRaft Kafka: one JVM that is broker and controller, or three (``KAFKA_BROKERS=3``)."""

    model_config = _config("KAFKA_")

    host: str = "127.0.0.1"
    port: int = 59092
    controller_port: int = 59093
    # Each JVM's heap (three with KAFKA_BROKERS=3).
    heap: str = "512m"
    # 1 or 3 broker+controller JVMs. Three form a three-voter KRaft quorum, topics get replication
    # factor 3 and min.insync.replicas 2, so one broker can die without losing a write; broker n
    # listens on port and controller_port plus 10 * (n - 1). One is the default: three cost about
    # three times the memory and start-up CPU on a two-core machine (docs/operations.md).
    brokers: int = 1
    # Brokers this stack does not run (Docker Compose, a managed cluster): the clients' bootstrap
    # list, e.g. "kafka:9092,kafka-2:9092,kafka-3:9092". Empty: the native brokers above.
    bootstrap: str = ""
    # The one size limit of the stack (docs/delivery.md, "Row size bound"): the broker's
    # message.max.bytes, every topic's max.message.bytes, Connect's producer max.request.size, the
    # clients' message.max.bytes and the dead-letter cap all follow it. 5 MiB carries the largest
    # change the schema allows (an update of a row at the bound, worst-case escaped) and its letter.
    max_message_bytes: int = Field(default=5_242_880, ge=required_max_message_bytes())
    # The clients' transport and authentication (docs/security.md). Unset, it follows STACK_SECURE:
    # SASL_SSL with SCRAM-SHA-512 against the stack's CA in secure mode, PLAINTEXT otherwise.
    security_protocol: Literal["PLAINTEXT", "SASL_SSL"] | None = None
    sasl_mechanism: Literal["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"] = "SCRAM-SHA-512"
    # The pipeline's and the tools' user (read and write the project's topics, nothing else).
    sasl_username: str = "engagement"
    sasl_password: Secret = Secret("kafka-engagement-local")
    # PEM file of the CA the brokers' certificates are checked against. Unset: the stack's CA
    # (<STACK_DIR>/tls/ca.pem) in secure mode, the system's trust store otherwise.
    ssl_ca_location: str = ""
    # The brokers' own user (inter-broker and controller listeners) and the stack's provisioning
    # (topics, users, ACLs): a super user. Set before the storage is formatted (`make reset` to change).
    admin_username: str = "admin"
    admin_password: Secret = Secret("kafka-admin-local")
    # The stack's CA when STACK_SECURE, set by ``Settings`` (a group does not see STACK_SECURE itself).
    _stack_ca: Path | None = PrivateAttr(default=None)
    _empty_is_unset = field_validator("security_protocol", mode="before")(_none_if_empty)

    @field_validator("brokers")
    @classmethod
    def _one_or_three(cls, value: int) -> int:
        # Two voters stop when either dies; more than three buy nothing on one machine.
        if value not in (1, 3):
            raise ValueError("KAFKA_BROKERS must be 1 or 3")
        return value

    @property
    def broker_ports(self) -> list[int]:
        return [self.port + 10 * n for n in range(self.brokers)]

    @property
    def controller_ports(self) -> list[int]:
        return [self.controller_port + 10 * n for n in range(self.brokers)]

    @property
    def replication_factor(self) -> int:
        return self.brokers

    @property
    def min_insync_replicas(self) -> int:
        """Replicas that must have a write before it is acknowledged (with ``acks=all``): 2 of 3,
        so a write survives any one broker; 1 of 1 on a single broker."""
        return 1 if self.brokers == 1 else 2

    @property
    def bootstrap_servers(self) -> str:
        return self.bootstrap or ",".join(f"{self.host}:{port}" for port in self.broker_ports)

    @property
    def effective_security_protocol(self) -> str:
        return self.security_protocol or ("SASL_SSL" if self._stack_ca else "PLAINTEXT")

    @property
    def effective_ssl_ca_location(self) -> str:
        return self.ssl_ca_location or (str(self._stack_ca) if self._stack_ca else "")

    def client_config(self, *, admin: bool = False, **extra: Any) -> dict[str, Any]:
        """librdkafka settings for a producer, consumer or admin client of this cluster; with SASL_SSL
        as KAFKA_SASL_USERNAME, or as the admin user (``admin``: the stack's provisioning only). The
        password is a ``SecretConfig`` entry, which pickles as a reference (infra/secrets.py)."""
        # message.max.bytes is global in librdkafka: a producer's largest message, and a consumer
        # keeps fetch.max.bytes at least this (and receive.message.max.bytes above that), so it reads
        # any record a topic accepts; max.partition.fetch.bytes is only its first try per partition.
        config: dict[str, Any] = {
            "bootstrap.servers": self.bootstrap_servers,
            "message.max.bytes": self.max_message_bytes,
        }
        if self.effective_security_protocol == "PLAINTEXT":
            return {**config, **extra}
        config |= {
            "security.protocol": "SASL_SSL",
            "sasl.mechanisms": self.sasl_mechanism,
            "sasl.username": self.admin_username if admin else self.sasl_username,
        }
        if self.effective_ssl_ca_location:
            config["ssl.ca.location"] = self.effective_ssl_ca_location
        hosts = [server.rsplit(":", 1)[0] for server in self.bootstrap_servers.split(",")]
        password = self.checked("admin_password" if admin else "sasl_password", *hosts)
        return SecretConfig({**config, **extra}, {"sasl.password": password})

    def producer_config(self, **extra: Any) -> dict[str, Any]:
        """``client_config`` for a producer: a write is acknowledged once every in-sync replica has
        it (at least ``min_insync_replicas``), and a retry after a lost acknowledgement or a leader
        change never writes it twice. librdkafka's defaults since 1.x; said here because no record is
        lost when a broker dies only with them (docs/delivery.md)."""
        return self.client_config(**{"acks": "all", "enable.idempotence": True, **extra})


class ConnectSettings(Group):
    """Kafka Connect in distributed mode with one worker, hosting the Debezium connector."""

    model_config = _config("CONNECT_")

    host: str = "127.0.0.1"
    port: int = 58083
    heap: str = "512m"
    group_id: str = "engagement-connect"
    # Kafka Connect's exactly-once source support (KIP-618): records and source offsets in one
    # transaction. Off: the sinks skip Debezium's re-sends themselves (docs/delivery.md, which has
    # what it costs on commit -> Kafka latency).
    exactly_once_source: bool = False
    # The REST API asks for HTTP basic authentication (Kafka's BasicAuthSecurityRestExtension) with
    # CONNECT_USERNAME / CONNECT_PASSWORD. Unset, it follows STACK_SECURE: on in secure mode.
    rest_auth: bool | None = None
    username: str = "engagement"
    password: Secret = Secret("connect-local")
    # Connect's own Kafka user in secure mode: its worker, the connector's producer, its admin client.
    kafka_username: str = "connect"
    kafka_password: Secret = Secret("kafka-connect-local")
    # The REST API over HTTPS (the stack's server certificate). Unset, it follows STACK_SECURE. Callers
    # check it against CONNECT_SSL_CA_LOCATION (unset: the stack's CA in secure mode, else the system's).
    rest_tls: bool | None = None
    ssl_ca_location: str = ""
    # Set by ``Settings`` when STACK_SECURE (a group does not see STACK_SECURE itself).
    _stack_ca: Path | None = PrivateAttr(default=None)
    _empty_is_unset = field_validator("rest_auth", "rest_tls", mode="before")(_none_if_empty)

    @property
    def url(self) -> str:
        return f"{'https' if self.effective_rest_tls else 'http'}://{self.host}:{self.port}"

    @property
    def effective_rest_auth(self) -> bool:
        return self.rest_auth if self.rest_auth is not None else self._stack_ca is not None

    @property
    def effective_rest_tls(self) -> bool:
        return self.rest_tls if self.rest_tls is not None else self._stack_ca is not None

    def verify(self) -> ssl.SSLContext | bool:
        """What every caller of the REST API passes as ``httpx``'s ``verify``."""
        if not self.effective_rest_tls:
            return True
        ca = self.ssl_ca_location or (str(self._stack_ca) if self._stack_ca else None)
        return ssl.create_default_context(cafile=ca)

    def http_options(self) -> dict[str, Any]:
        """``auth`` and ``verify`` for ``httpx`` calls to the REST API."""
        return {"auth": self.auth(), "verify": self.verify()}

    def auth(self) -> tuple[str, str] | None:
        """What every caller of the REST API passes as ``httpx``'s ``auth``."""
        if not self.effective_rest_auth:
            return None
        return (self.username, self.checked("password", self.host).get_secret_value())


class RedisSettings(Group):
    """Redis for the live leaderboards; it always has a password."""

    model_config = _config("REDIS_")

    host: str = "127.0.0.1"
    port: int = 56379
    password: Secret = Secret("redis-local")
    maxmemory: str = "512mb"
    # How long the Redis sinks remember the id of an event they parked (sinks/parking.py): at least
    # the parking topic's retention (CDC_ENGAGEMENT_RETENTION_MS), after which it cannot come back.
    parked_keep_ms: int = Field(default=7 * 24 * 3600 * 1000, gt=0)
    # Put before every key the Redis sinks write (sinks/redis_keys.py). Empty for the live boards; a
    # rebuild (python -m pipeline rebuild-redis) writes a fresh copy under rebuild:<id>: and swaps it in.
    key_prefix: str = Field(default="", pattern=r"^[A-Za-z0-9:_.\-]*$")
    # Secure mode (STACK_SECURE): TLS, the server verified against the stack's CA, and named ACL users
    # (infra/stack/redis_server.py) with the default user off. Unset, tls / ca_file / username follow
    # STACK_SECURE: on, <STACK_DIR>/tls/ca.pem and "engagement-pipeline" (REDIS_PASSWORD is its password)
    # in secure mode; off, none and the default user otherwise.
    tls: bool | None = None
    ca_file: Path | None = None
    username: str | None = None
    # The read-only user of `make status`, the dashboard and the stack's probes in secure mode.
    reader_username: str = "engagement-reader"
    reader_password: Secret = Secret("reader-local")
    # The stack's CA when STACK_SECURE, set by ``Settings`` (a group does not see STACK_SECURE itself).
    _stack_ca: Path | None = PrivateAttr(default=None)

    _empty_is_unset = field_validator("tls", "ca_file", "username", mode="before")(_none_if_empty)

    @property
    def secure(self) -> bool:
        """Named users, default user off: the stack's secure mode (or REDIS_USERNAME set by hand)."""
        return self._stack_ca is not None or bool(self.username)

    @property
    def effective_tls(self) -> bool:
        return self.tls if self.tls is not None else self._stack_ca is not None

    @property
    def effective_ca_file(self) -> Path | None:
        return self.ca_file or self._stack_ca

    @property
    def effective_username(self) -> str | None:
        return self.username or ("engagement-pipeline" if self._stack_ca else None)

    def client(
        self, *, decode_responses: bool = False, timeout_s: float | None = None, reader: bool = False
    ) -> redis.Redis:
        """The one way the project opens a Redis client (sinks, supervisor, tools, the stack's probes);
        ``timeout_s`` for callers that must never wait on Redis long (best-effort status); ``reader``
        for those that only read (status, dashboard, probes): the read-only user when there are users."""
        import redis

        username, password = self.effective_username, self.checked("password", self.host)
        if reader and self.secure:
            username, password = self.reader_username, self.checked("reader_password", self.host)
        tls: dict[str, Any] = {}
        if self.effective_tls:
            ca = self.effective_ca_file
            tls = {"ssl": True, "ssl_cert_reqs": "required", "ssl_check_hostname": True}
            tls["ssl_ca_certs"] = str(ca) if ca else None
        return redis.Redis(
            host=self.host,
            port=self.port,
            username=username,
            password=password.get_secret_value(),
            **tls,
            socket_connect_timeout=timeout_s or 2,
            socket_timeout=timeout_s or 10,
            health_check_interval=10,
            decode_responses=decode_responses,
        )


class CdcSettings(BaseSettings):
    """Names and knobs of the capture: connector, slot, publication, topics."""

    model_config = _config("CDC_")

    connector_name: str = "engagement-postgres"
    topic_prefix: str = "engagement"
    slot_name: str = "engagement_slot"
    publication_name: str = "engagement_pub"
    # 10 ms instead of Debezium's 500 ms default: the poll interval dominates commit-to-Kafka latency
    # (p50 470 ms at the default, 10 ms here) for about a tenth of a core while idle.
    poll_interval_ms: int = Field(default=10, ge=1)
    heartbeat_interval_ms: int = Field(default=10_000, ge=0)
    engagement_partitions: int = Field(default=16, ge=1)
    content_partitions: int = Field(default=1, ge=1)
    dlq_partitions: int = Field(default=4, ge=1)
    parked_partitions: int = Field(default=4, ge=1)
    engagement_retention_ms: int = 7 * 24 * 3600 * 1000
    dlq_retention_ms: int = 14 * 24 * 3600 * 1000
    # `make status` exits 1 when the slot lags more than this (WAL bytes since the position Debezium
    # confirmed; it confirms every second while it runs), or its flush_lag exceeds the seconds.
    status_max_slot_lag_bytes: int = Field(default=256 * 1024 * 1024, ge=0)
    status_max_slot_lag_s: float = Field(default=300.0, gt=0)

    @field_validator("topic_prefix", "slot_name", "publication_name")
    @classmethod
    def _identifier(cls, value: str) -> str:
        # Slot and publication names end up in SQL and topic names: keep them plain identifiers.
        if not value.replace("_", "").replace("-", "").isalnum() or not value[0].isalpha():
            raise ValueError(f"{value!r} must start with a letter and use only [A-Za-z0-9_-]")
        return value

    @property
    def engagement_topic(self) -> str:
        return f"{self.topic_prefix}.public.engagement_events"

    @property
    def content_topic(self) -> str:
        return f"{self.topic_prefix}.public.content"

    @property
    def heartbeat_topic(self) -> str:
        return f"__debezium-heartbeat.{self.topic_prefix}"

    @property
    def dlq_topic(self) -> str:
        return f"{self.topic_prefix}.dlq"

    @property
    def http_dlq_topic(self) -> str:
        """What the HTTP sink could not deliver, kept apart so ``make http-replay`` can re-send it."""
        return f"{self.topic_prefix}.dlq.http"

    @property
    def parked_topic(self) -> str:
        """Events waiting for their content (sinks.parking); read back by the parked lanes."""
        return f"{self.topic_prefix}.parked"


class StackSettings(BaseSettings):
    """Where the native stack keeps its binaries, data, logs and pid files."""

    model_config = _config("STACK_")

    dir: Path = REPO_ROOT / ".stack"
    start_timeout_s: float = 120.0
    stop_timeout_s: float = 30.0
    # Secure mode: TLS and authentication on every service's listener, certificates from a local CA
    # under <dir>/tls (infra/stack/certificates.py). Off by default so the plain stack stays unchanged.
    secure: bool = False

    @property
    def tls_dir(self) -> Path:
        return self.dir / "tls"

    @property
    def lib_dir(self) -> Path:
        # Jars are shared between the dev stack and the test stack: they never change at run time.
        return REPO_ROOT / ".stack" / "lib"

    @property
    def bigquery_emulator_venv(self) -> Path:
        return REPO_ROOT / ".stack" / "bqemu-venv"


class GeneratorSettings(BaseSettings):
    """The Faker data generator. Seed 004's names (GENERATION_RATE, BURST_MODE, BURST_COUNT) kept."""

    model_config = _config("GENERATOR_")

    generation_rate: int = Field(
        default=200_000, gt=0, validation_alias=AliasChoices("GENERATION_RATE", "GENERATOR_RATE")
    )
    burst_mode: bool = Field(default=False, validation_alias=AliasChoices("BURST_MODE", "GENERATOR_BURST_MODE"))
    burst_count: int = Field(
        default=100_000, gt=0, validation_alias=AliasChoices("BURST_COUNT", "GENERATOR_BURST_COUNT")
    )
    seed: int | None = None
    duration_s: float | None = Field(default=None, gt=0)
    content_count: int = Field(default=500, gt=0)
    users: int = Field(default=50_000, gt=0)
    zipf_s: float = Field(default=1.1, gt=0)
    burst_batch_size: int = Field(default=5_000, gt=0)
    tick_ms: int = Field(default=100, gt=0)
    jitter_s: float = Field(default=2.0, ge=0)
    late_share: float = Field(default=0.01, ge=0, le=1)
    late_max_s: float = Field(default=600.0, gt=0)
    event_update_share: float = Field(default=0.005, ge=0, le=1)
    event_delete_share: float = Field(default=0.002, ge=0, le=1)
    content_update_share: float = Field(default=0.0005, ge=0, le=1)
    report_interval_s: float = Field(default=5.0, gt=0)
    # A write lost to a Postgres outage is retried after retry_initial_s, doubling up to
    # retry_max_backoff_s, until the outage has lasted retry_give_up_s (generator/retry.py).
    retry_initial_s: float = Field(default=0.1, gt=0)
    retry_max_backoff_s: float = Field(default=5.0, gt=0)
    retry_give_up_s: float = Field(default=300.0, gt=0)

    @property
    def rate_per_second(self) -> float:
        return self.generation_rate / 60.0


class LeaderboardSettings(BaseSettings):
    """The Redis leaderboards: window, lateness, TTLs."""

    model_config = _config("LEADERBOARD_")

    window_minutes: int = Field(default=10, ge=1, le=1440)
    # Late events up to this much older than the window still update their minute bucket.
    allowed_lateness_minutes: int = Field(default=10, ge=0)
    # 0: the per-content totals never expire. A TTL would let totals of content idle that long
    # vanish while the positions stay, and a later delete of an old event would drive them negative.
    metrics_ttl_s: int = Field(default=0, ge=0)
    # An event_ts further ahead of the sink's clock than this is counted in the totals but gets no
    # per-minute bucket (whose TTL would outlive the window by the distance) and so no board entry.
    max_clock_skew_minutes: int = Field(default=5, ge=0)
    roll_interval_s: float = Field(default=0.25, gt=0)


class PipelineSettings(BaseSettings):
    """The Beam job and its supervisor."""

    model_config = _config("PIPELINE_")

    runner: Runner = "prism"  # see pipeline/runners.py
    prism_binary: Path = REPO_ROOT / ".stack" / "bin" / "prism"
    prism_port: int = 58073
    # On Prism, each event lane is dealt by partition into this many stages (pipeline.lanes.shards),
    # so that one's bundle runs while another's waits: a faster drain for more CPU per event
    # (docs/benchmarks.md, "Performance per process"). Other runners ignore it.
    lane_shards: int = Field(default=1, ge=1, le=16)
    # On Prism, the Python worker processes of the job: with more than one, the lanes' shards (at
    # least this many) are spread over them, each process with its own GIL (pipeline.runners,
    # "Workers"). Worker N serves its metrics on METRICS_PORT + N, merged into the job's endpoint.
    # 2 (one per core here) drains about 1.5 times as fast as 1, for about 200 MiB more
    # (docs/benchmarks.md, "Performance per process").
    prism_workers: int = Field(default=2, ge=1, le=4)
    # How often Prism asks a running bundle for progress (Beam: 100 ms). The answers serve splits,
    # which the source refuses, and each costs the worker a gathering of the bundle's metrics.
    prism_progress_tick_ms: int = Field(default=1_000, ge=100, le=30_000)
    # Where the job's own listeners bind: Prism's job server (its FnAPI endpoints share the port),
    # the Flink job server, and the SDK harness pool of a LOOPBACK job process. They accept jobs
    # and code without authentication: loopback unless a firewall or network policy guards them.
    bind_host: str = "127.0.0.1"
    consumer_group: str = "engagement-pipeline"
    # An event whose content is not in the view waits this long before it is dead-lettered.
    late_content_timeout_s: float = Field(default=10.0, ge=0)
    # How long the parked lane waits, per batch, for missing content before it parks the events
    # again (pipeline/transforms/unpark.py): each unresolved event goes round once per this.
    park_poll_s: float = Field(default=1.0, gt=0)
    view_startup_timeout_s: float = Field(default=120.0, gt=0)
    # For the fault suite only: a fault the content view's reader injects into itself
    # (pipeline/sources/content_view.py, reader_fault). Unset in every real configuration.
    content_view_fault: str | None = None
    # Partitions of a topic per reader element: 1 locally (one consumer reads them all), the
    # partition count on Flink or Dataflow to spread them over workers (pipeline/sources).
    readers: int = Field(default=1, ge=1)
    max_records_per_call: int = Field(default=20_000, gt=0)
    max_call_ms: int = Field(default=1_000, gt=0)
    # An idle source call waits this long for a first record and returns it the moment it arrives:
    # a longer wait makes fewer empty bundles (Prism's CPU and the worker's), not later records.
    idle_wait_ms: int = Field(default=1_000, ge=0)
    idle_resume_ms: int = Field(default=50, ge=0)
    # A record waits at most this long for its sink's batch while records flow (a bundle's end
    # flushes too); a flush waits for the one in flight (sinks.base), so load grows the batches.
    sink_flush_ms: int = Field(default=10, gt=0)
    # A change below a partition's sequence mark committed later than the mark by more than this is
    # not a Debezium re-send but the source's LSNs gone back (a restore, a failover): it is applied.
    # Covers commit-time jitter and clock skew between Postgres and the job (docs/delivery.md).
    sequence_tolerance_ms: int = Field(default=2_000, ge=0)
    # Which sinks run, in lanes: "," separates lanes (each reads the topics at its own positions, so
    # an outage of one never delays another), "+" puts sinks in one lane (one read, one stage).
    # Names: redis (leaderboards and content metadata), bigquery (changelogs and the current view);
    # http (one sink per endpoint; off unless HTTP_SINK_URL or HTTP_SINK_ROUTES_FILE is set);
    # faulty (tests and benchmarks only).
    sinks: str = "redis,bigquery,http"
    # The lanes' Kafka source: "sdf", ours (pipeline/sources/kafka_partitions.py: starts at the sinks'
    # positions, runs on every runner), or "kafkaio", Beam's Java ReadFromKafka through an expansion
    # service (Dataflow and Flink; pipeline/sources/kafkaio.py, docs/operations.md "Dataflow").
    source: Literal["sdf", "kafkaio"] = "sdf"
    # Where ReadFromKafka is expanded: host:port of a running Java expansion service, the path of its
    # jar (run with java), or "auto" (Beam downloads its expansion-service jar when the job is built).
    kafkaio_expansion_service: str = ""
    # Dead letters larger than this are truncated (with a header saying so), not refused. At most
    # KAFKA_MAX_MESSAGE_BYTES (the topic would refuse a larger letter); at it by default, so the
    # letter of any change the schema allows is kept whole (docs/delivery.md, "Row size bound").
    dead_letter_max_bytes: int = Field(default=5_242_880, ge=16_384)
    restart_backoff_initial_s: float = Field(default=1.0, gt=0)
    restart_backoff_max_s: float = Field(default=60.0, gt=0)
    lock_ttl_s: float = Field(default=10.0, gt=0)
    # The generation of the instance lock the job runs under (sinks/fencing.py). Set by the
    # supervisor for its worker; never set by hand. None: unfenced (tests and benchmarks that drive
    # sinks directly).
    fence_token: int | None = Field(default=None, ge=1)
    # A bounded run reads only these partitions, each up to this exclusive offset ("topic:partition"
    # -> offset, JSON in the environment). Set by `python -m pipeline replay` for the run it starts
    # (pipeline/replay.py); never set by hand. None: to the end offsets taken at start.
    stop_offsets: dict[str, int] | None = None


class Settings(BaseSettings):
    """The root object: build it once at an entry point and pass its parts down."""

    model_config = _config("")

    postgres: PostgresSettings = Field(default_factory=PostgresSettings)
    kafka: KafkaSettings = Field(default_factory=KafkaSettings)
    connect: ConnectSettings = Field(default_factory=ConnectSettings)
    redis: RedisSettings = Field(default_factory=RedisSettings)
    bigquery: BigQuerySettings = Field(default_factory=BigQuerySettings)
    http_sink: HttpSinkSettings = Field(default_factory=HttpSinkSettings)
    http_receiver: HttpReceiverSettings = Field(default_factory=HttpReceiverSettings)
    cdc: CdcSettings = Field(default_factory=CdcSettings)
    stack: StackSettings = Field(default_factory=StackSettings)
    generator: GeneratorSettings = Field(default_factory=GeneratorSettings)
    leaderboard: LeaderboardSettings = Field(default_factory=LeaderboardSettings)
    pipeline: PipelineSettings = Field(default_factory=PipelineSettings)
    flink: FlinkSettings = Field(default_factory=FlinkSettings)
    metrics: MetricsSettings = Field(default_factory=MetricsSettings)
    status: StatusSettings = Field(default_factory=StatusSettings)
    dashboard: DashboardSettings = Field(default_factory=DashboardSettings)
    backfill: BackfillSettings = Field(default_factory=BackfillSettings)
    # Docker Compose only: its services reach each other by name on a private network, where the
    # local default passwords are as safe as on loopback. Never set it for reachable services.
    allow_local_default_passwords: bool = False

    @model_validator(mode="after")
    def _secure_mode(self) -> Settings:
        # The groups' TLS defaults follow STACK_SECURE and STACK_DIR, and whether they may keep the
        # local default passwords follows ALLOW_LOCAL_DEFAULT_PASSWORDS; each gets its own copy, so a
        # group shared with another Settings (model_copy in the test fixtures) keeps that one's view.
        ca = self.stack.tls_dir / "ca.pem" if self.stack.secure else None
        for name in ("postgres", "redis", "kafka", "connect"):
            group = getattr(self, name).model_copy()
            group._stack_ca = ca
            group._local_defaults_allowed = self.allow_local_default_passwords
            object.__setattr__(self, name, group)  # frozen: the one place a group is replaced
        return self

    @model_validator(mode="after")
    def _letters_fit_the_topic(self) -> Settings:
        # A letter the topic refuses would be produced again without end, stalling its lane.
        if self.pipeline.dead_letter_max_bytes > self.kafka.max_message_bytes:
            raise ValueError(
                f"PIPELINE_DEAD_LETTER_MAX_BYTES ({self.pipeline.dead_letter_max_bytes}) must not exceed "
                f"KAFKA_MAX_MESSAGE_BYTES ({self.kafka.max_message_bytes})"
            )
        return self
