"""Offline checks of infra/: what can be verified without Kubernetes, Docker, a network or Ray.

- The KubeRay manifests (infra/kuberay) against the operator's own CRD schemas, made strict:
  ``additionalProperties: false`` on every object schema that lists ``properties`` (the CRDs
  leave it out, so a misspelled field would pass), ``x-kubernetes-int-or-string`` as "integer or
  string". The CRDs are read from ``$DENSEPIPE_SCHEMAS`` (the folder holding
  ray.io_rayclusters.yaml and ray.io_rayjobs.yaml, or its parent), else from
  ``../shared/schemas/kuberay`` beside the repository; those tests skip when neither has them.
  CEL rules (``x-kubernetes-validations``) are not checked.
- What the schema cannot say: one image, the shared volume and the MLflow URI on every pod, a
  GPU worker group, token auth, the RayJob's cluster equal to raycluster.yaml's, the MLflow
  server reachable under the URI the pods use.
- The image (infra/docker/Dockerfile): a cpu and a cuda variant, non-root, pins of torch /
  torchvision equal to the Makefile's and pins of ray / dvc / mlflow inside pyproject.toml's ranges.
- The dashboards listen on loopback where nothing else needs them (infra/ray-cluster.yaml,
  raycluster.yaml).
"""

from __future__ import annotations

import copy
import fnmatch
import functools
import os
import re
import shlex
import tomllib
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from pipeline.params import load_params
from pipeline.sweeps.spec import declared_sweeps

REPO = Path(__file__).resolve().parents[1]
INFRA = REPO / "infra"
KUBERAY = INFRA / "kuberay"
DOCKERFILE = INFRA / "docker" / "Dockerfile"
CRD_FILES = {"RayCluster": "ray.io_rayclusters.yaml", "RayJob": "ray.io_rayjobs.yaml"}

NAMESPACE = "densepipe"
MLFLOW_URI = "http://mlflow.densepipe.svc:5000"
SHARED_CLAIM = "densepipe-shared"
SHARED_MOUNT = "/shared"
TOKEN_SECRET = "densepipe-ray-token"
SWEEP_ENTRYPOINT = "cd /shared/densepipe && densepipe sweep fcn32s-lr-momentum"
PINNED = ("torch", "torchvision", "ray", "dvc", "mlflow")

# the C loader when PyYAML has it: the two CRDs are 2.3 MB of YAML
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def _load_all(path: Path) -> list[dict]:
    return [doc for doc in yaml.load_all(path.read_text(), Loader=_LOADER) if doc]


# ---------------------------------------------------------------------------------------------
# manifests


def _documents() -> list[tuple[str, dict]]:
    return [(path.name, doc) for path in sorted(KUBERAY.glob("*.yaml")) for doc in _load_all(path)]


def _ray_manifests() -> list[tuple[str, dict]]:
    return [(name, doc) for name, doc in _documents() if doc.get("kind") in CRD_FILES]


def _one(kind: str) -> dict:
    found = [doc for _, doc in _ray_manifests() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in {KUBERAY}, found {len(found)}"
    return found[0]


def _cluster_specs() -> list[tuple[str, dict]]:
    """(label, RayCluster spec) for the RayCluster and for each RayJob's rayClusterSpec."""
    out = []
    for name, doc in _ray_manifests():
        spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
        out.append((f"{name}:{doc['kind']}", spec))
    return out


def _pod_templates(spec: dict) -> list[tuple[str, dict]]:
    out = [("head", spec["headGroupSpec"]["template"])]
    out += [(f"worker {g['groupName']}", g["template"]) for g in spec.get("workerGroupSpecs", [])]
    return out


def _env(container: dict) -> dict:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def _mlflow_objects() -> dict[str, dict]:
    docs = _load_all(KUBERAY / "mlflow.yaml")
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in docs}


# ---------------------------------------------------------------------------------------------
# KubeRay CRD schemas


def _schema_dir() -> Path | None:
    env = os.environ.get("DENSEPIPE_SCHEMAS")
    if env:
        candidates = [Path(env), Path(env) / "kuberay"]
    else:
        candidates = [REPO.parent / "shared" / "schemas" / "kuberay"]
    for folder in candidates:
        if all((folder / f).is_file() for f in CRD_FILES.values()):
            return folder
    return None


