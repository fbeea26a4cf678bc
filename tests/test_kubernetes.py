"""`sigrl deploy k8s`: manifests Kubernetes accepts (its schemas, strict), with the flags `sigrl serve` runs, the
probes, security context and scaling objects a cluster needs, a KServe InferenceService of KServe's documented
shape, and the container image's requirements held to what the served models import."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest
import yaml
from test_cli import one_line_error

from sigrl.cli import main
from sigrl.deploy import triton_releases
from sigrl.serving import container, kubernetes, server
from sigrl.serving.kubernetes import ClusterSpec, manifests, write_manifests

ROOT = Path(__file__).resolve().parents[1]
SPEC = ClusterSpec(repo_uri="s3://bucket/sigrl-repo", image="registry.example.com/sigrl-triton:1",
                   triton_tag="25.01-py3", credentials_secret="s3-credentials")
# The oldest Kubernetes the manifests ask for (autoscaling/v2, policy/v1, seccompProfile) and the newest known here.
KUBERNETES_VERSIONS = ("1.30.0", None)


def k8s_objects(out: Path) -> list[Path]:
    """The files ``kubectl apply -f DIR`` reads (no subfolders)."""
    return sorted(p for p in out.iterdir() if p.suffix in (".yaml", ".yml", ".json"))


def load(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def triton(objects: dict) -> dict:
    return objects["deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]


def validate(files: list[Path], version: str | None) -> subprocess.CompletedProcess:
    binary = Path(sys.executable).parent / "kubernetes-validate"
    if not binary.exists():
        pytest.skip('kubernetes-validate is missing: pip install -c constraints.txt -e ".[dev]"')
    command = [str(binary), "--strict", *(["-k", version] if version else []), *map(str, files)]
    return subprocess.run(command, capture_output=True, text=True)


@pytest.mark.parametrize("options", [
    {},
    {"repo_uri": "gs://bucket/repo", "credentials_secret": "gcs-key", "admin_key_secret": "triton-admin"},
    {"repo_uri": "pvc://models/sigrl/repo", "credentials_secret": None, "gpus": 0, "image_pull_secret": "registry"},
])
@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_manifests_pass_the_kubernetes_schemas_in_strict_mode(tmp_path, options, version):
    spec = ClusterSpec(**{**SPEC.__dict__, **options})
    files = write_manifests(spec, tmp_path / "k8s")
    objects = k8s_objects(tmp_path / "k8s")
    kinds = sorted(load(path)["kind"] for path in objects)
    assert kinds == ["Deployment", "HorizontalPodAutoscaler", "NetworkPolicy", "PodDisruptionBudget", "Service",
                     "Service", "ServiceAccount"]
    kserve = [tmp_path / "k8s" / "kserve" / name for name in ("horizontalpodautoscaler.yaml", "serviceaccount.yaml")]
    result = validate([*objects, *kserve], version)
    assert result.returncode == 0 and result.stdout.count(" passed for resource ") == 9, result.stdout + result.stderr
    assert len(files) == len({*files}) == 13


def test_strict_validation_catches_a_misspelt_field(tmp_path):
    """The check above is not vacuous: one unknown field fails it."""
    objects = manifests(SPEC)
    objects["deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {}
    path = tmp_path / "deployment.yaml"
    path.write_text(yaml.safe_dump(objects["deployment.yaml"]))
    result = validate([path], None)
    assert result.returncode != 0 and "readinesProbe" in result.stdout + result.stderr


def test_kustomizations_list_every_object_and_kubectl_skips_them(tmp_path):
    write_manifests(SPEC, tmp_path / "k8s")
    out = tmp_path / "k8s"
    top = load(out / "Kustomization")  # no .yaml suffix: `kubectl apply -f DIR` reads the objects only
    assert top["kind"] == "Kustomization" and sorted(top["resources"]) == [p.name for p in k8s_objects(out)]
    assert sorted(load(out / "kserve" / "Kustomization")["resources"]) == [
        "horizontalpodautoscaler.yaml", "inferenceservice.yaml", "serviceaccount.yaml"]  # Kustomize reads no ../


def test_the_container_runs_the_flags_sigrl_serve_runs(monkeypatch):
    """One source for the flag list: the container's args are triton_flags(...) for a pod's addresses and ports."""
    monkeypatch.setattr(server.secrets, "token_urlsafe", lambda n: "fixed")  # the closed header's random value
    container_ = triton(manifests(SPEC))
    assert container_["command"] == ["tritonserver"]
    assert container_["args"] == server.triton_flags("s3://bucket/sigrl-repo", host="0.0.0.0", grpc_port=8001,
                                                     http_port=8000, metrics_port=8002, exit_timeout_s=SPEC.drain_s)
    assert "--strict-readiness=true" in container_["args"]
    restricted = [a for a in container_["args"] if "restricted" in a]
    assert restricted and all(server.CLOSED_HEADER in a for a in restricted)  # shut without a key
    keyed = triton(manifests(ClusterSpec(**{**SPEC.__dict__, "admin_key_secret": "admin"})))
    assert all("sigrl-admin-key=$(SIGRL_ADMIN_KEY)" in a for a in keyed["args"] if "restricted" in a)
    assert {"name": "SIGRL_ADMIN_KEY", "valueFrom": {"secretKeyRef": {"name": "admin", "key": "admin-key"}}} in \
        keyed["env"]


def test_probes_security_scratch_space_and_shutdown():
    objects = manifests(SPEC)
    pod = objects["deployment.yaml"]["spec"]["template"]["spec"]
    container_ = pod["containers"][0]
    assert container_["startupProbe"]["httpGet"] == {"path": "/v2/health/live", "port": 8000}
    for probe, endpoint in (("readinessProbe", "ready"), ("livenessProbe", "live")):
        command = container_[probe]["exec"]["command"]
        assert command[:3] == ["python3", "-m", "sigrl.serving.health"] and command[command.index("--endpoint") + 1] \
            == endpoint
    security = container_["securityContext"]
    assert security["readOnlyRootFilesystem"] and not security["allowPrivilegeEscalation"]
    assert security["capabilities"] == {"drop": ["ALL"]} and security["runAsNonRoot"] and security["runAsUser"] >= 10000
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["dshm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "1Gi"}
    assert {m["mountPath"] for m in container_["volumeMounts"]} == {"/dev/shm", "/tmp"}
    assert container_["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container_["resources"]["requests"] == container_["resources"]["limits"]  # Guaranteed
    assert container_["envFrom"] == [{"secretRef": {"name": "s3-credentials"}}]
    assert pod["terminationGracePeriodSeconds"] > SPEC.drain_s + kubernetes.PRESTOP_SECONDS
    assert f"--exit-timeout-secs={SPEC.drain_s}" in container_["args"]


def test_services_autoscaler_and_disruption_budget():
    objects = manifests(SPEC)
    labels = objects["deployment.yaml"]["spec"]["selector"]["matchLabels"]
    grpc = objects["service-grpc.yaml"]["spec"]
    assert grpc["clusterIP"] == "None" and grpc["selector"] == labels and grpc["ports"][0]["port"] == 8001
    assert {p["name"]: p["port"] for p in objects["service.yaml"]["spec"]["ports"]} == {"http": 8000, "grpc": 8001,
                                                                                        "metrics": 8002}
    hpa = objects["horizontalpodautoscaler.yaml"]["spec"]
    assert (hpa["minReplicas"], hpa["maxReplicas"]) == (2, 8)
    assert hpa["metrics"] == [{"type": "Pods", "pods": {"metric": {"name": kubernetes.METRIC},
                                                        "target": {"type": "AverageValue", "averageValue": "50000"}}}]
    assert objects["poddisruptionbudget.yaml"]["spec"] == {"maxUnavailable": 1, "selector": {"matchLabels": labels}}
    rule = objects["monitoring/prometheus-adapter-rules.yaml"]["rules"][0]
    assert rule["name"]["as"] == kubernetes.METRIC and 'model="sigrl"' in rule["metricsQuery"]
    assert "nv_inference_queue_duration_us" in rule["metricsQuery"] and "nv_inference_request_success" in \
        rule["metricsQuery"]


def test_repository_sources_and_credentials():
    gs = manifests(ClusterSpec(**{**SPEC.__dict__, "repo_uri": "gs://b/r", "credentials_secret": "key"}))
    container_ = triton(gs)
    assert {"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": "/var/run/secrets/object-store/key.json"} in \
        container_["env"] and "envFrom" not in container_
    pvc = manifests(ClusterSpec(**{**SPEC.__dict__, "repo_uri": "pvc://claim/sub/dir", "credentials_secret": None}))
    container_, pod = triton(pvc), pvc["deployment.yaml"]["spec"]["template"]["spec"]
    assert "--model-repository=/models" in container_["args"]
    assert {"name": "model-repository", "mountPath": "/models", "readOnly": True, "subPath": "sub/dir"} in \
        container_["volumeMounts"]
    assert {"name": "model-repository", "persistentVolumeClaim": {"claimName": "claim", "readOnly": True}} in \
        pod["volumes"]


# KServe's v1beta1 InferenceService as its API reference documents it: PredictorSpec inlines a Kubernetes PodSpec and
# adds the component fields (minReplicas, maxReplicas, ...) and `model`; ModelSpec inlines a Container and adds
# modelFormat, runtime, storageUri and protocolVersion. kubernetes-validate has no schema for a custom resource, so
# the KServe fields are checked here and the inlined PodSpec and Container against Kubernetes' own schema (strict).
KSERVE_PREDICTOR_FIELDS = {"minReplicas", "maxReplicas", "model"}
KSERVE_MODEL_FIELDS = {"modelFormat", "runtime", "storageUri", "protocolVersion"}


def test_inference_service_has_kserves_documented_shape(monkeypatch):
    import kubernetes_validate

    monkeypatch.setattr(server.secrets, "token_urlsafe", lambda n: "fixed")
    service_ = manifests(SPEC)["kserve/inferenceservice.yaml"]
    assert service_["apiVersion"] == "serving.kserve.io/v1beta1" and service_["kind"] == "InferenceService"
    assert service_["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    predictor = dict(service_["spec"]["predictor"])
    model = predictor.pop("model")
    assert (predictor.pop("minReplicas"), predictor.pop("maxReplicas")) == (2, 8)
    container_ = {key: value for key, value in model.items() if key not in KSERVE_MODEL_FIELDS}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "predictor"},
           "spec": {**predictor, "containers": [{"name": "kserve-container", **container_}]}}
    for version in ("1.30.0", kubernetes_validate.utils.latest_version()):
        kubernetes_validate.validate(pod, version, strict=True)
    assert model["modelFormat"] == {"name": "triton"} and model["runtime"] == "kserve-tritonserver"
    assert model["storageUri"] == SPEC.repo_uri and "envFrom" not in model  # KServe's storage initializer fetches it
    # appended to the runtime's own arguments (`tritonserver --model-store=/mnt/models ...`, KServe's ports)
    assert model["command"] == ["env"]
    assert model["args"] == [a for a in server.triton_flags("/mnt/models", host="0.0.0.0", grpc_port=9000,
                                                             http_port=8080, metrics_port=8002,
                                                             exit_timeout_s=SPEC.drain_s)
                             if not a.startswith("--model-repository=")]
    target = manifests(SPEC)["kserve/horizontalpodautoscaler.yaml"]["spec"]["scaleTargetRef"]
    assert target == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "sigrl-predictor"}


# ------------------------------------------------------------------------------ CLI


def test_deploy_k8s_writes_the_folder_and_says_how_to_build_and_apply(tmp_path, capsys):
    out = tmp_path / "k8s"
    assert main(["deploy", "k8s", "--repo-uri", "s3://bucket/repo", "--out", str(out), "--image", "reg.io/sigrl-triton",
                 "--replicas", "3", "--gpus", "2"]) == 0
    printed = capsys.readouterr().out
    image = f"reg.io/sigrl-triton:{metadata.version('sigrl')}-triton{triton_releases.DEFAULT_TRITON_TAG[:-4]}"
    assert f"--build-arg TRITON_TAG={triton_releases.DEFAULT_TRITON_TAG} -t {image}" in printed
    assert "dns:///sigrl-grpc.sigrl.svc.cluster.local:8001" in printed
    deployment = load(out / "deployment.yaml")
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == image
    assert deployment["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert load(out / "horizontalpodautoscaler.yaml")["spec"]["maxReplicas"] == 12
    assert main(["deploy", "k8s", "--repo-uri", "pvc://claim/repo", "--out", str(tmp_path / "cpu"), "--gpus", "0"]) == 0
    assert "--build-arg SIGRL_EXTRAS=triton-cpu" in capsys.readouterr().out  # the python runtime's ONNX Runtime
    assert one_line_error(capsys, ["deploy", "k8s", "--repo-uri", "s3://b/r", "--out", str(out)]).endswith(
        f"--out {out} exists and is not an empty folder: pass --overwrite to replace it")


@pytest.mark.parametrize("argv, message", [
    (["--repo-uri", "http://host/repo"], "--repo-uri 'http://host/repo': give s3://"),
    (["--repo-uri", "s3://"], "--repo-uri 's3://': give s3://"),
    (["--replicas", "4", "--max-replicas", "3"], "--max-replicas 3 must be at least --replicas 4"),
    (["--memory", "lots"], "--memory 'lots' is not a size"),
    (["--shm-size", "16Gi"], "--shm-size 16Gi must be below --memory 16Gi"),
    (["--cpu", "four"], "--cpu 'four' is not a CPU quantity"),
    (["--name", "Sigrl_1"], "--name 'Sigrl_1' must be a DNS label"),
    (["--repo-uri", "pvc://claim/repo", "--credentials-secret", "s"], "--credentials-secret is for s3://"),
    (["--gpus", "-1"], "argument --gpus: must be at least 0"),
    # what ends up in the printed shell commands and the manifests: nothing a shell or YAML reader would split
    (["--triton-tag", "25.01-py3;rm -rf ~"], "--triton-tag '25.01-py3;rm -rf ~' is not an image tag"),
    (["--image", "Reg.io/Bad Image"], "is not an image reference"),
    (["--credentials-secret", "A_B"], "--credentials-secret 'A_B' is not a Secret name"),
    (["--admin-key-secret", "key$(id)"], "--admin-key-secret 'key$(id)' is not a Secret name"),
    (["--repo-uri", 's3://b/r" --model-control-mode=explicit'], "holds white space, quotes or backslashes"),
])
def test_deploy_k8s_mistakes_are_one_line_naming_the_flag(tmp_path, capsys, argv, message):
    base = {"--repo-uri": "s3://bucket/repo", "--out": str(tmp_path / "k8s")}
    pairs = dict(zip(argv[::2], argv[1::2]))
    line = one_line_error(capsys, ["deploy", "k8s", *[x for kv in {**base, **pairs}.items() for x in kv]])
    assert message in line
    assert not (tmp_path / "k8s").exists()


def write_build_record(plan_dir: Path, tensorrt_version: str) -> Path:
    """A build record as `sigrl build-engines` writes it, of plans built with ``tensorrt_version``."""
    from sigrl.deploy.tensorrt import BuildRecord, EngineBuild

    build = EngineBuild(engine="text_gmc", plan="text_gmc.plan", onnx="text_gmc.onnx", onnx_sha256="0" * 64,
                        precision="fp32", class_chunk=32, loops=2, inputs={}, outputs={}, profile={},
                        trtexec="trtexec")
    record = BuildRecord(tensorrt_version=tensorrt_version, strongly_typed=True, version_compatible=False,
                         gpu_name="GPU", compute_capability="9.0", cuda_version="13.0", hardware_compat="none",
                         builder_optimization_level=None, workspace_gb=4.0, config_name="tiny", config={},
                         max_classes=1024, engines={"text_gmc": build})
    plan_dir.mkdir(parents=True)
    (plan_dir / "build_record.json").write_text(record.to_json())
    return plan_dir


def test_the_triton_release_follows_the_plans_tensorrt(tmp_path, capsys):
    plans = write_build_record(tmp_path / "plans", "10.7.0.23")
    out = tmp_path / "k8s"
    assert main(["deploy", "k8s", "--repo-uri", "s3://b/r", "--out", str(out), "--plans", str(plans)]) == 0
    assert "--build-arg TRITON_TAG=24.12-py3" in capsys.readouterr().out
    assert load(out / "deployment.yaml")["spec"]["template"]["metadata"]["annotations"][
        "sigrl/triton-base-image"] == "nvcr.io/nvidia/tritonserver:24.12-py3"
    unknown = write_build_record(tmp_path / "plans-unknown", "10.99.1")
    line = one_line_error(capsys, ["deploy", "k8s", "--repo-uri", "s3://b/r", "--out", str(tmp_path / "x"),
                                   "--plans", str(unknown)])
    assert "--plans: no Triton release in sigrl's table ships TensorRT 10.99.1" in line
    line = one_line_error(capsys, ["deploy", "k8s", "--repo-uri", "s3://b/r", "--out", str(tmp_path / "x"),
                                   "--plans", str(plans), "--triton-tag", "25.01-py3"])
    assert "--triton-tag 25.01-py3 ships TensorRT 10.8.0.43, but --plans were built with TensorRT 10.7.0.23" in line
    line = one_line_error(capsys, ["deploy", "k8s", "--repo-uri", "s3://b/r", "--out", str(tmp_path / "x"),
                                   "--plans", str(tmp_path)])
    assert line.startswith("sigrl deploy: error: --plans: ") and "build_record.json not found" in line


# ------------------------------------------------------------------------------ the container image


def _imported_top_levels(path: Path, in_functions: bool) -> set[str]:
    """Top-level names of the absolute imports of a module that run: at import time (those under ``if
    TYPE_CHECKING:`` left out), and with ``in_functions`` those inside its functions too."""
    names: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not in_functions:
            return
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return names


def served_distributions() -> set[str]:
    """The distributions the served code imports: what every sigrl module the python stubs and the probe load imports
    as it loads, and what the serving modules import inside their functions (ONNX Runtime, when an engine model
    starts), less the standard library and the module Triton provides. (Elsewhere, imports inside functions belong
    to code the stubs never run: the engines' export side, the torchvision shim.)"""
    code = ("import sys, sigrl.serving.backend, sigrl.serving.health\n"
            "print('\\n'.join(m for m in sys.modules if m.split('.')[0] == 'sigrl'))")
    modules = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    names = set().union(*(_imported_top_levels(Path(importlib.util.find_spec(m).origin), m.startswith("sigrl.serving"))
                          for m in modules))
    third_party = names - set(sys.stdlib_module_names) - {"sigrl", "__future__", "triton_python_backend_utils"}
    owners = metadata.packages_distributions()
    return {re.sub(r"[-_.]+", "-", owners[name][0]).lower() for name in third_party}


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.sub(r"[-_.]+", "-", re.match(r"[A-Za-z0-9_.-]+", r).group(0)).lower() for r in requirements}


