"""The fault suite's own stack and processes: settings, environment, the pipeline and the generator.

The suite runs on a stack of its own, like the integration tests' (tests/integration/conftest.py),
never on the development stack (``make up``): its own folder (``.stack-faults/``), ports 200 above
the defaults (the tests use 100), and run-unique connector, slot, publication, topic and consumer
group names. So a fault run never loses a developer's data, and a crashed run is cleaned up by the
next one (``LocalStack.reset`` stops processes by their pid files). The machine still has one set of
cores: run it alone (``flock /tmp/engagement-stack.lock make faults`` where several people share it).

Every process started here runs in its own process group and is tracked, so ``stop_all`` can stop
each group (SIGINT, then SIGKILL) even after a fault killed the process that led it.

The faults in ``THREE_BROKERS`` run on three Kafka brokers (``KAFKA_BROKERS=3``: replication factor
3, ``min.insync.replicas`` 2, every producer ``acks=all``); ``broker_kill9`` is the one that needs them.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from confluent_kafka.admin import AdminClient

from infra.process import port_open, stop_group
from infra.settings import REPO_ROOT, GeneratorSettings, Settings, StackSettings
from infra.stack.local import LocalStack, child_environment

PORT_OFFSET = 200
STACK_DIR = REPO_ROOT / ".stack-faults"
ENDPOINT = "default"  # the endpoint HTTP_SINK_URL names (docs/http.md)

# The integration tests' workload: inserts, and updates and deletes the sinks must net out.
CHANGES = {
    "GENERATOR_EVENT_UPDATE_SHARE": "0.02",
    "GENERATOR_EVENT_DELETE_SHARE": "0.01",
    "GENERATOR_CONTENT_UPDATE_SHARE": "0.001",
}


# Faults that need three brokers; every other fault runs on one, as `make up` does.
THREE_BROKERS = frozenset({"kafka-broker-kill9"})
# How long the killed broker stays down, under load, before it is started again (its start after a
# kill -9 takes 10-25 s more here, so it is back in sync before the load ends).
BROKER_DOWN_S = 10.0


def fault_settings(brokers: int = 1) -> Settings:
    run = uuid.uuid4().hex[:8]
    base = Settings()
    return Settings(
        postgres=base.postgres.model_copy(update={"port": base.postgres.port + PORT_OFFSET}),
        kafka=base.kafka.model_copy(
            update={
                "port": base.kafka.port + PORT_OFFSET,
                "controller_port": base.kafka.controller_port + PORT_OFFSET,
                "brokers": brokers,
                "bootstrap": "",
            }
        ),
        connect=base.connect.model_copy(update={"port": base.connect.port + PORT_OFFSET, "group_id": f"connect-{run}"}),
        redis=base.redis.model_copy(update={"port": base.redis.port + PORT_OFFSET}),
        # Its gRPC port is ten above this one.
        bigquery=base.bigquery.model_copy(update={"emulator_host": "http://127.0.0.1:59250"}),
        http_receiver=base.http_receiver.model_copy(
            update={
                "port": base.http_receiver.port + PORT_OFFSET,
                "control_port": base.http_receiver.control_port + PORT_OFFSET,
            }
        ),
        cdc=base.cdc.model_copy(
            update={
                "topic_prefix": f"f{run}",
                "slot_name": f"slot_f{run}",
                "publication_name": f"pub_f{run}",
                "connector_name": f"engagement-f{run}",
            }
        ),
        stack=StackSettings(dir=STACK_DIR, stop_timeout_s=60.0),
        generator=GeneratorSettings(),
        metrics=base.metrics.model_copy(update={"port": base.metrics.port + PORT_OFFSET}),
        dashboard=base.dashboard.model_copy(update={"port": base.dashboard.port + PORT_OFFSET}),
        flink=base.flink.shifted(PORT_OFFSET),
        pipeline=base.pipeline.model_copy(
            update={
                "prism_port": base.pipeline.prism_port + PORT_OFFSET,
                "consumer_group": f"pipeline-f{run}",
                "sinks": "redis,bigquery,http",
            }
        ),
    )


def stack_env(settings: Settings) -> dict[str, str]:
    """The environment a child process needs to talk to the fault stack, with all three sinks on."""
    return {
        **os.environ,
        **child_environment(settings),
        # One endpoint that takes every change, so the receiver can be compared with SQL row by row.
        "HTTP_SINK_URL": f"{settings.http_receiver.url}/ingest/{ENDPOINT}",
        **CHANGES,
    }


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group (from /proc): what a kill left behind."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry.name))
    return members


class Processes:
    """The pipeline supervisors and generators of one fault, each in its own process group."""

    def __init__(self, settings: Settings, logs: Path) -> None:
        self.settings = settings
        self.logs = logs
        self.started: list[subprocess.Popen[bytes]] = []
        logs.mkdir(parents=True, exist_ok=True)

    def _spawn(self, args: list[str], log_name: str) -> subprocess.Popen[bytes]:
        with (self.logs / log_name).open("ab") as log:
            proc = subprocess.Popen(
                [sys.executable, *args],
                cwd=REPO_ROOT,
                env=stack_env(self.settings),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.started.append(proc)
        return proc

    def pipeline(self) -> subprocess.Popen[bytes]:
        return self._spawn(["-m", "pipeline"], "pipeline.log")

    def generator(self, *args: str) -> subprocess.Popen[bytes]:
        return self._spawn(["-m", "generator", *args], "generator.log")

    def wait_prism_port_free(self, timeout: float = 20) -> bool:
        deadline = time.monotonic() + timeout
        while port_open("127.0.0.1", self.settings.pipeline.prism_port):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.2)
        return True

    def stop_all(self) -> None:
        """Every group started here, newest first; a group whose leader died is killed outright."""
        for proc in reversed(self.started):
            if proc.poll() is None:
                stop_group(proc, timeout=60)
            for pid in group_members(proc.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)


def quiet_admin(settings: Settings) -> AdminClient:
    """An admin client that does not print librdkafka's "connection refused" to the dead broker."""
    silent = logging.getLogger("loadtest.fault_stack.kafka")
    silent.setLevel(logging.CRITICAL)
    return AdminClient(settings.kafka.client_config(admin=True), logger=silent)


