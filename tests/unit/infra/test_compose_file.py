"""docker-compose.yml, checked offline: no Docker engine runs where the tests do.

- The file against the Compose Specification's JSON schema (schema/compose-spec.json, vendored from
  the compose-spec project, commit 170098ba, Apache 2.0), which refuses unknown or misspelt keys.
- What a plain ``docker compose up`` starts stays the stack of ``make up``; the Flink session cluster
  and the pipeline on it are the ``flink`` profile's.
- The Flink configuration (FLINK_PROPERTIES, parsed as the flink image's entrypoint parses it) is
  ``FlinkCluster.config()`` of the native cluster, but for the addresses, ports and paths a
  container has of its own.
- Each TaskManager has its own worker pool in its network namespace, on the loopback address and
  port the job is told, with the native cluster's metrics ports of that TaskManager; the pipeline's
  settings, read from its service's environment, submit to the JobManager's REST API, and its image
  has Beam's job server where the supervisor looks for it.
- Published ports are on 127.0.0.1 only, images carry a version tag, and passwords come from the
  environment.

Each check returns the problems it finds, so the tests also show it finds them in broken variants.
"""

import json
import os
import re
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from infra.reserved_ports import parse_ranges
from infra.settings import REPO_ROOT, Settings
from infra.stack.flink_cluster import FlinkCluster

COMPOSE = REPO_ROOT / "docker-compose.yml"
SCHEMA = REPO_ROOT / "tests" / "unit" / "infra" / "schema" / "compose-spec.json"
K8S_DOCKERFILE = REPO_ROOT / "infra" / "k8s" / "Dockerfile"

# The services of a plain `docker compose up` (and `run generator`): the native stack of `make up`.
BASE_SERVICES = {"postgres", "kafka", "connect", "redis", "bigquery", "http-receiver", "init", "generator"}
FLINK_SERVICES = {
    "flink-volume-init",
    "flink-jobmanager",
    "flink-taskmanager-1",
    "flink-taskmanager-2",
    "flink-worker-pool-1",
    "flink-worker-pool-2",
    "pipeline-flink",
}
JOBMANAGER = "flink-jobmanager"
PIPELINE = "pipeline-flink"
WORKER_POOL_MODULE = "pipeline.worker_pool"
# Where a container's Flink configuration differs from the native cluster's, and why: every process
# binds its container's interfaces and is reached by its service name, the ports are Flink's own
# in-image defaults (only the REST port is published, on the native one), checkpoints go to the
# shared volume.
CONTAINER_CONFIG = {
    "jobmanager.rpc.address": JOBMANAGER,
    "jobmanager.rpc.port": "6123",
    "jobmanager.bind-host": "0.0.0.0",
    "rest.address": JOBMANAGER,
    "rest.bind-address": "0.0.0.0",
    "rest.port": "8081",
    "blob.server.port": "6124",
    "taskmanager.bind-host": "0.0.0.0",
    "state.checkpoints.dir": "file:///flink-data/checkpoints",
}
# Left to the image: a TaskManager advertises its container's address; temporary files stay in the
# container's /tmp.
NOT_IN_CONTAINERS = {"taskmanager.host", "web.tmpdir", "io.tmp.dirs"}
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|CREDENTIAL")
ONE_VARIABLE = re.compile(r"^\$\{[A-Z][A-Z0-9_]*((:?-|:?\?)[^}]*)?\}$")


# --- Loading ----------------------------------------------------------------------------------


@cache
def _raw() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def compose() -> dict[str, Any]:
    """The file as YAML sees it (anchors and merge keys resolved), a fresh copy each time, in which
    what an anchor shared is no longer one object (so a test can change one service alone)."""
    return json.loads(json.dumps(_raw()))


