"""Threshold calibration: hand-worked F1 cuts, the global fallback, brute-force optimality, and `sigrl calibrate`."""

import json

import numpy as np
import pytest

import sigrl
from sigrl.calibration import best_f1_threshold, calibrate_thresholds, f1_at
from sigrl.cli import main as sigrl_main
from sigrl.cli.serving import _read_thresholds


def test_best_cut_by_hand():
    # keep 1: F1 2/3; keep 2: 1/2; keep 3: 2·2/(3+2) = 0.8; keep 4: 2/3; keep 5: 4/7 -> cut between 0.7 and 0.6
    threshold, f1 = best_f1_threshold(np.array([0.9, 0.8, 0.7, 0.6, 0.5]), np.array([1, -1, 1, -1, -1]))
    assert threshold == pytest.approx(0.65) and f1 == pytest.approx(0.8)


def test_equal_scores_are_never_split():
    # Splitting the tie at 0.5 would give F1 1 (a threshold no score can realise); allowed cuts give 2/3, 0.8, 2/3.
    threshold, f1 = best_f1_threshold(np.array([0.9, 0.5, 0.5, 0.1]), np.array([1, 1, -1, -1]))
    assert threshold == pytest.approx(0.3) and f1 == pytest.approx(0.8)


def test_unknown_labels_are_ignored_and_keeping_all_uses_the_lowest_score():
    assert best_f1_threshold(np.array([0.95, 0.3, 0.2]), np.array([0, 1, 1])) == (pytest.approx(0.2), 1.0)
    assert best_f1_threshold(np.array([0.4, 0.3]), np.array([-1, 0])) is None


def test_equal_f1_picks_the_highest_threshold():
    # keep 1 and keep 4 both reach F1 2/3
    threshold, f1 = best_f1_threshold(np.array([0.9, 0.8, 0.7, 0.6]), np.array([1, -1, -1, 1]))
    assert threshold == pytest.approx(0.85) and f1 == pytest.approx(2 / 3)


def test_per_class_thresholds_with_global_fallback_by_hand():
    scores = np.array([[0.9, 0.2, 0.4], [0.6, 0.7, 0.3], [0.3, 0.8, 0.1], [0.1, 0.5, 0.2]])
    labels = np.array([[1, -1, -1], [1, 1, -1], [-1, 1, -1], [-1, -1, 0]])
    result = calibrate_thresholds(scores, labels, ["a", "b", "c"])
    # a: positives 0.9, 0.6 above negatives 0.3, 0.1; b: 0.8, 0.7 above 0.5, 0.2; c has no positive.
    # Pooled: the four positives (0.9, 0.8, 0.7, 0.6) are the four highest scores, next is 0.5.
    assert result.to_json() == {"a": pytest.approx(0.45), "b": pytest.approx(0.6), "c": pytest.approx(0.55),
                                "*": pytest.approx(0.55)}
    assert result.fallback == ["c"] and result.f1 == {"a": 1.0, "b": 1.0} and result.global_f1 == 1.0


def test_calibrated_thresholds_beat_every_other_threshold():
    rng = np.random.default_rng(3)
    scores = rng.normal(size=(60, 5)).round(2)  # rounding makes ties
    labels = np.where(rng.random((60, 5)) < 0.3, 1, -1) * (rng.random((60, 5)) > 0.1)
    scores[:, 1] += 10 * (labels[:, 1] > 0)  # one separable class
    result = calibrate_thresholds(scores, labels, list("abcde"))
    for column, name in enumerate("abcde"):
        candidates = np.concatenate([scores[:, column], scores[:, column] + 1e-9, [np.inf]])
        brute = max(f1_at(scores[:, column], labels[:, column], t) for t in candidates)
        assert result.f1[name] == pytest.approx(brute)
        assert f1_at(scores[:, column], labels[:, column], result.thresholds[name]) == pytest.approx(brute)
    assert result.f1["b"] == 1.0


def test_bad_inputs_are_named():
    with pytest.raises(ValueError, match="shape"):
        calibrate_thresholds(np.zeros((2, 3)), np.zeros((2, 2)), ["a", "b", "c"])
    with pytest.raises(ValueError, match="duplicate"):
        calibrate_thresholds(np.zeros((2, 2)), np.ones((2, 2)), ["a", "a"])
    with pytest.raises(ValueError, match="no positive"):
        calibrate_thresholds(np.zeros((2, 2)), -np.ones((2, 2)), ["a", "b"])
    with pytest.raises(ValueError, match="finite"):
        best_f1_threshold(np.array([np.nan, 1.0]), np.array([1, -1]))


def test_calibrate_command_pytorch_and_onnx_engines_agree(tiny_engines, tmp_path, capsys):
    checkpoint, engines = tiny_engines
    torch_out, onnx_out = tmp_path / "torch.json", tmp_path / "onnx.json"
    assert sigrl_main(["calibrate", "--checkpoint", str(checkpoint), "--out", str(torch_out)]) == 0
    assert "onnxruntime runtime" not in capsys.readouterr().out
    assert sigrl_main(["calibrate", "--checkpoint", str(checkpoint), "--engines", str(engines),
                       "--out", str(onnx_out), "--device", "cpu"]) == 0
    assert "onnxruntime runtime" in capsys.readouterr().out
    from_torch, from_onnx = json.loads(torch_out.read_text()), json.loads(onnx_out.read_text())
    assert list(from_torch) == [*sigrl.load_checkpoint(checkpoint).vocabulary, "*"] == list(from_onnx)
    for label, value in from_torch.items():  # midpoint thresholds: rounding-level score differences keep the cut
        assert from_onnx[label] == pytest.approx(value, abs=1e-5), label
    assert _read_thresholds(str(torch_out), None).to_json() == from_torch  # the format `sigrl tag --thresholds` reads
