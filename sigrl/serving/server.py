"""Start and stop a local NVIDIA Triton Inference Server from the binary bundled in ``nvidia-pytriton``.

The ``nvidia-pytriton`` wheel ships Triton Inference Server (``pytriton/tritonserver/bin/tritonserver``)
with the python backend and the built-in ensemble scheduler, and runs without a GPU. We run that
binary directly rather than through PyTriton's Python API so that it serves a plain model repository
(``config.pbtxt`` + model files), the same one a stock Triton container would serve.

Three things make the bare binary work outside NVIDIA's container:

* the python backend is looked up in ``<backend-directory>/python/``, and needs the stub built for
  this interpreter's Python version next to it (:func:`prepare_backend_dir`);
* the stub embeds ``libpython``, and finds its ``sys.prefix`` (so the venv's numpy) by looking up
  ``python3`` on ``PATH`` (:func:`server_env`);
* the server and the stub load their shared libraries from ``nvidia_pytriton.libs``.

Stopping is careful: the python backend runs one stub process per model instance in the server's
process group and talks to it through ``/dev/shm`` regions. A server killed outright leaves both
behind, so :meth:`TritonServer.stop` interrupts it, then kills whatever is left of its process group,
then removes the shared-memory files carrying this server's unique prefix.
"""

from __future__ import annotations

import importlib.util
import os
import re
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Literal

SHM_DIR = Path("/dev/shm")
_INSTALL_HINT = 'install it with `pip install -c constraints.txt -e ".[serve]"`'
# Triton's last words when another process took a port between free_port() and its bind:
# "failed to start HTTP service: Unavailable - Socket '127.0.0.1:43919' already in use".
_PORT_IN_USE = re.compile(r"Socket '[^']*:(\d+)' already in use")
_PORT_ATTEMPTS = 3

ModelControl = Literal["none", "poll", "explicit"]


def _pytriton_root() -> Path:
    """Directory of the installed ``pytriton`` package, found without importing it (it is heavy)."""
    spec = importlib.util.find_spec("pytriton")
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the `nvidia-pytriton` package (module `pytriton`) is missing: {_INSTALL_HINT}")
    return Path(next(iter(spec.submodule_search_locations)))


def _bundled_file(*parts: str) -> Path:
    """A file the pytriton wheel bundles, with a clear error if this install lacks it."""
    path = _pytriton_root().joinpath(*parts)
    if not path.exists():
        raise RuntimeError(
            f"{path} is missing: this `nvidia-pytriton` install does not bundle it "
            f"(a wheel for another platform or Python version?); re{_INSTALL_HINT}"
        )
    return path


def find_tritonserver() -> Path:
    """Path of the ``tritonserver`` executable bundled in ``nvidia-pytriton``."""
    return _bundled_file("tritonserver", "bin", "tritonserver")


def bundled_libs_dir() -> Path:
    """The wheel's vendored shared libraries (``libtritonserver``, ``libcudart``, …), beside ``pytriton``."""
    return _pytriton_root().parent / "nvidia_pytriton.libs"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS picks it; another process may take it before we bind)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def prepare_backend_dir(dest: Path) -> Path:
    """Lay out a Triton backend directory at ``dest`` with the python backend for this interpreter.

    Triton loads ``<dest>/python/libtriton_python.so``; that backend starts
    ``triton_python_backend_stub`` from the same folder, and the stub must match the Python version
    that runs the models. The wheel keeps one stub per Python version, so we link the right one in.
    Returns ``dest`` (for ``--backend-directory``).
    """
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    sources = [
        _bundled_file("tritonserver", "backends", "python", "libtriton_python.so"),
        _bundled_file("tritonserver", "backends", "python", "triton_python_backend_utils.py"),
        _bundled_file("tritonserver", "python_backend_stubs", version, "triton_python_backend_stub"),
    ]
    python_dir = Path(dest) / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    for source in sources:
        link = python_dir / source.name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(source)
    return Path(dest)