def strict_schema(schema: dict) -> dict:
    """A copy of an OpenAPI v3 (structural) schema that rejects unknown fields.

    ``additionalProperties: false`` where an object lists ``properties`` and does not carry
    ``x-kubernetes-preserve-unknown-fields``; ``x-kubernetes-int-or-string`` becomes
    ``anyOf: [integer, string]`` (any ``pattern`` still applies to the string form).
    """
    out = dict(schema)
    if "properties" in out:
        out["properties"] = {k: strict_schema(v) for k, v in out["properties"].items()}
    for key in ("items", "additionalProperties", "not"):
        if isinstance(out.get(key), dict):
            out[key] = strict_schema(out[key])
    for key in ("allOf", "anyOf", "oneOf"):
        if key in out:
            out[key] = [strict_schema(s) for s in out[key]]
    if out.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if "properties" in out and not out.get("x-kubernetes-preserve-unknown-fields"):
        out.setdefault("additionalProperties", False)
    return out


@functools.cache
def _spec_schema(folder: Path, kind: str) -> dict:
    crd = yaml.load((folder / CRD_FILES[kind]).read_text(), Loader=_LOADER)
    assert crd["kind"] == "CustomResourceDefinition" and crd["spec"]["names"]["kind"] == kind
    v1 = next(v for v in crd["spec"]["versions"] if v["name"] == "v1")
    return v1["schema"]["openAPIV3Schema"]["properties"]["spec"]


@functools.cache
def _validator(folder: Path, kind: str, strict: bool) -> jsonschema.Draft7Validator:
    schema = _spec_schema(folder, kind)
    return jsonschema.Draft7Validator(strict_schema(schema) if strict else schema)


def _errors(validator: jsonschema.Draft7Validator, spec: dict) -> list[str]:
    return [
        f"spec.{'.'.join(map(str, e.absolute_path))}: {e.message}"
        for e in sorted(validator.iter_errors(spec), key=lambda e: list(map(str, e.path)))
    ]


@pytest.fixture(scope="module")
def schemas():
    folder = _schema_dir()
    if folder is None:
        where = os.environ.get("DENSEPIPE_SCHEMAS") or REPO.parent / "shared/schemas/kuberay"
        pytest.skip(f"KubeRay CRD schemas ({', '.join(CRD_FILES.values())}) not found in {where}")
    return lambda kind, strict=True: _validator(folder, kind, strict)


def test_strict_schema_rules():
    schema = strict_schema(
        {
            "type": "object",
            "properties": {
                "items": {"type": "array", "items": {"properties": {"a": {"type": "string"}}}},
                "map": {"additionalProperties": {"properties": {"b": {"type": "integer"}}}},
                "free": {"properties": {"c": {}}, "x-kubernetes-preserve-unknown-fields": True},
                "port": {"x-kubernetes-int-or-string": True, "type": "string"},
            },
        }
    )
    check = jsonschema.Draft7Validator(schema).is_valid
    assert check({"items": [{"a": "x"}], "map": {"k": {"b": 1}}, "free": {"z": 1}, "port": 80})
    assert check({"port": "http"})
    assert not check({"typo": 1})
    assert not check({"items": [{"a": "x", "typo": 1}]})
    assert not check({"map": {"k": {"typo": 1}}})
    assert not check({"port": 1.5})


def test_kuberay_manifests_present():
    kinds = sorted(doc["kind"] for _, doc in _ray_manifests())
    assert kinds == ["RayCluster", "RayJob"]
    for name, doc in _ray_manifests():
        assert doc["apiVersion"] == "ray.io/v1", name
        assert doc["metadata"]["namespace"] == NAMESPACE, name


@pytest.mark.parametrize(
    "name,doc",
    _ray_manifests(),
    ids=[f"{n}:{d['kind']}/{d['metadata']['name']}" for n, d in _ray_manifests()],
)
def test_manifest_matches_crd_schema(schemas, name, doc):
    errors = _errors(schemas(doc["kind"]), doc["spec"])
    assert not errors, f"{name} does not match the {doc['kind']} CRD:\n" + "\n".join(errors)


def _rename(node: dict, path: tuple, new_key: str) -> None:
    *parents, key = path
    for step in parents:
        node = node[step]
    assert key in node, f"{key} missing: fix the test's path"
    node[new_key] = node.pop(key)


_CONTAINER = ("template", "spec", "containers", 0)
MISSPELLINGS = [
    ("RayCluster", ("headGroupSpec", "rayStartParams"), "rayStartParam"),
    ("RayCluster", ("workerGroupSpecs", 0, "idleTimeoutSeconds"), "idleTimeoutSecond"),
    ("RayCluster", ("workerGroupSpecs", 0, *_CONTAINER, "volumeMounts"), "volumeMount"),
    ("RayJob", ("shutdownAfterJobFinishes",), "shutdownAfterJobFinish"),
    ("RayJob", ("rayClusterSpec", "authOptions", "secretName"), "secret"),
    ("RayJob", ("rayClusterSpec", "headGroupSpec", *_CONTAINER, "env"), "envs"),
]


