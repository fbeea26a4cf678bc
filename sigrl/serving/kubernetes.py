"""Kubernetes manifests that run a sigrl model repository on NVIDIA's Triton, several replicas behind Services.

:func:`manifests` builds every object as a plain dict; :func:`write_manifests` writes one YAML file per object and
a ``Kustomization`` beside them (named so that ``kubectl apply -f DIR``, which reads only ``.yaml``/``.yml``/``.json``
files, skips it, while ``kubectl apply -k DIR`` finds it). What each object carries and why:

* the Deployment runs the image of ``Containerfile`` (NVIDIA's Triton at a pinned tag plus the served models'
  requirements) with exactly the flags ``sigrl serve`` uses, from :func:`sigrl.serving.server.triton_flags`; its
  probes are Triton's health endpoints plus :mod:`sigrl.serving.health` (a python stub that died makes the pod
  unready, then restarts it, as ``sigrl serve`` restarts Triton); non-root, no privilege escalation, no
  capabilities, read-only root filesystem with two memory- or disk-backed ``emptyDir`` volumes: ``/dev/shm`` (the
  python backend's shared memory; private to the pod, which is the isolation ``sigrl serve`` gets from its mount
  namespace) and ``/tmp`` (Triton copies a cloud repository there);
* a headless Service for gRPC (one DNS record per ready replica: ``dns:///`` clients balance per request over
  them, which long-lived HTTP/2 connections through a ClusterIP would not) and a ClusterIP Service for HTTP, gRPC
  and metrics;
* a HorizontalPodAutoscaler on queue time per request of the entry model, a custom metric the Prometheus adapter
  derives from Triton's counters (:func:`adapter_rules`), and a PodDisruptionBudget;
* in ``kserve/``: the same server as a KServe ``InferenceService`` on KServe's Triton runtime (and its autoscaler).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from sigrl import __version__
from sigrl.files import staged_folder
from sigrl.serving.protocol import ENTRY_MODEL
from sigrl.serving.server import triton_flags

Manifest = dict[str, Any]

HTTP_PORT, GRPC_PORT, METRICS_PORT = 8000, 8001, 8002
# KServe's Triton runtime (ClusterServingRuntime kserve-tritonserver) routes to these and names the repository.
KSERVE_RUNTIME, KSERVE_HTTP_PORT, KSERVE_GRPC_PORT, KSERVE_MODEL_DIR = "kserve-tritonserver", 8080, 9000, "/mnt/models"
CLOUD_SCHEMES = ("s3", "gs", "as")  # read by Triton itself
VOLUME_MOUNT = "/models"  # where a pvc:// repository is mounted
ADMIN_KEY_ENV = "SIGRL_ADMIN_KEY"
ADMIN_KEY_SECRET_KEY = "admin-key"
GCS_KEY_FILE = "key.json"  # the key of the service-account JSON in a gs:// credentials Secret
UID = 10001  # no user of the base image; high, so that it maps to no user of the node either
PRESTOP_SECONDS = 5  # endpoints and DNS drop the pod before Triton stops taking requests
METRIC = "sigrl_queue_us_per_request"  # the Prometheus adapter's name for queue time per request (µs)
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?")  # a DNS label short enough for "<name>-predictor-..."
_SECRET = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")  # a Kubernetes object name (DNS subdomain)
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")  # an image tag (OCI distribution spec)
_PATH_PART = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_IMAGE = re.compile(rf"(?:[A-Za-z0-9.-]+(?::[0-9]+)?/)?{_PATH_PART}(?:/{_PATH_PART})*"
                    rf"(?::{_TAG.pattern})?(?:@sha256:[0-9a-f]{{64}})?")  # an image reference
_QUANTITY = re.compile(r"(\d+(?:\.\d+)?)(Ki|Mi|Gi|Ti|k|M|G|T)?")
_UNITS = {None: 1, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def quantity_bytes(flag: str, text: str) -> float:
    """A Kubernetes memory quantity (``16Gi``, ``512Mi``, ``2G``) in bytes; ValueError naming ``flag``."""
    match = _QUANTITY.fullmatch(text)
    if not match or float(match.group(1)) <= 0:
        raise ValueError(f"{flag} {text!r} is not a size: use e.g. 512Mi or 16Gi")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class ClusterSpec:
    """What ``sigrl deploy k8s`` deploys. ``repo_uri``: ``s3://``, ``gs://`` or ``as://`` (Triton reads it; credentials
    from ``credentials_secret``), or ``pvc://CLAIM[/PATH]`` (a volume). ``image``: the Containerfile's image, built
    ``FROM`` NVIDIA's Triton at ``triton_tag``. ``gpus`` per replica (0: CPU only), ``replicas`` to ``max_replicas``
    as load asks (``target_queue_ms`` of queue time per request). ``drain_s``: how long Triton finishes requests in
    flight when stopped. ``admin_key_secret``: a Secret whose ``admin-key`` opens Triton's restricted APIs (else
    they stay shut)."""

    repo_uri: str
    image: str
    triton_tag: str
    name: str = "sigrl"
    namespace: str = "sigrl"
    gpus: int = 1
    replicas: int = 2
    max_replicas: int = 8
    cpu: str = "4"
    memory: str = "16Gi"
    shm_size: str = "1Gi"
    tmp_size: str = "8Gi"
    credentials_secret: str | None = None
    admin_key_secret: str | None = None
    image_pull_secret: str | None = None
    drain_s: int = 30
    startup_s: int = 900
    target_queue_ms: float = 50.0

    def check(self) -> None:
        """ValueError naming the ``sigrl deploy k8s`` flag of the first setting that cannot work."""
        for flag, value in (("--name", self.name), ("--namespace", self.namespace)):
            if not _NAME.fullmatch(value):
                raise ValueError(f"{flag} {value!r} must be a DNS label: lower-case letters, digits and '-', "
                                 "at most 40 characters")
        for flag, secret in (("--credentials-secret", self.credentials_secret),
                             ("--admin-key-secret", self.admin_key_secret),
                             ("--image-pull-secret", self.image_pull_secret)):
            if secret is not None and not _SECRET.fullmatch(secret):
                raise ValueError(f"{flag} {secret!r} is not a Secret name: lower-case letters, digits, '-' and '.'")
        if not _TAG.fullmatch(self.triton_tag):
            raise ValueError(f"--triton-tag {self.triton_tag!r} is not an image tag (letters, digits, '_', '.', '-')")
        if not _IMAGE.fullmatch(self.image):
            raise ValueError(f"--image {self.image!r} is not an image reference: "
                             "[REGISTRY/]NAME[:TAG][@sha256:DIGEST], the name in lower case")
        if re.search(r"[\s\"'`\\]", self.repo_uri):
            raise ValueError(f"--repo-uri {self.repo_uri!r} holds white space, quotes or backslashes")
        if self.scheme not in (*CLOUD_SCHEMES, "pvc") or not self.repo_uri.partition("://")[2].strip("/"):
            raise ValueError(f"--repo-uri {self.repo_uri!r}: give s3://BUCKET/PATH, gs://BUCKET/PATH, "
                             "as://ACCOUNT/CONTAINER/PATH (Triton reads them) or pvc://CLAIM/PATH (a volume)")
        if self.scheme == "pvc" and self.credentials_secret:
            raise ValueError("--credentials-secret is for s3://, gs:// and as:// repositories, not a pvc:// volume")
        if self.gpus < 0 or self.replicas < 1:
            raise ValueError(f"--gpus must be >= 0 and --replicas >= 1, got {self.gpus} and {self.replicas}")
        if self.max_replicas < self.replicas:
            raise ValueError(f"--max-replicas {self.max_replicas} must be at least --replicas {self.replicas}")
        if not re.fullmatch(r"\d+(\.\d+)?m?", self.cpu) or float(self.cpu.rstrip("m")) <= 0:
            raise ValueError(f"--cpu {self.cpu!r} is not a CPU quantity: use e.g. 4 or 3500m")
        memory, shm = quantity_bytes("--memory", self.memory), quantity_bytes("--shm-size", self.shm_size)
        quantity_bytes("--tmp-size", self.tmp_size)  # raises on a value that is no size
        if shm >= memory:
            raise ValueError(f"--shm-size {self.shm_size} must be below --memory {self.memory}: /dev/shm lives in "
                             "memory and counts against the container's memory limit")
        if self.drain_s < 1 or self.startup_s < 10 or self.target_queue_ms <= 0:
            raise ValueError("--drain-seconds must be >= 1, --startup-seconds >= 10, --target-queue-ms > 0")

    @property
    def scheme(self) -> str:
        return self.repo_uri.partition("://")[0]

    @property
    def labels(self) -> dict[str, str]:
        """The labels that select this server's pods (fixed for the Deployment's life: no version in them)."""
        return {"app.kubernetes.io/name": "sigrl", "app.kubernetes.io/instance": self.name}


def _metadata(spec: ClusterSpec, name: str, **extra: Any) -> dict[str, Any]:
    labels = {**spec.labels, "app.kubernetes.io/component": "triton", "app.kubernetes.io/version": __version__,
              "app.kubernetes.io/managed-by": "sigrl"}
    return {"name": name, "namespace": spec.namespace, "labels": labels, **extra}


def container_args(spec: ClusterSpec, repository: str, http_port: int = HTTP_PORT,
                   grpc_port: int = GRPC_PORT) -> list[str]:
    """Triton's flags in a pod: :func:`~sigrl.serving.server.triton_flags` on every address, the admin key (when the
    user names a Secret) from the environment, which Kubernetes substitutes into ``$(VAR)``."""
    admin_key = f"$({ADMIN_KEY_ENV})" if spec.admin_key_secret else None
    return triton_flags(repository, host="0.0.0.0", grpc_port=grpc_port, http_port=http_port,
                        metrics_port=METRICS_PORT, admin_key=admin_key, exit_timeout_s=spec.drain_s)


def _repository(spec: ClusterSpec) -> tuple[str, list[Manifest], list[Manifest]]:
    """Where Triton finds the repository, with the volumes and mounts that brings: the URI itself for a cloud
    store, the claim mounted read-only at :data:`VOLUME_MOUNT` for ``pvc://CLAIM/PATH``."""
    if spec.scheme != "pvc":
        return spec.repo_uri, [], []
    claim, _, path = spec.repo_uri.partition("://")[2].partition("/")
    volume = {"name": "model-repository", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}}
    mount = {"name": "model-repository", "mountPath": VOLUME_MOUNT, "readOnly": True,
             **({"subPath": path.strip("/")} if path.strip("/") else {})}
    return VOLUME_MOUNT, [volume], [mount]


