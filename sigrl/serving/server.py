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

Secure defaults (what a local user or a remote client could otherwise do to the server):

* the shared-memory, logging, model-repository and trace APIs are restricted on HTTP and gRPC
  (Triton's ``--http-restricted-api`` / ``--grpc-restricted-protocol``). With an operator key they open to
  requests carrying it in the HTTP header ``sigrl-admin-key`` (gRPC metadata
  ``triton-grpc-protocol-sigrl-admin-key``). Without one they are keyed to a header no client can send
  (:data:`CLOSED_HEADER`: HTTP/1.1 ends a header name at its first colon, and gRPC resets a stream whose
  metadata key holds upper case, a space or a colon before Triton sees it) and a random value, so they
  are shut whatever a client sends or can read in the process table;
* the python stubs' shared memory (which carries every request and response) lives in a ``/dev/shm`` of
  Triton's own: Triton starts in a new mount namespace (a user namespace too, for a non-root user) with an
  empty private tmpfs on ``/dev/shm`` (:func:`private_shm_error` says why where the kernel refuses). No
  other user can open a region, at start, at a stub restart or ever, and the regions vanish with the
  server however it dies;
* Triton's log and work folder are private to this user (mode 0600 / 0700); a work folder left by a killed
  wrapper is removed by the next start;
* Triton gets a parent-death signal: it dies with the process that started it, however that dies;
* Triton's log is kept when the server dies on its own (:attr:`TritonServer.kept_log`).
"""

from __future__ import annotations

import ctypes
import importlib.util
import ipaddress
import os
import re
import secrets
import shutil
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
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import TracebackType
from typing import Literal

SHM_DIR = Path("/dev/shm")
SHM_PREFIX = "sigrl_triton_"  # + "<pid of the starting process>_<random>_"
WORKDIR_PREFIX = "sigrl-triton-"  # + "<pid of the starting process>-<random>"
# The APIs no client needs for inference: shared memory lets a client point outputs at any /dev/shm file the
# server can open, logging and trace change server settings, model-repository loads and unloads models.
RESTRICTED_APIS = ("shared-memory", "logging", "model-repository", "trace")
ADMIN_HEADER = "sigrl-admin-key"
# The header the restricted APIs are keyed to without an operator key: one no client can send. HTTP/1.1 ends a
# header name at its first colon, so no request has this name; gRPC refuses metadata keys with upper case, a
# space or a colon (the stream is reset before Triton sees it). Its value is random besides, drawn per start.
CLOSED_HEADER = "SigRL closed:no-key"
_PR_SET_PDEATHSIG = 1
_CLONE_NEWNS, _CLONE_NEWUSER = 0x00020000, 0x10000000
_MS_NOSUID, _MS_NODEV, _MS_NOEXEC, _MS_REC, _MS_PRIVATE = 0x2, 0x4, 0x8, 0x4000, 0x40000
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


def restricted_api_flags(admin_key: str | None) -> list[str]:
    """Triton's flags restricting :data:`RESTRICTED_APIS` on gRPC and HTTP: to requests carrying ``admin_key`` in
    :data:`ADMIN_HEADER`, or, without a key, to :data:`CLOSED_HEADER` (no client can send it) with a random value."""
    header, value = (ADMIN_HEADER, admin_key) if admin_key is not None else (CLOSED_HEADER, secrets.token_urlsafe(32))
    spec = f"{','.join(RESTRICTED_APIS)}:{header}={value}"
    return [f"--grpc-restricted-protocol={spec}", f"--http-restricted-api={spec}"]


def triton_flags(repository: str, *, host: str, grpc_port: int, http_port: int, metrics_port: int,
                 admin_key: str | None = None, model_control: ModelControl = "none", log_verbose: int = 0,
                 exit_timeout_s: int = 5) -> list[str]:
    """The flags every sigrl Triton runs with, wherever it runs (``sigrl serve`` here, a cluster's containers
    through ``sigrl deploy k8s``): what it serves, where it listens, the restricted APIs, metrics, readiness that
    goes false when a model fails to load, and how long it drains requests when stopped."""
    return [
        f"--model-repository={repository}",
        f"--model-control-mode={model_control}",
        "--strict-readiness=true",
        f"--grpc-address={host}",
        f"--grpc-port={grpc_port}",
        f"--http-address={host}",
        f"--http-port={http_port}",
        *restricted_api_flags(admin_key),
        "--allow-metrics=true",
        f"--metrics-address={host}",
        f"--metrics-port={metrics_port}",
        f"--exit-timeout-secs={exit_timeout_s}",
        f"--log-verbose={log_verbose}",
    ]


def install_flags(backend_dir: Path, shm_prefix: str) -> list[str]:
    """What the Triton bundled in nvidia-pytriton needs besides :func:`triton_flags` (a container has none of it):
    its python backend laid out by :func:`prepare_backend_dir`, the stubs' shared-memory prefix, and no CUDA."""
    return [
        f"--backend-directory={backend_dir}",
        f"--backend-config=python,shm-region-prefix-name={shm_prefix}",
        "--allow-gpu-metrics=false",
        "--pinned-memory-pool-byte-size=0",  # no CUDA here: skips a failed pinned-memory allocation
    ]


class TritonServer:
    """A ``tritonserver`` process serving ``repo`` on ``host`` (loopback by default), as a context manager.

    Ports left as ``None`` are picked free at start (and picked again, up to three times, if
    another process takes one first); Prometheus metrics are served on ``metrics_port``
    (``/metrics``). ``model_control`` is Triton's ``--model-control-mode``: ``"none"`` loads every
    model at start and fails the start if one does not load. ``admin_key`` opens the restricted APIs
    (:data:`RESTRICTED_APIS`) to requests carrying it in the ``sigrl-admin-key`` header; None keeps
    them closed. ``log_file`` receives Triton's log (default: a file in the server's work folder,
    removed by :meth:`stop` unless the server died on its own). ``private_shm`` (default) gives Triton a
    ``/dev/shm`` of its own; False leaves the python stubs' regions in the host's ``/dev/shm``, made private
    only once they are seen (a race another local user can win: for hosts whose kernel refuses the first).
    """

    def __init__(
        self,
        repo: Path,
        grpc_port: int | None = None,
        http_port: int | None = None,
        host: str = "127.0.0.1",
        log_verbose: int = 0,
        model_control: ModelControl = "none",
        metrics_port: int | None = None,
        admin_key: str | None = None,
        log_file: Path | None = None,
        private_shm: bool = True,
    ) -> None:
        if admin_key is not None and not re.fullmatch(r"[\x21-\x7e]{16,}", admin_key):
            raise ValueError("the admin key must be at least 16 printable ASCII characters without spaces")
        self.repo = Path(repo).resolve()
        self.host = host
        self.log_verbose = log_verbose
        self.model_control = model_control
        self.admin_key = admin_key
        self.private_shm = private_shm
        self._fixed_ports = {"grpc": grpc_port, "http": http_port, "metrics": metrics_port}
        self.grpc_port = grpc_port
        self.http_port = http_port
        self.metrics_port = metrics_port
        self.shm_prefix = f"{SHM_PREFIX}{os.getpid()}_{uuid.uuid4().hex[:8]}_"
        self._log_file = None if log_file is None else Path(log_file).resolve()
        self.kept_log: Path | None = None  # the last log kept by stop()
        self.workdir: Path | None = None  # private folder of the running server: backend links, default log
        self._proc: subprocess.Popen[bytes] | None = None
        self._stubs: dict[int, str] = {}

    @property
    def grpc_url(self) -> str:
        """``host:port`` for ``tritonclient.grpc.InferenceServerClient``."""
        return f"{self.host}:{self._port(self.grpc_port)}"

    @property
    def http_url(self) -> str:
        """``host:port`` for ``tritonclient.http.InferenceServerClient``."""
        return f"{self.host}:{self._port(self.http_port)}"

    @property
    def metrics_url(self) -> str:
        """``http://host:port/metrics``: Triton's Prometheus metrics."""
        return f"http://{self.host}:{self._port(self.metrics_port)}/metrics"

    @property
    def pid(self) -> int | None:
        """Process id of the running server (also its process-group id), or None when not running."""
        return None if self._proc is None else self._proc.pid

    @property
    def log_path(self) -> Path | None:
        """The server's combined stdout/stderr log while it runs: ``log_file``, else one in the work folder."""
        if self._log_file is not None:
            return self._log_file
        return None if self.workdir is None else self.workdir / "tritonserver.log"

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

        The error carries the tail of the server log, where Triton says which model failed and why, and
        the path of the kept log. The generous default is for the first start in a fresh environment
        (the python stubs compile their bytecode on a slow CI machine).
        """
        if self._proc is not None:
            raise RuntimeError(f"the server is already running (pid {self._proc.pid})")
        remove_stale_workdirs()
        if not self.private_shm:
            remove_stale_shared_memory()
        for attempt in range(1, _PORT_ATTEMPTS + 1):
            try:
                self._start_once(timeout)
                return
            except RuntimeError as error:
                taken = _PORT_IN_USE.search(str(error))
                if taken is None or int(taken.group(1)) in self._fixed_ports.values() or attempt == _PORT_ATTEMPTS:
                    raise

    def _command(self, workdir: Path) -> list[str]:
        """The ``tritonserver`` command line for the current ports: :func:`triton_flags` plus this install's layout."""
        return [
            str(find_tritonserver()),
            *triton_flags(str(self.repo), host=self.host, grpc_port=self._port(self.grpc_port),
                          http_port=self._port(self.http_port), metrics_port=self._port(self.metrics_port),
                          admin_key=self.admin_key, model_control=self.model_control, log_verbose=self.log_verbose),
            *install_flags(prepare_backend_dir(workdir / "backends"), self.shm_prefix),
        ]

    def _start_once(self, timeout: float) -> None:
        """Launch one server process on the configured (or freshly picked) ports and wait for it."""
        for flag, port in self._fixed_ports.items():
            if port is not None:
                _check_port_free(self.host, port, flag)  # else is_ready() could get its answer from whoever holds it
        self.workdir = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-"))
        self.grpc_port, self.http_port, self.metrics_port = (
            self._fixed_ports[flag] or free_port(self.host) for flag in ("grpc", "http", "metrics"))
        log_path = self._log_file or self.workdir / "tritonserver.log"
        try:
            log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            try:  # the child keeps its own handle
                self._proc = subprocess.Popen(
                    self._command(self.workdir),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=server_env(),
                    cwd=self.workdir,
                    start_new_session=True,  # its own process group: stop() reaches the python stubs too
                    preexec_fn=_child_setup_private_shm if self.private_shm else _child_setup,
                )
            except subprocess.SubprocessError as err:  # the private /dev/shm could not be set up
                raise RuntimeError(f"cannot give Triton a private /dev/shm: {private_shm_error() or err}. "
                                   f"{PRIVATE_SHM_HINT}") from None
            finally:
                os.close(log)
            self._wait_ready(self._proc, timeout)
            self._stubs = stub_processes(self._proc.pid)
        except BaseException:  # a failed start or Ctrl-C while waiting: leave nothing running
            self.stop(keep_log=True)
            raise

    def _wait_ready(self, proc: subprocess.Popen[bytes], timeout: float) -> None:
        """Poll readiness until ``timeout``; RuntimeError with the log tail if ``proc`` exits or times out."""
        deadline = time.monotonic() + timeout
        while not self.is_ready():
            self.protect_shared_memory()
            code = proc.poll()
            if code is not None or time.monotonic() > deadline:
                reason = f"exited with code {code}" if code is not None else f"was not ready after {timeout:g} s"
                raise RuntimeError(f"tritonserver {reason}, serving {self.repo}. Log tail:\n{self.log_tail()}")
            time.sleep(0.02)
        self.protect_shared_memory()

    def protect_shared_memory(self) -> None:
        """Without a private ``/dev/shm``: make this server's regions readable and writable by this user only.

        The python backend creates them with mode 0644 (boost.interprocess sets the mode after creating the
        file, so a umask does not help); a region holds the requests and responses of its stub. Called while
        waiting for the server and by every health check (a restarted stub makes new ones). A process that
        opens a region before this sees it keeps its handle: only a private ``/dev/shm`` closes that race.
        """
        if self.private_shm:
            return
        for path in SHM_DIR.glob(f"{self.shm_prefix}*"):
            try:
                if path.stat().st_mode & 0o077:
                    path.chmod(0o600)
            except FileNotFoundError:
                continue

    def dead_stubs(self) -> list[str]:
        """Model instances whose python stub has died since the server became ready.

        Triton keeps such a model "ready" while every request to it fails, so only the process table tells.
        """
        return sorted({name for pid, name in self._stubs.items() if not _alive(pid)})

    def is_healthy(self) -> bool:
        """Running, ready and no python stub dead."""
        self.protect_shared_memory()
        return self._proc is not None and self._proc.poll() is None and self.is_ready() and not self.dead_stubs()

    def restart(self, timeout: float = 300) -> None:
        """Stop and start again on the same ports (a dead stub is only restored by restarting its server)."""
        ports = dict(self._fixed_ports)
        self._fixed_ports.update(grpc=self.grpc_port, http=self.http_port, metrics=self.metrics_port)
        try:
            self.stop(keep_log=bool(self.dead_stubs()) or None)
            self.start(timeout)
        finally:
            self._fixed_ports = ports

    def stop(self, keep_log: bool | None = None) -> None:
        """Stop the server and its python stubs and remove their shared memory and work folder; safe to call twice.

        SIGTERM lets Triton unload the models and stop the stubs (SIGINT would be ignored when this process
        was started in the background by a shell, which marks SIGINT ignored for it); whatever is left of the process
        group after ~10 s is killed, and ``/dev/shm`` files with this server's prefix are removed (a private
        ``/dev/shm`` goes with its last process). The log in the work folder is kept (:attr:`kept_log`) when
        ``keep_log`` is true, or by default when the server did not exit cleanly (it died on its own, or had to be
        killed).
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
            if keep_log is None:  # Triton exits with 0 when SIGTERM stops it cleanly
                keep_log = proc.returncode != 0
        for path in SHM_DIR.glob(f"{self.shm_prefix}*"):
            path.unlink(missing_ok=True)
        self._stubs = {}
        if self.workdir is not None:
            log = self.workdir / "tritonserver.log"
            if keep_log and log.exists():
                stamp = time.strftime("%Y%m%d-%H%M%S")
                kept = Path(tempfile.gettempdir()) / f"sigrl-triton-{stamp}-{proc.pid if proc else os.getpid()}.log"
                os.replace(log, kept)  # keeps its mode: private to this user
                self.kept_log = kept
            elif keep_log and self._log_file is not None:
                self.kept_log = self._log_file
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def __enter__(self) -> TritonServer:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class PortInUseError(RuntimeError):
    """A fixed port cannot be bound: ``flag`` names which (``grpc``, ``http`` or ``metrics``)."""

    def __init__(self, message: str, flag: str) -> None:
        super().__init__(message)
        self.flag = flag


def _check_port_free(host: str, port: int, flag: str) -> None:
    """Raise PortInUseError if ``port`` on ``host`` cannot be bound (another server holds it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do: TIME_WAIT is no conflict
        try:
            sock.bind((host, port))
        except OSError as error:
            raise PortInUseError(f"{flag} port {port} on {host} is not free ({error.strerror}): pick another",
                                 flag) from error


def is_loopback(host: str) -> bool:
    """True when ``host`` is a loopback address or ``localhost`` (reachable from this machine only)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _child_setup() -> None:
    """Run in the Triton child before exec: private files (its log, model outputs) and death with its parent.

    ``PR_SET_PDEATHSIG`` sends SIGKILL to Triton when the thread that started it dies, whatever kills
    it (``kill -9`` included); the python stubs notice their dead server and exit on their own.
    """
    os.umask(0o077)
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")


def _child_setup_private_shm() -> None:
    """:func:`_child_setup`, then a ``/dev/shm`` of Triton's own (:func:`enter_private_shm`)."""
    _child_setup()
    enter_private_shm()


PRIVATE_SHM_HINT = ("Triton needs a mount namespace for it (as root, or with unprivileged user namespaces); where the "
                    "kernel refuses one (e.g. a container without CAP_SYS_ADMIN, whose /dev/shm is the container's "
                    "own anyway), pass private_shm=False (sigrl serve --shared-shm)")


def enter_private_shm() -> None:
    """Move this process into a new mount namespace whose ``/dev/shm`` is an empty tmpfs (mode 0700): what it and its
    children create there no other process can see or open, and the tmpfs goes with the last of them.

    Root may make a mount namespace directly; anyone else (or root without CAP_SYS_ADMIN) needs a user namespace
    too, in which this user is mapped to itself. OSError naming the step the kernel refused.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
    uid, gid = os.geteuid(), os.getegid()
    if uid != 0 or libc.unshare(_CLONE_NEWNS) != 0:
        _checked_call(libc.unshare(_CLONE_NEWNS | _CLONE_NEWUSER), "unshare(CLONE_NEWNS | CLONE_NEWUSER)")
        for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as handle:
                handle.write(text)
    _checked_call(libc.mount(b"none", b"/", None, _MS_REC | _MS_PRIVATE, None), "mount --make-rprivate /")
    _checked_call(libc.mount(b"tmpfs", bytes(SHM_DIR), b"tmpfs", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC, b"mode=0700"),
                  f"mount -t tmpfs tmpfs {SHM_DIR}")


def _checked_call(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what} failed: {os.strerror(errno)}")


def private_shm_error() -> str | None:
    """None when Triton can have a private ``/dev/shm`` on this machine, else why not (tried in a child process)."""
    probe = "from sigrl.serving.server import enter_private_shm as enter\ntry:\n enter()\nexcept OSError as e:\n" \
            " raise SystemExit(str(e))"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=False)
    return None if result.returncode == 0 else (result.stderr.strip().splitlines() or ["unknown error"])[-1]


def _alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[0] not in ("Z", "X")


def processes() -> Iterator[tuple[int, list[bytes]]]:
    """(pid, argv) of every process this user can see (those that exit meanwhile are skipped)."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            yield int(cmdline.parent.name), cmdline.read_bytes().split(b"\0")
        except OSError:
            continue


def stub_processes(server_pid: int) -> dict[int, str]:
    """The python-backend stubs of a server: {pid: model instance name} of its stub children."""
    stubs = {}
    for pid, argv in processes():
        if not (argv[0].endswith(b"triton_python_backend_stub") and len(argv) > 8):
            continue
        try:
            parent = int(Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[1])
        except OSError:  # exited meanwhile
            continue
        if parent == server_pid:
            stubs[pid] = argv[8].decode(errors="replace")
    return stubs


def live_stub_processes(server_pid: int) -> dict[int, str]:
    """:func:`stub_processes` still running (a killed stub stays a zombie until Triton reaps it)."""
    return {pid: name for pid, name in stub_processes(server_pid).items() if _alive(pid)}


def _command_lines() -> str:
    """The command lines of all processes, one per line."""
    return "\n".join(b" ".join(argv).decode(errors="replace") for _, argv in processes())


def _stale(starter: str, marker: str, path: Path, owner: int, in_use: str) -> bool:
    """True when ``path`` (owned by ``owner``) was made by a server whose starting process ``starter`` is gone and
    no live process names ``marker`` (an orphaned server of older code may still run)."""
    try:
        return starter.isdigit() and path.stat().st_uid == owner and not _alive(int(starter)) and marker not in in_use
    except OSError:
        return False


def remove_stale_shared_memory(owner: int | None = None) -> list[Path]:
    """Remove this user's host ``/dev/shm`` regions left by servers whose starting process is gone; return them.

    Only servers without a private ``/dev/shm`` leave any: a server killed with its wrapper (``kill -9``) cannot
    clean up; the next start does it.
    """
    removed = []
    owner = os.getuid() if owner is None else owner
    in_use = _command_lines()
    for path in SHM_DIR.glob(f"{SHM_PREFIX}*"):
        starter, _, rest = path.name[len(SHM_PREFIX):].partition("_")
        if _stale(starter, f"{SHM_PREFIX}{starter}_{rest.partition('_')[0]}_", path, owner, in_use):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def remove_stale_workdirs(owner: int | None = None) -> list[Path]:
    """Remove this user's server work folders left by servers whose starting process is gone (killed with
    ``kill -9``); return them."""
    removed = []
    owner = os.getuid() if owner is None else owner
    in_use = _command_lines()
    for path in Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}*"):
        starter = path.name[len(WORKDIR_PREFIX):].partition("-")[0]
        if path.is_dir() and not path.is_symlink() and _stale(starter, str(path), path, owner, in_use):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


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
