"""The whole local stack: start in dependency order, stop in reverse, report health.

Order: Postgres (then roles, schema, publication) -> Redis -> the BigQuery emulator (then the
dataset, tables and view; skipped when ``BIGQUERY_EMULATOR_HOST`` is empty) -> the HTTP receiver
(the HTTP sink's local endpoint) -> Kafka (then topics) -> Connect (then the Debezium connector,
waited on until RUNNING). Stopping goes the other way, Connect before Kafka, because Connect hangs
on shutdown while Kafka is gone. ``reset`` also deletes the connector before dropping its
replication slot, and removes all data, so nothing keeps pinning WAL (the HTTP receiver keeps its
records in memory only, so it has no folder to remove).

The same class backs ``make up/down/status`` and the pytest fixtures, so there is one way to start
a service.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from typing import Any

from infra.capture_health import capture_problems
from infra.process import ServiceProcess, StackError, stop_together
from infra.reserved_ports import reserve_ports
from infra.settings import Settings
from infra.stack.bigquery_emulator import BigQueryEmulator
from infra.stack.certificates import TlsFiles, ensure_certificates
from infra.stack.connect import Connect
from infra.stack.http_receiver import HttpReceiver
from infra.stack.kafka import Kafka
from infra.stack.kafka_admin import (
    acl_bindings,
    admin_client,
    describe_topic_config,
    ensure_acls,
    ensure_topics,
    ensure_users,
    topic_health,
    topic_specs,
)
from infra.stack.postgres import Postgres
from infra.stack.redis_server import RedisServer

Log = Callable[[str], None]


def child_environment(settings: Settings) -> dict[str, str]:
    """The environment variables a child process (the pipeline, the generator, a CLI) needs to use
    the stack ``settings`` describe, when it is not the default one (the test and fault stacks).
    The HTTP sink is off: a caller that wants it sets HTTP_SINK_URL or HTTP_SINK_ROUTES_FILE."""
    return {
        "POSTGRES_PORT": str(settings.postgres.port),
        "KAFKA_PORT": str(settings.kafka.port),
        "KAFKA_BROKERS": str(settings.kafka.brokers),
        "CONNECT_PORT": str(settings.connect.port),
        "REDIS_PORT": str(settings.redis.port),
        "CDC_TOPIC_PREFIX": settings.cdc.topic_prefix,
        "STACK_DIR": str(settings.stack.dir),
        "STACK_SECURE": str(settings.stack.secure).lower(),
        "PIPELINE_PRISM_PORT": str(settings.pipeline.prism_port),
        "PIPELINE_CONSUMER_GROUP": settings.pipeline.consumer_group,
        "PIPELINE_SINKS": settings.pipeline.sinks,
        "BIGQUERY_EMULATOR_HOST": settings.bigquery.emulator_host,
        "HTTP_RECEIVER_PORT": str(settings.http_receiver.port),
        "HTTP_RECEIVER_CONTROL_PORT": str(settings.http_receiver.control_port),
        "HTTP_RECEIVER_URL": settings.http_receiver.url,
        "HTTP_SINK_URL": "",
        "HTTP_SINK_ROUTES_FILE": "",
        "METRICS_PORT": str(settings.metrics.port),
        "DASHBOARD_PORT": str(settings.dashboard.port),
        "PIPELINE_RUNNER": settings.pipeline.runner,
        "PIPELINE_READERS": str(settings.pipeline.readers),
        **settings.flink.environment_variables(),
    }


def _quiet(_: str) -> None:
    pass


class LocalStack:
    def __init__(self, settings: Settings, log: Log = _quiet) -> None:
        self.settings = settings
        self.log = log
        stack_dir = settings.stack.dir
        # Secure mode: the certificates every service presents (made in ``up``, infra/stack/certificates.py).
        self.tls = TlsFiles(settings.stack.tls_dir) if settings.stack.secure else None
        self.postgres = Postgres(settings.postgres, settings.cdc, stack_dir, self.tls)
        self.redis = RedisServer(settings.redis, stack_dir, self.tls)
        self.bigquery = (
            BigQueryEmulator(settings.bigquery, stack_dir, settings.stack.bigquery_emulator_venv)
            if settings.bigquery.emulated
            else None
        )
        self.http_receiver = HttpReceiver(settings.http_receiver, stack_dir)
        self.kafka = Kafka(settings.kafka, stack_dir, settings.stack.lib_dir, self.tls)
        self.connect = Connect(settings)

    @property
    def processes(self) -> list[ServiceProcess]:
        emulator = [] if self.bigquery is None else [self.bigquery.process]
        return [
            self.postgres.process,
            self.redis.process,
            *emulator,
            self.http_receiver.process,
            *self.kafka.processes,
            self.connect.process,
        ]

    def ports(self) -> list[int]:
        """Every port the stack and the pipeline on it listen on (``reserve_ports``)."""
        s = self.settings
        f = s.flink
        ports = [p.port for p in self.processes]
        if self.bigquery is not None:
            ports.append(self.bigquery.process.port + 10)  # its gRPC port
        ports += [node.controller_port for node in self.kafka.nodes]
        ports += [s.http_receiver.control_port, s.pipeline.prism_port, s.metrics.port, s.dashboard.port]
        ports += [s.metrics.port + n for n in range(1, s.pipeline.prism_workers)]  # Prism's worker processes
        ports += [f.job_port, f.artifact_port, f.rest_port, f.rpc_port, f.blob_port, f.worker_pool_port]
        for index in range(1, 17):  # the local Flink cluster's TaskManagers, at most 16
            ports += [f.taskmanager_rpc_port(index), *f.worker_metrics_ports(index)]
        return ports

    def _start(self, process: ServiceProcess) -> None:
        began = time.monotonic()
        started = process.start(self.settings.stack.start_timeout_s)
        verb = "started" if started else "already running"
        self.log(f"  {process.name:<9} {verb} on {process.host}:{process.port} ({time.monotonic() - began:.1f} s)")

    def up(self, *, connector: bool = True) -> None:
        timeout = self.settings.stack.start_timeout_s
        reserve_ports(self.ports())
        if self.tls is not None:
            ensure_certificates(self.tls.dir)
            self.log(f"  tls       certificates in {self.tls.dir}")
        if self.postgres.ensure_cluster():
            self.log("  postgres  initialised a new cluster")
        self._start(self.postgres.process)
        self.postgres.provision()
        self.log("  postgres  roles, schema, grants and publication in place")
        self.redis.write_config()
        self._start(self.redis.process)
        if self.bigquery is not None:
            self.bigquery.prepare()
            self._start(self.bigquery.process)
            self._ensure_dataset()
        self._start(self.http_receiver.process)
        self.kafka.write_config()
        if self.kafka.ensure_formatted():
            self.log("  kafka     formatted KRaft storage")
        began = time.monotonic()
        for process, started in self.kafka.start(self.settings.stack.start_timeout_s):
            verb = "started" if started else "already running"
            self.log(f"  {process.name:<9} {verb} on {process.host}:{process.port} ({time.monotonic() - began:.1f} s)")
        self._ensure_topics()
        if self.tls is not None:
            self._ensure_kafka_users()
        self.connect.write_config()
        self._start(self.connect.process)
        if connector:
            self.connect.register()
            self.connect.wait_running(timeout)
            self.log(f"  connector {self.settings.cdc.connector_name} RUNNING")

    def _ensure_topics(self) -> None:
        kafka = self.settings.kafka
        specs = topic_specs(
            self.settings.cdc, max_message_bytes=kafka.max_message_bytes, min_insync_replicas=kafka.min_insync_replicas
        )
        for change in ensure_topics(admin_client(kafka), specs, replication_factor=kafka.replication_factor):
            self.log(f"  topics    {change}")

    def _ensure_kafka_users(self) -> None:
        """Secure mode: the pipeline's and Connect's Kafka users, and what each may do (ACLs)."""
        s = self.settings
        admin = admin_client(s.kafka)
        users = {
            s.kafka.sasl_username: s.kafka.sasl_password.get_secret_value(),
            s.connect.kafka_username: s.connect.kafka_password.get_secret_value(),
        }
        ensure_users(admin, users)
        bindings = acl_bindings(
            s.cdc,
            pipeline_user=s.kafka.sasl_username,
            connect_user=s.connect.kafka_username,
            connect_group=s.connect.group_id,
        )
        added = ensure_acls(admin, bindings)
        self.log(f"  kafka     users {', '.join(users)} in place, {added} ACL(s) added")

    def _ensure_dataset(self) -> None:
        from sinks.bigquery_dataset import Dataset, make_client

        bq = self.settings.bigquery
        Dataset(make_client(bq), bq, audit=bq.audit).ensure()
        self.log(f"  bigquery  dataset {bq.dataset_ref}, tables and view {bq.view} in place")

    def provision(self) -> None:
        """Roles, schema, topics and connector against services someone else runs (Docker Compose,
        a managed cluster): the same steps ``up`` takes after starting each process."""
        self.postgres.provision()
        self.log("  postgres  roles, schema, grants and publication in place")
        if self.settings.bigquery.emulated:
            self._ensure_dataset()
        self._ensure_topics()
        self.log("  topics    in place")
        self.connect.register()
        self.connect.wait_running(self.settings.stack.start_timeout_s)
        self.log(f"  connector {self.settings.cdc.connector_name} RUNNING")

    def down(self) -> None:
        timeout = self.settings.stack.stop_timeout_s
        kafka = [*self.kafka.processes, *self.kafka.leftovers()]
        # Kafka's nodes together (stop_together), after Connect and before everything else.
        groups = [[p] for p in reversed(self.processes) if p not in kafka]
        groups.insert(1, kafka)
        for group in groups:
            for process in stop_together(group, timeout):
                self.log(f"  {process.name:<9} stopped")

    def reset(self) -> None:
        """Delete the connector and its slot, stop everything and remove all state."""
        if self.connect.process.running() and self.connect.delete():
            self.log(f"  connector {self.settings.cdc.connector_name} deleted")
        if self.postgres.process.running():
            for _ in range(20):
                try:
                    if self.postgres.drop_slot():
                        self.log(f"  postgres  dropped slot {self.settings.cdc.slot_name}")
                    break
                except Exception as exc:  # noqa: BLE001 - the slot may still be active for a moment
                    last = exc
                    time.sleep(0.5)
            else:
                raise StackError(f"could not drop slot {self.settings.cdc.slot_name}: {last}")
        self.down()
        shutil.rmtree(self.postgres.root, ignore_errors=True)
        kafka_nodes = [path.name for path in self.settings.stack.dir.glob("kafka-*")]
        for part in ("redis", "bigquery", "kafka", *kafka_nodes, "connect", "logs", "pids"):
            shutil.rmtree(self.settings.stack.dir / part, ignore_errors=True)
        self.log(f"  removed state under {self.settings.stack.dir}")

    def status(self) -> dict[str, Any]:
        """Health of every part, topics with partitions and policy, connector state, slot lag, and
        what stops capture (``capture_problems``: infra/capture_health.py)."""
        report: dict[str, Any] = {"services": {}}
        for process in self.processes:
            pid = process.pid()
            healthy = pid is not None and process.ready()
            report["services"][process.name] = {
                "pid": pid,
                "address": f"{process.host}:{process.port}",
                "state": "healthy" if healthy else ("unhealthy" if pid else "stopped"),
            }
        # Any broker that answers can describe the cluster (with three, node 1 may be the one down).
        if any(p.name.startswith("kafka") and report["services"][p.name]["state"] == "healthy" for p in self.processes):
            admin = admin_client(self.settings.kafka)
            topics = admin.list_topics(timeout=5).topics
            report["topics"] = {
                name: topic_health(meta, describe_topic_config(admin, name))
                for name, meta in sorted(topics.items())
                if not name.startswith("__consumer_offsets")
            }
        if report["services"]["connect"]["state"] == "healthy":
            report["connector"] = self.connect.status()
        if report["services"]["postgres"]["state"] == "healthy":
            report["slot"] = self.postgres.slot_status()
        if report["services"]["redis"]["state"] == "healthy":
            from sinks.http_breaker import BreakerBoard

            report["http_breakers"] = BreakerBoard(self.settings.redis.client(timeout_s=2.0, reader=True)).read()
        report["capture_problems"] = capture_problems(report, self.settings.cdc)
        return report
