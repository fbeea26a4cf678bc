"""ONNX export of both engines: the public contract, metadata, parity with PyTorch, TensorRT-readiness, errors."""

import json

import numpy as np
import onnx
import pytest
import torch

import sigrl
from sigrl.checkpoint import model_payload, read_checkpoint, save_atomic
from sigrl.data import build_dataset
from sigrl.deploy import onnx_export
from sigrl.deploy.engines import ImageSVFREngine, TextGMCEngine, engine_specs
from sigrl.deploy.metadata import file_sha256, read_metadata
from sigrl.deploy.onnx_export import export_checkpoint
from sigrl.deploy.parity import TOLERANCES, compare_runtimes, format_rows, parity_inputs
from sigrl.deploy.runtimes import OnnxRuntime, TorchRuntime
from sigrl.deploy.tensorrt_check import tensorrt_problems
from sigrl.metrics import mean_average_precision

FLOAT, INT32 = onnx.TensorProto.FLOAT, onnx.TensorProto.INT32


def _io(values):
    """{name: (elem_type, [dim_value or dim_param])} of graph inputs or outputs."""
    return {v.name: (v.type.tensor_type.elem_type, [d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim])
            for v in values}


def test_export_writes_the_public_contract(tiny_engines):
    _, engines = tiny_engines
    assert sorted(p.name for p in engines.iterdir()) == ["image_svfr.onnx", "text_gmc.onnx"]  # single files
    text = onnx.load(engines / "text_gmc.onnx")
    image = onnx.load(engines / "image_svfr.onnx")
    for model in (text, image):
        onnx.checker.check_model(model, full_check=True)
        assert {o.domain: o.version for o in model.opset_import}[""] == 18
    assert _io(text.graph.input) == {"token_ids": (INT32, ["C", "L"])}
    assert _io(text.graph.output) == {"label_emb": (FLOAT, ["C", 64]), "graph_emb": (FLOAT, ["C", 64])}
    assert _io(image.graph.input) == {"images": (FLOAT, ["B", 3, 64, 64]), "label_emb": (FLOAT, ["C", 64]),
                                      "graph_emb": (FLOAT, ["C", 64])}
    assert _io(image.graph.output) == {"scores": (FLOAT, ["B", "C"])}
    # the memory-bounded design: SDA and VFR are loops over class chunks, GMC over node chunks
    assert [n.op_type for n in image.graph.node].count("Scan") == 2
    assert [n.op_type for n in text.graph.node].count("Scan") == 2


def test_metadata_records_config_preprocessing_and_checkpoint(tiny_engines):
    checkpoint, engines = tiny_engines
    stored = read_checkpoint(checkpoint)
    for spec in engine_specs(sigrl.get_model_config("tiny")):
        # the file format itself (what any ONNX tool shows), then the reader that parses it
        meta = {p.key.removeprefix("sigrl."): p.value for p in onnx.load(str(engines / spec.file_name)).metadata_props}
        assert read_metadata(engines / spec.file_name).props() == {f"sigrl.{k}": v for k, v in meta.items()}
        assert meta["engine"] == spec.name
        assert meta["config_name"] == "tiny"
        assert json.loads(meta["config"]) == stored["model_config"]
        assert meta["checkpoint_sha256"] == file_sha256(checkpoint)
        assert meta["opset"] == "18"
        assert meta["prompt_template"] == sigrl.DEFAULT_TEMPLATE
        assert json.loads(meta["vocabulary"]) == stored["vocabulary"]
        preprocess = json.loads(meta["preprocess"])
        assert preprocess["image_size"] == 64 and preprocess["mean"] == [0.485, 0.456, 0.406]


@pytest.fixture(scope="module")
def runtimes(tiny_engines):
    checkpoint, engines = tiny_engines
    return TorchRuntime(sigrl.load_checkpoint(checkpoint)), OnnxRuntime(engines, device="cpu")


