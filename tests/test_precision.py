"""Reduced precision: the cast model, fp16/bf16/int8/int8-qdq/fp8 exports, their graphs, parity and accuracy.

Each precision is exported once from the trained ``tiny`` checkpoint with ``sigrl export --precision``
(int8-qdq and fp8 calibrated on synthetic *training* images, never the test set). fp16, int8 and the
Q/DQ graphs run in ONNX Runtime; bf16 graphs, which ONNX Runtime's CPU provider does not run, and the
Q/DQ graphs are checked by ONNX's own reference evaluator too. Tolerances are those written into the
engines' metadata.
"""

import json

import numpy as np
import onnx
import pytest
import torch
from torch import nn

import sigrl
from sigrl.cli import main
from sigrl.deploy.metadata import ExportedEngines, read_metadata
from sigrl.deploy.onnx_passes import free_names, scan_bodies
from sigrl.deploy.parity import compare_runtimes, format_rows, parity_inputs
from sigrl.deploy.quantization import write_synthetic_images
from sigrl.deploy.runtimes import OnnxRuntime, TorchRuntime, create_runtime
from sigrl.deploy.tolerances import TOLERANCES
from sigrl.precision import cast_model


@pytest.fixture(scope="module")
def precision_engines(tiny_engines, tmp_path_factory):
    """{precision: engine folder} for the trained tiny checkpoint (fp32 from the session fixture)."""
    checkpoint, fp32 = tiny_engines
    calibration = write_synthetic_images(tmp_path_factory.mktemp("calibration"), 64)
    folders = {"fp32": fp32}
    for precision in ("fp16", "bf16", "int8", "int8-qdq", "fp8"):
        out = tmp_path_factory.mktemp(f"tiny-{precision}")
        extra = ["--calibration-images", str(calibration)] if precision in ("int8-qdq", "fp8") else []
        assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--precision", precision,
                     *extra]) == 0
        folders[precision] = out
    return checkpoint, folders


TEXT_PRECISION = {"int8": "fp32", "int8-qdq": "fp16", "fp8": "fp16"}  # the quantized exports quantize the image engine


def test_cast_model_keeps_layernorm_fp32_and_leaves_the_original_alone():
    model = sigrl.create_model("tiny")
    cast = cast_model(model, "bf16")
    norms = [m for m in cast.modules() if isinstance(m, nn.LayerNorm)]
    assert norms and all(p.dtype == torch.float32 for m in norms for p in m.parameters())
    assert cast.clip.visual.conv1.weight.dtype == torch.bfloat16
    assert cast.svfr.sda_proj.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in model.parameters())  # a copy was cast
    assert cast_model(model, "fp32") is model
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        cast_model(model, "fp8")


def test_torch_runtime_never_moves_the_callers_model():
    """fp32 needs no cast, so the runtime must copy before moving: the caller may still export the model on
    the CPU (a GPU script once moved it to CUDA and then exported it with CPU inputs)."""
    model = sigrl.create_model("tiny")
    runtime = TorchRuntime(model, "meta")
    assert runtime.model is not model and next(runtime.model.parameters()).device.type == "meta"
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert TorchRuntime(model, "cpu").model is model  # already there: no copy
    with pytest.raises(ValueError, match="fp8 is a precision of exported engines"):
        create_runtime("torch", model=model, precision="fp8")


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_torch_runtime_at_low_precision_stays_close(precision):
    model = sigrl.create_model("tiny")
    vocabularies, images = parity_inputs(["cat", "dog"], model.prompt_template, 64, [40], [3])
    rows = compare_runtimes(TorchRuntime(model), TorchRuntime(model, precision=precision), vocabularies, images)
    assert all(r.passed for r in rows), format_rows(rows)
    assert all(r.precision == precision for r in rows)
    assert max(r.max_abs for r in rows if r.stage.endswith("scores")) > 0  # it really ran at low precision


def test_metadata_records_each_engines_precision_and_chunk(precision_engines):
    _, folders = precision_engines
    for precision, folder in folders.items():
        exported = ExportedEngines.read(folder)
        text, image = exported.text, exported.image
        assert image.precision == precision
        assert text.precision == TEXT_PRECISION.get(precision, precision)
        assert image.config.class_chunk == 32
        assert exported.precisions() == {"text_gmc": text.precision, "image_svfr": precision}


