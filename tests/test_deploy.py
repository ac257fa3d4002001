"""deploy/: the container recipe and the Kubernetes / KServe kit, checked offline.

Kubernetes objects are validated against Kubernetes' own OpenAPI schemas (kubernetes-validate,
strict: unknown fields are refused, as kubectl's default --validate=strict does); KServe objects
against a subset of KServe's CRD schemas kept in tests/data/kserve/ (their "$comment" says where
each was copied from). The image's entry point script, the Deployment's flags and probes, and the
Dockerfile's HEALTHCHECK run against the real server on loopback.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import re
import shlex
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import jsonschema
import kubernetes_validate
import pytest
import requests
import yaml
from support.server import BIN_DIR, START_TIMEOUT, free_port, wait_for
from tensorflow_serving.apis import model_management_pb2, model_service_pb2_grpc

from pyserving.cli import add_server_flags, options_from_args
from pyserving.config.model_config import parse_model_server_config
from pyserving.observability.monitoring import PrometheusSettings
from pyserving.server.checks import check_options

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
K8S = DEPLOY / "kubernetes"
KSERVE = DEPLOY / "kserve"
DOCKERFILE = DEPLOY / "Dockerfile"
ENTRYPOINT = DEPLOY / "tf_serving_entrypoint.sh"
KSERVE_SCHEMAS = Path(__file__).resolve().parent / "data" / "kserve"

# The oldest Kubernetes the manifests are meant for (autoscaling/v2, policy/v1 and appProtocol are
# all older), and the newest the installed kubernetes-validate knows.
OLDEST_K8S = "1.29"
LATEST_K8S = kubernetes_validate.latest_version()
DRAIN_SECONDS = 10  # how long pyserving waits for in-flight requests after SIGTERM

# KServe's own TensorFlow Serving runtime, from github.com/kserve/kserve
# config/runtimes/kserve-tensorflow-serving.yaml (commit 1a104a2d91bde5e975b29286e756528f6584209c).
KSERVE_TF_ARGS = ["--model_name={{.Name}}", "--port=9000", "--rest_api_port=8080",
                  "--model_base_path=/mnt/models", "--rest_api_timeout_in_ms=60000"]
KSERVE_TF_SPEC = {
    "protocolVersions": ["v1", "grpc-v1"],
    "supportedModelFormats": [{"name": "tensorflow", "version": "1", "autoSelect": True, "priority": 2},
                              {"name": "tensorflow", "version": "2", "autoSelect": True, "priority": 2}],
}


# --- reading the files -------------------------------------------------------------------------

def load_yaml(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def k8s_objects() -> list[tuple[str, dict]]:
    return [(path.name, doc) for path in sorted(K8S.glob("*.yaml")) if path.name != "kustomization.yaml"
            for doc in load_yaml(path)]


def k8s(kind: str) -> dict:
    found = [doc for _, doc in k8s_objects() if doc["kind"] == kind]
    assert len(found) == 1, f"expected one {kind} in deploy/kubernetes, found {len(found)}"
    return found[0]


def pod_spec() -> dict:
    return k8s("Deployment")["spec"]["template"]["spec"]


def server_container() -> dict:
    containers = pod_spec()["containers"]
    assert len(containers) == 1
    return containers[0]


def kserve(name: str) -> dict:
    [doc] = load_yaml(KSERVE / name)
    return doc


def runtime_container() -> dict:
    [container] = kserve("cluster-serving-runtime.yaml")["spec"]["containers"]
    return container


def flag(args: list[str], name: str) -> str:
    values = [a.split("=", 1)[1] for a in args if a.startswith(f"--{name}=")]
    assert values, f"--{name} not in {args}"
    return values[-1]


def cpu_cores(quantity: str | int) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined, comments dropped."""
    instructions, pending = [], ""
    for line in DOCKERFILE.read_text().splitlines():
        if not pending and (not line.strip() or line.lstrip().startswith("#")):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        word, _, rest = (pending + line).strip().partition(" ")
        instructions.append((word.upper(), rest.strip()))
        pending = ""
    return instructions


