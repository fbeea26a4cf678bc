"""The ``sigrl`` command's contract with its user: every mistake is one line on stderr naming the flag or
file, exit status 2, and a traceback only with ``--debug`` or ``SIGRL_DEBUG=1``; ``--version``; training's
logs and JSON results; and a ``sigrl tag`` that starts without torch. (``tag`` against a real server is
tested in test_serving_triton.py, next to its server.)"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sigrl
from sigrl.cli import main


def one_line_error(capsys, argv: list[str]) -> str:
    """Run ``sigrl argv``; it must exit 2 with exactly one line on stderr, which is returned."""
    try:
        code = main(argv)
    except SystemExit as exit_:  # argparse's own errors
        code = exit_.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def not_a_checkpoint(tmp_path) -> Path:
    path = tmp_path / "weights.pt"
    torch.save({"net": torch.nn.Linear(2, 2)}, path)  # a pickled module: weights_only=True refuses it
    return path


# ----------------------------------------------------------------------------- values checked at parse time


@pytest.mark.parametrize(("argv", "flag"), [
    (["train", "--batch-size", "0"], "--batch-size"),
    (["train", "--epochs", "two"], "--epochs"),
    (["train", "--lr", "-1e-4"], "--lr"),
    (["train", "--workers", "-1"], "--workers"),
    (["train", "--max-steps", "0"], "--max-steps"),
    (["eval", "--checkpoint", "x.pt", "--batch-size", "0"], "--batch-size"),
    (["parity", "--checkpoint", "x.pt", "--engines", "e", "--classes", "12", "0"], "--classes"),
    (["tag", "a.jpg", "--top-k", "0"], "--top-k"),
    (["tag", "a.jpg", "--timeout", "nan"], "--timeout"),
    (["params", "--config", "vit-b17"], "--config"),
])
def test_bad_flag_values_fail_at_parse_time_naming_the_flag(capsys, argv, flag):
    line = one_line_error(capsys, argv)
    assert line.startswith(f"sigrl {argv[0]}: error: argument {flag}")


# ----------------------------------------------------------------------------- files and folders


def test_a_folder_as_checkpoint_says_it_is_a_folder(capsys, tmp_path):
    for command in (["eval", "--checkpoint", str(tmp_path)],
                    ["export", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "engines")]):
        line = one_line_error(capsys, command)
        assert f"{tmp_path} is a folder, not a checkpoint file" in line and "best.pt" in line


def test_a_non_checkpoint_file_never_advises_weights_only_false(capsys, not_a_checkpoint, tmp_path):
    line = one_line_error(capsys, ["export", "--checkpoint", str(not_a_checkpoint), "--out", str(tmp_path / "e")])
    assert f"cannot read checkpoint {not_a_checkpoint}: not a checkpoint written by sigrl" in line
    assert "weights_only" not in line


@pytest.mark.parametrize("command", ["train", "export"])
def test_an_out_that_cannot_be_written_names_the_flag(capsys, tmp_path, not_a_checkpoint, command):
    blocked = tmp_path / "a-file"
    blocked.write_text("")
    out = blocked / "run"  # a folder inside a file cannot be created, whoever runs the test (root included)
    argv = {"train": ["train", "--out", str(out), "--max-steps", "1"],
            "export": ["export", "--checkpoint", str(not_a_checkpoint), "--out", str(out)]}[command]
    line = one_line_error(capsys, argv)
    assert line.startswith(f"sigrl {command}: error: --out {out}: {blocked} is a file, not a folder")
    assert not out.exists()


def test_json_into_a_folder_names_the_flag(capsys, tmp_path, not_a_checkpoint):
    line = one_line_error(capsys, ["eval", "--checkpoint", str(not_a_checkpoint), "--json", str(tmp_path)])
    assert line.startswith(f"sigrl eval: error: --json {tmp_path} is a folder")


def test_dataset_without_data_root_names_the_flag(capsys, tmp_path):
    line = one_line_error(capsys, ["train", "--data", "nus-wide", "--out", str(tmp_path / "run")])
    assert line == "sigrl train: error: --data nus-wide needs --data-root, the folder holding its files"
    line = one_line_error(capsys, ["train", "--data", "coco", "--data-root", str(tmp_path / "none"),
                                   "--out", str(tmp_path / "run")])
    assert "--data-root" in line and "no such folder" in line


def test_an_existing_run_is_never_overwritten_and_resume_needs_one(capsys, tmp_path):
    (tmp_path / "last.pt").write_bytes(b"a previous run")
    line = one_line_error(capsys, ["train", "--out", str(tmp_path)])
    assert f"--out {tmp_path} already holds a run" in line and "--resume" in line
    assert (tmp_path / "last.pt").read_bytes() == b"a previous run"
    line = one_line_error(capsys, ["train", "--out", str(tmp_path / "new"), "--resume"])
    assert "--resume" in line and "not found" in line


def test_missing_pretrained_weights_name_the_flag(capsys, tmp_path):
    line = one_line_error(capsys, ["train", "--out", str(tmp_path), "--pretrained", str(tmp_path / "ViT-B-16.pt")])
    assert line.startswith(f"sigrl train: error: --pretrained {tmp_path / 'ViT-B-16.pt'}: no such file")


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present: --device cuda is valid here")
def test_device_cuda_without_cuda(capsys, tmp_path, not_a_checkpoint):
    line = one_line_error(capsys, ["train", "--device", "cuda", "--out", str(tmp_path)])
    assert line.startswith("sigrl train: error: --device cuda: this torch sees no CUDA device")
    line = one_line_error(capsys, ["eval", "--checkpoint", str(not_a_checkpoint), "--data", "synthetic",
                                   "--device", "cuda:0"])
    assert "--device" in line


def test_parity_device_cuda_without_onnxruntime_gpu(capsys, tmp_path, not_a_checkpoint):
    ort = pytest.importorskip("onnxruntime")
    if "CUDAExecutionProvider" in ort.get_available_providers():
        pytest.skip("onnxruntime-gpu is installed: --device cuda is valid here")
    line = one_line_error(capsys, ["parity", "--checkpoint", str(not_a_checkpoint), "--engines", str(tmp_path),
                                   "--device", "cuda"])
    assert line.startswith("sigrl parity: error: --device cuda: ") and "onnxruntime-gpu" in line


# ----------------------------------------------------------------------------- tag without a server


def test_tag_without_a_server_names_the_address(capsys, tmp_path):
    pytest.importorskip("tritonclient.grpc", reason='needs tritonclient (pip install -e ".[serve]")')
    image = tmp_path / "a.png"
    image.write_bytes(b"not even an image")
    port = free_port()
    line = one_line_error(capsys, ["tag", str(image), "--url", f"127.0.0.1:{port}"])
    assert line.startswith(f"sigrl tag: error: no Triton server at 127.0.0.1:{port}")


@pytest.mark.parametrize(("labels", "message"), [
    ("", "--labels is empty"),
    (" , ", "--labels: label 1 of 2 is blank"),
    ("dog,cat,dog", "--labels: label 'dog' is given twice"),
])
def test_tag_label_mistakes_are_caught_before_any_request(capsys, tmp_path, labels, message):
    image = tmp_path / "a.png"
    image.write_bytes(b"")
    line = one_line_error(capsys, ["tag", str(image), "--labels", labels, "--url", f"127.0.0.1:{free_port()}"])
    assert line.startswith(f"sigrl tag: error: {message}")


def test_tag_refuses_a_folder_without_images_and_bad_thresholds(capsys, tmp_path):
    (tmp_path / "notes.txt").write_text("no images here")
    line = one_line_error(capsys, ["tag", str(tmp_path)])
    assert line.startswith(f"sigrl tag: error: {tmp_path} is a folder without image files")
    thresholds = tmp_path / "t.json"
    thresholds.write_text("{not json")
    line = one_line_error(capsys, ["tag", str(thresholds), "--thresholds", str(thresholds)])
    assert line.startswith(f"sigrl tag: error: --thresholds {thresholds} is not JSON")


def test_tag_and_the_client_start_without_torch_or_open_clip(tmp_path):
    """The real `sigrl tag` path (it fails: no server), with every module it imported listed."""
    image = tmp_path / "a.png"
    image.write_bytes(b"x")
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "sigrl.cli", "tag", str(image),
                             "--url", f"127.0.0.1:{free_port()}"], capture_output=True, text=True)
    imported = {line.split("|")[-1].strip() for line in result.stderr.splitlines() if line.startswith("import time:")}
    assert result.returncode == 2 and "no Triton server" in result.stderr
    assert "sigrl.serving.client" in imported
    assert not {"torch", "open_clip", "timm", "torchvision"} & imported


# ----------------------------------------------------------------------------- --debug, --version


def test_debug_shows_the_traceback(capsys, tmp_path, monkeypatch):
    with pytest.raises(IsADirectoryError):
        main(["eval", "--checkpoint", str(tmp_path), "--debug"])
    with pytest.raises(IsADirectoryError):
        main(["--debug", "eval", "--checkpoint", str(tmp_path)])
    monkeypatch.setenv("SIGRL_DEBUG", "1")
    with pytest.raises(IsADirectoryError):
        main(["eval", "--checkpoint", str(tmp_path)])
    monkeypatch.setenv("SIGRL_DEBUG", "0")
    assert main(["eval", "--checkpoint", str(tmp_path)]) == 2


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0 and capsys.readouterr().out.strip() == f"sigrl {sigrl.__version__}"


# ----------------------------------------------------------------------------- training logs and results


def test_training_logs_metrics_jsonl_and_json_result(capsys, tmp_path):
    """Outside a terminal: a line every --log-every steps, a validation line per evaluation (kept with
    --no-progress), one metrics.jsonl record per evaluation, and the result as JSON."""
    common = ["train", "--config", "tiny", "--epochs", "2", "--synthetic-train-images", "64", "--batch-size", "32"]
    assert main([*common, "--out", str(tmp_path / "a"), "--log-every", "1", "--json", str(tmp_path / "a.json")]) == 0
    out = capsys.readouterr().out
    assert [line.split(" (")[0] for line in out.splitlines() if "images/s" in line] == \
        ["step 1/4", "step 2/4", "step 3/4", "step 4/4"]
    assert sum(": val mAP" in line for line in out.splitlines()) == 2
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r["epoch"]) for r in records] == [(2, 1), (4, 2)]
    assert all(r["train_loss"] > 0 and 0 <= r["val"]["mAP"] <= 100 for r in records)
    result = json.loads((tmp_path / "a.json").read_text())
    assert result["steps"] == 4 and result["best_val_mAP"] == max(r["val"]["mAP"] for r in records)
    assert result["config"]["batch_size"] == 32

    assert main([*common, "--out", str(tmp_path / "b"), "--no-progress", "--max-steps", "2"]) == 0
    out = capsys.readouterr().out
    assert "images/s" not in out and sum(": val mAP" in line for line in out.splitlines()) == 1


def test_serve_refuses_a_folder_that_is_not_a_sigrl_repository(capsys, tmp_path):
    """Before starting Triton: a missing folder, or one without the entry model, would give a server that
    reports ready while every request fails."""
    line = one_line_error(capsys, ["serve", "--repo", str(tmp_path / "missing")])
    assert line.startswith(f"sigrl serve: error: --repo {tmp_path / 'missing'}: no such folder")
    (tmp_path / "other_model").mkdir()
    line = one_line_error(capsys, ["serve", "--repo", str(tmp_path)])
    assert line.startswith(f"sigrl serve: error: --repo {tmp_path} holds no model (no MODEL/config.pbtxt)")
