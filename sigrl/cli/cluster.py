"""``sigrl deploy k8s``: Kubernetes manifests (and a KServe InferenceService) for NVIDIA's Triton on a cluster."""

from __future__ import annotations

import argparse
from pathlib import Path

from sigrl.cli.arguments import non_negative_int, positive_float, positive_int, writable_folder
from sigrl.errors import UsageError

DEFAULT_IMAGE = "sigrl-triton"


def triton_tag(plans: list[str], tag: str | None) -> str:
    """The Triton release to build ``FROM``: ``--triton-tag``, else the one shipping the plans' TensorRT (from their
    build record), else the default; UsageError when the plans disagree with each other or with ``--triton-tag``."""
    from sigrl.deploy.triton_releases import DEFAULT_TRITON_TAG, same_tensorrt, tag_for_tensorrt, triton_releases

    if not plans:
        return tag or DEFAULT_TRITON_TAG
    from sigrl.deploy.tensorrt import BuildRecord  # imports the export code (torch): only with --plans

    try:
        versions = {BuildRecord.load(plan_dir).tensorrt_version for plan_dir in plans}
    except (OSError, ValueError) as err:
        raise UsageError(f"--plans: {err}") from None
    if len(versions) > 1:
        raise UsageError(f"--plans were built with different TensorRT versions ({', '.join(sorted(versions))}): one "
                         "Triton image runs one TensorRT")
    version = versions.pop()
    if tag is not None:
        shipped = {release.tag: release.tensorrt for release in triton_releases().values()}
        if tag in shipped and not same_tensorrt(shipped[tag], version):
            raise UsageError(f"--triton-tag {tag} ships TensorRT {shipped[tag]}, but --plans were built with "
                             f"TensorRT {version}: plans load only on the TensorRT they were built with")
        return tag
    try:
        return tag_for_tensorrt(version)
    except ValueError as err:
        raise UsageError(f"--plans: {err}: rebuild the plans in one of those containers, or name the release that "
                         "ships their TensorRT with --triton-tag") from None


def image_reference(image: str, tag: str) -> str:
    """``image`` as given when it has a tag or digest, else tagged ``<sigrl version>-triton<release>``."""
    from sigrl import __version__

    if "@" in image or ":" in image.rsplit("/", 1)[-1]:
        return image
    return f"{image}:{__version__}-triton{tag.removesuffix('-py3')}"


