"""What a cluster runs, run here: the Deployment's own Triton command line (on the bundled Triton, a tiny repository,
loopback ports) serves, keeps the admin APIs shut, and the readiness check goes false when a python stub dies; and the
client rides out a server that is not up yet or restarts, through a ``dns:///`` round-robin channel."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("pytriton", reason='needs nvidia-pytriton (pip install -c constraints.txt -e ".[serve]")')

import tritonclient.grpc as grpcclient
from test_serving_server import ADD_ONE_CONFIG, ADD_ONE_MODEL, http_status, wait_for, write_model
from tritonclient.utils import InferenceServerException

from sigrl.serving import health
from sigrl.serving.client import SigRLClient
from sigrl.serving.kubernetes import VOLUME_MOUNT, ClusterSpec, manifests
from sigrl.serving.server import (
    SHM_DIR,
    TritonServer,
    find_tritonserver,
    install_flags,
    live_stub_processes,
    prepare_backend_dir,
    server_env,
)

SPEC = ClusterSpec(repo_uri="pvc://models/repo", image="sigrl-triton:test", triton_tag="25.01-py3", gpus=0)


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (bound together, so the OS cannot hand out one twice)."""
    with contextlib.ExitStack() as stack:
        sockets = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]


def local_command(args: list[str], repo: Path, ports: dict[str, int], workdir: Path, shm_prefix: str) -> list[str]:
    """The Deployment's container command with what differs on this machine only: the bundled binary for the image's
    ``tritonserver``, the repository's local path for the volume, loopback and free ports for the pod's, and the
    flags this install needs (:func:`~sigrl.serving.server.install_flags`)."""
    local = []
    for arg in args:
        flag, _, value = arg.partition("=")
        if flag == "--model-repository":
            assert value == VOLUME_MOUNT
            value = str(repo)
        elif flag.endswith("-address"):
            assert value == "0.0.0.0"
            value = "127.0.0.1"
        elif flag.endswith("-port"):
            value = str(ports[flag.removeprefix("--").removesuffix("-port")])
        local.append(f"{flag}={value}" if value else arg)
    return [str(find_tritonserver()), *local, *install_flags(prepare_backend_dir(workdir / "backends"), shm_prefix)]


@contextlib.contextmanager
def deployment_command(repo: Path, workdir: Path):
    """The generated Deployment's Triton, started as its container would start it (the pod's /dev/shm: a
    region prefix of its own here), serving ``repo``: (process, HTTP URL, gRPC address)."""
    container = manifests(SPEC)["deployment.yaml"]["spec"]["template"]["spec"]["containers"][0]
    assert container["command"] == ["tritonserver"]
    ports = dict(zip(("grpc", "http", "metrics"), free_ports(3)))
    shm_prefix = f"sigrl_cluster_test_{os.getpid()}_"
    command = local_command(container["command"][1:] + container["args"], repo, ports, workdir, shm_prefix)
    log = open(workdir / "triton.log", "wb")
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=server_env(), cwd=workdir,
                            start_new_session=True)
    url = f"http://127.0.0.1:{ports['http']}"
    try:
        ready = wait_for(lambda: proc.poll() is None and not health.problems(url, "ready", models=[]), timeout=240)
        assert ready, (workdir / "triton.log").read_text()[-3000:]
        yield proc, url, f"127.0.0.1:{ports['grpc']}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait()
        log.close()
        for path in SHM_DIR.glob(f"{shm_prefix}*"):
            path.unlink(missing_ok=True)


@pytest.fixture
def deployed(tmp_path):
    """The Deployment's command on a repository of an add-one python model with two instances."""
    repo = tmp_path / "repo"
    write_model(repo, "add_one", ADD_ONE_CONFIG.format(name="add_one").replace("count: 1", "count: 2"), ADD_ONE_MODEL)
    with deployment_command(repo, tmp_path) as running:
        yield running