def _credentials(spec: ClusterSpec) -> tuple[dict[str, Any], list[Manifest], list[Manifest]]:
    """The container fields, volumes and mounts that hand Triton the object store's credentials: for s3:// and as://
    the Secret's keys become environment variables (``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``,
    ``AWS_DEFAULT_REGION``; ``AZURE_STORAGE_ACCOUNT``, ``AZURE_STORAGE_KEY``: what Triton reads), for gs:// the
    Secret's ``key.json`` is mounted and named by ``GOOGLE_APPLICATION_CREDENTIALS``."""
    secret = spec.credentials_secret
    if secret is None:
        return {}, [], []
    if spec.scheme != "gs":
        return {"envFrom": [{"secretRef": {"name": secret}}]}, [], []
    directory = "/var/run/secrets/object-store"
    env = [{"name": "GOOGLE_APPLICATION_CREDENTIALS", "value": f"{directory}/{GCS_KEY_FILE}"}]
    volume = {"name": "object-store-credentials", "secret": {"secretName": secret, "defaultMode": 0o440}}
    return {"env": env}, [volume], [{"name": "object-store-credentials", "mountPath": directory, "readOnly": True}]


def _health_probe(endpoint: str, http_port: int, period_s: int, failures: int) -> Manifest:
    """An exec probe running :mod:`sigrl.serving.health` in the container (Triton's endpoint plus live stubs)."""
    command = ["python3", "-m", "sigrl.serving.health", "--endpoint", endpoint,
               "--url", f"http://127.0.0.1:{http_port}"]
    return {"exec": {"command": command}, "periodSeconds": period_s, "timeoutSeconds": 10, "failureThreshold": failures}