def server_env(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for ``tritonserver``: this interpreter first on ``PATH`` and its ``libpython`` first to load.

    The python backend stub embeds ``libpython`` and derives ``sys.prefix`` from the ``python3`` it
    finds on ``PATH``, so this venv's ``bin`` must come first for models to import the venv's
    packages (numpy<2: with numpy 2 the stub returns empty outputs without an error). Its
    ``libpython`` must come from this interpreter's ``LIBDIR``, ahead of any system one, and the
    server's own libraries from ``nvidia_pytriton.libs``.
    """
    env = dict(os.environ if base is None else base)
    env["PATH"] = os.pathsep.join(filter(None, [str(Path(sys.executable).parent), env.get("PATH")]))
    libdir = sysconfig.get_config_var("LIBDIR")
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        filter(None, [libdir, str(bundled_libs_dir()), env.get("LD_LIBRARY_PATH")])
    )
    return env


class TritonServer:
    """A ``tritonserver`` process serving ``repo`` on ``host`` (loopback by default), as a context manager.

    Ports left as ``None`` are picked free at start (and picked again, up to three times, if
    another process takes one first). ``model_control`` is Triton's ``--model-control-mode``:
    ``"none"`` loads every model at start and fails the start if one does not load.
    """

    def __init__(
        self,
        repo: Path,
        grpc_port: int | None = None,
        http_port: int | None = None,
        host: str = "127.0.0.1",
        log_verbose: int = 0,
        model_control: ModelControl = "none",
    ) -> None:
        self.repo = Path(repo).resolve()
        self.host = host
        self.log_verbose = log_verbose
        self.model_control = model_control
        self._fixed_grpc_port = grpc_port
        self._fixed_http_port = http_port
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.shm_prefix = f"sigrl_triton_{os.getpid()}_{uuid.uuid4().hex[:8]}_"
        self._workdir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def grpc_url(self) -> str:
        """``host:port`` for ``tritonclient.grpc.InferenceServerClient``."""
        return f"{self.host}:{self._port(self.grpc_port)}"

    @property
    def http_url(self) -> str:
        """``host:port`` for ``tritonclient.http.InferenceServerClient``."""
        return f"{self.host}:{self._port(self.http_port)}"

    @property
    def pid(self) -> int | None:
        """Process id of the running server (also its process-group id), or None when not running."""
        return None if self._proc is None else self._proc.pid

    @property
    def log_path(self) -> Path | None:
        """The server's combined stdout/stderr log while it runs (removed by :meth:`stop`)."""
        return None if self._workdir is None else Path(self._workdir.name) / "tritonserver.log"

    def _port(self, port: int | None) -> int:
        """``port``, or a clear error when it is still to be picked."""
        if port is None:
            raise RuntimeError("the port is picked at start(): start the server first")
        return port

    def is_ready(self, timeout: float = 1.0) -> bool:
        """True when the server answers ``/v2/health/ready`` with 200 (all models loaded, in ``none`` mode)."""
        if self.http_port is None:
            return False
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=timeout) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def log_tail(self, lines: int = 30) -> str:
        """The last ``lines`` messages of the server log ('' when there is none).

        Triton prints its status tables (backends, models, options: ~40 lines) just before it
        gives up, which would push the reason (a config parse error, a failed bind) out of a
        plain tail; table rows and blank lines are left out.
        """
        path = self.log_path
        if path is None or not path.exists():
            return ""
        text = path.read_text(errors="replace")
        messages = [line for line in text.splitlines() if line.strip() and line[0] not in "|+"]
        return "\n".join(messages[-lines:])

    def start(self, timeout: float = 300) -> None:
        """Start the server and wait until it is ready; on failure leave nothing running and raise RuntimeError.

        The error carries the tail of the server log, where Triton says which model failed and why. The
        generous default is for the first start in a fresh environment: every python stub imports torch
        and open_clip and compiles their bytecode, which took over 60 s on a 2-core CI machine.
        """
        if self._proc is not None:
            raise RuntimeError(f"the server is already running (pid {self._proc.pid})")
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            try:
                self._start_once(timeout)
                return
            except RuntimeError as error:
                taken = _PORT_IN_USE.search(str(error))
                fixed = {self._fixed_grpc_port, self._fixed_http_port}
                if taken is None or int(taken.group(1)) in fixed or attempt == _PORT_ATTEMPTS:
                    raise

    def _start_once(self, timeout: float) -> None:
        """Launch one server process on the configured (or freshly picked) ports and wait for it."""
        for port in (self._fixed_grpc_port, self._fixed_http_port):
            if port is not None:
                _check_port_free(self.host, port)  # else is_ready() could get its answer from whoever holds it
        self._workdir = tempfile.TemporaryDirectory(prefix="sigrl-triton-")
        workdir = Path(self._workdir.name)
        self.grpc_port = self._fixed_grpc_port or free_port(self.host)
        self.http_port = self._fixed_http_port or free_port(self.host)
        command = [
            str(find_tritonserver()),
            f"--model-repository={self.repo}",
            f"--model-control-mode={self.model_control}",
            f"--backend-directory={prepare_backend_dir(workdir / 'backends')}",
            f"--backend-config=python,shm-region-prefix-name={self.shm_prefix}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--http-address={self.host}",
            f"--http-port={self.http_port}",
            "--allow-metrics=false",
            "--allow-gpu-metrics=false",
            "--pinned-memory-pool-byte-size=0",  # no CUDA here: skips a failed pinned-memory allocation
            "--exit-timeout-secs=5",
            f"--log-verbose={self.log_verbose}",
        ]
        try:
            with open(workdir / "tritonserver.log", "wb") as log:  # the child keeps its own handle
                self._proc = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=server_env(),
                    cwd=workdir,
                    start_new_session=True,  # its own process group: stop() reaches the python stubs too
                )
            self._wait_ready(self._proc, timeout)
        except BaseException:  # a failed start or Ctrl-C while waiting: leave nothing running
            self.stop()
            raise

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        """Poll readiness until ``timeout``; RuntimeError with the log tail if ``proc`` exits or times out."""
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            code = proc.poll()
            if code is not None or time.monotonic() > deadline:
                reason = f"exited with code {code}" if code is not None else f"was not ready after {timeout:g} s"
                raise RuntimeError(f"tritonserver {reason}, serving {self.repo}. Log tail:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Stop the server and its python stubs and remove their shared memory; safe to call twice.

        SIGTERM lets Triton unload the models and stop the stubs (SIGINT would be ignored when this process
        was started in the background by a shell, which marks SIGINT ignored for it); whatever is left of the process
        group after ~10 s is killed, and ``/dev/shm`` files with this server's prefix are removed.
        """
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    pass
            _kill_group(proc)
        for path in SHM_DIR.glob(f"{self.shm_prefix}*"):
            path.unlink(missing_ok=True)
        if self._workdir is not None:
            self._workdir.cleanup()
            self._workdir = None

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


def _check_port_free(host: str, port: int) -> None:
    """Raise RuntimeError if ``port`` on ``host`` cannot be bound (another server holds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no conflict
        try:
            sock.bind((host, port))
        except OSError as error:
            raise RuntimeError(f"port {port} on {host} is not free ({error.strerror}): pick another") from error


def _kill_group(proc: subprocess.Popen[bytes], timeout: float = 5.0) -> None:
    """SIGKILL what is left of ``proc``'s process group, reap ``proc``, and wait until the group is gone.

    Stubs orphaned by the server are reaped by init, which can take a moment (about 1 s here); waiting
    for that (at most ``timeout``) means a caller sees the group gone once :meth:`TritonServer.stop` returns.
    """
    pgid = proc.pid  # start_new_session=True made the server its group's leader
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