def interpolate(value: Any, env: dict[str, str] | None = None) -> Any:
    """``value`` with Compose's ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}`` and ``$$``
    resolved against ``env`` (by default none set, so every default applies)."""
    env = env or {}
    if isinstance(value, dict):
        return {key: interpolate(item, env) for key, item in value.items()}
    if isinstance(value, list):
        return [interpolate(item, env) for item in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, op, arg = match.group(1), match.group(2) or "", match.group(3) or ""
        if op.startswith(":?") or op.startswith("?"):
            if name not in env:
                raise KeyError(f"{name} is required: {arg}")
            return env[name]
        if op == ":-":
            return env.get(name) or arg
        if op == "-":
            return env.get(name, arg)
        return env.get(name, "")

    return re.sub(r"\$\$|\$\{([A-Z][A-Z0-9_]*)(:-|-|:\?|\?)?([^}]*)\}", one, value)


def flink_properties(text: str) -> dict[str, str]:
    """FLINK_PROPERTIES as the flink image's docker-entrypoint.sh reads it: one ``key: value`` a
    line, every whitespace character removed, split at the first colon."""
    pairs = {}
    for line in text.splitlines():
        line = re.sub(r"\s", "", line)
        if line:
            key, _, value = line.partition(":")
            pairs[key] = value
    return pairs


def native_config() -> dict[str, str]:
    """The native cluster's configuration, each value as Flink reads it from text."""

    def text(value: object) -> str:
        if isinstance(value, bool):
            return "true" if value else "false"
        return re.sub(r"\s", "", str(value))

    return {key: text(value) for key, value in FlinkCluster(Settings()).config().items()}


def env_of(doc: dict[str, Any], service: str) -> dict[str, str]:
    """A service's environment with the file's defaults applied."""
    env = doc["services"][service].get("environment", {})
    return {key: str(value) for key, value in interpolate(env).items()}


def pipeline_settings(doc: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings pipeline-flink runs with: its environment over the defaults."""
    for name, value in env_of(doc, PIPELINE).items():
        monkeypatch.setenv(name, value)
    return Settings()


def taskmanagers(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in doc["services"].items() if svc.get("command", [None])[0] == "taskmanager"}


def worker_pools(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in doc["services"].items() if WORKER_POOL_MODULE in svc.get("command", [])}


def resource_index(taskmanager: dict[str, Any]) -> int:
    """``i`` of a TaskManager's ``-D taskmanager.resource-id=taskmanager-<i>``."""
    (rid,) = [arg.split("=", 1)[1] for arg in taskmanager["command"] if arg.startswith("taskmanager.resource-id=")]
    return int(rid.removeprefix("taskmanager-"))


def pool_args(pool: dict[str, Any]) -> dict[str, str]:
    pairs = [arg.removeprefix("--").split("=", 1) for arg in pool["command"] if arg.startswith("--")]
    return {name: value for name, value in pairs}


# --- Checks -----------------------------------------------------------------------------------


def schema_problems(doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(json.loads(SCHEMA.read_text()))
    return [f"{'/'.join(map(str, error.absolute_path))}: {error.message}" for error in validator.iter_errors(doc)]


def profile_problems(doc: dict[str, Any]) -> list[str]:
    services = doc["services"]
    problems = []
    plain = {name for name, svc in services.items() if not svc.get("profiles")}
    if plain != BASE_SERVICES:
        problems.append(f"a plain `docker compose up` starts {sorted(plain)}, not {sorted(BASE_SERVICES)}")
    for name in sorted(FLINK_SERVICES):
        if name not in services:
            problems.append(f"{name} is missing")
        elif services[name].get("profiles") != ["flink"]:
            problems.append(f"{name} is in profiles {services[name].get('profiles')}, not ['flink']")
    return problems


def flink_config_problems(doc: dict[str, Any]) -> list[str]:
    native = native_config()
    expected = {key: CONTAINER_CONFIG.get(key, value) for key, value in native.items() if key not in NOT_IN_CONTAINERS}
    problems = []
    for name in [JOBMANAGER, *taskmanagers(doc)]:
        actual = flink_properties(env_of(doc, name).get("FLINK_PROPERTIES", ""))
        for key in sorted(expected.keys() | actual.keys()):
            if actual.get(key) != expected.get(key):
                problems.append(f"{name}: {key} is {actual.get(key)!r}, the native cluster's is {expected.get(key)!r}")
    return problems


def checkpoint_volume_problems(doc: dict[str, Any]) -> list[str]:
    checkpoints = CONTAINER_CONFIG["state.checkpoints.dir"].removeprefix("file://")
    problems = []
    volumes = set()
    for name in [JOBMANAGER, *taskmanagers(doc)]:
        mounts = [m.split(":") for m in doc["services"][name].get("volumes", [])]
        on_path = [source for source, target, *_ in mounts if checkpoints.startswith(target.rstrip("/") + "/")]
        if len(on_path) != 1:
            problems.append(f"{name} mounts no volume over {checkpoints}")
        volumes |= set(on_path)
    if len(volumes) != 1 or not volumes <= set(doc.get("volumes") or {}):
        problems.append(f"the JobManager and the TaskManagers share no one named volume: {sorted(volumes)}")
    return problems


def sidecar_problems(doc: dict[str, Any], settings: Settings) -> list[str]:
    tms, pools = taskmanagers(doc), worker_pools(doc)
    problems = []
    if len(tms) != settings.flink.taskmanagers:
        problems.append(f"{len(tms)} TaskManagers, the job counts FLINK_TASKMANAGERS={settings.flink.taskmanagers}")
    indexes = sorted(resource_index(tm) for tm in tms.values())
    if indexes != list(range(1, len(tms) + 1)):
        problems.append(f"TaskManagers' resource ids are taskmanager-{indexes}")
    pool_host, pool_port = settings.flink.worker_pool.rsplit(":", 1)
    if pool_host != "localhost":
        problems.append(f"the job is told the pool is at {settings.flink.worker_pool}, not on localhost")
    served = []
    for name, pool in sorted(pools.items()):
        mode = pool.get("network_mode", "")
        tm = mode.removeprefix("service:")
        if not mode.startswith("service:") or tm not in tms:
            problems.append(f"{name} shares no TaskManager's network namespace (network_mode {mode!r})")
            continue
        served.append(tm)
        if "ports" in pool or "networks" in pool:
            problems.append(f"{name} declares ports or networks of its own")
        args = pool_args(pool)
        host, port = args["address"].rsplit(":", 1)
        if host != "127.0.0.1" or port != pool_port:
            problems.append(f"{name} listens on {args['address']}, the TaskManager asks 127.0.0.1:{pool_port}")
        wanted = settings.flink.worker_metrics_ports(resource_index(tms[tm]))
        if sorted(parse_ranges(args.get("metrics-ports", ""))) != wanted:
            problems.append(f"{name}'s metrics ports are {args.get('metrics-ports')}, {tm}'s are {wanted}")
    if sorted(served) != sorted(tms):
        problems.append(f"worker pools serve {sorted(served)}, not one each of {sorted(tms)}")
    return problems


def published_port_problems(doc: dict[str, Any]) -> list[str]:
    problems = []
    for name, svc in doc["services"].items():
        for port in svc.get("ports", []):
            text = interpolate(port)
            if not isinstance(text, str) or not text.startswith("127.0.0.1:") or text.count(":") != 2:
                problems.append(f"{name} publishes {port!r} beyond loopback")
    return problems


def image_problems(doc: dict[str, Any]) -> list[str]:
    problems = []
    for name, svc in doc["services"].items():
        image = svc.get("image")
        if image is not None:
            tag = image.rsplit("/", 1)[-1].partition(":")[2]
            if not tag or tag == "latest":
                problems.append(f"{name}: image {image} has no version tag")
        elif "build" not in svc:
            problems.append(f"{name} has neither an image nor a build")
    return problems


def secret_problems(doc: dict[str, Any]) -> list[str]:
    problems = []
    for name, svc in doc["services"].items():
        for key, value in (svc.get("environment") or {}).items():
            if SECRET_NAME.search(key) and not ONE_VARIABLE.match(str(value)):
                problems.append(f"{name}: {key} is not taken from the environment")
        if re.search(r"password|secret", str(svc.get("environment", {}).get("FLINK_PROPERTIES", "")), re.I):
            problems.append(f"{name}: a secret in FLINK_PROPERTIES")
    return problems


# --- Tests ------------------------------------------------------------------------------------


def test_the_file_is_valid_against_the_compose_specification():
    assert schema_problems(compose()) == []


def test_the_schema_check_refuses_a_misspelt_key():
    doc = compose()
    doc["services"]["flink-worker-pool-1"]["network-mode"] = doc["services"]["flink-worker-pool-1"].pop("network_mode")
    assert any("network-mode" in problem for problem in schema_problems(doc))


def test_a_plain_up_is_the_native_stack_and_flink_is_a_profile():
    assert profile_problems(compose()) == []


def test_the_profile_check_finds_a_flink_service_outside_its_profile():
    doc = compose()
    del doc["services"]["flink-taskmanager-2"]["profiles"]
    assert profile_problems(doc) == [
        f"a plain `docker compose up` starts {sorted(BASE_SERVICES | {'flink-taskmanager-2'})}, "
        f"not {sorted(BASE_SERVICES)}",
        "flink-taskmanager-2 is in profiles None, not ['flink']",
    ]


def test_the_cluster_is_configured_as_the_native_one():
    assert flink_config_problems(compose()) == []


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("heartbeat.timeout", "50000", "'50000', the native cluster's is '10000'"),
        ("classloader.resolve-order", "child-first", "'child-first', the native cluster's is 'parent-first'"),
        ("restart-strategy.type", "fixed-delay", "'fixed-delay', the native cluster's is 'exponential-delay'"),
    ],
)
def test_the_config_check_finds_a_setting_that_differs(key, value, expected):
    doc = compose()
    text = doc["services"]["flink-taskmanager-1"]["environment"]["FLINK_PROPERTIES"]
    changed = re.sub(rf"^{re.escape(key)}: .*$", f"{key}: {value}", text, flags=re.MULTILINE)
    doc["services"]["flink-taskmanager-1"]["environment"]["FLINK_PROPERTIES"] = changed
    assert flink_config_problems(doc) == [f"flink-taskmanager-1: {key} is {expected}"]


def test_the_config_check_finds_a_missing_setting():
    doc = compose()
    text = doc["services"][JOBMANAGER]["environment"]["FLINK_PROPERTIES"]
    doc["services"][JOBMANAGER]["environment"]["FLINK_PROPERTIES"] = re.sub(
        r"^state\.backend\.type: .*\n", "", text, flags=re.MULTILINE
    )
    assert flink_config_problems(doc) == [
        f"{JOBMANAGER}: state.backend.type is None, the native cluster's is 'hashmap'"
    ]


def test_checkpoints_go_to_one_named_volume_of_the_jobmanager_and_every_taskmanager():
    doc = compose()
    assert checkpoint_volume_problems(doc) == []
    doc["services"]["flink-taskmanager-2"]["volumes"] = []
    assert checkpoint_volume_problems(doc) == ["flink-taskmanager-2 mounts no volume over /flink-data/checkpoints"]


def test_a_new_checkpoint_volume_is_given_to_flinks_user_before_the_cluster_starts():
    services = compose()["services"]
    init = services["flink-volume-init"]
    assert init["image"] == services[JOBMANAGER]["image"]
    assert init["volumes"] == ["flink-checkpoints:/flink-data"]
    assert "chown -R 9999:9999 /flink-data" in init["entrypoint"][-1]
    assert services[JOBMANAGER]["depends_on"]["flink-volume-init"] == {"condition": "service_completed_successfully"}


def test_each_taskmanager_has_its_worker_pool_on_its_loopback_where_the_job_is_told(monkeypatch):
    doc = compose()
    assert sidecar_problems(doc, pipeline_settings(doc, monkeypatch)) == []


def test_the_sidecar_check_finds_a_pool_on_the_wrong_taskmanager_or_address(monkeypatch):
    doc = compose()
    settings = pipeline_settings(doc, monkeypatch)
    pool = doc["services"]["flink-worker-pool-2"]
    pool["network_mode"] = "service:flink-taskmanager-1"
    pool["command"] = [arg.replace("127.0.0.1:", "0.0.0.0:") for arg in pool["command"]]
    assert sidecar_problems(doc, settings) == [
        "flink-worker-pool-2 listens on 0.0.0.0:50000, the TaskManager asks 127.0.0.1:50000",
        "flink-worker-pool-2's metrics ports are 59474-59477, flink-taskmanager-1's are [59470, 59471, 59472, 59473]",
        "worker pools serve ['flink-taskmanager-1', 'flink-taskmanager-1'], not one each of "
        "['flink-taskmanager-1', 'flink-taskmanager-2']",
    ]


def test_the_pipeline_runs_on_the_cluster_with_every_slot(monkeypatch):
    doc = compose()
    settings = pipeline_settings(doc, monkeypatch)
    props = flink_properties(env_of(doc, JOBMANAGER)["FLINK_PROPERTIES"])
    assert settings.pipeline.runner == "flink"
    assert settings.pipeline.readers == 16
    assert settings.flink.external
    assert settings.flink.rest_url == f"http://{JOBMANAGER}:{props['rest.port']}"
    slots = int(props["taskmanager.numberOfTaskSlots"])
    assert settings.flink.job_parallelism == len(taskmanagers(doc)) * slots == 2
    depends = doc["services"][PIPELINE]["depends_on"]
    assert depends[JOBMANAGER] == {"condition": "service_healthy"}
    assert set(worker_pools(doc)) <= set(depends)


def test_the_pipelines_image_is_the_worker_pools_with_beams_job_server():
    services = compose()["services"]
    build = services[PIPELINE]["build"]
    assert build["dockerfile"] == "infra/k8s/Dockerfile"
    base = build["args"]["PIPELINE_IMAGE"]
    pool = build["additional_contexts"][base].removeprefix("service:")
    assert pool in worker_pools(compose()) and services[pool]["build"] == "."
    dockerfile = K8S_DOCKERFILE.read_text()
    assert "FROM ${PIPELINE_IMAGE}" in dockerfile
    # pipeline/flink_job_server.py starts the job server from FLINK_LIB_DIR/* once a
    # beam-runners-flink-*.jar is there.
    (lib_dir,) = re.findall(r"FLINK_LIB_DIR=(\S+)", dockerfile)
    (jar,) = re.findall(r"^COPY --from=job-server \S+ (\S+)$", dockerfile, re.MULTILINE)
    assert jar.rstrip("/") == lib_dir or jar.startswith(lib_dir + "/")
    assert re.search(r"/beam-runners-flink-\S*\.jar ", dockerfile)


def test_published_ports_are_on_the_loopback_only():
    doc = compose()
    assert published_port_problems(doc) == []
    doc["services"][JOBMANAGER]["ports"] = ["${FLINK_REST_PORT:-58081}:8081"]
    expected = f"{JOBMANAGER} publishes '${{FLINK_REST_PORT:-58081}}:8081' beyond loopback"
    assert published_port_problems(doc) == [expected]


def test_images_carry_a_version_tag():
    doc = compose()
    assert image_problems(doc) == []
    doc["services"]["flink-taskmanager-1"]["image"] = "flink"
    doc["services"]["flink-taskmanager-2"]["image"] = "flink:latest"
    assert image_problems(doc) == [
        "flink-taskmanager-1: image flink has no version tag",
        "flink-taskmanager-2: image flink:latest has no version tag",
    ]


def test_passwords_come_from_the_environment():
    doc = compose()
    assert secret_problems(doc) == []
    doc["services"][PIPELINE]["environment"]["REDIS_PASSWORD"] = "redis-local"
    assert secret_problems(doc) == [f"{PIPELINE}: REDIS_PASSWORD is not taken from the environment"]


def test_interpolation_applies_compose_defaults():
    assert interpolate("127.0.0.1:${FLINK_REST_PORT:-58081}:8081") == "127.0.0.1:58081:8081"
    assert interpolate("${A:-x}/${B-y}/${C}/$$", {"A": "", "B": ""}) == "x///$"
    with pytest.raises(KeyError):
        interpolate("${GRAFANA_ADMIN_PASSWORD:?set it}")


# --- Each container gets only its own secrets ----------------------------------------------------

NOT_SECRETS = {"ALLOW_LOCAL_DEFAULT_PASSWORDS"}  # a switch, named after what it is about
# Every secret a service receives (environment or command line), and why it needs it. A service
# missing from the map receives none.
SECRETS: dict[str, dict[str, str]] = {
    "postgres": {"POSTGRES_PASSWORD": "the image sets the superuser's password from it (initdb)"},
    "connect": {"POSTGRES_CDC_PASSWORD": "Debezium's database.password, ${env:...} in the connector config"},
    "redis": {"REDIS_PASSWORD": "requirepass, and the health check's redis-cli"},
    "init": {
        "POSTGRES_SUPERUSER_PASSWORD": "creates the roles and grants (python -m infra.stack provision)",
        "POSTGRES_PASSWORD": "sets the application role's password; creates the schema as that role",
        "POSTGRES_CDC_PASSWORD": "sets the CDC role's password",
        "POSTGRES_MONITOR_PASSWORD": "sets the monitoring role's password",
    },
    "generator": {"POSTGRES_PASSWORD": "writes content and events as the application role"},
    "pipeline": {
        "REDIS_PASSWORD": "the Redis sinks, the instance lock, positions",
        "POSTGRES_MONITOR_PASSWORD": "python -m pipeline status reads the replication slot",
    },
    "pipeline-flink": {
        "REDIS_PASSWORD": "the instance lock and positions in the supervisor",
        "POSTGRES_MONITOR_PASSWORD": "python -m pipeline status reads the replication slot",
    },
    "flink-worker-pool-1": {"REDIS_PASSWORD": "the Redis sinks on the workers resolve it here (infra/secrets.py)"},
    "flink-worker-pool-2": {"REDIS_PASSWORD": "the Redis sinks on the workers resolve it here (infra/secrets.py)"},
    "dashboard": {"REDIS_PASSWORD": "reads the boards"},
    "grafana": {"GF_SECURITY_ADMIN_PASSWORD": "Grafana's admin login"},
}


def secrets_received(doc: dict[str, Any]) -> dict[str, set[str]]:
    """Per service, the secret variables it receives: in its environment, or interpolated into its
    command (``--requirepass ${REDIS_PASSWORD}``)."""
    received = {}
    for name, svc in doc["services"].items():
        names = {key for key in (svc.get("environment") or {}) if SECRET_NAME.search(key)}
        command = json.dumps(svc.get("command", []))
        names |= set(re.findall(r"\$\{([A-Z][A-Z0-9_]*)", command))
        names = {n for n in names if SECRET_NAME.search(n)} - NOT_SECRETS
        if names:
            received[name] = names
    return received


def test_each_service_receives_only_the_secrets_it_uses():
    expected = {service: set(secrets) for service, secrets in SECRETS.items()}
    assert secrets_received(compose()) == expected


def test_the_secret_check_finds_a_password_handed_to_a_service_that_does_not_use_it():
    doc = compose()
    doc["services"]["generator"]["environment"]["POSTGRES_SUPERUSER_PASSWORD"] = "${POSTGRES_SUPERUSER_PASSWORD}"
    doc["services"]["bigquery"]["environment"] = {"REDIS_PASSWORD": "${REDIS_PASSWORD}"}
    received = secrets_received(doc)
    assert received["generator"] == {"POSTGRES_PASSWORD", "POSTGRES_SUPERUSER_PASSWORD"}
    assert received["bigquery"] == {"REDIS_PASSWORD"}


def test_no_secret_is_shared_through_the_common_environment():
    # x-app-env reaches most services: a password there would reach all of them.
    assert not [key for key in _raw()["x-app-env"] if SECRET_NAME.search(key) and key not in NOT_SECRETS]


# --- Docker Compose's own loader ---------------------------------------------------------------

COMPOSE_CONFIG = REPO_ROOT / ".stack" / "bin" / "compose-config"  # built by make bootstrap
PROFILES = {
    "kafka3": {"kafka-2", "kafka-3"},
    "pipeline": {"pipeline", "dashboard"},
    "flink": FLINK_SERVICES,
    "monitoring": {"prometheus", "grafana"},
}


def loaded(path: Path, *profiles: str) -> tuple[int, str, set[str]]:
    """``docker compose [--profile P ...] config`` of ``path`` by compose-go, with nothing set in
    the environment: the exit code, the error, and the services ``up`` would start."""
    if not COMPOSE_CONFIG.exists():
        pytest.fail(f"{COMPOSE_CONFIG.relative_to(REPO_ROOT)} is missing: run make bootstrap")
    result = subprocess.run(
        [str(COMPOSE_CONFIG), str(path), *profiles],
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(path.parent)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return result.returncode, result.stderr.strip(), set(result.stdout.split())


def test_a_plain_up_loads_in_docker_composes_loader_with_nothing_set():
    assert loaded(COMPOSE) == (0, "", BASE_SERVICES)


@pytest.mark.parametrize("profile", sorted(PROFILES))
def test_each_profile_loads_with_nothing_set_and_adds_its_services(profile):
    assert loaded(COMPOSE, profile) == (0, "", BASE_SERVICES | PROFILES[profile])


def test_the_loader_refuses_a_required_variable_even_in_a_profile_not_started(tmp_path):
    # Why Grafana's password is checked by its container, not by ${GRAFANA_ADMIN_PASSWORD:?}.
    doc = compose()
    doc["services"]["grafana"]["environment"]["GF_SECURITY_ADMIN_PASSWORD"] = "${GRAFANA_ADMIN_PASSWORD:?set it}"
    broken = tmp_path / "docker-compose.yml"
    broken.write_text(yaml.safe_dump(doc))
    code, error, _ = loaded(broken)
    assert (code, error) == (
        1,
        "error while interpolating services.grafana.environment.GF_SECURITY_ADMIN_PASSWORD: "
        "required variable GRAFANA_ADMIN_PASSWORD is missing a value: set it",
    )


def test_grafana_refuses_to_start_without_its_password():
    grafana = compose()["services"]["grafana"]
    assert grafana["environment"]["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-}"
    guard = interpolate(grafana["entrypoint"])[-1]
    refuse = '{ echo "set GRAFANA_ADMIN_PASSWORD" >&2; exit 1; }'
    assert guard == f'[ -n "$GF_SECURITY_ADMIN_PASSWORD" ] || {refuse}; exec /run.sh'  # /run.sh: the image's own