def _resources(spec: ClusterSpec) -> Manifest:
    """Requests equal to limits (the Guaranteed class: the last a node evicts under pressure), GPUs as limits."""
    amounts: dict[str, Any] = {"cpu": spec.cpu, "memory": spec.memory}
    if spec.gpus:
        amounts["nvidia.com/gpu"] = spec.gpus
    return {"requests": dict(amounts), "limits": dict(amounts)}


def triton_container(spec: ClusterSpec, args: list[str], http_port: int = HTTP_PORT, grpc_port: int = GRPC_PORT,
                     mounts: Sequence[Manifest] = ()) -> Manifest:
    """The Triton container: image, ``args``, ports, environment, resources, probes and security context."""
    credentials, _, credential_mounts = _credentials(spec)
    env = [{"name": "HOME", "value": "/tmp"}, {"name": "PYTHONDONTWRITEBYTECODE", "value": "1"},
           *credentials.pop("env", [])]
    if spec.admin_key_secret:
        env.append({"name": ADMIN_KEY_ENV, "valueFrom": {"secretKeyRef": {"name": spec.admin_key_secret,
                                                                          "key": ADMIN_KEY_SECRET_KEY}}})
    return {
        "name": "triton",
        "image": spec.image,
        "imagePullPolicy": "Always",
        "command": ["tritonserver"],
        "args": args,
        "ports": [{"name": "http", "containerPort": http_port, "protocol": "TCP"},
                  {"name": "grpc", "containerPort": grpc_port, "protocol": "TCP"},
                  {"name": "metrics", "containerPort": METRICS_PORT, "protocol": "TCP"}],
        "env": env,
        **credentials,
        "resources": _resources(spec),
        # Triton opens its endpoints once every model has loaded (a cloud repository is downloaded first)
        "startupProbe": {"httpGet": {"path": "/v2/health/live", "port": http_port}, "periodSeconds": 10,
                         "timeoutSeconds": 5, "failureThreshold": math.ceil(spec.startup_s / 10)},
        "readinessProbe": _health_probe("ready", http_port, 5, 2),
        "livenessProbe": _health_probe("live", http_port, 20, 3),
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SECONDS)]}}},
        "securityContext": {"allowPrivilegeEscalation": False, "privileged": False, "readOnlyRootFilesystem": True,
                            "runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID,
                            "capabilities": {"drop": ["ALL"]}},
        "volumeMounts": [{"name": "dshm", "mountPath": "/dev/shm"}, {"name": "tmp", "mountPath": "/tmp"},
                         *mounts, *credential_mounts],
    }


