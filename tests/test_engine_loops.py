"""Loops TensorRT builds well: no placeholder states or unread outputs, activations captured rather than carried
(except in the CPU int8 graph), and a loop-free image engine where one class chunk covers the class range.
Every variant is checked against PyTorch by ONNX Runtime and by ONNX's reference evaluator.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

import sigrl
from sigrl.cli import main
from sigrl.deploy.metadata import ExportedEngines, read_metadata
from sigrl.deploy.onnx_passes import close_scan_bodies, count_loops, free_names, prune_scans, scan_bodies
from sigrl.deploy.parity import compare_runtimes, format_rows, parity_inputs
from sigrl.deploy.runtimes import OnnxReferenceRuntime, OnnxRuntime, TorchRuntime


def _scan_graph() -> onnx.ModelProto:
    """A Scan with a real state (a running sum of x·y, y read from the enclosing graph), a placeholder state
    passed through unchanged, a scan output nobody reads and one that is a graph output."""
    body = helper.make_graph(
        [helper.make_node("Mul", ["x_i", "y"], ["xy"]), helper.make_node("Add", ["sum_in", "xy"], ["sum_out"]),
         helper.make_node("Identity", ["placeholder_in"], ["placeholder_out"]),
         helper.make_node("Mul", ["x_i", "two"], ["unread"]), helper.make_node("Add", ["x_i", "two"], ["kept"])],
        "body", [helper.make_empty_tensor_value_info(n) for n in ("sum_in", "placeholder_in", "x_i")],
        [helper.make_empty_tensor_value_info(n) for n in ("sum_out", "placeholder_out", "unread", "kept")],
        [numpy_helper.from_array(np.array(2.0, np.float32), "two")])
    scan = helper.make_node("Scan", ["zeros", "scalar", "x"], ["sum", "placeholder", "unread_all", "kept_all"],
                            body=body, num_scan_inputs=1, scan_output_directions=[0, 0])
    graph = helper.make_graph(
        [helper.make_node("Relu", ["y_raw"], ["y"]), scan], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2]),
         helper.make_tensor_value_info("y_raw", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("sum", TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("kept_all", TensorProto.FLOAT, ["N", 2])],
        [numpy_helper.from_array(np.zeros(2, np.float32), "zeros"), numpy_helper.from_array(np.array(0.0, np.float32),
                                                                                             "scalar")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)], ir_version=8)


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def test_prune_scans_drops_placeholder_states_and_unread_outputs_only():
    model = _scan_graph()
    feeds = {"x": np.arange(6, dtype=np.float32).reshape(3, 2), "y_raw": np.array([1.5, -2.0], np.float32)}
    before = _run(model, feeds)
    assert prune_scans(model.graph)
    (scan,) = [n for n in model.graph.node if n.op_type == "Scan"]
    body = scan_bodies(model.graph).__next__()
    assert list(scan.input) == ["zeros", "x"] and list(scan.output) == ["sum", "kept_all"]
    assert [v.name for v in body.input] == ["sum_in", "x_i"] and [v.name for v in body.output] == ["sum_out", "kept"]
    assert [n.op_type for n in body.node] == ["Mul", "Add", "Add"]  # the Identity and the unread Mul are gone
    assert free_names(body) == {"y"}  # the activation stays captured: no loop-carried copy
    assert [list(a.ints) for a in scan.attribute if a.name == "scan_output_directions"] == [[0]]
    assert "scalar" not in {t.name for t in model.graph.initializer}
    onnx.checker.check_model(model, full_check=True)
    for got, want in zip(_run(model, feeds), before):
        np.testing.assert_array_equal(got, want)
    assert not prune_scans(model.graph)  # nothing left to drop


def test_closing_a_body_for_cpu_runtimes_carries_what_it_captures_and_pruning_keeps_it():
    model = _scan_graph()
    feeds = {"x": np.ones((4, 2), np.float32), "y_raw": np.array([3.0, 1.0], np.float32)}
    before = _run(model, feeds)
    close_scan_bodies(model.graph, carry_activations=True)
    prune_scans(model.graph)
    body = next(scan_bodies(model.graph))
    assert free_names(body) == set() and len(body.input) == 3  # sum, the carried y, x_i
    for got, want in zip(_run(model, feeds), before):
        np.testing.assert_array_equal(got, want)


@pytest.fixture(scope="module")
def loop_free_engines(tiny_engines, tmp_path_factory):
    """The trained tiny exported for at most 32 classes with a class chunk of 32 (and GMC's node chunk 64)."""
    checkpoint, _ = tiny_engines
    out = tmp_path_factory.mktemp("tiny-loop-free")
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--max-classes", "32",
                 "--class-chunk", "32"]) == 0
    return checkpoint, out


