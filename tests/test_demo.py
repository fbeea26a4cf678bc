"""The README's main command: `sigrl demo` runs train → eval → export → Triton → gRPC tagging → parity."""

import re

import pytest

pytest.importorskip("pytriton", reason='needs nvidia-pytriton (pip install -c constraints.txt -e ".[serve]")')


def test_demo_runs_the_whole_chain(tmp_path, capsys):
    from sigrl.cli import main

    assert main(["demo", "--out", str(tmp_path), "--max-steps", "20"]) == 0
    out = capsys.readouterr().out
    assert out.count(".png: ") == 4  # four images tagged over gRPC
    served_vs_local = float(re.search(r"entry model scores, max abs difference: (\S+)", out).group(1))
    served_vs_torch = float(re.search(r"vs PyTorch eager, max abs difference: +(\S+)", out).group(1))
    assert served_vs_local <= 1e-6 and served_vs_torch <= 1e-5
    assert re.search(r"served p50 [\d.]+ ms", out) and "Triton stopped" in out
    assert (tmp_path / "engines" / "image_svfr.onnx").is_file() and (tmp_path / "triton_repo" / "sigrl").is_dir()