def _scratch_volumes(spec: ClusterSpec) -> list[Manifest]:
    """``/dev/shm`` in memory (the python stubs' shared memory, bounded), ``/tmp`` on the node's disk."""
    return [{"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": spec.shm_size}},
            {"name": "tmp", "emptyDir": {"sizeLimit": spec.tmp_size}}]


def _pod_security(spec: ClusterSpec) -> Manifest:
    return {"runAsNonRoot": True, "runAsUser": UID, "runAsGroup": UID, "fsGroup": UID,
            "seccompProfile": {"type": "RuntimeDefault"}}


def deployment(spec: ClusterSpec) -> Manifest:
    """The Triton replicas: rolling updates one extra pod at a time (never fewer ready than asked), spread over
    nodes, on GPU nodes (their usual taint tolerated) when ``spec.gpus``."""
    repository, repo_volumes, repo_mounts = _repository(spec)
    _, credential_volumes, _ = _credentials(spec)
    pod: Manifest = {
        "serviceAccountName": spec.name,
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "securityContext": _pod_security(spec),
        "terminationGracePeriodSeconds": PRESTOP_SECONDS + spec.drain_s + 15,
        "containers": [triton_container(spec, container_args(spec, repository), mounts=repo_mounts)],
        "volumes": [*_scratch_volumes(spec), *repo_volumes, *credential_volumes],
        "topologySpreadConstraints": [{"maxSkew": 1, "topologyKey": "kubernetes.io/hostname",
                                       "whenUnsatisfiable": "ScheduleAnyway",
                                       "labelSelector": {"matchLabels": spec.labels}}],
    }
    if spec.gpus:
        pod["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    if spec.image_pull_secret:
        pod["imagePullSecrets"] = [{"name": spec.image_pull_secret}]
    annotations = {"prometheus.io/scrape": "true", "prometheus.io/port": str(METRICS_PORT),
                   "prometheus.io/path": "/metrics", "sigrl/triton-base-image": f"nvcr.io/nvidia/tritonserver:"
                                                                               f"{spec.triton_tag}"}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(spec, spec.name, **_linter_exceptions(spec)),
        "spec": {
            "replicas": spec.replicas,
            "revisionHistoryLimit": 5,
            "selector": {"matchLabels": spec.labels},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": {"metadata": {"labels": _metadata(spec, spec.name)["labels"], "annotations": annotations},
                         "spec": pod},
        },
    }