def instruction(name: str) -> list[str]:
    return [rest for word, rest in dockerfile() if word == name]


def final_stage() -> list[tuple[str, str]]:
    steps = dockerfile()
    last_from = max(i for i, (word, _) in enumerate(steps) if word == "FROM")
    return steps[last_from:]


def image_copies() -> dict[str, str]:
    """Destination in the final image -> source in the repo, for the final stage's COPY lines."""
    copies = {}
    for word, rest in final_stage():
        if word == "COPY" and not rest.startswith("--from"):
            *sources, dest = shlex.split(rest)
            for source in sources:
                copies[dest.rstrip("/") + "/" + Path(source).name if dest.endswith("/") else dest] = source
    return copies


def closed(schema):
    """The schema with every object closed to unknown fields (kubectl's --validate=strict)."""
    if isinstance(schema, dict):
        schema = {k: closed(v) for k, v in schema.items()}
        if "properties" in schema and "additionalProperties" not in schema:
            schema["additionalProperties"] = False
        return schema
    if isinstance(schema, list):
        return [closed(v) for v in schema]
    return schema


def kserve_validator(schema_file: str) -> jsonschema.Validator:
    schema = json.loads((KSERVE_SCHEMAS / schema_file).read_text())
    assert "copied" in schema.pop("$comment")
    return jsonschema.Draft7Validator(closed(schema))


CSR_SCHEMA = "clusterservingruntime.v1alpha1.schema.json"
ISVC_SCHEMA = "inferenceservice.v1beta1.schema.json"


# --- Kubernetes: schemas and wiring ------------------------------------------------------------

@pytest.mark.parametrize("version", [OLDEST_K8S, LATEST_K8S])
def test_manifests_pass_kubernetes_own_schemas(version):
    """The kit as `kubectl apply -k` renders it: the manifests and the generated Secret."""
    kinds = []
    for filename, obj in rendered():
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as e:
            pytest.fail(f"{filename}: {'.'.join(map(str, e.path))}: {e.message} (Kubernetes {e.version})")
        kinds.append(obj["kind"])
    assert sorted(kinds) == ["ConfigMap", "Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget",
                             "Secret", "Service"]


def test_strict_validation_refuses_a_misspelt_field():
    deployment = copy.deepcopy(k8s("Deployment"))
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, LATEST_K8S, strict=True)


def kustomization() -> dict:
    [found] = load_yaml(K8S / "kustomization.yaml")
    assert found["kind"] == "Kustomization"
    return found


def rendered() -> list[tuple[str, dict]]:
    """What kustomize makes of the kit: the manifests, and each generated Secret (as the first
    documented command's file would fill it)."""
    import base64

    secrets = [("kustomization.yaml", {
        "apiVersion": "v1", "kind": "Secret", "type": "Opaque", "metadata": {"name": g["name"]},
        "data": {f: base64.b64encode(os.urandom(32).hex().encode()).decode() for f in g["files"]}})
        for g in kustomization().get("secretGenerator", [])]
    return k8s_objects() + secrets


def test_kustomization_lists_every_manifest():
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization()["resources"]) == sorted(files)


def test_the_kit_creates_every_object_it_names():
    """`kubectl apply -k` on a cluster nobody prepared: each ConfigMap, Secret and claim the pod
    names is one the kit makes, and the generator's file is what its first documented command writes."""
    made = {(doc["kind"], doc["metadata"]["name"]) for _, doc in k8s_objects()}
    made |= {("Secret", g["name"]) for g in kustomization().get("secretGenerator", [])}
    made |= {("ConfigMap", g["name"]) for g in kustomization().get("configMapGenerator", [])}
    spec = pod_spec()
    named = set()
    for volume in spec["volumes"]:
        if "configMap" in volume:
            named.add(("ConfigMap", volume["configMap"]["name"]))
        if "secret" in volume:
            named.add(("Secret", volume["secret"]["secretName"]))
        if "persistentVolumeClaim" in volume:
            named.add(("PersistentVolumeClaim", volume["persistentVolumeClaim"]["claimName"]))
    for container in spec["containers"] + spec.get("initContainers", []):
        for source in container.get("envFrom", []):
            for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
                if key in source:
                    named.add((kind, source[key]["name"]))
    assert named and named <= made, named - made
    assert "serviceAccountName" not in spec
    text = (K8S / "kustomization.yaml").read_text()
    commands = [line.strip("# ").strip() for line in text.splitlines() if line.startswith("#   ")]
    for g in kustomization()["secretGenerator"]:
        for file in g["files"]:
            assert commands[0].endswith(f"> deploy/kubernetes/{file}"), commands
            assert file in (K8S / ".gitignore").read_text().split(), "a token file must never be committed"
    assert commands[1] == "kubectl apply -k deploy/kubernetes"