def test_scan_bodies_own_their_weights_and_only_the_cpu_graph_carries_activations(precision_engines):
    """Every Scan body holds the weights it uses. The CPU int8 graph's bodies read nothing from outside
    (activations are loop inputs, for runtimes that cannot take captures); the graphs meant for TensorRT
    read activations from the enclosing graph instead of carrying them through every iteration."""
    _, folders = precision_engines
    for precision, folder in folders.items():
        for name in ("text_gmc", "image_svfr"):
            graph = onnx.load(str(folder / f"{name}.onnx")).graph
            bodies = list(scan_bodies(graph))
            assert len(bodies) >= 2
            outer = {t.name for t in graph.initializer}
            assert all(not free_names(body) & outer for body in bodies), (precision, name)
            closed = precision == "int8" and name == "image_svfr"
            assert all(bool(free_names(body)) != closed for body in bodies), (precision, name)


def _initializer_types(graph: onnx.GraphProto) -> dict[str, int]:
    types = {t.name: t.data_type for t in graph.initializer}
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                types |= _initializer_types(attr.g)
    return types


def _nodes(graph: onnx.GraphProto):
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attr.g)


@pytest.mark.parametrize("precision,dtype", [("fp16", onnx.TensorProto.FLOAT16), ("bf16", onnx.TensorProto.BFLOAT16)])
def test_low_precision_graphs_have_low_precision_weights_and_fp32_islands(precision_engines, precision, dtype):
    _, folders = precision_engines
    model = onnx.load(str(folders[precision] / "image_svfr.onnx"))
    types = _initializer_types(model.graph)
    matmul_weights = [n.input[1] for n in _nodes(model.graph)
                      if n.op_type in ("MatMul", "Gemm") and n.input[1] in types]
    assert matmul_weights and all(types[w] == dtype for w in matmul_weights)
    norm_scales = [n.input[1] for n in _nodes(model.graph) if n.op_type == "LayerNormalization"]
    assert norm_scales and all(types[s] == onnx.TensorProto.FLOAT for s in norm_scales)
    io = {v.name: v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)}
    assert io == {"images": onnx.TensorProto.FLOAT, "label_emb": onnx.TensorProto.FLOAT,
                  "graph_emb": onnx.TensorProto.FLOAT, "scores": onnx.TensorProto.FLOAT}


def test_int8_graph_is_quantized_inside_its_loops(precision_engines):
    _, folders = precision_engines
    graph = onnx.load(str(folders["int8"] / "image_svfr.onnx")).graph
    ops = [n.op_type for n in _nodes(graph)]
    assert "DynamicQuantizeLinear" in ops or "DynamicQuantizeMatMul" in ops
    for body in scan_bodies(graph):  # the SDA/VFR loops are quantized too
        if any(n.op_type == "Tanh" for n in body.node):
            assert any(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in body.node)
    text = onnx.load(str(folders["int8"] / "text_gmc.onnx")).graph
    assert not any(n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for n in _nodes(text))


@pytest.mark.parametrize("precision, classes", [("fp16", [1, 12, 64]), ("int8", [1, 12, 64]),
                                                ("int8-qdq", [12, 64, 300]), ("fp8", [12, 64, 300])])
def test_onnxruntime_parity_at_the_engines_precision(precision_engines, precision, classes):
    """The Q/DQ graphs at C ≥ 12: eq. 13 normalises scores across the labels, which with one or two labels
    magnifies any error (at C = 1 only the signs of the similarities are left; see export/README.md)."""
    checkpoint, folders = precision_engines
    model = sigrl.load_checkpoint(checkpoint)
    candidate = OnnxRuntime(folders[precision], device="cpu")
    assert candidate.precision == precision
    vocabularies, images = parity_inputs(model.vocabulary, model.prompt_template, 64, classes, [1, 5])
    rows = compare_runtimes(TorchRuntime(model), candidate, vocabularies, images)
    assert all(r.passed for r in rows), format_rows(rows)
    assert max(r.max_abs for r in rows if r.stage == "image_svfr:scores") > TOLERANCES["fp32"].score_max_abs


def test_bf16_graphs_checked_by_the_onnx_reference_evaluator(precision_engines):
    checkpoint, folders = precision_engines
    model = sigrl.load_checkpoint(checkpoint)
    with pytest.raises(ValueError, match="cannot run the bf16 graphs"):
        OnnxRuntime(folders["bf16"], device="cpu")
    vocabularies, images = parity_inputs(model.vocabulary, model.prompt_template, 64, [12], [2])
    for precision in ("bf16", "int8-qdq", "fp8"):  # Q/DQ: a second, independent implementation of int8 and E4M3
        candidate = create_runtime("onnx-reference", engines=folders[precision])
        rows = compare_runtimes(TorchRuntime(model), candidate, vocabularies, images)
        assert all(r.passed for r in rows), format_rows(rows)