def test_graphs_for_tensorrt_carry_nothing_a_loop_does_not_need(tiny_engines):
    _, engines = tiny_engines
    for name in ("text_gmc", "image_svfr"):
        graph = onnx.load(str(engines / f"{name}.onnx")).graph
        assert count_loops(graph) == 2
        outer_initializers = {t.name for t in graph.initializer}
        for node in (n for n in graph.node if n.op_type == "Scan"):
            body = next(a.g for a in node.attribute if a.name == "body")
            num_states = len(node.input) - next(a.i for a in node.attribute if a.name == "num_scan_inputs")
            assert all(body.output[i].name != body.input[i].name for i in range(num_states))
            assert not any(n.op_type == "Identity" and n.input[0] == body.input[i].name
                           for n in body.node for i in range(num_states)), "a placeholder state"
            assert len(node.output) == len(body.output) and all(node.output), "every output is read"
            assert not free_names(body) & outer_initializers, "weights are the body's own"
        bodies = list(scan_bodies(graph))
        assert all(free_names(body) for body in bodies)  # activations read from the enclosing graph
        if name == "image_svfr":  # SDA: no state at all; VFR: the gate sum, and no per-chunk output
            assert sorted((len(b.input), len(b.output)) for b in bodies) == [(1, 1), (3, 1)]


def test_the_loop_free_engines_match_pytorch_in_both_evaluators(loop_free_engines):
    checkpoint, engines = loop_free_engines
    for name in ("text_gmc", "image_svfr"):
        assert count_loops(onnx.load(str(engines / f"{name}.onnx")).graph) == 0
        assert read_metadata(engines / f"{name}.onnx").axis_ranges["C"] == [1, 32, 32]
    text_spec, image_spec = ExportedEngines.read(engines).specs()
    assert text_spec.axis_ranges["C"] == image_spec.axis_ranges["C"] == (1, 32, 32)
    model = sigrl.load_checkpoint(checkpoint)
    reference = TorchRuntime(model)
    vocabularies, images = parity_inputs(model.vocabulary, model.prompt_template, 64, [1, 12, 32], [1, 3])
    rows = compare_runtimes(reference, OnnxRuntime(engines, device="cpu"), vocabularies, images)
    assert all(r.passed for r in rows), format_rows(rows)
    rows = compare_runtimes(reference, OnnxReferenceRuntime(engines), vocabularies[1:2], images[1:])
    assert all(r.passed for r in rows), format_rows(rows)
    too_many, _ = parity_inputs(model.vocabulary, model.prompt_template, 64, [33], [1])
    with pytest.raises(ValueError, match=r"outside the engine's range \[1, 32\]"):
        OnnxRuntime(engines, device="cpu").encode_labels(too_many[0])


def test_the_looped_engines_match_pytorch_in_the_reference_evaluator(tiny_engines):
    """ONNX Runtime runs them throughout tests/test_export.py; ONNX's evaluator reads the captured activations too."""
    checkpoint, engines = tiny_engines
    model = sigrl.load_checkpoint(checkpoint)
    vocabularies, images = parity_inputs(model.vocabulary, model.prompt_template, 64, [1, 40], [2])
    rows = compare_runtimes(TorchRuntime(model), OnnxReferenceRuntime(engines), vocabularies, images)
    assert all(r.passed for r in rows), format_rows(rows)


def test_export_prints_the_loops_it_wrote(loop_free_engines, tiny_engines, tmp_path, capsys):
    checkpoint, _ = tiny_engines
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path), "--max-classes", "64",
                 "--class-chunk", "16"]) == 0
    out = capsys.readouterr().out
    assert "text_gmc.onnx: fp32, 0 loops" in out and "image_svfr.onnx: fp32, 2 loops" in out  # node chunk 64 covers 64
    with pytest.raises(SystemExit):
        main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path), "--max-classes", "0"])
    assert "--max-classes" in capsys.readouterr().err


def test_served_engine_models_take_the_class_range_the_engines_were_exported_for(loop_free_engines, tmp_path):
    """The served models rebuild the engine specs from the repository's settings: with the exported class
    range (32 here), not the default (1024), so a 33-label request is refused by the spec, not by the graph."""
    pytest.importorskip("tritonclient.grpc", reason="parsing Triton configs needs tritonclient (.[serve])")
    from sigrl.serving.backend import _engine_spec
    from sigrl.serving.repository import build_repository

    _, engines = loop_free_engines
    repo = build_repository(engines, "python", tmp_path / "repo")
    for model in ("sigrl", "text_gmc", "image_svfr"):
        settings = json.loads((repo / model / "1" / "sigrl.json").read_text())
        assert settings["max_classes"] == 32
    settings = json.loads((repo / "image_svfr" / "1" / "sigrl.json").read_text())
    spec = _engine_spec(settings, "image_svfr")
    assert spec.axis_ranges["C"] == (1, 32, 32)
    emb = np.zeros((33, spec.dim), np.float32)
    with pytest.raises(ValueError, match="C"):
        spec.check_inputs(spec.feeds(np.zeros((1, 3, spec.image_size, spec.image_size), np.float32), emb, emb))
