"""Serving commands: ``triton-repo``, ``serve``, ``tag``."""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from sigrl.cli.arguments import non_negative_int, positive_float, positive_int
from sigrl.errors import UsageError
from sigrl.registry import ENTRY_ENGINES, ORT_TENSORRT_PRECISIONS, SERVED_RUNTIMES

if TYPE_CHECKING:
    from sigrl.serving.client import Tagging
    from sigrl.thresholds import Thresholds


def cmd_triton_repo(args: argparse.Namespace) -> int:
    from sigrl.deploy.tensorrt import BuildRecord, serving_tensorrt
    from sigrl.serving.protocol import EntryLimits
    from sigrl.serving.repository import Instances, build_repository

    tensorrt_version = serving_tensorrt(args.triton_container, args.tensorrt_version)
    if args.runtime == "tensorrt" and tensorrt_version is None:
        raise UsageError("--runtime tensorrt needs --triton-container TAG or --tensorrt-version X.Y.Z: a plan loads "
                         "only in the TensorRT it was built with (or, built --version-compatible, a later one)")
    caps = {name: getattr(args, name) for name in EntryLimits.__dataclass_fields__ if getattr(args, name) is not None}
    instances = Instances(entry=args.entry_instances, engines=args.engine_instances, gpus=tuple(args.gpus))
    plans = [Path(p) for p in args.plans]
    repo = build_repository(Path(args.engines), args.runtime, Path(args.out), max_batch=args.max_batch,
                            queue_delay_us=args.queue_delay_us, overwrite=args.overwrite,
                            plans=plans, ort_tensorrt=args.ort_tensorrt,
                            ort_tensorrt_cache=args.ort_tensorrt_cache, entry_engines=args.entry_engines,
                            thresholds=read_thresholds_file(args.thresholds) if args.thresholds else None,
                            threads=args.threads, instances=instances, tensorrt_version=tensorrt_version, **caps)
    print(f"Triton model repository ({args.runtime} runtime) written to {repo}")
    plan_dirs = plans or [Path(args.engines)]
    if args.runtime == "tensorrt" and any(BuildRecord.load(p).version_compatible for p in plan_dirs):
        print("the plans are version-compatible: start Triton with --backend-config=tensorrt,version-compatible=true")
    return 0


def _serve_error(message: str) -> int:
    print(f"sigrl serve: error: {message}", file=sys.stderr)
    return 2


