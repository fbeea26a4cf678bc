"""A real Triton Inference Server (the binary bundled in nvidia-pytriton) starts, serves and stops cleanly.

The model repository is a one-model python-backend repository written into a temp dir, and the
server is checked with the real ``tritonclient`` over gRPC and HTTP.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import sysconfig
import textwrap
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytriton", reason='needs nvidia-pytriton (pip install -c constraints.txt -e ".[serve]")')

import tritonclient.grpc as grpcclient  # noqa: E402  (nvidia-pytriton depends on tritonclient[grpc,http])
import tritonclient.http as httpclient  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from sigrl.serving import server as server_module  # noqa: E402
from sigrl.serving.server import (  # noqa: E402
    TritonServer,
    find_tritonserver,
    free_port,
    is_loopback,
    server_env,
    stub_processes,
)

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
    return sorted(Path("/dev/shm").glob(f"{prefix}*"))


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
        assert shm_files(server.shm_prefix), "the python backend should have made its shm region"
    assert server.pid is None and not server.is_ready()
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
    region = shm_files(server.shm_prefix)[0].name
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
    regions = shm_files(server.shm_prefix)
    assert regions and all(path.stat().st_mode & 0o077 == 0 for path in regions)  # readable by this user only


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


def test_a_crashed_server_keeps_its_log(tmp_path):
    server = TritonServer(write_add_one_repo(tmp_path / "repo"))
    server.start()
    os.kill(server.pid, signal.SIGKILL)
    assert wait_for(lambda: not server.is_healthy(), 10)
    server.stop()
    assert server.kept_log is not None and "Started GRPCInferenceService" in server.kept_log.read_text()
    server.kept_log.unlink()
    assert_nothing_left(server)


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

    second = start_sigrl_serve(repo, ports, tmp_path / "second.log")
    try:
        assert shm_files(f"sigrl_triton_{first.pid}_") == []  # the dead server's regions were removed
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
