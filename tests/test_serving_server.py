"""A real Triton Inference Server (the binary bundled in nvidia-pytriton) starts, serves and stops cleanly.

The model repository is a one-model python-backend repository written into a temp dir, and the
server is checked with the real ``tritonclient`` over gRPC and HTTP.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytriton", reason='needs nvidia-pytriton (pip install -c constraints.txt -e ".[serve]")')

import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from raw_protocol import grpc_call, http_request
from tritonclient.utils import InferenceServerException

from sigrl.serving import server as server_module
from sigrl.serving.server import (
    WORKDIR_PREFIX,
    TritonServer,
    find_tritonserver,
    free_port,
    is_loopback,
    private_shm_error,
    server_env,
    stub_processes,
)

TESTS = Path(__file__).resolve().parent

ADD_ONE_CONFIG = """\
name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "INPUT0", data_type: TYPE_FP32, dims: [ 4 ] }} ]
output [ {{ name: "OUTPUT0", data_type: TYPE_FP32, dims: [ 4 ] }} ]
dynamic_batching {{ }}
instance_group [ {{ count: 1, kind: KIND_CPU }} ]
"""

ADD_ONE_MODEL = """\
import numpy as np
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        responses = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            out = pb_utils.Tensor("OUTPUT0", (x + 1).astype(np.float32))
            responses.append(pb_utils.InferenceResponse(output_tensors=[out]))
        return responses
"""


def write_model(repo: Path, name: str, config: str, model_py: str) -> None:
    """Write ``repo/<name>/config.pbtxt`` and ``repo/<name>/1/model.py``."""
    (repo / name / "1").mkdir(parents=True)
    (repo / name / "config.pbtxt").write_text(config)
    (repo / name / "1" / "model.py").write_text(model_py)


def write_add_one_repo(repo: Path) -> Path:
    write_model(repo, "add_one", ADD_ONE_CONFIG.format(name="add_one"), ADD_ONE_MODEL)
    return repo


def processes_mentioning(text: str) -> list[int]:
    """Pids of live (non-zombie) processes whose command line contains ``text``.

    The server's and its python stubs' command lines all carry the server's shm prefix, so this
    finds whatever a server left behind, even after its process group is unknown.
    """
    pids = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:  # exited meanwhile
            continue
        if text in cmdline:
            pids.append(int(proc.name))
    return pids


def shm_files(prefix: str) -> list[Path]:
    """Regions of a server in the host's /dev/shm (where only a server without a private one puts them)."""
    return sorted(Path("/dev/shm").glob(f"{prefix}*"))


def server_regions(server: TritonServer) -> list[Path]:
    """The python stubs' regions of a running server, as its own processes see them (its private /dev/shm is
    reachable for this user through /proc/PID/root)."""
    shm = Path(f"/proc/{server.pid}/root/dev/shm") if server.private_shm else Path("/dev/shm")
    return sorted(shm.glob(f"{server.shm_prefix}*"))


def assert_nothing_left(server: TritonServer, pgid: int | None = None) -> None:
    """No process of the server (or its stubs) alive and no shared-memory file of it left."""
    if pgid is not None:
        with pytest.raises(ProcessLookupError):
            os.killpg(pgid, 0)
    assert processes_mentioning(server.shm_prefix) == []
    assert shm_files(server.shm_prefix) == []


@pytest.fixture(scope="module")
def add_one_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_add_one_repo(tmp_path_factory.mktemp("repo"))


@pytest.fixture(scope="module")
def server(add_one_repo: Path):
    with TritonServer(add_one_repo) as running:
        yield running


@pytest.fixture
def grpc_client(server: TritonServer):
    client = grpcclient.InferenceServerClient(server.grpc_url)
    yield client
    client.close()


@pytest.fixture
def http_client(server: TritonServer):
    client = httpclient.InferenceServerClient(server.http_url)
    yield client
    client.close()  # an open keep-alive connection would hold the server's shutdown for its full exit timeout