@pytest.mark.parametrize(
    "kind,path,new_key", MISSPELLINGS, ids=[f"{k}:{n}" for k, _, n in MISSPELLINGS]
)
def test_misspelled_field_fails_validation(schemas, kind, path, new_key):
    spec = copy.deepcopy(_one(kind)["spec"])
    _rename(spec, path, new_key)
    # the CRD as published accepts it: the strict copy is what catches the typo
    assert not any(repr(new_key) in e for e in _errors(schemas(kind, strict=False), spec))
    errors = _errors(schemas(kind), spec)
    assert errors and any(repr(new_key) in e for e in errors), errors


def test_int_or_string_quantities(schemas):
    validator = schemas("RayCluster")
    spec = copy.deepcopy(_one("RayCluster")["spec"])
    limits = spec["workerGroupSpecs"][0]["template"]["spec"]["containers"][0]["resources"]["limits"]
    limits.update(cpu=8, memory=32 * 2**30)  # integers are quantities too
    assert not _errors(validator, spec)
    limits["memory"] = "32GB"  # not a Kubernetes quantity (32G or 32Gi)
    assert _errors(validator, spec)
    limits.update(memory="32Gi", cpu=[8])
    assert _errors(validator, spec)


# ---------------------------------------------------------------------------------------------
# what the schema cannot check


def test_ray_pods_share_image_volume_and_mlflow():
    images = set()
    for label, spec in _cluster_specs():
        for group, template in _pod_templates(spec):
            where = f"{label} {group}"
            pod = template["spec"]
            ctx = pod.get("securityContext", {})
            assert ctx.get("runAsNonRoot") is True and ctx.get("runAsUser", 0) != 0, where
            claims = {
                v["name"]: v["persistentVolumeClaim"]["claimName"]
                for v in pod.get("volumes", [])
                if "persistentVolumeClaim" in v
            }
            container = pod["containers"][0]
            images.add(container["image"])
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert claims.get(mounts.get(SHARED_MOUNT)) == SHARED_CLAIM, where
            env = _env(container)
            assert env.get("MLFLOW_TRACKING_URI") == MLFLOW_URI, where
            assert env.get("DENSEPIPE_SHARED") == SHARED_MOUNT, where
    submitter = _one("RayJob")["spec"]["submitterPodTemplate"]["spec"]["containers"][0]
    mlflow = _mlflow_objects()["Deployment/mlflow"]["spec"]["template"]["spec"]["containers"][0]
    images |= {submitter["image"], mlflow["image"]}
    assert len(images) == 1, f"one image for every pod, found {sorted(images)}"


@pytest.mark.parametrize("label,spec", _cluster_specs(), ids=[lb for lb, _ in _cluster_specs()])
def test_cluster_shape_and_auth(label, spec):
    head = spec["headGroupSpec"]
    assert head["rayStartParams"].get("num-cpus") == "0", "no work on the head"
    assert head.get("serviceType", "ClusterIP") == "ClusterIP" and not head.get("enableIngress")
    assert spec["authOptions"] == {"mode": "token", "secretName": TOKEN_SECRET}
    assert spec["rayVersion"] == _pinned_version(_docker_pins("cuda")["ray"])
    gpu_groups = []
    for group in spec["workerGroupSpecs"]:
        assert 0 <= group["minReplicas"] <= group.get("replicas", 0) <= group["maxReplicas"]
        res = group["template"]["spec"]["containers"][0]["resources"]
        if "nvidia.com/gpu" in res.get("limits", {}):
            assert res["limits"]["nvidia.com/gpu"] == 1
            assert res["requests"]["nvidia.com/gpu"] == 1  # extended resources: requests = limits
            gpu_groups.append(group["groupName"])
    assert gpu_groups, f"{label}: no worker group with nvidia.com/gpu: 1"


def test_dashboard_bindings():
    # the standalone cluster is reached through kubectl port-forward: loopback is enough
    assert _one("RayCluster")["spec"]["headGroupSpec"]["rayStartParams"]["dashboard-host"] == (
        "127.0.0.1"
    )
    # a RayJob's dashboard must answer the operator and the submitter pod over the head Service
    params = _one("RayJob")["spec"]["rayClusterSpec"]["headGroupSpec"]["rayStartParams"]
    assert "dashboard-host" not in params, "KubeRay's default binding is what a RayJob needs"


