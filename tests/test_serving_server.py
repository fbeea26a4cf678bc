"""A real Triton Inference Server (the binary bundled in nvidia-pytriton) starts, serves and stops cleanly.

The model repository is a one-model python-backend repository written into a temp dir, and the
server is checked with the real ``tritonclient`` over gRPC and HTTP.
"""

from __future__ import annotations

import os
import socket
import sys
import sysconfig
import textwrap
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytriton", reason='needs nvidia-pytriton (pip install -c constraints.txt -e ".[serve]")')

import tritonclient.grpc as grpcclient  # noqa: E402  (nvidia-pytriton depends on tritonclient[grpc,http])
import tritonclient.http as httpclient  # noqa: E402

from sigrl.serving import server as server_module  # noqa: E402
from sigrl.serving.server import TritonServer, find_tritonserver, server_env  # noqa: E402

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
        with pytest.raises(RuntimeError, match=f"port {port} on 127.0.0.1 is not free"):
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
            assert len(picked) == 4  # two ports for the failed attempt, two for the one that started
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