def test_the_images_requirements_are_what_the_served_models_import():
    served = served_distributions()
    assert requirement_names(container.served_requirements([container.PYTHON_RUNTIME_EXTRA])) == served
    assert requirement_names(container.served_requirements([container.SERVED_EXTRA])) == served - {"onnxruntime"}
    assert not {"torch", "torchvision", "open-clip-torch", "timm"} & served


def test_served_requirements_expand_sigrls_own_extras():
    requires = ['numpy>=1.26', 'torch>=2.8', 'numpy>=1.26; extra == "triton"', 'pillow<13; extra == "triton"',
                'sigrl[triton]; extra == "triton-cpu"', 'onnxruntime>=1.20; extra == "triton-cpu"']
    assert container.served_requirements(["triton-cpu"], requires) == ["onnxruntime>=1.20", "numpy>=1.26", "pillow<13"]
    with pytest.raises(ValueError, match="no extra 'gpu'"):
        container.served_requirements(["gpu"], requires)


def test_containerfile_builds_from_the_pinned_triton_with_the_wheel_and_the_served_requirements_only():
    text = (ROOT / "Containerfile").read_text()
    instructions = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert f"ARG TRITON_TAG={triton_releases.DEFAULT_TRITON_TAG}" in instructions
    assert "FROM nvcr.io/nvidia/tritonserver:${TRITON_TAG}" in instructions
    assert f"ARG SIGRL_EXTRAS={container.SERVED_EXTRA}" in instructions
    installs = [line for line in instructions if "pip install" in line]
    assert len(installs) == 2 and "--no-deps" in installs[0] and "sigrl-*.whl" in text
    assert "-r /tmp/requirements.txt" in installs[1]
    assert "python3 -m sigrl.serving.container requirements ${SIGRL_EXTRAS}" in text
    assert "torch" not in " ".join(instructions)
    assert f"USER {kubernetes.UID}:{kubernetes.UID}" in instructions
    assert 'ENTRYPOINT ["tritonserver"]' in instructions  # what the Deployment's command runs too
    assert (ROOT / ".dockerignore").read_text().splitlines()[-2:] == ["*", "!dist/sigrl-*.whl"]


