"""The Kubernetes manifests (infra/k8s), checked offline: no cluster, no kubectl.

- The FlinkDeployment against the openAPIV3Schema of the operator's own CRD (vendored in
  infra/k8s/schema), made strict: an object that lists its fields accepts no other, as
  ``kubectl apply --validate=strict`` does (a CRD alone would let the API server drop a misspelt
  field without a word).
- The submitter Job's pod spec against the Pod spec schema embedded in the same CRD; the other core
  kinds' specs against small schemas of the fields they may use.
- What ties the files together: the worker pool on the pod's loopback at the address the job is
  told, the Flink options the job is submitted with (built from settings.env by the pipeline's own
  code), the parallelism and the cluster's slots, the volume and the HA and checkpoint paths, the
  network policy and Flink's and the workers' metrics ports, every environment variable a setting,
  every secret from the Secret, images pinned.
"""

import copy
import ipaddress
import re
from collections.abc import Iterator
from functools import cache
from typing import Any

import jsonschema
import pytest
import yaml
from pydantic import SecretStr
from pydantic_settings import BaseSettings

from infra.reserved_ports import parse_ranges
from infra.settings import REPO_ROOT, Settings
from pipeline.dataflow_launch import setting_names
from pipeline.runners import flink_options

K8S = REPO_ROOT / "infra" / "k8s"
CRD = K8S / "schema" / "flinkdeployments.flink.apache.org-v1.yml"
SECRET_NAME = "engagement-secrets"
SETTINGS_CONFIGMAP = "engagement-settings"
WORKER_POOL_MODULE = "pipeline.worker_pool"