def test_server_and_model_ready_over_grpc_and_http(server, grpc_client, http_client):
    assert server.is_ready()
    assert grpc_client.is_server_live() and grpc_client.is_server_ready()
    assert grpc_client.is_model_ready("add_one")
    assert http_client.is_server_live() and http_client.is_server_ready()
    assert http_client.is_model_ready("add_one")
    assert server.grpc_url.startswith("127.0.0.1:") and server.http_url.startswith("127.0.0.1:")
    assert server.grpc_url != server.http_url


def test_grpc_inference_adds_one(grpc_client):
    x = np.arange(12, dtype=np.float32).reshape(3, 4)
    inp = grpcclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    result = grpc_client.infer("add_one", [inp], outputs=[grpcclient.InferRequestedOutput("OUTPUT0")])
    np.testing.assert_array_equal(result.as_numpy("OUTPUT0"), x + 1)


def test_http_inference_adds_one(http_client):
    x = np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4)
    inp = httpclient.InferInput("INPUT0", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=True)
    result = http_client.infer("add_one", [inp], outputs=[httpclient.InferRequestedOutput("OUTPUT0")])
    out = result.as_numpy("OUTPUT0")
    assert out.shape == (2, 4)  # numpy 2 in the stub would make this silently empty
    np.testing.assert_allclose(out, x + 1)


def test_stop_leaves_no_process_and_no_shared_memory(tmp_path):
    server = TritonServer(write_add_one_repo(tmp_path / "repo"))
    with server:
        pgid = server.pid
        assert pgid is not None and os.getpgid(pgid) == pgid  # its own process group
        # the server and one python stub for add_one, both holding the shm prefix
        assert len(processes_mentioning(server.shm_prefix)) >= 2
        assert server_regions(server), "the python backend should have made its shm region"
        workdir = server.workdir
        assert workdir.name.startswith(f"{WORKDIR_PREFIX}{os.getpid()}-") and workdir.stat().st_mode & 0o777 == 0o700
    assert server.pid is None and not server.is_ready() and not workdir.exists()
    assert_nothing_left(server, pgid)
    server.stop()  # idempotent


def test_stop_without_start_is_a_no_op(tmp_path):
    server = TritonServer(tmp_path)
    server.stop()
    with pytest.raises(RuntimeError, match="start the server first"):
        _ = server.grpc_url


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        ("config", r"failed to read text proto"),
        ("initialize", r"boom on purpose"),
    ],
)
def test_broken_repository_raises_with_log_tail(tmp_path, broken, expected):
    repo = write_add_one_repo(tmp_path / "repo")  # a good model too: its stub must not outlive the failure
    if broken == "config":
        write_model(repo, "bad", ADD_ONE_CONFIG.format(name="bad") + "this is { not pbtxt\n", ADD_ONE_MODEL)
    else:
        raising = textwrap.dedent(
            """\
            class TritonPythonModel:
                def initialize(self, args):
                    raise ValueError("boom on purpose")
            """
        )
        write_model(repo, "bad", ADD_ONE_CONFIG.format(name="bad"), raising)
    server = TritonServer(repo)
    with pytest.raises(RuntimeError, match=r"(?s)tritonserver exited with code 1.*Log tail:.*" + expected):
        server.start(timeout=60)
    assert server.pid is None
    assert_nothing_left(server)