@pytest.mark.slow
def test_the_containerfiles_install_step_runs_in_a_fresh_environment(tmp_path):
    """The Containerfile's RUN step itself, in a fresh virtual environment standing in for the Triton image's Python
    (its paths moved under tmp_path): the wheel without dependencies, the requirements it names, and the served
    modules importing with those alone, no torch. (Installs from the package index: four small packages.)"""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path / "dist"), str(ROOT)],
                   check=True, capture_output=True)
    subprocess.run([sys.executable, "-m", "venv", str(tmp_path / "venv")], check=True)
    text = (ROOT / "Containerfile").read_text()
    step = re.search(r"^RUN (.*?[^\\])\n", text, re.S | re.M).group(1).replace("\\\n", "\n")
    step = step.replace("/tmp/", f"{tmp_path}/").replace("${SIGRL_EXTRAS}", container.SERVED_EXTRA)
    env = {**os.environ, "PATH": f"{tmp_path / 'venv' / 'bin'}{os.pathsep}{os.environ['PATH']}", "PIP_CONSTRAINT": ""}
    done = subprocess.run(["bash", "-c", step], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    listed = subprocess.run([str(tmp_path / "venv" / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
                            capture_output=True, text=True, check=True).stdout
    installed = {entry["name"].lower() for entry in json.loads(listed)}
    assert {"sigrl", "numpy", "pillow", "ftfy", "regex"} <= installed and "torch" not in installed
    assert not (tmp_path / "dist").exists()  # the step cleans up after itself


def test_the_triton_table_maps_tensorrt_versions_to_one_tag_each():
    releases = triton_releases.triton_releases()
    assert triton_releases.tag_for_tensorrt("10.8.0") == "25.01-py3" == triton_releases.DEFAULT_TRITON_TAG
    assert triton_releases.tag_for_tensorrt("10.5.0.18") == "24.10-py3"  # the Triton nvidia-pytriton 0.7 bundles
    assert len({r.tensorrt for r in releases.values()}) == len(releases)
    assert all(r.source and r.triton and r.cuda for r in releases.values())
    with pytest.raises(ValueError, match=r"TensorRT 11\.0\.0"):
        triton_releases.tag_for_tensorrt("11.0.0")


# ------------------------------------------------------------------------------ security linter


def test_checkov_finds_nothing_unjustified(tmp_path):
    """checkov (in a virtual environment of its own: it would move this project's pins) on every variant; the
    findings the Deployment keeps carry their reason as checkov skip annotations (see docs/deploy.md)."""
    checkov = os.environ.get("CHECKOV") or shutil.which("checkov")
    if not checkov:
        pytest.skip("checkov is not installed: python3 -m venv /tmp/checkov && /tmp/checkov/bin/pip install checkov, "
                    "then CHECKOV=/tmp/checkov/bin/checkov")
    for index, options in enumerate([{}, {"repo_uri": "gs://b/r", "credentials_secret": "k", "admin_key_secret": "a"},
                                      {"repo_uri": "pvc://c/r", "credentials_secret": None, "gpus": 0,
                                       "image": "reg.io/sigrl@sha256:" + "0" * 64}]):
        out = write_manifests(ClusterSpec(**{**SPEC.__dict__, **options}), tmp_path / str(index))[0].parent
        result = subprocess.run([checkov, "-d", str(out), "--framework", "kubernetes", "--compact", "--quiet",
                                 "--output", "json"], capture_output=True, text=True)
        report = json.loads(result.stdout)
        assert report["summary"]["failed"] == 0, [c["check_id"] for c in report["results"]["failed_checks"]]