def test_onnxruntime_matches_pytorch_within_fp32_tolerance(runtimes):
    torch_rt, ort_rt = runtimes
    # C = 1, the trained vocabulary, an exact multiple of the class chunk (32) and of the GMC node chunk
    # (64), and a large vocabulary; several batch sizes
    vocabularies, images = parity_inputs(torch_rt.model.vocabulary, torch_rt.model.prompt_template, 64,
                                         [1, 12, 64, 300], [1, 2, 5])
    rows = compare_runtimes(torch_rt, ort_rt, vocabularies, images, precision="fp32")
    assert len(rows) == 4 * (2 + 3 * 2)
    assert all(r.passed for r in rows), format_rows(rows)
    worst_score = max(r.max_abs for r in rows if r.stage.endswith("scores"))
    assert worst_score <= TOLERANCES["fp32"].score_max_abs


def test_parity_check_catches_a_ranking_error(runtimes):
    """The comparison must fail when the candidate ranks differently, not only when numbers drift."""
    torch_rt, _ = runtimes

    class Swapped(TorchRuntime):
        def _score_images(self, images, label_emb, graph_emb):
            return super()._score_images(images, label_emb, graph_emb)[:, ::-1].copy()

    vocabularies, images = parity_inputs(torch_rt.model.vocabulary, torch_rt.model.prompt_template, 64, [12], [4])
    rows = compare_runtimes(torch_rt, Swapped(torch_rt.model), vocabularies, images)
    assert [r.passed for r in rows if r.stage.endswith("scores")] == [False, False]
    assert all(r.top1 < 1 for r in rows if r.stage.endswith("scores"))


def test_exported_engines_rank_the_synthetic_test_set_like_the_trained_model(runtimes):
    """A trained checkpoint, so that the parity above compares meaningful rankings (chance mAP ≈ 0.35)."""
    _, ort_rt = runtimes
    test = build_dataset("synthetic", "test", image_size=64, num_images=32)
    images = torch.stack([test[i]["image"] for i in range(len(test))]).numpy()
    scores = ort_rt.predict(images, sigrl.tokenize(test.vocabulary))
    _, map_ort = mean_average_precision(scores, test.labels)
    assert map_ort > 0.55


def test_exported_graphs_pass_the_tensorrt_readiness_check(tiny_engines):
    _, engines = tiny_engines
    for name in ("text_gmc.onnx", "image_svfr.onnx"):
        assert tensorrt_problems(onnx.load(engines / name)) == [], name


def test_engine_specs_reject_bad_inputs_by_name():
    text, image = engine_specs(sigrl.get_model_config("tiny"))
    good = {"images": np.zeros((2, 3, 64, 64), np.float32), "label_emb": np.zeros((5, 64), np.float32),
            "graph_emb": np.zeros((5, 64), np.float32)}
    assert image.check_inputs(good) == {"B": 2, "C": 5}
    with pytest.raises(ValueError, match="'images' must be float32, got float64"):
        image.check_inputs({**good, "images": good["images"].astype(np.float64)})
    with pytest.raises(ValueError, match="'images' must have shape"):
        image.check_inputs({**good, "images": np.zeros((2, 3, 32, 32), np.float32)})
    with pytest.raises(ValueError, match="axis C of 'graph_emb' is 4, but 5 elsewhere"):
        image.check_inputs({**good, "graph_emb": np.zeros((4, 64), np.float32)})
    with pytest.raises(ValueError, match="missing \\['graph_emb'\\]"):
        image.check_inputs({k: v for k, v in good.items() if k != "graph_emb"})
    with pytest.raises(ValueError, match="outside the engine's range \\[2, 77\\]"):
        text.check_inputs({"token_ids": np.zeros((3, 78), np.int32)})
    with pytest.raises(ValueError, match="'token_ids' must be int32, got int64"):
        text.check_inputs({"token_ids": np.zeros((3, 10), np.int64)})


def test_engine_profiles_follow_the_axis_ranges():
    text, image = TextGMCEngine(sigrl.get_model_config("tiny")), ImageSVFREngine(sigrl.get_model_config("tiny"))
    assert text.profile()["token_ids"] == ((1, 2), (81, 16), (1024, 77))
    assert image.profile()["images"] == ((1, 3, 64, 64), (8, 3, 64, 64), (32, 3, 64, 64))
    assert image.profile()["label_emb"] == ((1, 64), (81, 64), (1024, 64))