def cmd_k8s(args: argparse.Namespace) -> int:
    from sigrl.serving.container import PYTHON_RUNTIME_EXTRA
    from sigrl.serving.kubernetes import ClusterSpec, write_manifests

    writable_folder("--out", args.out)
    tag = triton_tag(args.plans, args.triton_tag)
    image = image_reference(args.image, tag)
    spec = ClusterSpec(repo_uri=args.repo_uri, image=image, triton_tag=tag, name=args.name, namespace=args.namespace,
                       gpus=args.gpus, replicas=args.replicas, max_replicas=args.max_replicas or 4 * args.replicas,
                       cpu=args.cpu, memory=args.memory, shm_size=args.shm_size, tmp_size=args.tmp_size,
                       credentials_secret=args.credentials_secret, admin_key_secret=args.admin_key_secret,
                       image_pull_secret=args.image_pull_secret, drain_s=args.drain_seconds,
                       startup_s=args.startup_seconds, target_queue_ms=args.target_queue_ms)
    files = write_manifests(spec, Path(args.out), overwrite=args.overwrite)
    out = Path(args.out)
    print(f"{len(files)} files written to {out} (Triton {tag}, image {image})")
    extras = "" if spec.gpus else f" --build-arg SIGRL_EXTRAS={PYTHON_RUNTIME_EXTRA}"  # CPU: the python runtime
    print(f"build the image:  python -m pip wheel --no-deps -w dist . && docker build -f Containerfile "
          f"--build-arg TRITON_TAG={tag}{extras} -t {image} . && docker push {image}")
    print(f"deploy:           kubectl apply -f {out}        (or: kubectl apply -k {out})")
    print(f"or with KServe:   kubectl apply -k {out / 'kserve'}")
    print(f"clients:          sigrl tag --url dns:///{spec.name}-grpc.{spec.namespace}.svc.cluster.local:8001 IMAGES")
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``deploy k8s`` to the ``sigrl`` parser."""
    deploy = commands.add_parser("deploy",
                                 help="manifests that run a model repository on a cluster (Kubernetes, KServe)")
    targets = deploy.add_subparsers(dest="target", required=True, parser_class=type(deploy))
    k8s = targets.add_parser("k8s", help="write Kubernetes manifests that serve a repository on NVIDIA's Triton: "
                                         "Deployment, Services, autoscaler, disruption budget, KServe alternative")
    k8s.add_argument("--repo-uri", required=True, metavar="URI",
                     help="the repository written by `sigrl triton-repo`: s3://BUCKET/PATH (s3://HOST:PORT/BUCKET/PATH "
                          "for other S3 stores), gs://BUCKET/PATH, as://ACCOUNT/CONTAINER/PATH, or pvc://CLAIM/PATH")
    k8s.add_argument("--out", required=True, help="folder for the manifests (one file per object)")
    k8s.add_argument("--image", default=DEFAULT_IMAGE,
                     help="the image built from Containerfile, e.g. registry.example.com/sigrl-triton; without a tag "
                          "it gets <sigrl version>-triton<release> (default: sigrl-triton)")
    k8s.add_argument("--plans", nargs="+", default=[], metavar="DIR",
                     help="`sigrl build-engines` folders served by the repository: the Triton release is the one "
                          "shipping the TensorRT of their build record")
    k8s.add_argument("--triton-tag", help="NVIDIA Triton image tag to build from, e.g. 25.01-py3 (default: from "
                                          "--plans, else the newest release sigrl knows)")
    k8s.add_argument("--name", default="sigrl", help="name of the objects (default: sigrl)")
    k8s.add_argument("--namespace", default="sigrl", help="namespace of the objects (default: sigrl; create it first)")
    k8s.add_argument("--gpus", type=non_negative_int, default=1, help="GPUs per replica (0: CPU only; default 1)")
    k8s.add_argument("--replicas", type=positive_int, default=2, help="replicas at least (default 2)")
    k8s.add_argument("--max-replicas", type=positive_int,
                     help="replicas the autoscaler may add up to (default: 4 x --replicas)")
    k8s.add_argument("--target-queue-ms", type=positive_float, default=50.0,
                     help="queue time per request the autoscaler holds replicas to (default 50 ms)")
    k8s.add_argument("--cpu", default="4", help="CPUs per replica, requested and limit (default 4)")
    k8s.add_argument("--memory", default="16Gi", help="memory per replica, requested and limit, /dev/shm included "
                                                      "(default 16Gi)")
    k8s.add_argument("--shm-size", default="1Gi", help="the python stubs' shared memory (/dev/shm) per replica "
                                                       "(default 1Gi)")
    k8s.add_argument("--tmp-size", default="8Gi", help="disk for /tmp, where Triton copies a cloud repository "
                                                       "(default 8Gi)")
    k8s.add_argument("--credentials-secret", metavar="SECRET",
                     help="Secret with the object store's credentials: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                          "AWS_DEFAULT_REGION (s3); AZURE_STORAGE_ACCOUNT, AZURE_STORAGE_KEY (as); key.json (gs)")
    k8s.add_argument("--admin-key-secret", metavar="SECRET",
                     help="Secret whose admin-key opens Triton's restricted APIs to requests carrying it "
                          "(default: they stay closed to everyone)")
    k8s.add_argument("--image-pull-secret", metavar="SECRET",
                     help="Secret for pulling the image from a private registry")
    k8s.add_argument("--drain-seconds", type=positive_int, default=30,
                     help="how long a stopping replica finishes requests in flight (default 30)")
    k8s.add_argument("--startup-seconds", type=positive_int, default=900,
                     help="how long a replica may take to download and load the repository (default 900)")
    k8s.add_argument("--overwrite", action="store_true", help="replace an existing --out folder")
    k8s.set_defaults(func=cmd_k8s)
