"""The Dataflow launcher (the Flex Template's main) and its packaging, without Dataflow or services:
Redis is fakeredis, the submission is replaced by a recorder, the sdist is built offline."""

import json
import os
import re
import tarfile
import tomllib

import fakeredis
import pytest

from infra.settings import REPO_ROOT, PipelineSettings, Settings
from pipeline import dataflow_launch
from pipeline.dataflow_graph import dry_run
from pipeline.dataflow_launch import launch_settings, main, setting_names, split_args
from pipeline.instance_lock import InstanceLock

METADATA = REPO_ROOT / "infra" / "dataflow" / "metadata.json"
BEAM_OPTIONS = {"sdk_container_image"}


def test_settings_arrive_as_arguments_and_the_rest_goes_to_beam():
    values, beam_args = split_args(
        ["--pipeline_sinks=redis", "--project=p", "--KAFKA_HOST", "10.0.0.5", "--streaming", "--redis_port=6379"],
        setting_names(),
    )
    assert values == {"PIPELINE_SINKS": "redis", "KAFKA_HOST": "10.0.0.5", "REDIS_PORT": "6379"}
    assert beam_args == ["--project=p", "--streaming"]


def test_the_fence_token_cannot_be_given_by_hand():
    values, beam_args = split_args(["--pipeline_fence_token=99"], setting_names())
    assert values == {}
    assert beam_args == ["--pipeline_fence_token=99"]


def test_every_template_parameter_is_a_setting_or_a_beam_option():
    parameters = [p["name"] for p in json.loads(METADATA.read_text())["parameters"]]
    names = setting_names()
    unknown = [p for p in parameters if p.upper() not in names and p not in BEAM_OPTIONS]
    assert unknown == []
    assert {"kafka_host", "redis_host", "pipeline_sinks", "pipeline_source", "sdk_container_image"} <= set(parameters)


def test_on_dataflow_bigquery_is_the_real_one_unless_told_otherwise(monkeypatch):
    monkeypatch.delenv("BIGQUERY_EMULATOR_HOST", raising=False)
    monkeypatch.delenv("PIPELINE_SINKS", raising=False)
    assert launch_settings({}, {}).bigquery.emulator_host == ""
    assert launch_settings({"BIGQUERY_EMULATOR_HOST": "http://bq:9050"}, {}).bigquery.emulator_host == "http://bq:9050"
    assert launch_settings({}, {"BIGQUERY_EMULATOR_HOST": "x"}).bigquery.emulator_host != ""
    assert launch_settings({"PIPELINE_SINKS": "redis"}, {}).pipeline.sinks == "redis"
    # The process environment is left as it was.
    assert "PIPELINE_SINKS" not in os.environ
    assert "BIGQUERY_EMULATOR_HOST" not in os.environ


@pytest.fixture
def submitted(monkeypatch):
    runs = []

    class Result:
        state = "RUNNING"

        def job_id(self):
            return "2026-12-06_job"

    def run(settings, options, *, bounded=False):
        runs.append((settings, options))
        return Result()

    monkeypatch.setattr(dataflow_launch.job, "run", run)
    return runs


def test_a_launch_takes_the_next_generation_and_submits_the_job_under_it(submitted):
    client = fakeredis.FakeRedis()
    client.set("engagement:pipeline:fence:engagement-pipeline", "5")
    assert main(["--pipeline_sinks=redis", "--project=p", "--region=r"], client=client) == 0
    ((settings, options),) = submitted
    generation = int(client.get("engagement:pipeline:fence:engagement-pipeline"))
    assert generation > 5
    assert settings.pipeline.fence_token == generation
    assert settings.pipeline.sinks == "redis"
    # The lock itself is released: nothing of ours outlives the launch to keep it.
    assert client.get("engagement:pipeline:lock:engagement-pipeline") is None
    all_options = options.get_all_options()
    assert all_options["runner"] == "DataflowRunner"
    assert all_options["streaming"] is True
    assert all_options["project"] == "p"


def test_a_launch_refuses_while_a_live_instance_holds_the_lock(submitted, capsys):
    client = fakeredis.FakeRedis()
    holder = InstanceLock(client, "engagement-pipeline", 10.0, host="another-host", pid=1)
    holder.acquire()
    assert main(["--project=p"], client=client) == 1
    assert submitted == []
    assert "another-host" in capsys.readouterr().err


# --- Packaging: --setup_file builds the project from pyproject.toml (one list of dependencies) ---


def test_the_setup_file_stages_the_project_with_the_dependencies_of_pyproject():
    result = dry_run(
        Settings(pipeline=PipelineSettings(sinks="redis")), extra=[f"--setup_file={REPO_ROOT / 'setup.py'}"]
    )
    from apache_beam.portability.api import beam_runner_api_pb2

    staged = {}
    for env in result.pipeline.components.environments.values():
        for dep in env.dependencies:
            name = beam_runner_api_pb2.ArtifactStagingToRolePayload.FromString(dep.role_payload).staged_name
            staged[name] = beam_runner_api_pb2.ArtifactFilePayload.FromString(dep.type_payload).path
    assert "workflow.tar.gz" in staged
    with tarfile.open(staged["workflow.tar.gz"]) as sdist:
        names = sdist.getnames()
        root = names[0].split("/")[0]
        pkg_info = sdist.extractfile(f"{root}/PKG-INFO").read().decode()
    for path in ("pipeline/job.py", "pipeline/dataflow_launch.py", "sinks/lua/positions.lua", "infra/settings.py"):
        assert f"{root}/{path}" in names, path
    declared = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    requires = [
        line.removeprefix("Requires-Dist: ") for line in pkg_info.splitlines() if line.startswith("Requires-Dist:")
    ]
    assert sorted(map(requirement, declared)) == sorted(requirement(r) for r in requires if "extra ==" not in r)


def requirement(text: str) -> tuple[str, frozenset[str]]:
    """``name[extras]`` and its set of version clauses (metadata writes them in another order)."""
    match = re.fullmatch(r"([A-Za-z0-9_.\-\[\]]+)(.*)", text.replace(" ", ""))
    assert match is not None, text
    return match[1], frozenset(match[2].split(","))