def test_rayjob_cluster_equals_raycluster():
    cluster = copy.deepcopy(_one("RayCluster")["spec"])
    del cluster["headGroupSpec"]["rayStartParams"]["dashboard-host"]  # see test above
    assert _one("RayJob")["spec"]["rayClusterSpec"] == cluster


def test_rayjob_runs_the_sweep_and_cleans_up():
    spec = _one("RayJob")["spec"]
    assert spec["entrypoint"] == SWEEP_ENTRYPOINT
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] > 0
    submitter = spec["submitterPodTemplate"]["spec"]
    assert submitter["restartPolicy"] == "Never"
    env = _env(submitter["containers"][0])
    assert env["RAY_AUTH_MODE"] == "token"
    assert env["RAY_AUTH_TOKEN"] == {"secretKeyRef": {"name": TOKEN_SECRET, "key": "auth_token"}}


def test_rayjob_sweep_is_declared():
    name = SWEEP_ENTRYPOINT.split()[-1]
    sweeps = declared_sweeps(load_params(REPO / "params.yaml"))
    assert name in sweeps, f"rayjob.yaml runs sweep {name!r}; params.yaml has {sorted(sweeps)}"


def test_mlflow_server_serves_the_pods_uri():
    objs = _mlflow_objects()
    assert objs[f"Namespace/{NAMESPACE}"]
    pvc = objs[f"PersistentVolumeClaim/{SHARED_CLAIM}"]
    assert pvc["metadata"]["namespace"] == NAMESPACE
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]

    uri = urlsplit(MLFLOW_URI)
    service_name, namespace, svc = uri.hostname.split(".")
    assert svc == "svc" and namespace == NAMESPACE
    service = objs[f"Service/{service_name}"]
    deployment = objs["Deployment/mlflow"]
    assert service["metadata"]["namespace"] == deployment["metadata"]["namespace"] == NAMESPACE
    assert service["spec"].get("type", "ClusterIP") == "ClusterIP"
    assert [p["port"] for p in service["spec"]["ports"]] == [uri.port]
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert deployment["spec"]["replicas"] == 1  # SQLite: one writer

    container = pod["spec"]["containers"][0]
    words = shlex.split(" ".join(container.get("command", []) + container.get("args", [])))
    assert "mlflow" in words and words[words.index("mlflow") + 1] == "server"
    server = words[words.index("mlflow") + 2 :]
    options = dict(zip(server[::2], server[1::2]))
    assert options["--host"] == "0.0.0.0"
    assert int(options["--port"]) == uri.port
    assert any(p["targetPort"] == uri.port for p in service["spec"]["ports"])
    assert options["--backend-store-uri"] == "sqlite:////shared/mlflow/mlflow.db"
    assert options["--artifacts-destination"] == "/shared/mlflow/artifacts"
    # MLflow 3 answers only Host headers it allows (DNS-rebinding guard; same matching rule)
    allowed = options["--allowed-hosts"].split(",")
    assert any(fnmatch.fnmatch(uri.netloc, a) if "*" in a else uri.netloc == a for a in allowed), (
        f"{uri.netloc} is not in --allowed-hosts {allowed}"
    )
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    claims = {
        v["name"]: v.get("persistentVolumeClaim", {}).get("claimName")
        for v in pod["spec"]["volumes"]
    }
    assert claims[mounts[SHARED_MOUNT]] == SHARED_CLAIM


# ---------------------------------------------------------------------------------------------
# Ray cluster launcher config


def test_launcher_dashboard_on_loopback():
    config = yaml.safe_load((INFRA / "ray-cluster.yaml").read_text())
    heads = [c for c in config["head_start_ray_commands"] if "ray start" in c and "--head" in c]
    assert heads, "no `ray start --head` in head_start_ray_commands"
    for command in heads:
        hosts = re.findall(r"--dashboard-host[= ](\S+)", command)
        assert hosts == ["127.0.0.1"], f"dashboard must listen on loopback only: {command!r}"
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        assert not any("0.0.0.0" in c for c in config[key]), key


# ---------------------------------------------------------------------------------------------
# Dockerfile