def leaders(admin: AdminClient, topic: str) -> dict[int, int]:
    """``{partition: leader broker id}`` of ``topic`` (-1: no leader)."""
    meta = admin.list_topics(topic, timeout=10).topics[topic]
    return {p: info.leader for p, info in meta.partitions.items()}


def out_of_sync(admin: AdminClient) -> int:
    """Partitions of every topic whose in-sync replicas are fewer than their replicas."""
    meta = admin.list_topics(timeout=10)
    return sum(len(p.isrs) < len(p.replicas) for t in meta.topics.values() for p in t.partitions.values())


def wait_for(condition: Callable[[], bool], timeout: float) -> float | None:
    """Seconds until ``condition()`` held (polled every 0.2 s), or None if it did not within ``timeout``."""
    began = time.monotonic()
    while time.monotonic() - began < timeout:
        with contextlib.suppress(Exception):  # a metadata call can fail while leaders move
            if condition():
                return time.monotonic() - began
        time.sleep(0.2)
    return None


def broker_kill9(stack: LocalStack, notes: list[str]) -> None:
    """``kill -9`` of the broker that leads the most event partitions, under load; started again
    ``BROKER_DOWN_S`` later. Notes say which, how long until its partitions had other leaders (the
    stall a producer or reader of them saw), and until every replica was back in sync."""
    settings = stack.settings
    topic = settings.cdc.engagement_topic
    admin = quiet_admin(settings)
    before = leaders(admin, topic)
    victim = Counter(before.values()).most_common(1)[0][0]
    led = sorted(p for p, leader in before.items() if leader == victim)
    node = stack.kafka.nodes[victim - 1]
    killed = time.monotonic()
    node.process.kill()
    moved = wait_for(lambda: all(leader not in (victim, -1) for leader in leaders(admin, topic).values()), 60)
    time.sleep(max(0.0, BROKER_DOWN_S - (time.monotonic() - killed)))
    node.process.start(settings.stack.start_timeout_s)
    restarted = time.monotonic()
    in_sync = wait_for(lambda: out_of_sync(admin) == 0, 120)
    connector = stack.connect.status() or {}
    states = [connector.get("connector", {}).get("state"), *(t["state"] for t in connector.get("tasks", []))]
    notes.append(
        f"killed broker {victim} (leader of {len(led)} of {len(before)} event partitions); "
        + (f"their leaders moved in {moved:.1f} s" if moved is not None else "their leaders did not move in 60 s")
        + f"; started again after {restarted - killed:.0f} s, "
        + (f"all replicas in sync {in_sync:.1f} s later" if in_sync is not None else "replicas not in sync in 120 s")
        + ("" if states and all(state == "RUNNING" for state in states) else f"; connector {states}")
    )