def _linter_exceptions(spec: ClusterSpec) -> dict[str, Any]:
    """Checkov findings this Deployment keeps on purpose, each with its reason, as checkov's skip annotations."""
    reasons = {}
    if "@" not in spec.image:
        reasons["CKV_K8S_43"] = ("the image is built by its user from Containerfile; pass --image NAME@sha256:DIGEST "
                                 "once pushed to pin it")
    if (spec.credentials_secret and spec.scheme != "gs") or spec.admin_key_secret:
        reasons["CKV_K8S_35"] = ("Triton reads S3 and Azure credentials from environment variables only, and takes "
                                 "the admin key on its command line")
    if not reasons:
        return {}
    return {"annotations": {f"checkov.io/skip{i}": f"{check}={reason}"
                            for i, (check, reason) in enumerate(reasons.items(), 1)}}


def network_policy(spec: ClusterSpec) -> Manifest:
    """Only Triton's three ports take connections, from anywhere in the cluster: narrow ``from`` to the namespaces
    of your clients and of Prometheus."""
    ports = [{"port": port, "protocol": "TCP"} for port in (HTTP_PORT, GRPC_PORT, METRICS_PORT)]
    return {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": _metadata(spec, spec.name),
            "spec": {"podSelector": {"matchLabels": spec.labels}, "policyTypes": ["Ingress"],
                     "ingress": [{"from": [{"namespaceSelector": {}}], "ports": ports}]}}


def grpc_service(spec: ClusterSpec) -> Manifest:
    """Headless: DNS answers every ready replica's address, so ``dns:///NAME-grpc.NAMESPACE.svc:8001`` clients
    (``SigRLClient``, ``sigrl tag``) open a connection to each and spread requests round-robin."""
    return {"apiVersion": "v1", "kind": "Service", "metadata": _metadata(spec, f"{spec.name}-grpc"),
            "spec": {"clusterIP": "None", "selector": spec.labels, "publishNotReadyAddresses": False,
                     "ports": [{"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP",
                                "appProtocol": "grpc"}]}}


