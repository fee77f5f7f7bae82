"""The SDK harness pool of a LOOPBACK job listens on ``--loopback_host`` (loopback by default), not
on every interface as Beam's own does; the addresses the supervisor hands out for a bind host."""

from __future__ import annotations

import socket

import psutil
import pytest
from apache_beam.portability import common_urns, python_urns
from apache_beam.portability.api import beam_runner_api_pb2, endpoints_pb2

from infra.addresses import address, connect_host
from infra.process import StackError
from infra.settings import FlinkSettings, PipelineSettings, Settings, StackSettings
from pipeline.flink_job_server import embedded_config, job_server_process
from pipeline.runners import PortableRunnerOnHost, pipeline_options


def start_pool(host: str | None) -> tuple[beam_runner_api_pb2.Environment, list]:
    pipeline = beam_runner_api_pb2.Pipeline()
    pipeline.components.environments["py"].urn = python_urns.EMBEDDED_PYTHON_LOOPBACK
    extra = [] if host is None else [f"--loopback_host={host}"]
    options = pipeline_options("prism", job_endpoint="localhost:1", streaming=True, extra=extra)
    cleanup = PortableRunnerOnHost.start_and_replace_loopback_environments(pipeline, options)
    return pipeline.components.environments["py"], cleanup


def listening(port: int) -> set[str]:
    """The addresses this process listens on at ``port`` (gRPC listens on an IPv6 socket with an
    IPv4-mapped address for an IPv4 host: the same address)."""
    return {
        c.laddr.ip.removeprefix("::ffff:")
        for c in psutil.Process().net_connections(kind="tcp")
        if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }


@pytest.mark.parametrize(("host", "bound"), [(None, {"127.0.0.1"}), ("::1", {"::1"}), ("", {"::"})])
def test_the_loopback_pool_listens_on_the_given_host(host, bound):
    env, cleanup = start_pool(host)
    try:
        assert env.urn == common_urns.environments.EXTERNAL.urn
        payload = beam_runner_api_pb2.ExternalPayload.FromString(env.payload)
        endpoint: endpoints_pb2.ApiServiceDescriptor = payload.endpoint
        url_host, port = endpoint.url.rsplit(":", 1)
        assert url_host == {"127.0.0.1": "127.0.0.1", "::1": "[::1]", "::": "127.0.0.1"}[next(iter(bound))]
        assert listening(int(port)) == bound
        with socket.create_connection((url_host.strip("[]"), int(port)), timeout=5):
            pass
    finally:
        for stop in cleanup:
            stop()


def test_no_loopback_environment_starts_no_pool():
    pipeline = beam_runner_api_pb2.Pipeline()
    pipeline.components.environments["java"].urn = common_urns.environments.DOCKER.urn
    options = pipeline_options("flink", job_endpoint="localhost:1", streaming=True)
    assert PortableRunnerOnHost.start_and_replace_loopback_environments(pipeline, options) == []
    assert pipeline.components.environments["java"].urn == common_urns.environments.DOCKER.urn


@pytest.mark.parametrize(
    ("host", "connect", "endpoint"),
    [
        ("127.0.0.1", "127.0.0.1", "127.0.0.1:58073"),
        ("::1", "::1", "[::1]:58073"),
        ("0.0.0.0", "127.0.0.1", "127.0.0.1:58073"),
        ("::", "127.0.0.1", "127.0.0.1:58073"),
        ("", "127.0.0.1", "127.0.0.1:58073"),
        ("10.0.0.5", "10.0.0.5", "10.0.0.5:58073"),
        ("job-host", "job-host", "job-host:58073"),
    ],
)
def test_clients_reach_a_listener_where_it_is_bound(host, connect, endpoint):
    assert connect_host(host) == connect
    assert address(host, 58073) == endpoint


def test_the_flink_job_server_binds_the_host_behind_the_patched_server_factory(tmp_path):
    lib = tmp_path / "flink"
    lib.mkdir()
    (lib / "beam-runners-flink-1.19-2.70.0.jar").touch()
    patched = tmp_path / "flink-patch" / "beam-server-factory-patched.jar"
    settings = Settings(
        flink=FlinkSettings(lib_dir=lib, master="[local]"),
        pipeline=PipelineSettings(bind_host="127.0.0.1"),
        stack=StackSettings(dir=tmp_path / "stack"),
    )
    with pytest.raises(StackError, match="make flink-bootstrap"):
        job_server_process(settings)  # Beam's ServerFactory alone would listen on every interface
    patched.parent.mkdir()
    patched.touch()
    command = job_server_process(settings).command
    assert command[command.index("-cp") + 1] == f"{patched}:{lib}/*"
    assert "--job-host=127.0.0.1" in command
    conf = tmp_path / "stack" / "flink" / "conf"
    assert f"--flink-conf-dir={conf}" in command
    written = dict(line.split(": ") for line in (conf / "config.yaml").read_text().splitlines())
    assert written == embedded_config("127.0.0.1")


def test_the_embedded_flink_cluster_binds_the_host():
    assert embedded_config("127.0.0.1") == {
        "jobmanager.rpc.address": "127.0.0.1",
        "jobmanager.bind-host": "127.0.0.1",
        "rest.address": "127.0.0.1",
        "rest.bind-address": "127.0.0.1",
        "taskmanager.host": "127.0.0.1",
        "taskmanager.bind-host": "127.0.0.1",
    }
    assert embedded_config("0.0.0.0")["jobmanager.bind-host"] == "0.0.0.0"
    assert embedded_config("0.0.0.0")["jobmanager.rpc.address"] == "127.0.0.1"