@pytest.mark.parametrize("precision, elem_type", [("int8-qdq", onnx.TensorProto.INT8),
                                                  ("fp8", onnx.TensorProto.FLOAT8E4M3FN)])
def test_qdq_graphs_follow_tensorrts_quantization_rules(precision_engines, precision, elem_type):
    """Explicit quantization as TensorRT takes it: every weight of a MatMul/Gemm/Conv (main graph and loop
    bodies) stored quantized behind a DequantizeLinear, its activation through a Q/DQ pair, zero points 0,
    positive fp16 scales, one scale per activation; int8 weights per output channel, fp8 weights per tensor."""
    _, folders = precision_engines
    model = onnx.load(str(folders[precision] / "image_svfr.onnx"))
    assert {o.domain: o.version for o in model.opset_import}[""] == 22
    graphs = [model.graph, *scan_bodies(model.graph)]
    for graph in graphs:
        inits = {t.name: t for t in graph.initializer}
        producers = {out: node for node in graph.node for out in node.output}
        weighted = [n for n in graph.node if n.op_type in ("MatMul", "Gemm", "Conv")
                    and n.input[1] in producers and producers[n.input[1]].op_type == "DequantizeLinear"]
        for node in weighted:
            weight_dq, activation_dq = producers[node.input[1]], producers[node.input[0]]
            assert activation_dq.op_type == "DequantizeLinear"
            assert producers[activation_dq.input[0]].op_type == "QuantizeLinear"
            quantized, scale, zero = (inits[name] for name in weight_dq.input)
            assert quantized.data_type == zero.data_type == elem_type and scale.data_type == onnx.TensorProto.FLOAT16
            assert (onnx.numpy_helper.to_array(scale) > 0).all()
            assert not onnx.numpy_helper.to_array(zero).astype(np.float32).any()
            axis = [a.i for a in weight_dq.attribute if a.name == "axis"]
            if precision == "int8-qdq":
                assert len(axis) == 1 and list(scale.dims) == [quantized.dims[axis[0]]]
            else:
                assert axis == [] and list(scale.dims) == []
            activation_scale = inits[activation_dq.input[1]]
            assert list(activation_scale.dims) == [] and activation_scale.data_type == onnx.TensorProto.FLOAT16
    bodies = graphs[1:]
    assert all(any(n.op_type == "QuantizeLinear" for n in body.node) for body in bodies)  # SDA and VFR too
    ops = [n.op_type for graph in graphs for n in graph.node]
    assert ops.count("QuantizeLinear") == 13 and not {"MatMulInteger", "DynamicQuantizeLinear"} & set(ops)
    text = onnx.load(str(folders[precision] / "text_gmc.onnx"))
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in text.graph.node)


def test_int8_scores_do_not_depend_on_batch_mates(precision_engines):
    checkpoint, folders = precision_engines
    model = sigrl.load_checkpoint(checkpoint)
    runtime = OnnxRuntime(folders["int8"], device="cpu")
    vocabularies, (images,) = parity_inputs(model.vocabulary, model.prompt_template, 64, [12], [6])
    label_emb, graph_emb = runtime.encode_labels(vocabularies[0])
    together = runtime.score_images(images, label_emb, graph_emb)
    alone = np.concatenate([runtime.score_images(images[i:i + 1], label_emb, graph_emb) for i in range(6)])
    reordered = runtime.score_images(images[::-1].copy(), label_emb, graph_emb)[::-1]
    np.testing.assert_array_equal(together, alone)
    np.testing.assert_array_equal(together, reordered)


def test_export_class_chunk_changes_the_loop_not_the_scores(tiny_engines, tmp_path):
    checkpoint, fp32 = tiny_engines
    out = tmp_path / "chunk7"
    assert main(["export", "--checkpoint", str(checkpoint), "--out", str(out), "--class-chunk", "7"]) == 0
    assert read_metadata(out / "image_svfr.onnx").config.class_chunk == 7
    model = sigrl.load_checkpoint(checkpoint)
    vocabularies, images = parity_inputs(model.vocabulary, model.prompt_template, 64, [12, 15], [2])
    rows = compare_runtimes(OnnxRuntime(fp32, device="cpu"), OnnxRuntime(out, device="cpu"), vocabularies, images)
    assert all(r.passed for r in rows), format_rows(rows)