def service(spec: ClusterSpec) -> Manifest:
    """One virtual address for HTTP (balanced per connection), gRPC clients that cannot balance themselves (one
    replica per connection), and metrics scrapers."""
    ports = [{"name": "http", "port": HTTP_PORT, "targetPort": "http", "protocol": "TCP", "appProtocol": "http"},
             {"name": "grpc", "port": GRPC_PORT, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "grpc"},
             {"name": "metrics", "port": METRICS_PORT, "targetPort": "metrics", "protocol": "TCP",
              "appProtocol": "http"}]
    return {"apiVersion": "v1", "kind": "Service", "metadata": _metadata(spec, spec.name),
            "spec": {"type": "ClusterIP", "selector": spec.labels, "ports": ports}}


def autoscaler(spec: ClusterSpec, target: str | None = None) -> Manifest:
    """Scale ``target`` (default: the Deployment) on the entry model's queue time per request, averaged over pods:
    up by two pods a minute at most (a GPU pod takes minutes to pull and load), down by one after five quiet
    minutes."""
    behavior = {"scaleUp": {"stabilizationWindowSeconds": 60, "policies": [{"type": "Pods", "value": 2,
                                                                             "periodSeconds": 60}]},
                "scaleDown": {"stabilizationWindowSeconds": 300, "policies": [{"type": "Pods", "value": 1,
                                                                                "periodSeconds": 120}]}}
    target_us = str(round(spec.target_queue_ms * 1000))
    return {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
            "metadata": _metadata(spec, target or spec.name),
            "spec": {"scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target or spec.name},
                     "minReplicas": spec.replicas, "maxReplicas": spec.max_replicas,
                     "metrics": [{"type": "Pods", "pods": {"metric": {"name": METRIC},
                                                           "target": {"type": "AverageValue",
                                                                      "averageValue": target_us}}}],
                     "behavior": behavior}}


def disruption_budget(spec: ClusterSpec) -> Manifest:
    """Voluntary evictions (node drains, upgrades) take one replica at a time."""
    return {"apiVersion": "policy/v1", "kind": "PodDisruptionBudget", "metadata": _metadata(spec, spec.name),
            "spec": {"maxUnavailable": 1, "selector": {"matchLabels": spec.labels}}}


def service_account(spec: ClusterSpec) -> Manifest:
    """The pods' identity, without an API token (Triton never calls the Kubernetes API). Annotate it for workload
    identity (EKS IRSA, GKE Workload Identity) to read the repository without a credentials Secret."""
    return {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _metadata(spec, spec.name),
            "automountServiceAccountToken": False}


