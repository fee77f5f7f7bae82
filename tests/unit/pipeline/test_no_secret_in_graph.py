"""No password or token in the job graph: every secret setting is set to a marker, the job is built
(as Prism gets it, and as Dataflow would, offline), and every blob in it is searched, unpacked the
way Beam packs pickled steps (base64 of bz2 or zlib)."""

import base64
import binascii
import bz2
import json
import pickle
import re
import zlib
from collections.abc import Iterator

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions
from google.protobuf.message import Message
from pydantic_settings import BaseSettings

from infra.secrets import Secret
from infra.settings import Settings
from pipeline import dataflow_launch
from pipeline.dataflow_graph import dry_run
from pipeline.job import build, offline_plans
from sinks.registry import http_routes
from tests.unit.pipeline.test_dataflow_graph import no_network  # noqa: F401 - an autouse fixture


def secret_settings() -> list[str]:
    return sorted(dataflow_launch.secret_names())


def marker(name: str) -> str:
    return f"marker-{name.lower().replace('_', '-')}-7f3a"


@pytest.fixture
def secret_env(monkeypatch, tmp_path):
    for name in secret_settings():
        monkeypatch.setenv(name, marker(name))
    monkeypatch.setenv("PIPELINE_SINKS", "redis,bigquery,http")
    monkeypatch.setenv("KAFKA_SECURITY_PROTOCOL", "SASL_SSL")  # the clients' configs carry a password
    monkeypatch.setenv("HTTP_SINK_URL", "http://127.0.0.1:9/changes")
    monkeypatch.chdir(tmp_path)  # no .env file


_BASE64_RUN = re.compile(rb"[A-Za-z0-9+/]{32,}={0,2}")


def unpacked(blob: bytes) -> Iterator[bytes]:
    """``blob``, and every base64 run inside it decoded and decompressed (a pickled step sits as
    base64 of bz2 or zlib inside the serialized payload of its transform)."""
    yield blob
    for run in _BASE64_RUN.findall(blob):
        try:
            decoded = base64.b64decode(run, validate=True)
        except (binascii.Error, ValueError):
            continue
        for decompress in (bz2.decompress, zlib.decompress):
            try:
                plain = decompress(decoded)
            except (OSError, ValueError, zlib.error):
                continue
            yield plain


def blobs(message: Message) -> Iterator[bytes]:
    """Every bytes and string value in a proto, recursively, each also unpacked."""
    for field, value in message.ListFields():
        values = value if field.is_repeated else [value]
        if field.message_type is not None and field.message_type.GetOptions().map_entry:
            values = [v for v in value.values()] if hasattr(value, "values") else values
        for v in values:
            if isinstance(v, Message):
                yield from blobs(v)
            elif isinstance(v, bytes):
                yield from unpacked(v)
            elif isinstance(v, str):
                yield v.encode()


def found(blobs_: Iterator[bytes], secrets: list[str]) -> set[str]:
    hits = set()
    for blob in blobs_:
        hits |= {name for name in secrets if marker(name).encode() in blob}
    return hits


def portable_graph(settings: Settings) -> Message:
    p = beam.Pipeline(options=PipelineOptions(["--streaming"]))
    build(p, settings, offline_plans(settings))
    return p.to_runner_api()


def test_every_secret_setting_is_a_secret_that_knows_its_setting(secret_env):
    settings = Settings()
    names = secret_settings()
    assert {"POSTGRES_PASSWORD", "REDIS_PASSWORD", "HTTP_SINK_AUTH_TOKEN"} <= set(names)
    for name in names:
        group, field = next(
            (getattr(settings, g), f)
            for g, gf in Settings.model_fields.items()
            if isinstance(gf.annotation, type) and issubclass(gf.annotation, BaseSettings)
            for f in gf.annotation.model_fields
            if f"{gf.annotation.model_config.get('env_prefix', '')}{f}".upper() == name
        )
        value = getattr(group, field)
        assert isinstance(value, Secret), name
        assert (value.setting, value.get_secret_value()) == (name, marker(name))


def test_the_job_graph_holds_no_secret(secret_env):
    graph = portable_graph(Settings())
    assert found(blobs(graph), secret_settings()) == set()


def test_the_search_finds_a_value_that_is_in_the_graph(secret_env, monkeypatch):
    # The same search on a graph that does carry a value: headers are plain settings.
    monkeypatch.setenv("HTTP_SINK_HEADERS", json.dumps({"X-Api-Key": marker("HTTP_SINK_AUTH_TOKEN")}))
    assert found(blobs(portable_graph(Settings())), secret_settings()) == {"HTTP_SINK_AUTH_TOKEN"}


def test_the_dataflow_job_request_holds_no_secret(secret_env):
    result = dry_run(Settings())
    names = secret_settings()
    assert found(blobs(result.pipeline), names) == set()
    assert found(iter([json.dumps(result.job.json()).encode()]), names) == set()


def test_dataflow_template_parameters_take_secret_manager_references_only(secret_env, monkeypatch):
    reference = "secretmanager:projects/p/secrets/redis-password/versions/3"
    values, _ = dataflow_launch.split_args([f"--redis_password={reference}"], dataflow_launch.setting_names())
    assert dataflow_launch.literal_secrets(values) == []
    settings = dataflow_launch.launch_settings(values, {})
    assert found(blobs(portable_graph(settings)), ["REDIS_PASSWORD"]) == set()
    values, _ = dataflow_launch.split_args(["--redis_password=hunter2"], dataflow_launch.setting_names())
    assert dataflow_launch.literal_secrets(values) == ["REDIS_PASSWORD"]


def test_a_launch_refuses_a_literal_secret_parameter(secret_env, capsys):
    assert dataflow_launch.main(["--redis_password=hunter2", "--project=p"]) == 2
    err = capsys.readouterr().err
    assert "REDIS_PASSWORD" in err and "secretmanager:" in err and "hunter2" not in err


def test_a_token_read_by_the_routing_file_stays_out_of_the_graph(secret_env, monkeypatch, tmp_path):
    routes = tmp_path / "routes.yaml"
    routes.write_text(
        "endpoints:\n"
        "  analytics:\n"
        "    url: http://127.0.0.1:9/ingest\n"
        "    headers: {Authorization: 'Bearer ${HTTP_SINK_ROUTE_TOKEN}'}\n"
        "routes:\n"
        "  - {name: everything, endpoint: analytics}\n"
    )
    monkeypatch.setenv("HTTP_SINK_ROUTES_FILE", str(routes))
    monkeypatch.setenv("HTTP_SINK_ROUTE_TOKEN", marker("HTTP_SINK_ROUTE_TOKEN"))
    settings = Settings()
    graph = portable_graph(settings)
    assert found(blobs(graph), ["HTTP_SINK_ROUTE_TOKEN"]) == set()
    # The sink reads it where it runs: the step's route, unpickled, still sends the header.
    (route,) = http_routes(settings)
    restored = pickle.loads(pickle.dumps(route))
    assert restored.headers == {"Authorization": f"Bearer {marker('HTTP_SINK_ROUTE_TOKEN')}"}