def _dockerfile_stages() -> dict[str, tuple[str, list[tuple[str, str]]]]:
    """stage name -> (FROM reference with global ARGs substituted, [(INSTRUCTION, arguments)])."""
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = [ln.strip() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    global_args: dict[str, str] = {}
    stages: dict[str, tuple[str, list]] = {}
    current: list | None = None
    for line in lines:
        instr, _, rest = line.partition(" ")
        instr, rest = instr.upper(), rest.strip()
        if instr == "FROM":
            m = re.fullmatch(r"(\S+)(?:\s+AS\s+(\S+))?", rest, re.IGNORECASE)
            assert m and m.group(2), f"every stage needs a name: {line!r}"
            ref = re.sub(r"\$\{?(\w+)\}?", lambda g: global_args[g.group(1)], m.group(1))
            current = []
            stages[m.group(2)] = (ref, current)
        elif current is None:
            assert instr == "ARG", line
            name, _, default = rest.partition("=")
            global_args[name] = default
        else:
            current.append((instr, rest))
    return stages


def _chain(target: str) -> tuple[str, list[tuple[str, str]]]:
    """The base image a stage is built on, and its instructions with those of its parents."""
    stages = _dockerfile_stages()
    assert target in stages, f"no stage {target!r} in {DOCKERFILE}"
    instructions: list = []
    name = target
    while name in stages:
        ref, own = stages[name]
        instructions = own + instructions
        name = ref
    return name, instructions


def _effective(target: str) -> tuple[str, list[tuple[str, str]]]:
    """Like _chain, plus the instructions of the stages the target COPYs --from."""
    base, instructions = _chain(target)
    out = []
    for instr, rest in instructions:
        m = re.match(r"--from=(\S+)", rest) if instr == "COPY" else None
        if m and m.group(1) in _dockerfile_stages():
            out += [i for i in _effective(m.group(1))[1] if i not in out]
        out.append((instr, rest))
    return base, out


def _pip_installs(target: str) -> list[list[str]]:
    """The argument lists of the `pip install` commands that build a variant."""
    out = []
    for instr, rest in _effective(target)[1]:
        if instr != "RUN":
            continue
        for command in re.split(r"&&|;", rest):
            words = shlex.split(command)
            if words[:2] == ["pip", "install"] or words[1:3] == ["-m", "pip"]:
                out.append(words[words.index("install") + 1 :])
    return out


def _docker_pins(target: str) -> dict[str, Requirement]:
    pins: dict[str, Requirement] = {}
    for words in _pip_installs(target):
        for word in words:
            if word.startswith("-") or "://" in word:
                continue
            try:
                req = Requirement(word)
            except InvalidRequirement:
                continue
            name = canonicalize_name(req.name)
            assert name not in pins, f"{name} installed twice in the {target} variant"
            pins[name] = req
    return pins


def _pinned_version(req: Requirement) -> str:
    (spec,) = req.specifier
    assert spec.operator == "==", f"{req} is not an exact pin"
    return spec.version


def _pyproject_requirements() -> dict[str, Requirement]:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    return {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}


def _makefile_pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "Makefile").read_text().splitlines():
        if "pip install" in line:
            pins.update(re.findall(r"\b(torch|torchvision)==([\w.+]+)", line))
    return pins


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_docker_variant(target):
    base, instructions = _chain(target)
    assert base == "python:3.11-slim", f"{target} is built on {base}"
    users = [rest for instr, rest in instructions if instr == "USER"]
    assert users, f"{target} runs as root (no USER)"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0") and (not user.isdigit() or int(user) >= 1000), users[-1]
    installs = _pip_installs(target)
    assert any("." in words for words in installs), f"{target} does not `pip install .`"
    torch_install = next(w for w in installs if any(x.startswith("torch==") for x in w))
    if target == "cpu":
        assert "https://download.pytorch.org/whl/cpu" in torch_install
    else:  # PyPI's Linux wheels are the CUDA builds
        assert not any("download.pytorch.org" in w or w.startswith("-") for w in torch_install)


@pytest.mark.parametrize("target", ["cpu", "cuda"])
def test_docker_pins_match_project(target):
    pins = _docker_pins(target)
    project = _pyproject_requirements()
    makefile = _makefile_pins()
    assert set(makefile) == {"torch", "torchvision"}, "Makefile's torch pins not found"
    for name in PINNED:
        assert name in pins, f"{target}: {name} is not pinned"
        version = _pinned_version(pins[name])
        assert project[name].specifier.contains(version, prereleases=True), (
            f"{target}: {name}=={version} is outside pyproject.toml's {project[name]}"
        )
        if name in makefile:
            assert version == makefile[name], (
                f"{target}: {name}=={version}, Makefile: {makefile[name]}"
            )
    assert project["ray"].extras <= pins["ray"].extras, "ray extras differ from pyproject.toml"