def test_parity_command_reads_the_precision(precision_engines, capsys):
    checkpoint, folders = precision_engines
    code = main(["parity", "--checkpoint", str(checkpoint), "--engines", str(folders["int8"]),
                 "--classes", "12", "--batch", "2"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "onnxruntime int8" in out and "(text fp32, image int8)" in out
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[2:] if line.startswith(("text_", "image_"))}
    assert rows == {"text_gmc:label_emb": "fp32", "text_gmc:graph_emb": "fp32", "image_svfr:scores": "int8"}


def test_engines_without_precision_metadata_are_fp32(tiny_engines, tmp_path):
    _, fp32 = tiny_engines
    for name in ("text_gmc", "image_svfr"):
        model = onnx.load(str(fp32 / f"{name}.onnx"))
        kept = [p for p in model.metadata_props if p.key != "sigrl.precision"]
        del model.metadata_props[:]
        model.metadata_props.extend(kept)
        onnx.save(model, str(tmp_path / f"{name}.onnx"))
    assert ExportedEngines.read(tmp_path).precisions() == {"text_gmc": "fp32", "image_svfr": "fp32"}


def test_precision_mistakes_are_one_line(tiny_engines, precision_engines, capsys):
    checkpoint, fp32 = tiny_engines
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--checkpoint", str(checkpoint), "--out", "x", "--precision", "int4"])
    assert exit_info.value.code == 2
    assert "--precision" in capsys.readouterr().err
    assert main(["parity", "--checkpoint", str(checkpoint), "--engines", str(fp32), "--precision", "fp16"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "are fp32, not fp16" in err
    with pytest.raises(SystemExit) as exit_info:
        main(["export", "--checkpoint", str(checkpoint), "--out", "x", "--class-chunk", "0"])
    assert exit_info.value.code == 2
    assert "--class-chunk" in capsys.readouterr().err


def test_eval_through_engines_matches_the_checkpoint(precision_engines, tmp_path):
    """ΔmAP on the synthetic test set: fp32 engines within 0.05 of PyTorch, the others within their goals."""
    checkpoint, folders = precision_engines
    reports = {}
    engines = {p: ["--engines", str(folders[p])] for p in ("fp32", "fp16", "int8", "int8-qdq", "fp8")}
    for name, extra in {"torch": [], **engines}.items():
        path = tmp_path / f"{name}.json"
        assert main(["eval", "--checkpoint", str(checkpoint), "--json", str(path), *extra]) == 0
        reports[name] = json.loads(path.read_text())["results"]["synthetic test"]["mAP"]
    assert reports["torch"] > 55
    assert abs(reports["fp32"] - reports["torch"]) <= 0.05
    assert abs(reports["fp16"] - reports["torch"]) <= 0.3
    assert abs(reports["int8"] - reports["torch"]) <= 0.5
    assert abs(reports["int8-qdq"] - reports["torch"]) <= 0.5
    assert abs(reports["fp8"] - reports["torch"]) <= 1.0


@pytest.mark.parametrize("precision", ["fp16", "bf16", "int8-qdq", "fp8"])
def test_graphs_for_tensorrt_pass_the_readiness_check(precision_engines, precision):
    from sigrl.deploy.tensorrt_check import tensorrt_problems

    _, folders = precision_engines
    for name in ("text_gmc", "image_svfr"):
        assert tensorrt_problems(onnx.load(str(folders[precision] / f"{name}.onnx"))) == []


def test_build_engines_refuses_the_dynamic_int8_graph_with_the_reason(precision_engines, tmp_path, capsys):
    from sigrl.deploy.tensorrt_check import tensorrt_problems

    _, folders = precision_engines
    problems = tensorrt_problems(onnx.load(str(folders["int8"] / "image_svfr.onnx")))
    assert any("MatMulInteger" in p or "DynamicQuantize" in p for p in problems)  # why TensorRT cannot import it
    assert main(["build-engines", "--engines", str(folders["int8"]), "--out", str(tmp_path / "plans")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "TensorRT cannot import" in err and "--precision int8-qdq" in err
    assert not (tmp_path / "plans").exists()


def test_calibration_mistakes_are_one_line(tiny_engines, tmp_path, capsys):
    checkpoint, _ = tiny_engines
    (tmp_path / "empty").mkdir()
    write_synthetic_images(tmp_path / "images", 64, count=2)
    for args, message in [(["--precision", "int8-qdq"], "--precision int8-qdq needs --calibration-images DIR"),
                          (["--precision", "fp16", "--calibration-images", str(tmp_path / "images")],
                           "--calibration-images is for --precision int8-qdq or fp8, not fp16"),
                          (["--precision", "fp8", "--calibration-images", str(tmp_path / "empty")],
                           "holds no image files"),
                          (["--precision", "fp8", "--calibration-images", str(tmp_path / "missing")],
                           "no such folder")]:
        assert main(["export", "--checkpoint", str(checkpoint), "--out", str(tmp_path / "out"), *args]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and message in err, err
    assert not (tmp_path / "out").exists()