def inference_service(spec: ClusterSpec) -> Manifest:
    """The same server through KServe: its Triton runtime (``kserve-tritonserver``) with this image, KServe's
    storage initializer fetching ``storageUri`` into /mnt/models, and the flags of :func:`container_args` appended
    to the runtime's (which name the repository and KServe's ports, so these flags leave the repository out).

    The runtime's arguments start with ``tritonserver``, so the command is ``env``, which runs them. Standard
    (raw Deployment) mode; ``autoscalerClass: external`` leaves scaling to the queue-time autoscaler in
    ``kserve/``."""
    args = [flag for flag in container_args(spec, KSERVE_MODEL_DIR, KSERVE_HTTP_PORT, KSERVE_GRPC_PORT)
            if not flag.startswith("--model-repository=")]
    # KServe's storage initializer reads the store (with KServe's credentials); Triton reads a local folder
    container = triton_container(replace(spec, credentials_secret=None), args, KSERVE_HTTP_PORT, KSERVE_GRPC_PORT)
    del container["name"], container["ports"]  # the runtime names the container and declares its ports
    container["command"] = ["env"]
    model = {"modelFormat": {"name": "triton"}, "runtime": KSERVE_RUNTIME, "protocolVersion": "v2",
             "storageUri": spec.repo_uri, **container}
    predictor: Manifest = {
        "minReplicas": spec.replicas, "maxReplicas": spec.max_replicas,
        "serviceAccountName": spec.name, "automountServiceAccountToken": False,
        "securityContext": _pod_security(spec),
        "terminationGracePeriodSeconds": PRESTOP_SECONDS + spec.drain_s + 15,
        "volumes": _scratch_volumes(spec),
        "model": model,
    }
    if spec.gpus:
        predictor["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    annotations = {"serving.kserve.io/deploymentMode": "RawDeployment", "serving.kserve.io/autoscalerClass": "external"}
    return {"apiVersion": "serving.kserve.io/v1beta1", "kind": "InferenceService",
            "metadata": _metadata(spec, spec.name, annotations=annotations), "spec": {"predictor": predictor}}


def adapter_rules() -> Manifest:
    """The Prometheus adapter rule that publishes :data:`METRIC` per pod: the entry model's queue time divided by
    its successful requests over the last minute, in microseconds (0 when idle). Merge it into the adapter's
    ``rules`` (its Helm chart's ``rules.custom``)."""
    selector = f'<<.LabelMatchers>>,model="{ENTRY_MODEL}"'
    query = (f"sum by (<<.GroupBy>>) (rate(nv_inference_queue_duration_us{{{selector}}}[1m])) / "
             f"clamp_min(sum by (<<.GroupBy>>) (rate(nv_inference_request_success{{{selector}}}[1m])), 0.001)")
    return {"rules": [{
        "seriesQuery": f'nv_inference_queue_duration_us{{namespace!="",pod!="",model="{ENTRY_MODEL}"}}',
        "resources": {"overrides": {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}},
        "name": {"matches": "^nv_inference_queue_duration_us$", "as": METRIC},
        "metricsQuery": query,
    }]}


def manifests(spec: ClusterSpec) -> dict[str, Manifest]:
    """Every file :func:`write_manifests` writes, by path relative to the output folder."""
    spec.check()
    top = {"serviceaccount.yaml": service_account(spec), "deployment.yaml": deployment(spec),
           "service.yaml": service(spec), "service-grpc.yaml": grpc_service(spec),
           "horizontalpodautoscaler.yaml": autoscaler(spec), "poddisruptionbudget.yaml": disruption_budget(spec),
           "networkpolicy.yaml": network_policy(spec)}
    kserve = {"kserve/serviceaccount.yaml": service_account(spec),  # Kustomize reads nothing outside its folder
              "kserve/inferenceservice.yaml": inference_service(spec),
              "kserve/horizontalpodautoscaler.yaml": autoscaler(spec, f"{spec.name}-predictor")}
    return {**top, "Kustomization": _kustomization(top), **kserve, "kserve/Kustomization": _kustomization(kserve),
            "monitoring/prometheus-adapter-rules.yaml": adapter_rules()}


def _kustomization(files: dict[str, Manifest]) -> Manifest:
    return {"apiVersion": "kustomize.config.k8s.io/v1beta1", "kind": "Kustomization",
            "resources": [Path(name).name for name in files]}


def write_manifests(spec: ClusterSpec, out: Path, overwrite: bool = False) -> list[Path]:
    """Write :func:`manifests` under ``out`` (a non-empty ``out`` only with ``overwrite``); the files written.

    Written to a temporary folder beside ``out`` and renamed into place, so a failure leaves ``out`` as it was."""
    import yaml

    out = Path(out)
    if out.exists() and (not out.is_dir() or (any(out.iterdir()) and not overwrite)):
        raise FileExistsError(f"--out {out} exists and is not an empty folder: pass --overwrite to replace it")
    files = manifests(spec)
    with staged_folder(out) as staging:
        for name, manifest in files.items():
            (staging / name).parent.mkdir(parents=True, exist_ok=True)
            (staging / name).write_text(f"# Written by sigrl {__version__} (sigrl deploy k8s).\n"
                                        + yaml.safe_dump(manifest, sort_keys=False, width=120))
    return [out / name for name in files]