def test_fixed_port_in_use_is_reported(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        server = TritonServer(write_add_one_repo(tmp_path / "repo"), http_port=port)
        with pytest.raises(RuntimeError, match=f"http port {port} on 127.0.0.1 is not free"):
            server.start()
    assert_nothing_left(server)


def test_picked_port_taken_before_bind_is_retried(tmp_path, monkeypatch):
    """A port that free_port() returned but another process took first makes the start retry on new ports."""
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        real_free_port = server_module.free_port
        picked: list[int] = []

        def free_port_losing_the_first_race(host: str = "127.0.0.1") -> int:
            picked.append(taken if not picked else real_free_port(host))  # the first pick goes to gRPC
            return picked[-1]

        monkeypatch.setattr(server_module, "free_port", free_port_losing_the_first_race)
        with TritonServer(write_add_one_repo(tmp_path / "repo")) as server:
            assert server.is_ready()
            assert len(picked) == 6  # gRPC, HTTP and metrics ports for the failed attempt and the one that started
            assert taken not in (server.grpc_port, server.http_port)
    assert_nothing_left(server)


def test_missing_pytriton_names_the_package_and_the_install_command(monkeypatch):
    real_find_spec = server_module.importlib.util.find_spec
    monkeypatch.setattr(
        server_module.importlib.util,
        "find_spec",
        lambda name, *args: None if name == "pytriton" else real_find_spec(name, *args),
    )
    with pytest.raises(RuntimeError, match=r'nvidia-pytriton.*pip install .*-e "\.\[serve\]"'):
        find_tritonserver()


def test_server_env_puts_this_interpreter_first(monkeypatch):
    monkeypatch.setenv("PATH", "/usr/bin")
    monkeypatch.setenv("LD_LIBRARY_PATH", "/somewhere")
    env = server_env()
    assert env["PATH"].split(os.pathsep)[:2] == [str(Path(sys.executable).parent), "/usr/bin"]
    libs = env["LD_LIBRARY_PATH"].split(os.pathsep)
    assert libs[0] == sysconfig.get_config_var("LIBDIR")
    assert libs[1].endswith("nvidia_pytriton.libs") and Path(libs[1]).is_dir()
    assert libs[-1] == "/somewhere"


# ------------------------------------------------------------------------------ secure defaults, liveness


def http_status(url: str, method: str = "GET", body: bytes | None = None, headers: dict | None = None) -> int:
    request = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as error:
        return error.code


def shm_register_body(server: TritonServer) -> bytes:
    """A request to register one of the python stub's own regions (what crashed Triton when allowed)."""
    region = server_regions(server)[0].name
    return json.dumps({"key": f"/{region}", "offset": 0, "byte_size": 64}).encode()


def test_admin_apis_are_closed_by_default_on_http_and_grpc(server, grpc_client, http_client):
    base = f"http://{server.http_url}/v2"
    for method, path, body in [("POST", "/logging", b'{"log_verbose_level": 1}'), ("GET", "/logging", None),
                               ("POST", "/systemsharedmemory/region/evil/register", shm_register_body(server)),
                               ("GET", "/systemsharedmemory/status", None), ("POST", "/repository/index", b"{}"),
                               ("POST", "/repository/models/add_one/unload", b"{}"), ("GET", "/trace/setting", None)]:
        assert http_status(base + path, method, body) == 403, path
        assert http_status(base + path, method, body, {"sigrl-admin-key": "a guess at the key"}) == 403, path
    for call in (lambda: grpc_client.update_log_settings({"log_verbose_level": 1}),
                 lambda: grpc_client.get_system_shared_memory_status(),
                 lambda: grpc_client.unload_model("add_one"), lambda: grpc_client.get_trace_settings()):
        with pytest.raises(InferenceServerException, match="restricted"):
            call()
    assert grpc_client.is_model_ready("add_one") and server.is_ready()
    assert grpc_client.get_inference_statistics("add_one").model_stats  # read-only statistics stay open


def test_metrics_are_served_and_shared_memory_is_private(server, grpc_client):
    test_grpc_inference_adds_one(grpc_client)
    with urllib.request.urlopen(server.metrics_url, timeout=30) as response:
        assert 'nv_inference_request_success{model="add_one",version="1"}' in response.read().decode()
    assert server_regions(server) and shm_files(server.shm_prefix) == []  # in Triton's own /dev/shm only
    own_shm = Path(f"/proc/{server.pid}/root/dev/shm")
    assert own_shm.stat().st_dev != Path("/dev/shm").stat().st_dev and own_shm.stat().st_mode & 0o777 == 0o700
    for stub in stub_processes(server.pid):  # the stubs share it
        assert Path(f"/proc/{stub}/root/dev/shm").stat().st_ino == own_shm.stat().st_ino


# ------------------------------------------------------------------------------ attackers


def _system_python() -> str | None:
    """A Python another user can run (this one may live under a private home)."""
    return next((path for path in ("/usr/bin/python3", "/usr/local/bin/python3") if os.access(path, os.X_OK)), None)


@pytest.fixture(scope="module")
def attacker():
    """Run ``tests/attacks.py`` as the user nobody (setpriv), with h2 on its path; returns its JSON report."""
    import h2

    python, setpriv = _system_python(), shutil.which("setpriv")
    if os.geteuid() != 0 or python is None or setpriv is None:
        pytest.skip("running as another local user needs root, setpriv and a system python3")
    place = Path(tempfile.mkdtemp(prefix="sigrl-attacker-"))  # tests/ may sit in a folder nobody can enter
    for name in ("attacks.py", "raw_protocol.py"):
        shutil.copy(TESTS / name, place / name)
    shutil.copytree(Path(h2.__file__).parents[1], place / "site", ignore=lambda d, names: [
        n for n in names if Path(d) == Path(h2.__file__).parents[1] and n not in ("h2", "hpack", "hyperframe")])
    for path in [place, *place.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    command = [setpriv, "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--", python, str(place / "attacks.py")]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{place}:{place / 'site'}"}

    def run(*args: str, background: bool = False):
        if background:
            return subprocess.Popen([*command, *args], env=env, cwd="/", stdout=subprocess.PIPE, text=True)
        done = subprocess.run([*command, *args], env=env, cwd="/", capture_output=True, text=True, timeout=300)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout.splitlines()[-1])

    yield run
    shutil.rmtree(place)


def test_no_client_reaches_the_admin_apis_with_any_header_or_what_another_user_can_read(server, attacker):
    """No key: the restricted APIs are keyed to a header no client can send. Another local user reads the
    server's arguments (that header and its value), and tries them, spelled every way, with gRPC over raw HTTP/2
    and raw HTTP/1.1 on every restricted API; it cannot read the environment or the server's /dev/shm."""
    report = attacker("admin", "--pid", str(server.pid), "--grpc", server.grpc_url, "--http", server.http_url)
    assert report["uid"] == 65534 and report["read"]["cmdline"] == "restricted header found"
    assert str(report["read"]["environ"]).startswith("denied") and str(report["read"]["root/dev/shm"]).startswith(
        "denied")
    assert report["tries"] > 100 and report["grpc_ok"] == [] and report["http_ok"] == []
    assert server.is_ready()


def test_raw_clients_reach_the_admin_apis_with_the_operators_key_only(tmp_path):
    """The control: the same raw clients get in with the key, so the probes above can see an open API."""
    import attacks

    key = "k" * 8 + uuid.uuid4().hex
    with TritonServer(write_add_one_repo(tmp_path / "repo"), admin_key=key) as server:
        host, port = server.grpc_url.rsplit(":", 1)
        header = b"triton-grpc-protocol-sigrl-admin-key"
        assert grpc_call(host, int(port), "RepositoryIndex", headers=[(header, key.encode())]).ok
        assert not grpc_call(host, int(port), "RepositoryIndex", headers=[(header, key.encode() + b"x")]).ok
        http_host, http_port = server.http_url.rsplit(":", 1)
        for value, status in ((key, 200), (key[:-1], 403)):
            request = (f"POST /v2/repository/index HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
                       f"sigrl-admin-key: {value}\r\nConnection: close\r\n\r\n").encode()
            assert http_request(http_host, int(http_port), request).status == status
        report = attacks.probe_admin(server.pid, server.grpc_url, server.http_url)  # argv holds the key
        assert report["grpc_ok"] and report["http_ok"]


@pytest.mark.slow
def test_no_other_user_opens_a_shared_memory_region_at_start_restart_or_ever(tmp_path, attacker):
    """A watcher run by another user, started before the server, polls /dev/shm every millisecond (and the
    server's own /dev/shm through /proc) while the server starts, serves, loses a stub and restarts. It sees
    no region. The control: a server without a private /dev/shm shows the same watcher its regions."""
    if private_shm_error():
        pytest.skip(f"no private /dev/shm here: {private_shm_error()}")
    repo = write_add_one_repo(tmp_path / "repo")
    reports = {}
    for private in (True, False):
        watcher = attacker("watch", background=True)
        assert watcher.stdout.readline().strip() == "watching"
        server = TritonServer(repo, private_shm=private)
        with server:
            with grpcclient.InferenceServerClient(server.grpc_url) as client:
                test_grpc_inference_adds_one(client)
            os.kill(next(iter(stub_processes(server.pid))), signal.SIGKILL)
            assert wait_for(server.dead_stubs, 10)
            server.restart()
            with grpcclient.InferenceServerClient(server.grpc_url) as client:
                test_grpc_inference_adds_one(client)
            if server.kept_log:
                server.kept_log.unlink()
        watcher.terminate()
        reports[private] = json.loads(watcher.stdout.read().splitlines()[-1])
        assert watcher.wait(30) == 0
    assert reports[True]["uid"] == 65534 and reports[True]["polls"] > 100
    assert reports[True]["seen"] == [] and reports[True]["opened"] == []
    assert reports[False]["seen"], "the watcher should see the regions of a server without a private /dev/shm"


def test_the_admin_key_opens_the_admin_apis_and_a_dead_stub_is_restored_by_a_restart(tmp_path):
    key = "k" * 8 + uuid.uuid4().hex
    server = TritonServer(write_add_one_repo(tmp_path / "repo"), admin_key=key)
    with server:
        base, header = f"http://{server.http_url}/v2", {"sigrl-admin-key": key}
        assert http_status(base + "/logging", "POST", b'{"log_verbose_level": 0}', header) == 200
        with grpcclient.InferenceServerClient(server.grpc_url) as grpc_client:
            grpc_header = {"triton-grpc-protocol-sigrl-admin-key": key}  # Triton's prefix for gRPC metadata
            assert "log_verbose_level" in grpc_client.get_log_settings(headers=grpc_header, as_json=True)["settings"]
        stubs = stub_processes(server.pid)
        assert list(stubs.values()) == ["add_one_0_0"] and server.is_healthy()
        ports = (server.grpc_port, server.http_port, server.metrics_port)
        os.kill(next(iter(stubs)), signal.SIGKILL)
        deadline = time.monotonic() + 10
        while not server.dead_stubs() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert server.dead_stubs() == ["add_one_0_0"] and not server.is_healthy()
        server.restart()
        assert (server.grpc_port, server.http_port, server.metrics_port) == ports
        assert server.is_healthy() and server.kept_log is not None and server.kept_log.is_file()
        server.kept_log.unlink()
        with grpcclient.InferenceServerClient(server.grpc_url) as grpc_client:
            test_grpc_inference_adds_one(grpc_client)
    assert_nothing_left(server)


def test_a_crashed_server_keeps_its_log_private(tmp_path):
    server = TritonServer(write_add_one_repo(tmp_path / "repo"))
    server.start()
    os.kill(server.pid, signal.SIGKILL)
    assert wait_for(lambda: not server.is_healthy(), 10)
    server.stop()
    assert server.kept_log is not None and "Started GRPCInferenceService" in server.kept_log.read_text()
    assert server.kept_log.stat().st_mode & 0o777 == 0o600  # requests' errors are in it: this user's only
    server.kept_log.unlink()
    assert_nothing_left(server)


def test_a_named_log_file_is_created_private(tmp_path):
    with TritonServer(write_add_one_repo(tmp_path / "repo"), log_file=tmp_path / "triton.log") as server:
        assert server.log_path.stat().st_mode & 0o777 == 0o600


def test_work_folders_of_dead_wrappers_are_removed_at_the_next_start(tmp_path):
    ended = subprocess.Popen(["true"])
    ended.wait()  # a pid nothing uses any more (a wrapper killed with kill -9)
    stale = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{ended.pid}-"))
    alive = Path(tempfile.mkdtemp(prefix=f"{WORKDIR_PREFIX}{os.getpid()}-"))  # this process is alive: kept
    try:
        with TritonServer(write_add_one_repo(tmp_path / "repo")):
            assert not stale.exists() and alive.exists()
    finally:
        shutil.rmtree(alive, ignore_errors=True)
        shutil.rmtree(stale, ignore_errors=True)


def wait_for(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def start_sigrl_serve(repo: Path, ports: list[int], log_file: Path) -> subprocess.Popen:
    """``sigrl serve`` on fixed ports as a child process, once it printed that Triton is ready."""
    command = [sys.executable, "-m", "sigrl.cli", "serve", "--repo", str(repo), "--grpc-port", str(ports[0]),
               "--http-port", str(ports[1]), "--metrics-port", str(ports[2]), "--log-file", str(log_file)]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("Triton ready"), (line, proc.stderr.read() if proc.poll() is not None else "")
    assert f"work folder {tempfile.gettempdir()}/{WORKDIR_PREFIX}{proc.pid}-" in line  # found again if killed
    return proc


@pytest.mark.slow
def test_sigrl_serve_killed_with_sigkill_takes_triton_along_and_restarts_on_the_same_ports(tmp_path):
    repo = write_add_one_repo(tmp_path / "repo")
    ports = [free_port() for _ in range(3)]
    first = start_sigrl_serve(repo, ports, tmp_path / "first.log")
    servers = [pid for pid in processes_mentioning(f"sigrl_triton_{first.pid}_") if pid != first.pid]
    assert servers, "tritonserver and its stub"
    first.kill()  # SIGKILL: the wrapper cannot clean up
    first.wait()
    assert wait_for(lambda: processes_mentioning(f"sigrl_triton_{first.pid}_") == [])
    assert "Started GRPCInferenceService" in (tmp_path / "first.log").read_text()  # the named log stays

    assert list(Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}{first.pid}-*"))  # left by the killed wrapper
    second = start_sigrl_serve(repo, ports, tmp_path / "second.log")
    try:
        assert list(Path(tempfile.gettempdir()).glob(f"{WORKDIR_PREFIX}{first.pid}-*")) == []  # removed at start
        with grpcclient.InferenceServerClient(f"127.0.0.1:{ports[0]}") as client:
            test_grpc_inference_adds_one(client)
        taken = subprocess.run([sys.executable, "-m", "sigrl.cli", "serve", "--repo", str(repo), "--grpc-port",
                                str(free_port()), "--http-port", str(ports[1]), "--metrics-port", str(free_port())],
                               capture_output=True, text=True, timeout=120)
        assert taken.returncode == 2 and taken.stderr.count("\n") == 1, taken.stderr
        assert f"http port {ports[1]} on 127.0.0.1 is not free" in taken.stderr and "--http-port" in taken.stderr
    finally:
        second.terminate()  # SIGTERM: a clean stop
        assert second.wait(timeout=60) == 0
    assert processes_mentioning(f"sigrl_triton_{second.pid}_") == []


def test_loopback_addresses_are_recognised():
    assert all(map(is_loopback, ["127.0.0.1", "127.3.2.1", "::1", "localhost"]))
    assert not any(map(is_loopback, ["0.0.0.0", "192.168.1.4", "::", "example.org"]))


def test_a_restricted_api_is_reported_as_restricted_not_as_no_server(server, grpc_client):
    from sigrl.serving.client import translate_errors

    with pytest.raises(PermissionError, match=r"keeps this API restricted .* operator's key"):
        translate_errors(server.grpc_url, grpc_client.get_log_settings)


def test_an_admin_key_file_others_can_read_is_refused(add_one_repo, tmp_path, capsys):
    from sigrl.cli import main

    key = tmp_path / "admin.key"
    key.write_text("k" * 32)
    key.chmod(0o644)
    assert main(["serve", "--repo", str(add_one_repo), "--admin-key-file", str(key)]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and f"--admin-key-file {key}" in error and f"chmod 600 {key}" in error
    key.chmod(0o600)
    key.write_text("short")
    assert main(["serve", "--repo", str(add_one_repo), "--admin-key-file", str(key)]) == 2
    assert "at least 16 printable ASCII characters" in capsys.readouterr().err
