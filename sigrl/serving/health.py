"""Is a Triton server fit to serve: the readiness and liveness check a cluster runs inside the server's container.

Triton's ``/v2/health/ready`` stays true when a python-backend stub has died, while every request to that model
fails (``sigrl serve`` restarts Triton then: :meth:`sigrl.serving.server.TritonServer.dead_stubs`). This check adds
what the process table tells: each python-backend model must have as many live stubs as its config declares
instances. Model configs are read over HTTP (``/v2/models/NAME/config`` stays open; the repository index is one of
the restricted APIs), for the models named on the command line (default: the three of a sigrl repository).

``python3 -m sigrl.serving.health [--endpoint live|ready] [--url http://127.0.0.1:8000] [--pid PID] [MODEL ...]``
exits 0 when fit, else 1 with one line saying why. Standard library only, so it starts fast in the image.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from collections import Counter

from sigrl.serving.protocol import ENTRY_MODEL
from sigrl.serving.server import live_stub_processes, processes

DEFAULT_MODELS = (ENTRY_MODEL, "text_gmc", "image_svfr")
DEFAULT_URL = "http://127.0.0.1:8000"


def _get(url: str, timeout: float) -> tuple[int, bytes]:
    """HTTP status and body of a GET (status 0 when nothing answers)."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, b""
    except (urllib.error.URLError, OSError):
        return 0, b""


def server_pid() -> int:
    """The one ``tritonserver`` process visible here (in a pod: the container's own); RuntimeError otherwise."""
    found = [pid for pid, argv in processes() if argv[0].rsplit(b"/", 1)[-1] == b"tritonserver"]
    if len(found) != 1:
        raise RuntimeError(f"expected one tritonserver process, found {len(found)}: pass --pid")
    return found[0]


def expected_stubs(url: str, models: list[str], timeout: float = 2.0) -> dict[str, int]:
    """Per python-backend model among ``models``: the stubs its instance groups ask for (models Triton does not
    serve are skipped; a repository need not hold all of them)."""
    expected = {}
    for name in models:
        status, body = _get(f"{url}/v2/models/{name}/config", timeout)
        if status != 200:
            continue
        config = json.loads(body)
        if config.get("backend") == "python":
            groups = config.get("instance_group") or [{"count": 1}]
            expected[name] = sum(int(g.get("count", 1)) * max(1, len(g.get("gpus") or [])) for g in groups)
    return expected


def problems(url: str = DEFAULT_URL, endpoint: str = "ready", models: list[str] | tuple[str, ...] = DEFAULT_MODELS,
             pid: int | None = None, timeout: float = 2.0) -> list[str]:
    """Why the server at ``url`` is not fit (empty when it is): ``endpoint`` (``live`` or ``ready``) not answering
    200, or a python model with fewer live stubs than instances."""
    status, _ = _get(f"{url}/v2/health/{endpoint}", timeout)
    if status != 200:
        return [f"/v2/health/{endpoint} answered {status or 'nothing'}"]
    expected = expected_stubs(url, list(models), timeout)
    if not expected:
        return []
    stubs = live_stub_processes(server_pid() if pid is None else pid)
    alive = Counter(name.rsplit("_", 2)[0] for name in stubs.values())  # instance names are MODEL_GROUP_INDEX
    return [f"model {name}: {alive[name]} of {count} python stubs alive" for name, count in expected.items()
            if alive[name] < count]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m sigrl.serving.health", description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", default=list(DEFAULT_MODELS), metavar="MODEL")
    parser.add_argument("--endpoint", choices=("live", "ready"), default="ready")
    parser.add_argument("--url", default=DEFAULT_URL, help="Triton's HTTP address")
    parser.add_argument("--pid", type=int, help="tritonserver's process id (default: the only one visible)")
    parser.add_argument("--timeout", type=float, default=2.0, help="seconds per HTTP request")
    args = parser.parse_args(argv)
    try:
        found = problems(args.url.rstrip("/"), args.endpoint, args.models, args.pid, args.timeout)
    except RuntimeError as err:
        found = [str(err)]
    if found:
        print(f"not {args.endpoint}: " + "; ".join(found), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