def test_one_image_tag_everywhere_the_packages_version():
    from pyserving import __version__

    image = f"pyserving:{__version__}"
    spec = pod_spec()
    for container in spec["containers"] + spec["initContainers"] + [runtime_container()]:
        assert container["image"] == image, container["name"]
    for path in (REPO / "README.md", REPO / "docs" / "deploy.md", DOCKERFILE, K8S / "kustomization.yaml"):
        tags = re.findall(r"docker build [^\n]*?-t (\S+)", path.read_text())
        assert tags and all(t.endswith(image) for t in tags), (path, tags)


def test_service_hpa_and_pdb_point_at_the_deployment():
    deployment = k8s("Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "replicas" not in deployment["spec"], "the HPA owns the replica count"

    service = k8s("Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert service["spec"]["selector"].items() <= labels.items()
    container_ports = {p["name"]: p["containerPort"] for p in server_container()["ports"]}
    assert container_ports == {"grpc": 8500, "http": 8501}
    service_ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert service_ports["grpc"]["port"] == 8500 and service_ports["grpc"]["appProtocol"] == "grpc"
    assert service_ports["http"]["port"] == 8501
    for port in service_ports.values():
        assert container_ports[port["targetPort"]] == port["port"]

    hpa = k8s("HorizontalPodAutoscaler")
    target = hpa["spec"]["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]
    pdb = k8s("PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["spec"]["maxUnavailable"] < hpa["spec"]["minReplicas"]


def test_volumes_config_files_and_model_paths_line_up():
    spec, container = pod_spec(), server_container()
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert mounts.keys() <= volumes.keys()
    configmap = k8s("ConfigMap")
    assert volumes["config"]["configMap"]["name"] == configmap["metadata"]["name"]
    # The models volume is the pod's own, filled by the init container (no hand-filled shared volume).
    assert volumes["models"] == {"name": "models", "emptyDir": {}}
    [init] = spec["initContainers"]
    init_mounts = {m["name"]: m for m in init["volumeMounts"]}
    assert init_mounts["models"]["mountPath"] == mounts["models"] and not init_mounts["models"].get("readOnly")
    # Every config file flag names a key of the ConfigMap, where it is mounted.
    for name in ("model_config_file", "monitoring_config_file"):
        path = flag(container["args"], name)
        assert Path(path).parent == Path(mounts["config"]) and Path(path).name in configmap["data"], path
    # Every model lives on the models volume.
    for model in parse_model_server_config(configmap["data"]["models.config"]):
        assert Path(mounts["models"]) in Path(model.base_path).parents, model


def test_num_workers_match_the_cpu_limit():
    container = server_container()
    assert int(flag(container["args"], "num_workers")) == cpu_cores(container["resources"]["limits"]["cpu"])
    assert container["resources"]["requests"]["cpu"] == container["resources"]["limits"]["cpu"]
    runtime = runtime_container()
    assert int(flag(runtime["args"], "num_workers")) == cpu_cores(runtime["resources"]["limits"]["cpu"])


def test_the_control_plane_is_locked_and_bind_addresses_explicit():
    spec, container = pod_spec(), server_container()
    token = Path(flag(container["args"], "admin_token_file"))
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert Path(mounts["admin-token"]["mountPath"]) == token.parent and mounts["admin-token"]["readOnly"]
    secret = {v["name"]: v for v in spec["volumes"]}["admin-token"]["secret"]
    assert secret["defaultMode"] == 0o400
    [generated] = kustomization()["secretGenerator"]  # the Secret the kit makes, with the token file's name
    assert generated["name"] == secret["secretName"] and generated["files"] == [token.name]
    for name in ("grpc_bind_address", "rest_api_bind_address"):
        assert flag(container["args"], name) == "0.0.0.0"
        assert flag(runtime_container()["args"], name) == "0.0.0.0"
    assert flag(runtime_container()["args"], "enable_config_reload_rpc") == "false"


def test_the_served_deployment_takes_reloads_only_with_its_token(served):
    request = model_management_pb2.ReloadConfigRequest()
    request.config.model_config_list.config.add(name="other", base_path="/nowhere", model_platform="tensorflow")
    with grpc.insecure_channel(f"127.0.0.1:{served.grpc_port}") as channel:
        stub = model_service_pb2_grpc.ModelServiceStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.HandleReloadConfigRequest(request, 30)
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.RpcError) as info:
            stub.HandleReloadConfigRequest(request, 30, metadata=(("authorization", "Bearer wrong"),))
        assert info.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert ("Control plane on the gRPC port (config reloads (HandleReloadConfigRequest), model loads and "
            "unloads (V2 RepositoryModelLoad/Unload) and the profiler)") in served.log.read_text()
    assert "with the admin token (--admin_token_file)" in served.log.read_text()
    assert served.token not in served.log.read_text()


def test_probes_and_shutdown_timing():
    spec, container = pod_spec(), server_container()
    models = [m.name for m in parse_model_server_config(k8s("ConfigMap")["data"]["models.config"])]
    readiness = container["readinessProbe"]["httpGet"]["path"]
    assert readiness == "/readyz" or readiness in [f"/v1/models/{name}/ready" for name in models]
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/healthz"
    assert startup["failureThreshold"] * startup["periodSeconds"] >= 120, "big models need minutes to load"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["port"] == "http"
    # preStop sleep, then SIGTERM's drain, inside the grace period.
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep"
    assert spec["terminationGracePeriodSeconds"] > int(command[1]) + DRAIN_SECONDS


def test_configmap_parses_with_pyservings_own_readers(tmp_path):
    data = k8s("ConfigMap")["data"]
    models = parse_model_server_config(data["models.config"])
    assert [m.name for m in models] == ["mnist"] and models[0].platform == "tensorflow"
    (tmp_path / "monitoring.config").write_text(data["monitoring.config"])
    settings = PrometheusSettings.from_file(str(tmp_path / "monitoring.config"))
    assert settings.enabled
    annotations = k8s("Deployment")["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/path"] == settings.path
    assert annotations["prometheus.io/port"] == "8501"


# --- the real server, started as the image and the Deployment would --------------------------

@dataclass
class Served:
    proc: subprocess.Popen
    url: str
    rest_port: int
    log: Path
    grpc_port: int = 0
    token: str = ""


@pytest.fixture(scope="module")
def served(tmp_path_factory, mnist_dir):
    """The Deployment's container: the entry point script with the Deployment's args, the
    ConfigMap's files and the models volume relocated under a temporary folder, and loopback
    ports appended (a repeated flag takes the last value)."""
    root = tmp_path_factory.mktemp("deploy")
    container = server_container()
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    data = k8s("ConfigMap")["data"]
    # The init container's command, as written (MNIST from this machine's copy, not its mirror).
    [init] = pod_spec()["initContainers"]
    command = [a.replace(mounts["models"], str(root / "models")) for a in init["command"]]
    subprocess.run([str(BIN_DIR / command[0]), *command[1:], f"--data-dir={mnist_dir}"], check=True,
                   capture_output=True, timeout=300)
    for model in parse_model_server_config(data["models.config"]):
        local = root / "models" / Path(model.base_path).relative_to(mounts["models"])
        assert (local / "1" / "saved_model.pb").exists(), f"the init container exports no {model.name}"
    (root / "config").mkdir()
    for key, text in data.items():
        (root / "config" / key).write_text(text.replace(f'"{mounts["models"]}/', f'"{root / "models"}/'))
    # The admin token as the Secret's volume gives it: one file, readable by the server only.
    secret = root / "secret"
    secret.mkdir()
    token_file = secret / Path(flag(container["args"], "admin_token_file")).name
    token_file.write_text("deploy-test-token\n")
    token_file.chmod(0o400)
    args = [a.replace(mounts["config"], str(root / "config")).replace(mounts["admin-token"], str(secret))
            for a in container["args"]]
    grpc_port, rest_port = free_port(), free_port()
    env = {**os.environ, "PATH": f"{BIN_DIR}{os.pathsep}{os.environ['PATH']}",
           "MODEL_NAME": "model", "MODEL_BASE_PATH": str(root / "unused")}
    log = root / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(["bash", str(ENTRYPOINT), *args, f"--port={grpc_port}",
                                 f"--rest_api_port={rest_port}"],
                                stdout=out, stderr=subprocess.STDOUT, env=env)
    served = Served(proc, f"http://127.0.0.1:{rest_port}", rest_port, log, grpc_port, "deploy-test-token")

    def up() -> bool:
        assert proc.poll() is None, f"server exited with {proc.returncode}:\n{log.read_text()}"
        try:
            requests.get(served.url + "/healthz", timeout=1)
            return True
        except requests.ConnectionError:
            return False

    try:
        wait_for(up, START_TIMEOUT, "the server to open its REST port", interval=0.1)
        yield served
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    # SIGTERM reached the server itself (the script exec'd it), which drained and exited 0.
    assert proc.returncode == 0, log.read_text()


@pytest.mark.parametrize("probe", ["startupProbe", "readinessProbe", "livenessProbe"])
def test_probe_paths_answer_200(served, probe):
    path = server_container()[probe]["httpGet"]["path"]
    r = requests.get(served.url + path, timeout=10)
    assert r.status_code == 200, (path, r.text)


def test_readiness_is_per_model(served):
    ready = server_container()["readinessProbe"]["httpGet"]["path"]
    if ready.startswith("/v1/models/"):
        assert requests.get(served.url + "/v1/models/not_configured/ready", timeout=10).status_code != 200
    body = requests.get(served.url + "/readyz", timeout=10).json()
    assert body["ready"] is True and set(body["models"]) == {"mnist"}


def test_prometheus_annotations_point_at_metrics(served):
    annotations = k8s("Deployment")["spec"]["template"]["metadata"]["annotations"]
    r = requests.get(served.url + annotations["prometheus.io/path"], timeout=10)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/plain")
    # The Deployment's --num_workers is in force: the page adds up that many serving processes
    # (the REST port opens with the first; the others join as they start).
    workers = flag(server_container()["args"], "num_workers")
    line = f"\n:pyserving:serving_workers {workers}\n"
    pages = [r.text]

    def all_counted() -> bool:
        pages.append(requests.get(served.url + annotations["prometheus.io/path"], timeout=10).text)
        return line in pages[-1]

    wait_for(all_counted, 30, f"the metrics page to add up {workers} workers: {pages[-1][-300:]}")


def test_dockerfile_healthcheck_passes_against_a_ready_server_and_fails_without_one(served):
    [healthcheck] = instruction("HEALTHCHECK")
    command = json.loads(healthcheck[healthcheck.index("CMD") + 3:].strip())
    assert command[0] == "python" and "http://localhost:8501/readyz" in command[-1]
    run = [sys.executable, *command[1:-1]]
    ok = subprocess.run([*run, command[-1].replace("localhost:8501", f"127.0.0.1:{served.rest_port}")],
                        capture_output=True, timeout=30)
    assert ok.returncode == 0, ok.stderr
    down = subprocess.run([*run, command[-1].replace("localhost:8501", f"127.0.0.1:{free_port()}")],
                          capture_output=True, timeout=30)
    assert down.returncode != 0


# --- the container recipe ----------------------------------------------------------------------

def test_entrypoint_script_is_valid_bash():
    result = subprocess.run(["bash", "-n", str(ENTRYPOINT)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert os.access(ENTRYPOINT, os.X_OK)


def test_entrypoint_execs_the_server_with_tf_servings_defaults_and_extra_flags(tmp_path):
    fake = tmp_path / "tensorflow_model_server"
    fake.write_text('#!/bin/bash\necho "$$"\nprintf "%s\\n" "$@"\n')
    fake.chmod(0o755)
    env = {**os.environ, "PATH": f"{tmp_path}{os.pathsep}{os.environ['PATH']}",
           "MODEL_NAME": "mnist", "MODEL_BASE_PATH": "/srv/my models"}
    proc = subprocess.Popen(["bash", str(ENTRYPOINT), "--enable_batching", "--num_workers=2"],
                            stdout=subprocess.PIPE, text=True, env=env)
    out, _ = proc.communicate(timeout=30)
    pid, *argv = out.splitlines()
    assert int(pid) == proc.pid, "the script must exec the server, so that SIGTERM reaches it"
    assert argv == ["--port=8500", "--rest_api_port=8501", "--model_name=mnist",
                    "--model_base_path=/srv/my models/mnist", "--enable_batching", "--num_workers=2"]


def test_dockerfile_is_slim_non_root_and_tf_serving_shaped():
    assert {rest.split()[0] for rest in instruction("FROM")} == {"python:3.11-slim"}
    [user] = [rest for word, rest in final_stage() if word == "USER"]
    name = user.split(":")[0]
    assert name.isdigit() and int(name) != 0, "a numeric non-root user, checkable by runAsNonRoot"
    assert sorted(port for rest in instruction("EXPOSE") for port in rest.split()) == ["8500", "8501"]
    assert instruction("STOPSIGNAL") == ["SIGTERM"]
    env = dict(pair.split("=", 1) for rest in instruction("ENV") for pair in shlex.split(rest))
    assert env["MODEL_NAME"] == "model" and env["MODEL_BASE_PATH"] == "/models"
    [entrypoint] = instruction("ENTRYPOINT")
    [script] = json.loads(entrypoint)
    assert image_copies()[script] == "deploy/tf_serving_entrypoint.sh"
    [healthcheck] = instruction("HEALTHCHECK")
    assert "urllib.request" in healthcheck and "curl" not in healthcheck
    build = " ".join(rest for word, rest in dockerfile() if word == "RUN")
    assert "pip wheel --no-cache-dir" in build and "pip install --no-cache-dir" in build


def dockerignore_patterns() -> list[str]:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return [line.strip() for line in lines if line.strip() and not line.startswith("#")]


def _glob_regex(pattern: str) -> re.Pattern:
    out, i = "", 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out, i = out + "(?:.*/)?", i + 3
        elif pattern.startswith("**", i):
            out, i = out + ".*", i + 2
        elif pattern[i] == "*":
            out, i = out + "[^/]*", i + 1
        elif pattern[i] == "?":
            out, i = out + "[^/]", i + 1
        elif pattern[i] == "[":
            end = pattern.index("]", i)
            out, i = out + pattern[i:end + 1], end + 1
        else:
            out, i = out + re.escape(pattern[i]), i + 1
    return re.compile(out)


def docker_ignores(path: str) -> bool:
    """Docker's rule: a path is left out if it or a parent folder matches (the last match wins)."""
    parts = path.split("/")
    prefixes = ["/".join(parts[:n]) for n in range(1, len(parts) + 1)]
    ignored = False
    for pattern in dockerignore_patterns():
        negated = pattern.startswith("!")
        if any(_glob_regex(pattern.lstrip("!").strip("/")).fullmatch(p) for p in prefixes):
            ignored = not negated
    return ignored


def test_dockerignore_keeps_the_build_inputs_and_drops_the_rest():
    for path in (".venv/bin/python", ".git/HEAD", "benchmarks/results/run.json", "demo-work/model/1",
                 "src/pyserving/__pycache__/cli.cpython-311.pyc", "src/pyserving.egg-info/PKG-INFO",
                 "deploy/kubernetes/admin-token"):
        assert docker_ignores(path), path
    needed = ["pyproject.toml", "README.md", "src/pyserving/__init__.py", "src/pyserving/cli.py",
              *image_copies().values()]
    for path in needed:
        assert (REPO / path).exists(), path
        assert not docker_ignores(path), path


def test_the_image_monitoring_config_matches_the_kserve_scrape_annotations():
    copies = image_copies()
    runtime = kserve("cluster-serving-runtime.yaml")
    path = flag(runtime_container()["args"], "monitoring_config_file")
    settings = PrometheusSettings.from_file(str(REPO / copies[path]))
    assert settings.enabled
    annotations = runtime["spec"]["annotations"]
    assert annotations["prometheus.kserve.io/path"] == settings.path
    assert annotations["prometheus.kserve.io/port"] == flag(runtime_container()["args"], "rest_api_port")


# --- KServe ------------------------------------------------------------------------------------

@pytest.mark.parametrize("filename, schema", [("cluster-serving-runtime.yaml", CSR_SCHEMA),
                                              ("inference-service.yaml", ISVC_SCHEMA)])
def test_kserve_manifests_pass_kserves_crd_schema(filename, schema):
    obj = kserve(filename)
    errors = [f"{'.'.join(map(str, e.path))}: {e.message}" for e in kserve_validator(schema).iter_errors(obj)]
    assert errors == []
    assert re.fullmatch(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?", obj["metadata"]["name"])


def test_kserve_schemas_refuse_mistakes():
    runtime = kserve("cluster-serving-runtime.yaml")
    bad = copy.deepcopy(runtime)
    bad["spec"]["supportedModelFormat"] = bad["spec"].pop("supportedModelFormats")
    assert not kserve_validator(CSR_SCHEMA).is_valid(bad)
    bad = copy.deepcopy(runtime)
    bad["spec"]["supportedModelFormats"][0]["priority"] = 0
    assert not kserve_validator(CSR_SCHEMA).is_valid(bad)
    service = kserve("inference-service.yaml")
    bad = copy.deepcopy(service)
    del bad["spec"]["predictor"]["model"]["modelFormat"]["name"]
    assert not kserve_validator(ISVC_SCHEMA).is_valid(bad)


def test_runtime_has_kserve_tensorflow_servings_shape_and_flags_pyserving_accepts(tmp_path):
    runtime = kserve("cluster-serving-runtime.yaml")
    assert (runtime["apiVersion"], runtime["kind"]) == ("serving.kserve.io/v1alpha1", "ClusterServingRuntime")
    spec, container = runtime["spec"], runtime_container()
    assert container["name"] == "kserve-container"
    assert container["args"][:len(KSERVE_TF_ARGS)] == KSERVE_TF_ARGS
    # TF Serving's protocols, as kserve-tensorflow-serving declares them, and the Open Inference
    # Protocol's, which the same ports serve.
    assert spec["protocolVersions"] == KSERVE_TF_SPEC["protocolVersions"] + ["v2", "grpc-v2"]
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": 8080}
    assert {(f["name"], f["version"], f["autoSelect"]) for f in spec["supportedModelFormats"]} == \
        {(f["name"], f["version"], f["autoSelect"]) for f in KSERVE_TF_SPEC["supportedModelFormats"]}
    # The flags as the server parses them: KServe fills in {{.Name}}; the monitoring config is
    # the file the Dockerfile copies into the image.
    copies = image_copies()
    args = [a.replace("{{.Name}}", "mnist") for a in container["args"]]
    args = [f"--monitoring_config_file={REPO / copies[a.split('=', 1)[1]]}"
            if a.startswith("--monitoring_config_file=") else a for a in args]
    parser = argparse.ArgumentParser(allow_abbrev=False, exit_on_error=False)
    add_server_flags(parser)
    options = options_from_args(parser.parse_args(args))
    check_options(options)
    assert (options.model_name, options.port, options.rest_api_port) == ("mnist", 9000, 8080)
    assert (options.model_base_path, options.rest_api_timeout_in_ms) == ("/mnt/models", 60000)
    assert container["command"] == ["tensorflow_model_server"]


def test_runtime_priorities_pass_kserves_webhook_rules():
    """KServe's servingruntime webhook (pkg/webhook/admission/servingruntime) refuses a runtime that
    gives one auto-selected format two priorities, or the same priority as another runtime serving
    that format and version over a shared protocol."""
    spec = kserve("cluster-serving-runtime.yaml")["spec"]
    auto = [f for f in spec["supportedModelFormats"] if f.get("autoSelect")]
    for name in {f["name"] for f in auto}:
        assert len({f.get("priority") for f in auto if f["name"] == name}) == 1
    if set(spec["protocolVersions"]) & set(KSERVE_TF_SPEC["protocolVersions"]):
        for ours in auto:
            for theirs in KSERVE_TF_SPEC["supportedModelFormats"]:
                ours_key = (ours["name"].lower(), ours.get("version"))
                if ours_key == (theirs["name"].lower(), theirs.get("version")):
                    assert ours.get("priority") != theirs["priority"], ours


def test_inference_service_selects_the_pyserving_runtime():
    runtime = kserve("cluster-serving-runtime.yaml")
    service = kserve("inference-service.yaml")
    assert (service["apiVersion"], service["kind"]) == ("serving.kserve.io/v1beta1", "InferenceService")
    model = service["spec"]["predictor"]["model"]
    assert model["runtime"] == runtime["metadata"]["name"]
    formats = {(f["name"], f.get("version")) for f in runtime["spec"]["supportedModelFormats"]}
    assert (model["modelFormat"]["name"], model["modelFormat"].get("version")) in formats
    assert model.get("protocolVersion", "v1") in runtime["spec"]["protocolVersions"]
    # A model anyone can read (KServe's own public example), not a claim nobody made.
    assert model["storageUri"] == "gs://kfserving-examples/models/tensorflow/flowers"


def test_readme_deploying_section_names_files_that_exist():
    readme = (REPO / "README.md").read_text()
    assert "## Deploying" in readme and readme.index("## Deploying") < readme.index("## Architecture")
    section = readme[readme.index("## Deploying"):readme.index("## Architecture")]
    written = set(re.findall(r"> (deploy/[\w./-]+)", section))  # files the section's commands write
    for path in set(re.findall(r"deploy/[\w./-]+", section)) - written:
        assert (REPO / path.rstrip(".")).exists(), path
    assert "docker build -f deploy/Dockerfile" in section and "kubectl apply -k deploy/kubernetes" in section


def test_the_grafana_dashboard_reads_only_metrics_pyserving_exposes():
    """deploy/grafana/pyserving-dashboard.json: every query names a series pyserving's metrics
    page has (TF Serving's names as exposed: counters without _total), through the dashboard's own
    Prometheus data source variable."""
    from pyserving.observability.monitoring import _EXPOSED_NAMES, Metrics

    dashboard = json.loads((REPO / "deploy" / "grafana" / "pyserving-dashboard.json").read_text())
    exposed = set()
    for family in Metrics(0).registry.collect():
        if family.type == "counter":
            exposed.add(_EXPOSED_NAMES.get(family.name, family.name))
        elif family.type == "histogram":
            exposed |= {family.name + suffix for suffix in ("_bucket", "_count", "_sum")}
        else:
            exposed.add(family.name)
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert {"datasource", "model"} <= variables
    panels = dashboard["panels"]
    assert len({p["id"] for p in panels}) == len(panels) >= 10
    named = set()
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        for target in panel["targets"]:
            names = set(re.findall(r"(?<![\w:])((?::|process_)[\w:]+)\s*[{\[)]", target["expr"]))
            assert names, target["expr"]
            assert names <= exposed, (panel["title"], names - exposed)
            named |= names
    # The metrics operators look for first are all on it.
    assert {":tensorflow:serving:request_count", ":tensorflow:serving:request_latency_bucket",
            "process_cpu_seconds_total", "process_resident_memory_bytes", ":pyserving:build_info",
            ":pyserving:signature_request_count"} <= named