def test_onnxruntime_reports_the_provider_in_use(tiny_engines):
    import onnxruntime as ort

    _, engines = tiny_engines
    assert OnnxRuntime(engines, device="cpu").provider == "CPUExecutionProvider"
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        with pytest.raises(RuntimeError, match="onnxruntime-gpu"):
            OnnxRuntime(engines, device="cuda")
        assert OnnxRuntime(engines, device="auto").provider == "CPUExecutionProvider"


# ------------------------------------------------------------------------------------------- errors
def _tiny_checkpoint(path, **payload_changes):
    model = sigrl.create_model("tiny")
    save_atomic({**model_payload(model, ["a", "b"]), **payload_changes}, path)
    return path


def _assert_nothing_written(out):
    assert not out.exists() or list(out.iterdir()) == []


def test_export_rejects_an_unknown_config_name(tmp_path):
    checkpoint = _tiny_checkpoint(tmp_path / "ckpt.pt", model_name="vit-h14-imaginary")
    with pytest.raises(ValueError, match="unknown model config 'vit-h14-imaginary'"):
        export_checkpoint(checkpoint, tmp_path / "out")
    _assert_nothing_written(tmp_path / "out")


def test_export_rejects_weights_of_another_config(tmp_path):
    tiny = sigrl.get_model_config("tiny").to_dict()
    checkpoint = _tiny_checkpoint(tmp_path / "ckpt.pt", model_config={**tiny, "embed_dim": 32})
    with pytest.raises(ValueError, match="does not fit its config 'tiny'"):
        export_checkpoint(checkpoint, tmp_path / "out")
    with pytest.raises(ValueError, match="holds config 'tiny', not 'vit-b16'"):
        export_checkpoint(_tiny_checkpoint(tmp_path / "ok.pt"), tmp_path / "out", expect_config="vit-b16")
    _assert_nothing_written(tmp_path / "out")


def test_export_rejects_a_corrupt_checkpoint(tmp_path):
    checkpoint = tmp_path / "ckpt.pt"
    checkpoint.write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        export_checkpoint(checkpoint, tmp_path / "out")
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        export_checkpoint(tmp_path / "missing.pt", tmp_path / "out")
    _assert_nothing_written(tmp_path / "out")


def test_a_failed_export_leaves_the_previous_engines_untouched(tiny_engines, tmp_path, monkeypatch):
    checkpoint, engines = tiny_engines
    out = tmp_path / "engines"
    out.mkdir()
    for name in ("text_gmc.onnx", "image_svfr.onnx"):
        (out / name).write_bytes((engines / name).read_bytes())
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real_export = onnx_export.export_engine

    def fail_on_image(module, spec, *args):
        if spec.name == "image_svfr":
            raise RuntimeError("simulated exporter crash")
        return real_export(module, spec, *args)

    monkeypatch.setattr(onnx_export, "export_engine", fail_on_image)
    with pytest.raises(RuntimeError, match="simulated exporter crash"):
        export_checkpoint(checkpoint, out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # no staging folder, no new text engine


def test_runtime_needs_exported_engines(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"lacks text_gmc\.onnx, image_svfr\.onnx"):
        OnnxRuntime(tmp_path)


def test_parity_command_reports_and_passes(tiny_engines, capsys, tmp_path):
    from sigrl.cli import main

    checkpoint, engines = tiny_engines
    code = main(["parity", "--checkpoint", str(checkpoint), "--engines", str(engines), "--classes", "1", "12",
                 "--batch", "1", "3", "--json", str(tmp_path / "parity.json")])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "CPUExecutionProvider" in out and "12/12 comparisons within tolerance" in out
    assert len(json.loads((tmp_path / "parity.json").read_text())) == 12


def test_export_command_names_the_problem_without_a_traceback(tmp_path, capsys):
    from sigrl.cli import main

    assert main(["export", "--checkpoint", str(tmp_path / "missing.pt"), "--out", str(tmp_path / "out")]) == 2
    assert "sigrl export: error: checkpoint not found" in capsys.readouterr().err