def cmd_serve(args: argparse.Namespace) -> int:
    import signal
    import threading

    from sigrl.serving.server import PortInUseError, TritonServer, is_loopback

    repo = Path(args.repo)
    if not repo.is_dir():
        return _serve_error(f"--repo {repo}: no such folder; build one with "
                            f"`sigrl triton-repo --engines DIR --out {repo}`")
    if not any(repo.glob("*/config.pbtxt")):  # Triton would start "ready" with no model and fail every request
        return _serve_error(f"--repo {repo} holds no model (no MODEL/config.pbtxt): is it a repository written by "
                            "`sigrl triton-repo`?")
    admin_key = None
    if args.admin_key_file:
        try:
            admin_key = read_admin_key(Path(args.admin_key_file))
        except OSError as err:
            return _serve_error(f"--admin-key-file {args.admin_key_file}: {err.strerror}")
        except ValueError as err:
            return _serve_error(f"--admin-key-file {args.admin_key_file}: {err}")
    if not is_loopback(args.host):
        print(f"sigrl serve: warning: listening on {args.host}: inference and metrics are open to every client that "
              "can reach it (the admin APIs stay restricted); put TLS and authentication in front", file=sys.stderr)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    server = TritonServer(repo, grpc_port=args.grpc_port, http_port=args.http_port, host=args.host,
                          metrics_port=args.metrics_port, admin_key=admin_key,
                          log_file=Path(args.log_file) if args.log_file else None, private_shm=not args.shared_shm)
    if args.shared_shm:
        print("sigrl serve: warning: --shared-shm: the python stubs' shared memory (every request and response) is "
              "in the host's /dev/shm, where another local user can open it while Triton creates it",
              file=sys.stderr)
    try:
        server.start()
    except PortInUseError as err:
        return _serve_error(f"{err} (--{err.flag}-port)")
    except RuntimeError as err:
        kept = f"; full log: {server.kept_log}" if server.kept_log else ""
        print(f"sigrl serve: error: {err}{kept}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:  # start() has stopped what it started
        return 130
    try:
        print(f"Triton ready: gRPC {server.grpc_url}, HTTP {server.http_url}, metrics {server.metrics_url}, "
              f"log {server.log_path}, work folder {server.workdir} (Ctrl-C stops it)", flush=True)
        while not stop.wait(1.0):
            if server.is_healthy():
                continue
            dead = server.dead_stubs()
            reason = f"the python stub of {', '.join(dead)} died" if dead else "Triton is no longer ready"
            print(f"sigrl serve: {reason}; restarting Triton on the same ports", file=sys.stderr, flush=True)
            try:
                server.restart()
            except RuntimeError as err:
                print(f"sigrl serve: error: restart failed: {err}", file=sys.stderr)
                return 1
            finally:
                if server.kept_log:
                    print(f"sigrl serve: the failed server's log is kept at {server.kept_log}", file=sys.stderr)
            print("Triton ready again", flush=True)
    except KeyboardInterrupt:
        pass
    finally:
        print("stopping Triton ...", flush=True)
        server.stop()
    return 0


def read_admin_key(path: Path) -> str:
    """The operator's key from ``path``, which must be private to its owner (as ssh requires of private keys):
    ValueError when others may read it or it is not a valid key."""
    mode = path.stat().st_mode
    if mode & 0o077:
        raise ValueError(f"the key file is readable or writable by other users (mode {mode & 0o777:o}): "
                         f"chmod 600 {path}")
    key = path.read_text().strip()
    if not re.fullmatch(r"[\x21-\x7e]{16,}", key):
        raise ValueError("the key must be at least 16 printable ASCII characters without spaces")
    return key


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")


def read_thresholds_file(path: str) -> Thresholds:
    """``--thresholds FILE``, with the flag and file named in any error."""
    from sigrl.thresholds import Thresholds

    try:
        return Thresholds.read(path)
    except ValueError as err:
        raise UsageError(f"--thresholds {err}") from None
    except OSError as err:
        raise UsageError(f"--thresholds {path}: {err.strerror or err}") from None


def _read_thresholds(path: str | None, default: float | None) -> Thresholds | None:
    """Per-class thresholds from ``--thresholds FILE``, or the single ``--threshold`` for every label."""
    from sigrl.thresholds import Thresholds

    if path is not None and default is not None:
        raise UsageError("--threshold and --thresholds both given: pass one")
    if path is not None:
        return read_thresholds_file(path)
    return None if default is None else Thresholds({}, default)


def _parse_labels(text: str | None) -> list[str] | None:
    """``--labels`` as a list; absent means the served default vocabulary, but an empty list is a mistake."""
    if text is None:
        return None
    if not text.strip():
        raise UsageError("--labels is empty: give comma-separated names (e.g. --labels dog,cat), "
                         "or leave it out to use the served default vocabulary")
    from sigrl.serving.client import check_labels

    try:
        return check_labels(text.split(","))
    except UsageError as err:
        raise UsageError(f"--labels: {err}") from err


def image_paths(arguments: list[str]) -> list[Path]:
    """The files to tag: each IMAGE argument is a file, or a folder whose image files (recursively, sorted) count."""
    paths: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            found = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise UsageError(f"{path} is a folder without image files ({', '.join(IMAGE_SUFFIXES)})")
            paths += found
        else:
            paths.append(path)  # a missing or unreadable file is reported as that file's error
    return paths


def _read(path: Path) -> bytes | OSError:
    try:
        return path.read_bytes()
    except OSError as err:
        return OSError(err.strerror or str(err))


def _print_tagging(tagging: Tagging, top_k: int, thresholds: Thresholds | None, as_json: bool) -> None:
    if tagging.error is not None:
        if as_json:
            print(json.dumps({"image": tagging.image, "error": tagging.error}), flush=True)
        print(f"sigrl tag: error: {tagging.error}", file=sys.stderr, flush=True)
        return
    if thresholds is not None:
        import numpy as np

        ranked = thresholds.tags(np.array([list(tagging.scores.values())]), list(tagging.scores))[0]
    elif tagging.tags is not None:  # the server applies its thresholds
        ranked = [(name, tagging.scores[name]) for name in tagging.tags]
    else:
        ranked = sorted(tagging.scores.items(), key=lambda item: -item[1])
    kept = ranked[:top_k]
    if as_json:
        print(json.dumps({"image": tagging.image, "scores": tagging.scores,
                          "top": [{"label": n, "score": s} for n, s in kept]}), flush=True)
    else:
        print(f"{tagging.image}: " + (", ".join(f"{n} ({s:.3f})" for n, s in kept) or "(no label above threshold)"),
              flush=True)


def cmd_tag(args: argparse.Namespace) -> int:
    from sigrl.serving.client import SigRLClient

    labels = _parse_labels(args.labels)
    thresholds = _read_thresholds(args.thresholds, args.threshold)
    paths = image_paths(args.images)
    client = SigRLClient(args.url, timeout_s=args.timeout, retries=args.retries)
    failed = 0
    try:
        step = client.max_batch_size()  # also the first call: no server at --url fails here, once
        if labels is not None:
            try:
                labels = client.check_vocabulary(labels)  # once, before any image is sent
            except UsageError as err:
                raise UsageError(f"--labels: {err}") from None
        for start in range(0, len(paths), step):  # read and send one server batch at a time
            chunk = paths[start:start + step]
            for tagging in client.tag([str(p) for p in chunk], [_read(p) for p in chunk], labels, args.top_k):
                failed += tagging.error is not None
                _print_tagging(tagging, args.top_k, thresholds, args.json)
    finally:
        client.close()
    if failed:
        print(f"sigrl tag: error: {failed} of {len(paths)} images could not be tagged (see above)", file=sys.stderr)
        return 2
    return 0


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``triton-repo``, ``serve`` and ``tag`` to the ``sigrl`` parser."""
    repo = commands.add_parser("triton-repo", help="build a Triton model repository from exported engines")
    repo.add_argument("--engines", required=True, help="folder written by `sigrl export`")
    repo.add_argument("--runtime", default="python", choices=SERVED_RUNTIMES,
                      help="python: ONNX Runtime in python-backend models (runs on the bundled CPU server)")
    repo.add_argument("--out", required=True)
    repo.add_argument("--max-batch", type=int, default=32, help="images per batch of the entry model")
    repo.add_argument("--queue-delay-us", type=int, default=0,
                      help="how long the entry model's dynamic batcher may hold a request for others (default 0)")
    caps = repo.add_argument_group("caps of the entry model (a request over one is refused with INVALID_ARGUMENT)")
    for flag, meaning in (("max-image-bytes", "encoded bytes per image (default 20 MiB)"),
                          ("max-request-bytes", "encoded image bytes per request (default 32 MiB)"),
                          ("max-image-pixels", "pixels per image, read from its header (default 25M)"),
                          ("max-request-pixels", "pixels per request (default 25M)"),
                          ("max-resized-pixels", "pixels the resize of the shorter side may make of one image, "
                                                 "before the centre crop (default 4Mi: refuses very elongated "
                                                 "images, however small their files)"),
                          ("max-labels", "labels per request (default: the engines' class range)"),
                          ("max-label-chars", "characters per label name (default 200)"),
                          ("max-label-tokens", "tokens per label name (default: what fits the prompt context)"),
                          ("default-top-k", "top labels returned when a request sets no top_k (default 5)")):
        caps.add_argument(f"--{flag}", type=int, help=meaning)
    repo.add_argument("--entry-engines", choices=ENTRY_ENGINES,
                      help="how the entry model runs the engines: local, in its own sessions (python runtime only, "
                           "its default: one hop less per request, a second copy of each engine in memory), or bls, "
                           "calling the engine models (default for the GPU runtimes)")
    repo.add_argument("--entry-instances", type=positive_int, default=1,
                      help="instances of the entry model, each a python process on the CPU (decoding, tokenizing, "
                           "and the engines with --entry-engines local); the batcher gives each free instance the "
                           "requests queued so far (default 1)")
    repo.add_argument("--engine-instances", type=positive_int, default=1,
                      help="instances of each engine model: per GPU for the onnxruntime and tensorrt runtimes, "
                           "CPU processes for the python runtime (default 1)")
    repo.add_argument("--gpus", type=non_negative_int, nargs="+", default=[], metavar="GPU",
                      help="GPU runtimes: the devices the engine models run on (default: every GPU Triton sees)")
    repo.add_argument("--threads", type=non_negative_int, default=0,
                      help="python runtime: ONNX Runtime threads per engine session (default 0: one per core)")
    repo.add_argument("--thresholds", metavar="FILE",
                      help='JSON {"label": threshold, "*": default} (`sigrl calibrate --out`): the entry model also '
                           "answers tags, each image's labels at or above their thresholds")
    repo.add_argument("--overwrite", action="store_true", help="replace an existing repository")
    repo.add_argument("--plans", nargs="+", default=[], metavar="DIR",
                      help="tensorrt: `sigrl build-engines` folders, one per compute capability (default: --engines)")
    repo.add_argument("--triton-container", metavar="TAG",
                      help="tensorrt: the NVIDIA Triton container that will serve the plans (e.g. 25.01-py3); plans "
                           "its TensorRT cannot load are refused")
    repo.add_argument("--tensorrt-version", metavar="X.Y.Z",
                      help="tensorrt: the TensorRT of the Triton that will serve the plans "
                           "(instead of --triton-container)")
    repo.add_argument("--ort-tensorrt", choices=ORT_TENSORRT_PRECISIONS, metavar="PRECISION_MODE",
                      help="onnxruntime: ONNX Runtime's TensorRT accelerator, FP32|FP16|BF16|INT8 (FP32: graph types)")
    repo.add_argument("--ort-tensorrt-cache", metavar="DIR", help="--ort-tensorrt engine cache folder on the server")
    repo.set_defaults(func=cmd_triton_repo)
    serve = commands.add_parser("serve", help="run the Triton server bundled in nvidia-pytriton on a repository")
    serve.add_argument("--repo", required=True)
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: loopback only)")
    serve.add_argument("--grpc-port", type=int, default=8001)
    serve.add_argument("--http-port", type=int, default=8000)
    serve.add_argument("--metrics-port", type=int, default=8002, help="Prometheus metrics at /metrics")
    serve.add_argument("--log-file", help="write Triton's log here (default: a temporary file, kept if Triton dies)")
    serve.add_argument("--admin-key-file",
                       help="file (mode 600) holding a key (16+ printable characters) that opens the shared-memory, "
                            "logging, model-repository and trace APIs to requests with header sigrl-admin-key: KEY "
                            "(default: closed to everyone). Triton gets the key on its command line, which every "
                            "local user can read unless /proc is mounted with hidepid: see docs/serving.md")
    serve.add_argument("--shared-shm", action="store_true",
                       help="leave the python stubs' shared memory in the host's /dev/shm (only where the kernel "
                            "refuses Triton a private one: another local user can open a region while it is made)")
    serve.set_defaults(func=cmd_serve)
    tag = commands.add_parser("tag", help="tag images over gRPC with labels chosen per request")
    tag.add_argument("images", nargs="+", metavar="IMAGE", help="image files, or folders of them")
    tag.add_argument("--url", default="127.0.0.1:8001",
                     help="gRPC address HOST:PORT, or dns:///HOST:PORT to spread requests over every address HOST "
                          "resolves to (a Kubernetes headless Service)")
    tag.add_argument("--labels", help="comma-separated label names (default: the served default vocabulary)")
    tag.add_argument("--top-k", type=positive_int, default=5)
    tag.add_argument("--threshold", type=float, help="only print labels scoring at least this")
    tag.add_argument("--thresholds", help='JSON file {"label": threshold, "*": default} of per-class thresholds')
    tag.add_argument("--json", action="store_true", help="JSON lines: one object per image (errors included)")
    tag.add_argument("--timeout", type=positive_float, default=60.0, help="seconds to wait for each request")
    tag.add_argument("--retries", type=non_negative_int, default=3,
                     help="times a request the server did not take (UNAVAILABLE) is retried, with backoff (default 3)")
    tag.set_defaults(func=cmd_tag)