KINDS = {
    ("v1", "Namespace"),
    ("v1", "PersistentVolumeClaim"),
    ("flink.apache.org/v1beta1", "FlinkDeployment"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("batch/v1", "Job"),
}


def _object(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


_INT = {"type": "integer"}
_STR = {"type": "string"}
_LABELS = {"type": "object", "additionalProperties": _STR}
_SELECTOR = _object({"matchLabels": _LABELS, "matchExpressions": {"type": "array", "items": {"type": "object"}}})
_PEER = _object({"podSelector": _SELECTOR, "namespaceSelector": _SELECTOR, "ipBlock": {"type": "object"}})
_PORT = _object(
    {"protocol": {"enum": ["TCP", "UDP", "SCTP"]}, "port": {"type": ["integer", "string"]}, "endPort": _INT}
)
_RULES = {
    "type": "array",
    "items": _object(
        {
            "from": {"type": "array", "items": _PEER},
            "to": {"type": "array", "items": _PEER},
            "ports": {"type": "array", "items": _PORT},
        }
    ),
}
# The fields of the core kinds' specs these manifests may use (Kubernetes 1.29+, batch/v1 JobSpec,
# networking.k8s.io/v1 NetworkPolicySpec, v1 PersistentVolumeClaimSpec); a Job's pod spec is checked
# against the CRD's Pod spec schema instead.
CORE_SPECS: dict[str, dict[str, Any]] = {
    "Job": _object(
        {
            "backoffLimit": _INT,
            "activeDeadlineSeconds": _INT,
            "ttlSecondsAfterFinished": _INT,
            "completions": _INT,
            "parallelism": _INT,
            "podReplacementPolicy": {"enum": ["Failed", "TerminatingOrFailed"]},
            "template": _object({"metadata": {"type": "object"}, "spec": {"type": "object"}}, ("spec",)),
        },
        ("template",),
    ),
    "NetworkPolicy": _object(
        {
            "podSelector": _SELECTOR,
            "policyTypes": {"type": "array", "items": {"enum": ["Ingress", "Egress"]}},
            "ingress": _RULES,
            "egress": _RULES,
        },
        ("podSelector",),
    ),
    "PersistentVolumeClaim": _object(
        {
            "accessModes": {
                "type": "array",
                "items": {"enum": ["ReadWriteOnce", "ReadOnlyMany", "ReadWriteMany", "ReadWriteOncePod"]},
            },
            "resources": _object({"requests": _LABELS, "limits": _LABELS}),
            "storageClassName": _STR,
            "volumeMode": {"enum": ["Filesystem", "Block"]},
        },
        ("accessModes", "resources"),
    ),
}


# --- Loading ----------------------------------------------------------------------------------


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((K8S / "kustomization.yaml").read_text())


def manifests() -> dict[str, dict[str, Any]]:
    """Each resource of the kustomization, by kind (one of each)."""
    docs = [doc for name in kustomization()["resources"] for doc in yaml.safe_load_all((K8S / name).read_text())]
    by_kind = {doc["kind"]: doc for doc in docs}
    assert len(by_kind) == len(docs)
    return by_kind


def env_file(path: str) -> dict[str, str]:
    """``NAME=value`` lines of an env file, commented-out ones included (``# NAME=``)."""
    pairs = re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=(.*)$", (K8S / path).read_text(), re.MULTILINE)
    return dict(pairs)


def active_env(path: str) -> dict[str, str]:
    return dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.*)$", (K8S / path).read_text(), re.MULTILINE))


def strict(schema: Any) -> Any:
    """The schema with ``additionalProperties: false`` on every object that lists its properties and
    does not keep unknown fields on purpose."""
    if isinstance(schema, list):
        return [strict(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    out = {key: strict(value) if key != "properties" else value for key, value in schema.items()}
    if "properties" in schema:
        out["properties"] = {name: strict(sub) for name, sub in schema["properties"].items()}
        if "additionalProperties" not in schema and not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    return out


@cache
def crd_schema() -> dict[str, Any]:
    crd = yaml.load(CRD.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1beta1"]
    schema = strict(version["schema"]["openAPIV3Schema"])
    # Every object has these; the API server checks them, so a CRD's schema leaves them out.
    schema["properties"] |= {
        "apiVersion": {"const": "flink.apache.org/v1beta1"},
        "kind": {"const": "FlinkDeployment"},
        "metadata": _object({"name": _STR, "labels": _LABELS, "annotations": _LABELS}, ("name",)),
    }
    return schema


def pod_spec_schema() -> dict[str, Any]:
    spec = crd_schema()["properties"]["spec"]["properties"]
    return spec["taskManager"]["properties"]["podTemplate"]["properties"]["spec"]


def errors(schema: dict[str, Any], instance: Any) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return sorted(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(instance))


def containers(pod_spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from pod_spec.get("initContainers", [])
    yield from pod_spec.get("containers", [])


def pod_specs() -> Iterator[tuple[str, dict[str, Any]]]:
    """Every pod spec of the manifests: the FlinkDeployment's templates and the Job's."""
    m = manifests()
    fd = m["FlinkDeployment"]["spec"]
    yield "common", fd["podTemplate"]["spec"]
    for part in ("jobManager", "taskManager"):
        if "podTemplate" in fd[part]:
            yield part, fd[part]["podTemplate"]["spec"]
    yield "job", m["Job"]["spec"]["template"]["spec"]


def taskmanager_pod() -> dict[str, Any]:
    """The TaskManager's pod spec as the operator builds it with merge-arrays-by-name: the common
    template's containers and volumes, the TaskManager's merged in by name."""
    fd = manifests()["FlinkDeployment"]["spec"]
    common, own = fd["podTemplate"]["spec"], fd["taskManager"]["podTemplate"]["spec"]
    merged = copy.deepcopy(common)
    for key in ("containers", "volumes"):
        by_name = {item["name"]: item for item in merged.get(key, [])}
        for item in own.get(key, []):
            by_name[item["name"]] = {**by_name.get(item["name"], {}), **item}
        merged[key] = list(by_name.values())
    return merged


def worker_pool() -> dict[str, Any]:
    (pool,) = [c for c in taskmanager_pod()["containers"] if WORKER_POOL_MODULE in c.get("command", [])]
    return pool


def pool_args() -> dict[str, str]:
    """The worker pool's ``--name=value`` arguments, by name."""
    pairs = [arg.removeprefix("--").split("=", 1) for arg in worker_pool()["args"]]
    return {name: value for name, value in pairs}


def k8s_settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The settings the submitter runs with: settings.env over the defaults."""
    for name, value in active_env("settings.env").items():
        monkeypatch.setenv(name, value)
    for name in secret_settings():  # from the Secret, as on the cluster
        monkeypatch.setenv(name, f"k8s-{name.lower()}")
    return Settings()


def secret_settings() -> dict[str, str]:
    """Every secret setting's variable, with its local default ('' if none)."""
    secrets = {}
    for field in Settings.model_fields.values():
        model = field.annotation
        if isinstance(model, type) and issubclass(model, BaseSettings):
            prefix = model.model_config.get("env_prefix", "")
            for name, sub in model.model_fields.items():
                if "Secret" in str(sub.annotation):
                    default = sub.default
                    secrets[f"{prefix}{name}".upper()] = (
                        default.get_secret_value() if isinstance(default, SecretStr) else ""
                    )
    return secrets


def k8s_texts() -> dict[str, str]:
    return {p.name: p.read_text() for p in K8S.iterdir() if p.is_file()}


# --- The files and their kinds ------------------------------------------------------------------


def test_every_manifest_is_a_resource_of_the_kustomization_and_of_a_known_kind():
    listed = set(kustomization()["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk
    for name in listed:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            assert (doc["apiVersion"], doc["kind"]) in KINDS, name
            assert doc["metadata"]["name"]
            # The kustomization puts everything in one namespace.
            assert "namespace" not in doc["metadata"], name
    assert {kind for _, kind in KINDS} == set(manifests())
    assert kustomization()["namespace"] == manifests()["Namespace"]["metadata"]["name"]


def test_the_flink_deployment_is_valid_against_the_operators_crd():
    assert errors(crd_schema(), manifests()["FlinkDeployment"]) == []


@pytest.mark.parametrize(
    ("path", "value", "expected"),
    [
        (("spec", "taskManager", "replica"), 2, "Additional properties are not allowed ('replica' was unexpected)"),
        (("spec", "flinkVersion"), "v1_91", "'v1_91' is not one of"),
        (("spec", "jobManager", "resource", "memory"), 2048, "2048 is not of type 'string'"),
        (
            ("spec", "taskManager", "podTemplate", "spec", "containers", 0, "comand"),
            ["python"],
            "'comand' was unexpected",
        ),
        (
            ("spec", "taskManager", "podTemplate", "spec", "containers", 0, "args"),
            "--address=127.0.0.1:50000",
            "is not of type 'array'",
        ),
    ],
)
def test_the_crd_check_refuses_a_broken_flink_deployment(path, value, expected):
    broken = copy.deepcopy(manifests()["FlinkDeployment"])
    node = broken
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    found = errors(crd_schema(), broken)
    assert len(found) == 1
    assert expected in found[0]


def test_the_core_kinds_specs_and_the_jobs_pod_are_valid():
    m = manifests()
    for kind, schema in CORE_SPECS.items():
        assert errors(schema, m[kind]["spec"]) == [], kind
    assert errors(pod_spec_schema(), m["Job"]["spec"]["template"]["spec"]) == []
    assert m["Namespace"].keys() == {"apiVersion", "kind", "metadata"}


def test_the_pod_spec_check_refuses_a_misspelt_field():
    job = copy.deepcopy(manifests()["Job"])
    job["spec"]["template"]["spec"]["containers"][0]["envFrom"][0]["configMapRef"]["nmae"] = "x"
    assert errors(pod_spec_schema(), job["spec"]["template"]["spec"]) == [
        "containers/0/envFrom/0/configMapRef: Additional properties are not allowed ('nmae' was unexpected)"
    ]


def test_every_container_is_named_and_mounts_only_volumes_of_its_pod():
    for where, spec in [*pod_specs(), ("taskmanager (merged)", taskmanager_pod())]:
        volumes = {v["name"] for v in spec.get("volumes", [])}
        for container in containers(spec):
            assert container["name"], where
            for env in container.get("env", []):
                assert ("value" in env) != ("valueFrom" in env), (where, env)
            if where in ("common", "taskManager"):
                continue  # parts of a pod: the merged TaskManager pod and the JobManager's are checked
            assert {m["name"] for m in container.get("volumeMounts", [])} <= volumes, (where, container["name"])


# --- The cluster ---------------------------------------------------------------------------------


def test_the_cluster_has_kubernetes_ha_checkpoints_and_a_restart_strategy():
    fd = manifests()["FlinkDeployment"]["spec"]
    conf = fd["flinkConfiguration"]
    assert fd["flinkVersion"] == "v1_19"
    assert all(isinstance(value, str) for value in conf.values())
    assert conf["high-availability.type"] == "kubernetes"
    assert conf["execution.checkpointing.interval"] == "30s"
    assert conf["restart-strategy.type"] in {"exponential-delay", "fixed-delay", "failure-rate"}
    assert int(conf["taskmanager.numberOfTaskSlots"]) >= 1
    # The layered pod templates rely on it (the default merges containers by position).
    assert conf["kubernetes.operator.pod-template.merge-arrays-by-name"] == "true"
    # HA data and checkpoints are on the shared volume, mounted in Flink's container of every pod.
    (main,) = [c for c in fd["podTemplate"]["spec"]["containers"] if c["name"] == "flink-main-container"]
    (mount,) = main["volumeMounts"]
    for key in ("high-availability.storageDir", "state.checkpoints.dir", "state.savepoints.dir"):
        assert conf[key].startswith(f"file://{mount['mountPath']}/"), key
    (volume,) = [v for v in fd["podTemplate"]["spec"]["volumes"] if v["name"] == mount["name"]]
    pvc = manifests()["PersistentVolumeClaim"]
    assert volume["persistentVolumeClaim"]["claimName"] == pvc["metadata"]["name"]
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_the_worker_pool_is_a_taskmanager_sidecar_on_the_pods_loopback_where_the_job_is_told():
    pool = worker_pool()
    assert pool["command"] == ["python", "-m", WORKER_POOL_MODULE]
    args = pool_args()
    assert args.keys() == {"address", "metrics-ports"}
    host, port = args["address"].rsplit(":", 1)
    # Nothing outside the pod reaches it (it starts processes for whoever asks), so nothing to declare.
    assert ipaddress.ip_address(host).is_loopback
    assert "ports" not in pool
    # The TaskManager shares the pod's network: it reaches the pool on its own loopback.
    settings = active_env("settings.env")
    assert settings["FLINK_ENVIRONMENT"] == "external"
    pool_host, pool_port = settings["FLINK_WORKER_POOL"].rsplit(":", 1)
    assert pool_host in {"localhost", host}
    assert pool_port == port
    # The SDK that builds the job runs it: the submitter and the pools share one image.
    (submitter,) = manifests()["Job"]["spec"]["template"]["spec"]["containers"]
    assert pool["image"] == submitter["image"]
    assert submitter["command"] == ["python", "-m", "pipeline", "--runner", "flink"]


def test_every_worker_gets_a_metrics_port_that_stays_in_the_pod_by_default(monkeypatch):
    ports = sorted(parse_ranges(pool_args()["metrics-ports"]))
    assert len(ports) >= k8s_settings(monkeypatch).flink.sdk_workers
    # The workers serve on METRICS_HOST; exposing them to the pod's network is a choice left to the
    # operator (the commented-out env in flink-deployment.yaml).
    env = {e["name"]: e.get("value") for e in worker_pool().get("env", [])}
    host = env.get("METRICS_HOST", Settings().metrics.host)
    assert ipaddress.ip_address(host).is_loopback


def test_the_job_is_submitted_to_the_clusters_rest_service_at_the_parallelism_of_its_slots():
    fd = manifests()["FlinkDeployment"]
    settings = active_env("settings.env")
    assert settings["FLINK_MASTER"] == f"{fd['metadata']['name']}-rest:8081"
    slots = int(fd["spec"]["flinkConfiguration"]["taskmanager.numberOfTaskSlots"])
    # Always set: 0 would be the local cluster's FLINK_TASKMANAGERS x FLINK_SLOTS.
    parallelism = int(settings["FLINK_PARALLELISM"])
    # Flink starts parallelism / slots TaskManagers (native mode): whole ones. Replicas are ignored there.
    assert parallelism % slots == 0
    assert "replicas" not in fd["spec"]["taskManager"]
    assert parallelism <= Settings().cdc.engagement_partitions
    assert settings["PIPELINE_RUNNER"] == "flink"


def test_the_job_takes_the_clusters_restart_strategy_and_the_settings_checkpoints(monkeypatch):
    flink = k8s_settings(monkeypatch).flink
    conf = manifests()["FlinkDeployment"]["spec"]["flinkConfiguration"]
    options = flink_options(flink)
    # No restart strategy of the job's own: the cluster's applies (a job's own would take precedence).
    assert flink.restarts == -1
    assert not [o for o in options if o.startswith("--number_of_execution_retries")]
    assert conf["restart-strategy.type"] == "exponential-delay"
    assert options == [
        "--parallelism=4",
        f"--max_bundle_time_mills={flink.max_bundle_time_ms}",
        "--environment_type=EXTERNAL",
        "--environment_config=localhost:50000",
        "--sdk_worker_parallelism=1",
        "--checkpointing_interval=30000",
    ]
    # The cluster's interval is only a default for jobs that set none; this one sets the same.
    assert conf["execution.checkpointing.interval"] == f"{flink.checkpoint_interval_ms // 1000}s"


def test_settings_env_builds_the_settings(monkeypatch):
    settings = k8s_settings(monkeypatch)
    assert settings.pipeline.runner == "flink"
    assert settings.flink.master == "engagement-flink-rest:8081"
    # Where the job process looks for a job of this instance left running before it submits.
    assert settings.flink.rest_url == f"http://{settings.flink.master}"
    assert settings.flink.external


def test_the_network_policy_admits_flinks_ports_from_the_cluster_and_metrics_from_prometheus():
    fd = manifests()["FlinkDeployment"]
    conf = fd["spec"]["flinkConfiguration"]
    policy = manifests()["NetworkPolicy"]["spec"]
    # The labels Flink's native Kubernetes mode puts on its pods.
    assert policy["podSelector"]["matchLabels"] == {"app": fd["metadata"]["name"], "component": "taskmanager"}
    assert policy["policyTypes"] == ["Ingress"]
    flink_rule, metrics_rule = policy["ingress"]
    assert flink_rule["from"] == [{"podSelector": {"matchLabels": {"app": fd["metadata"]["name"]}}}]
    ports = {p["port"] for p in flink_rule["ports"]}
    assert ports == {int(conf["taskmanager.rpc.port"]), int(conf["taskmanager.data.port"])}
    # One namespace, not everyone, and exactly the workers' metrics ports.
    (peer,) = metrics_rule["from"]
    assert peer.keys() == {"namespaceSelector"}
    assert peer["namespaceSelector"]["matchLabels"]
    (metrics,) = metrics_rule["ports"]
    metrics_ports = sorted(parse_ranges(pool_args()["metrics-ports"]))
    assert (metrics["port"], metrics["endPort"]) == (metrics_ports[0], metrics_ports[-1])
    # The pool itself is never admitted: it is not on the pod's network at all.
    pool_port = int(pool_args()["address"].rsplit(":", 1)[1])
    assert all(
        not p["port"] <= pool_port <= p.get("endPort", p["port"]) for rule in policy["ingress"] for p in rule["ports"]
    )


def test_the_image_carries_the_job_server_where_the_settings_look_for_it():
    dockerfile = (K8S / "Dockerfile").read_text()
    (lib_dir,) = re.findall(r"FLINK_LIB_DIR=(\S+)", dockerfile)
    copied = re.findall(r"^COPY --from=job-server \S+/(beam-runners-flink-\S*\.jar) (\S+)$", dockerfile, re.MULTILINE)
    assert copied == [("beam-runners-flink-job-server.jar", f"{lib_dir}/")]
    assert "FLINK_LIB_DIR" in setting_names()


# --- Settings, secrets, images -----------------------------------------------------------------


def test_every_environment_variable_is_a_setting():
    names = set(env_file("settings.env")) | set(env_file("secrets.env.example"))
    for _, spec in pod_specs():
        for container in containers(spec):
            names |= {env["name"] for env in container.get("env", [])}
    assert names - setting_names() == set()


def test_secrets_come_only_from_the_secret():
    secrets = secret_settings()
    assert {"REDIS_PASSWORD", "HTTP_SINK_AUTH_TOKEN", "POSTGRES_PASSWORD"} <= set(secrets)
    referenced = set()
    for where, spec in pod_specs():
        for container in containers(spec):
            assert "envFrom" not in container or all("secretRef" not in e for e in container["envFrom"]), where
            for env in container.get("env", []):
                if env["name"] in secrets:
                    ref = env["valueFrom"]["secretKeyRef"]
                    assert (ref["name"], ref["key"]) == (SECRET_NAME, env["name"])
                    referenced.add(ref["key"])
            for source in container.get("envFrom", []):
                assert source["configMapRef"]["name"] == SETTINGS_CONFIGMAP
    assert "REDIS_PASSWORD" in referenced
    # The example lists exactly the keys the Job reads, with no value.
    example = env_file("secrets.env.example")
    assert set(example) == referenced
    assert set(example.values()) == {""}
    assert not set(env_file("settings.env")) & set(secrets)
    (generator,) = kustomization()["configMapGenerator"]
    assert (generator["name"], generator["envs"]) == (SETTINGS_CONFIGMAP, ["settings.env"])


def test_no_secret_value_is_written_in_the_manifests():
    local = {value for value in secret_settings().values() if value}
    dotenv = dict(re.findall(r"^([A-Z][A-Z0-9_]*)=(.+)$", (REPO_ROOT / ".env.example").read_text(), re.MULTILINE))
    local |= {value for name, value in dotenv.items() if name in secret_settings()}
    assert "redis-local" in local
    for name, text in k8s_texts().items():
        assert [value for value in local if value in text] == [], name


def image_refs() -> list[str]:
    refs = [c["image"] for _, spec in pod_specs() for c in containers(spec) if "image" in c]
    refs.append(manifests()["FlinkDeployment"]["spec"]["image"])
    dockerfile = (K8S / "Dockerfile").read_text()
    args = dict(re.findall(r"^ARG (\w+)=(\S+)$", dockerfile, re.MULTILINE))
    for ref in re.findall(r"^FROM (\S+)", dockerfile, re.MULTILINE):
        refs.append(re.sub(r"\$\{(\w+)\}", lambda m: args[m.group(1)], ref))
    refs += [f"{i['newName']}:{i['newTag']}" for i in kustomization()["images"]]
    return refs


def test_every_image_is_pinned():
    refs = image_refs()
    assert len(refs) >= 6
    for ref in refs:
        name, _, tag = ref.rpartition(":")
        assert "@sha256:" in ref or (name and "/" not in tag and tag != "latest"), ref


def test_the_kustomization_sets_the_projects_image_everywhere_it_is_used():
    (image,) = kustomization()["images"]
    ours = [c["image"] for _, spec in pod_specs() for c in containers(spec) if "image" in c]
    assert ours and all(ref.split(":")[0] == image["name"] for ref in ours)