def test_the_deployments_command_serves_keeps_admin_apis_shut_and_fails_readiness_on_a_dead_stub(deployed, capsys):
    proc, url, grpc_url = deployed
    with grpcclient.InferenceServerClient(grpc_url) as client:
        data = np.arange(4, dtype=np.float32)[None]
        tensor = grpcclient.InferInput("INPUT0", list(data.shape), "FP32")
        tensor.set_data_from_numpy(data)
        assert np.array_equal(client.infer("add_one", [tensor]).as_numpy("OUTPUT0"), data + 1)
        with pytest.raises(InferenceServerException, match="restricted"):
            client.update_log_settings({"log_verbose_level": 1})
    assert http_status(f"{url}/v2/logging", "POST", b'{"log_verbose_level": 1}') == 403
    assert http_status(f"{url}/v2/repository/index", "POST", b"{}") == 403

    for endpoint in ("ready", "live"):  # the probes' check, as the pod runs it
        assert health.main(["add_one", "--endpoint", endpoint, "--url", url, "--pid", str(proc.pid)]) == 0
    stubs = live_stub_processes(proc.pid)
    assert sorted(stubs.values()) == ["add_one_0_0", "add_one_0_1"]
    os.kill(next(iter(stubs)), signal.SIGKILL)
    assert wait_for(lambda: len(live_stub_processes(proc.pid)) == 1, timeout=10)
    assert http_status(f"{url}/v2/health/ready") == 200  # what Triton alone says
    capsys.readouterr()
    assert health.main(["add_one", "--url", url, "--pid", str(proc.pid)]) == 1
    assert capsys.readouterr().err.strip() == "not ready: model add_one: 1 of 2 python stubs alive"
    assert health.problems(url, "live", ["add_one", "text_gmc"], pid=proc.pid) == [
        "model add_one: 1 of 2 python stubs alive"]  # a model the repository lacks is no problem
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=60)
    assert health.problems(url, "ready", ["add_one"], pid=proc.pid) == ["/v2/health/ready answered nothing"]


@pytest.mark.slow
def test_the_deployments_command_serves_a_sigrl_repository_and_its_probe_counts_every_stub(tiny_engines, tmp_path):
    """A repository of `sigrl triton-repo` (python runtime, two entry instances): the probe's default models are
    the repository's, every stub is counted, and the entry model tags an image."""
    from sigrl.serving.repository import Instances, build_repository

    repo = build_repository(tiny_engines[1], "python", tmp_path / "repo", instances=Instances(entry=2))
    with deployment_command(repo, tmp_path) as (proc, url, grpc_url):
        assert health.expected_stubs(url, list(health.DEFAULT_MODELS)) == {"sigrl": 2, "text_gmc": 1, "image_svfr": 1}
        assert health.main(["--url", url, "--pid", str(proc.pid)]) == 0
        image = io.BytesIO()
        Image.new("RGB", (64, 48), (200, 30, 30)).save(image, format="PNG")
        client = SigRLClient(grpc_url, timeout_s=60)
        try:
            [tagging] = client.tag(["red.png"], [image.getvalue()], ["circle", "square"], top_k=1)
        finally:
            client.close()
        assert tagging.error is None and set(tagging.scores) == {"circle", "square"}


def call_in_background(call) -> tuple[threading.Thread, list]:
    """Run ``call`` in a thread; its result (or exception) lands in the returned list. (The server starts in this
    thread: Triton dies with the thread that started it.)"""
    outcome: list = []

    def run() -> None:
        try:
            outcome.append(call())
        except Exception as err:
            outcome.append(err)

    thread = threading.Thread(target=run)
    thread.start()
    return thread, outcome


def test_the_client_retries_until_the_server_is_up_and_across_a_restart(tmp_path):
    """Connection reuse, retries of UNAVAILABLE with backoff and a deadline per call, against a real server that is
    not up at the first call and later restarts on the same ports; the address is a dns:/// round-robin target."""
    repo = tmp_path / "repo"
    write_model(repo, "sigrl", ADD_ONE_CONFIG.format(name="sigrl"), ADD_ONE_MODEL)  # answers as the entry model
    ports = dict(zip(("grpc_port", "http_port", "metrics_port"), free_ports(3)))
    server = TritonServer(repo, **ports)
    client = SigRLClient(f"dns:///localhost:{ports['grpc_port']}", timeout_s=10, retries=9, backoff_s=0.25)
    try:
        started = time.monotonic()
        thread, outcome = call_in_background(client.is_ready)
        time.sleep(2.0)  # the client meets UNAVAILABLE meanwhile, and retries
        server.start()
        thread.join()
        assert outcome == [True] and time.monotonic() - started >= 2.0
        assert client.max_batch_size() == 8

        server.stop()
        impatient = SigRLClient(client.url, timeout_s=5, retries=0)
        with pytest.raises(ConnectionError, match="no Triton server at dns:///localhost"):
            impatient.is_ready()  # nothing up and no retries: one clear error
        impatient.close()
        thread, outcome = call_in_background(client.is_ready)
        time.sleep(1.0)
        server.start()  # on the same ports
        thread.join()
        assert outcome == [True]  # the same client and channel, reconnected
    finally:
        client.close()
        server.stop()
