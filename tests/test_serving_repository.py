"""The Triton model repository builder and the serving logic that runs without Triton (CPU, seconds).

The engines here are trivial ONNX graphs carrying the real ``sigrl`` metadata of an untrained tiny
model: ``build_repository`` reads only the metadata and copies the files, so no training is needed.
The real server is exercised in ``test_serving_triton.py``.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from google.protobuf import text_format
from PIL import Image

import sigrl
from sigrl.data.transforms import build_transform
from sigrl.deploy.engines import engine_specs
from sigrl.deploy.onnx_export import engine_metadata
from sigrl.deploy.tensorrt import BUILD_RECORD, TENSORRT_10, BuildOptions, describe_build

pytest.importorskip("tritonclient.grpc", reason='needs tritonclient (pip install -c constraints.txt -e ".[serve]")')

from tritonclient.grpc import model_config_pb2  # noqa: E402

from sigrl.serving import repository as repository_module  # noqa: E402
from sigrl.serving.backend import (  # noqa: E402
    EntryLimits,
    PreprocessModel,
    RequestError,
    VocabularyCache,
    group_by_vocabulary,
    parse_request,
    top_k,
    validate_images,
    validate_labels,
    validate_top_k,
)
from sigrl.serving.repository import build_repository  # noqa: E402

VOCABULARY = ["red circle", "blue square", "green triangle", "café"]
MODELS = ["image_svfr", "preprocess", "sigrl", "text_gmc"]
ModelConfig = model_config_pb2.ModelConfig
DataType = model_config_pb2.DataType
Kind = model_config_pb2.ModelInstanceGroup.Kind


@pytest.fixture(scope="module")
def tiny_model() -> sigrl.SigRL:
    model = sigrl.create_model("tiny")
    model.vocabulary = list(VOCABULARY)
    return model


@pytest.fixture(scope="module")
def fake_engines(tiny_model, tmp_path_factory) -> Path:
    """``text_gmc.onnx`` / ``image_svfr.onnx`` as Identity graphs with the metadata ``sigrl export`` writes."""
    out = tmp_path_factory.mktemp("fake-engines")
    for spec in engine_specs(tiny_model.config):
        x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
        y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
        graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], spec.name, [x], [y])
        model = onnx.helper.make_model(graph)
        onnx.helper.set_model_props(model, engine_metadata(tiny_model, spec, None))
        onnx.save(model, out / spec.file_name)
    return out


@pytest.fixture
def plan_engines(fake_engines, tmp_path) -> Path:
    """The fake engines plus dummy TensorRT plans and their build record (nothing serves them here)."""
    engines = Path(shutil.copytree(fake_engines, tmp_path / "engines"))
    for name in ("text_gmc", "image_svfr"):
        (engines / f"{name}.plan").write_bytes(b"dummy plan " + name.encode())
    record = describe_build(engines, engines, TENSORRT_10, BuildOptions(), ("test GPU", "8.6", None))
    (engines / BUILD_RECORD).write_text(record.to_json())
    return engines


def read_config(repo: Path, name: str) -> ModelConfig:
    return text_format.Parse((repo / name / "config.pbtxt").read_text(), ModelConfig())


def inputs_of(config: ModelConfig) -> dict[str, tuple[int, list[int], bool, bool]]:
    return {t.name: (t.data_type, list(t.dims), t.optional, t.allow_ragged_batch) for t in config.input}


def outputs_of(config: ModelConfig) -> dict[str, tuple[int, list[int]]]:
    return {t.name: (t.data_type, list(t.dims)) for t in config.output}


def params_of(config: ModelConfig) -> dict[str, str]:
    return {key: value.string_value for key, value in config.parameters.items()}


def png_bytes(size: tuple[int, int] = (80, 60), seed: int = 0) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


# ------------------------------------------------------------------------------ repository layout


@pytest.mark.parametrize("runtime", ["python", "onnxruntime", "tensorrt"])
def test_every_runtime_writes_parseable_configs(runtime, plan_engines, tmp_path):
    repo = build_repository(plan_engines, runtime, tmp_path / "repo", max_batch=16, max_image_bytes=1000,
                            max_labels=100, cache_size=7)
    assert sorted(p.name for p in repo.iterdir()) == MODELS
    configs = {name: read_config(repo, name) for name in MODELS}
    assert all(configs[name].name == name for name in MODELS)
    text, image = configs["text_gmc"], configs["image_svfr"]
    fp32, int32, string = DataType.TYPE_FP32, DataType.TYPE_INT32, DataType.TYPE_STRING

    # the engines: unbatched, the spec's interface, warmed up, on CPU only for the python runtime
    assert text.max_batch_size == 0 and image.max_batch_size == 0
    assert inputs_of(text) == {"token_ids": (int32, [-1, -1], False, False)}
    assert outputs_of(text) == {"label_emb": (fp32, [-1, 64]),
                                  "graph_emb": (fp32, [-1, 64])}
    assert inputs_of(image) == {"images": (fp32, [-1, 3, 64, 64], False, False),
                                  "label_emb": (fp32, [-1, 64], False, False),
                                  "graph_emb": (fp32, [-1, 64], False, False)}
    assert outputs_of(image) == {"scores": (fp32, [-1, -1])}
    kind = Kind.KIND_CPU if runtime == "python" else Kind.KIND_GPU
    for config in (text, image):
        assert [(g.kind, g.count) for g in config.instance_group] == [(kind, 1)]
        assert len(config.model_warmup) == 1 and config.model_warmup[0].batch_size == 1
    warm_text = text.model_warmup[0].inputs["token_ids"]
    assert (warm_text.data_type, list(warm_text.dims), warm_text.zero_data) == (int32, [1, 2], True)
    warm_images = image.model_warmup[0].inputs["images"]
    assert (list(warm_images.dims), warm_images.random_data) == ([1, 3, 64, 64], True)
    assert sorted(image.model_warmup[0].inputs) == ["graph_emb", "images", "label_emb"]

    backend = {"python": ("python", ""), "onnxruntime": ("", "onnxruntime_onnx"), "tensorrt": ("", "tensorrt_plan")}
    files = {"python": ["model.py", "{name}.onnx"], "onnxruntime": ["model.onnx"], "tensorrt": ["model.plan"]}
    for name in ("text_gmc", "image_svfr"):
        assert (configs[name].backend, configs[name].platform) == backend[runtime]
        expected = sorted(f.format(name=name) for f in files[runtime])
        assert sorted(p.name for p in (repo / name / "1").iterdir()) == expected
    if runtime == "tensorrt":
        assert (repo / "text_gmc" / "1" / "model.plan").read_bytes() == b"dummy plan text_gmc"
    else:
        source = "text_gmc.onnx" if runtime == "python" else "model.onnx"
        assert (repo / "text_gmc" / "1" / source).read_bytes() == (plan_engines / "text_gmc.onnx").read_bytes()

    # preprocess: batched bytes → pixels, with the engines' preprocessing parameters
    pre = configs["preprocess"]
    assert (pre.backend, pre.max_batch_size, pre.HasField("dynamic_batching")) == ("python", 16, True)
    assert inputs_of(pre) == {"image": (string, [1], False, False)}
    assert outputs_of(pre) == {"pixels": (fp32, [3, 64, 64])}
    preprocess = json.loads(params_of(pre)["preprocess"])
    assert preprocess["image_size"] == 64 and preprocess["mean"] == [0.485, 0.456, 0.406]

    # the entry model: batched, ragged optional labels, caps in its parameters
    entry = configs["sigrl"]
    assert (entry.backend, entry.max_batch_size) == ("python", 16)
    assert entry.dynamic_batching.max_queue_delay_microseconds == 2000
    assert inputs_of(entry) == {"image": (string, [1], False, False), "labels": (string, [-1], True, True),
                                  "top_k": (int32, [1], True, False)}
    assert outputs_of(entry) == {"scores": (fp32, [-1]), "top_labels": (string, [-1]),
                                   "top_scores": (fp32, [-1])}
    assert [(g.kind, g.count) for g in entry.instance_group] == [(Kind.KIND_CPU, 1)]
    assert params_of(entry) == {"max_image_bytes": "1000", "max_labels": "100", "cache_size": "7",
                                "default_top_k": "5", "default_vocabulary": json.dumps(VOCABULARY, ensure_ascii=False)}
    settings = json.loads((repo / "sigrl" / "1" / "sigrl.json").read_text(encoding="utf-8"))
    assert settings == {"vocabulary": VOCABULARY, "prompt_template": sigrl.DEFAULT_TEMPLATE}
    for name in ("preprocess", "sigrl"):
        assert sorted(p.name for p in (repo / name / "1").iterdir()) == sorted(
            ["model.py"] + (["sigrl.json"] if name == "sigrl" else []))


def test_model_py_shims_import_the_package_classes(fake_engines, tmp_path):
    repo = build_repository(fake_engines, "python", tmp_path / "repo")
    classes = {"text_gmc": "TextGMCModel", "image_svfr": "ImageSVFRModel", "preprocess": "PreprocessModel",
               "sigrl": "SigRLModel"}
    for name, cls in classes.items():
        shim = (repo / name / "1" / "model.py").read_text()
        assert len(shim.splitlines()) == 2
        namespace: dict = {}
        exec(compile(shim, "model.py", "exec"), namespace)
        assert namespace["TritonPythonModel"].__name__ == cls


def test_default_max_labels_is_the_engines_class_range(fake_engines, tmp_path):
    repo = build_repository(fake_engines, "python", tmp_path / "repo")
    assert params_of(read_config(repo, "sigrl"))["max_labels"] == "1024"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"runtime": "tvm"}, r"runtime must be one of"),
        ({"max_batch": 0}, r"max_batch must be in \[1, 32\], got 0"),
        ({"max_batch": 33}, r"max_batch must be in \[1, 32\], got 33"),
        ({"max_labels": 1025}, r"max_labels must be in \[1, 1024\]"),
        ({"max_image_bytes": 0}, r"max_image_bytes must be >= 1"),
        ({"cache_size": -1}, r"cache_size must be >= 0"),
        ({"default_top_k": 0}, r"default_top_k must be >= 1"),
    ],
)
def test_invalid_settings_are_refused_before_writing(fake_engines, tmp_path, kwargs, message):
    runtime = kwargs.pop("runtime", "python")
    with pytest.raises(ValueError, match=message):
        build_repository(fake_engines, runtime, tmp_path / "repo", **kwargs)
    assert list(tmp_path.iterdir()) == []


def test_missing_engines_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="lacks text_gmc.onnx, image_svfr.onnx"):
        build_repository(tmp_path, "python", tmp_path / "repo")


def test_missing_tensorrt_plans_name_the_files_and_the_trtexec_commands(fake_engines, tmp_path):
    with pytest.raises(FileNotFoundError) as raised:
        build_repository(fake_engines, "tensorrt", tmp_path / "repo")
    message = str(raised.value)
    assert str(fake_engines / "text_gmc.plan") in message and str(fake_engines / "image_svfr.plan") in message
    assert (f"trtexec --onnx={fake_engines / 'text_gmc.onnx'} --saveEngine={fake_engines / 'text_gmc.plan'} "
            "--minShapes=token_ids:1x2 --optShapes=token_ids:81x16 --maxShapes=token_ids:1024x77") in message
    assert ("--minShapes=images:1x3x64x64,label_emb:1x64,graph_emb:1x64 "
            "--optShapes=images:8x3x64x64,label_emb:81x64,graph_emb:81x64 "
            "--maxShapes=images:32x3x64x64,label_emb:1024x64,graph_emb:1024x64") in message
    assert not (tmp_path / "repo").exists()


def test_existing_repository_is_kept_unless_overwrite(fake_engines, tmp_path):
    out = tmp_path / "repo"
    build_repository(fake_engines, "python", out, max_batch=8)
    with pytest.raises(FileExistsError, match="not empty: pass overwrite=True"):
        build_repository(fake_engines, "python", out, max_batch=4)
    assert read_config(out, "sigrl").max_batch_size == 8
    build_repository(fake_engines, "python", out, max_batch=4, overwrite=True)
    assert read_config(out, "sigrl").max_batch_size == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]  # no staging or old folder left


def test_empty_existing_folder_is_filled(fake_engines, tmp_path):
    (tmp_path / "repo").mkdir()
    build_repository(fake_engines, "python", tmp_path / "repo")
    assert sorted(p.name for p in (tmp_path / "repo").iterdir()) == MODELS


def test_failed_build_leaves_the_old_repository_and_no_staging(fake_engines, tmp_path, monkeypatch):
    out = tmp_path / "repo"
    build_repository(fake_engines, "python", out, max_batch=8)

    def broken(text):
        raise text_format.ParseError("broken on purpose")

    monkeypatch.setattr(repository_module, "parse_model_config", broken)
    with pytest.raises(text_format.ParseError, match="broken on purpose"):
        build_repository(fake_engines, "python", out, max_batch=4, overwrite=True)
    assert read_config(out, "sigrl").max_batch_size == 8
    assert sorted(p.name for p in tmp_path.iterdir()) == ["repo"]


def test_preprocessing_other_than_the_evaluation_transform_is_refused(fake_engines, tmp_path):
    engines = Path(shutil.copytree(fake_engines, tmp_path / "engines"))
    model = onnx.load(engines / "text_gmc.onnx")
    for prop in model.metadata_props:
        if prop.key == "sigrl.preprocess":
            prop.value = json.dumps({**json.loads(prop.value), "interpolation": "bilinear"})
    onnx.save(model, engines / "text_gmc.onnx")
    with pytest.raises(ValueError, match="'interpolation': 'bilinear'"):
        build_repository(engines, "python", tmp_path / "repo")


def test_strings_are_escaped_in_configs():
    """Parameter values are protobuf string literals: quotes, backslashes and non-ASCII survive."""
    config = repository_module.preprocess_model_config(64, {"note": 'a "quoted" \\ café\nline'}, 4)
    parsed = text_format.Parse(config, ModelConfig())
    assert json.loads(params_of(parsed)["preprocess"]) == {"note": 'a "quoted" \\ café\nline'}


# ------------------------------------------------------------------------------ request validation


def labels(*names: bytes | str, images: int = 1) -> np.ndarray:
    row = [n.encode() if isinstance(n, str) else n for n in names]
    array = np.empty((images, len(row)), dtype=object)
    for i in range(images):
        array[i, :] = row
    return array


def test_labels_are_decoded_stripped_and_kept_in_order():
    assert validate_labels(labels("dog", " cat ", "café", images=3), 10) == ("dog", "cat", "café")


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (np.empty((1, 0), dtype=object), "the label list is empty"),
        (labels("a", "b", "c", "d", "e"), "5 labels, more than the 4 this server accepts"),
        (labels("a", "b", "c", b"\xff\xfe"), "label 3 is not valid UTF-8"),
        (labels("a", "  "), "label 1 is blank"),
        (labels("a", ""), "label 1 is blank"),
        (labels("cat", "a", "b", " cat"), "duplicate label 'cat' at positions 0 and 3"),
        (labels("a", images=1).reshape(-1), r"labels must have shape \[images, labels\], got \[1\]"),
    ],
)
def test_bad_labels_are_named(rows, message):
    with pytest.raises(RequestError, match=message):
        validate_labels(rows, 4)


def test_rows_of_one_request_must_be_the_same_list():
    rows = labels("a", "b", images=3)
    rows[2, 1] = b"c"
    with pytest.raises(RequestError, match="the labels of image 2 differ from those of image 0"):
        validate_labels(rows, 10)


def test_images_must_be_present_and_within_the_size_cap():
    column = np.array([[b"abc"], [b"de"]], dtype=object)
    assert validate_images(column, 3) == [b"abc", b"de"]
    with pytest.raises(RequestError, match="image 0 is 3 bytes, over the limit of 2 bytes"):
        validate_images(column, 2)
    with pytest.raises(RequestError, match="image 1 is empty"):
        validate_images(np.array([[b"abc"], [b""]], dtype=object), 10)


def test_top_k_defaults_and_must_be_positive_and_shared():
    assert validate_top_k(None, 5) == 5
    assert validate_top_k(np.array([[3], [3]], dtype=np.int32), 5) == 3
    with pytest.raises(RequestError, match="top_k must be at least 1, got 0"):
        validate_top_k(np.array([[0]], dtype=np.int32), 5)
    with pytest.raises(RequestError, match=r"top_k must be the same for all images of a request, got \[1, 2\]"):
        validate_top_k(np.array([[1], [2]], dtype=np.int32), 5)


def test_parse_request_falls_back_to_the_default_vocabulary():
    limits = EntryLimits(max_image_bytes=100, max_labels=10, default_top_k=2)
    image = np.array([[b"img"]], dtype=object)
    entry = parse_request(image, None, None, limits, ("x", "y"))
    assert (entry.images, entry.labels, entry.top_k) == ([b"img"], ("x", "y"), 2)
    assert parse_request(image, labels("q"), np.array([[4]], dtype=np.int32), limits, ()).labels == ("q",)
    with pytest.raises(RequestError, match="no labels given and this repository has no default vocabulary"):
        parse_request(image, None, None, limits, ())


# ------------------------------------------------------------------------------ cache, grouping, top-k


def embeddings(value: float) -> tuple[np.ndarray, np.ndarray]:
    return np.full((1, 2), value, np.float32), np.full((1, 2), -value, np.float32)


def test_cache_is_lru_on_the_ordered_label_tuple():
    cache = VocabularyCache(2)
    cache.put(("a", "b"), embeddings(1))
    assert cache.get(("b", "a")) is None  # GMC: another order is another vocabulary
    cache.put(("b", "a"), embeddings(2))
    assert cache.get(("a", "b"))[0][0, 0] == 1  # now the most recent
    cache.put(("c",), embeddings(3))  # evicts ("b", "a"), the least recently used
    assert ("b", "a") not in cache and ("a", "b") in cache and ("c",) in cache and len(cache) == 2
    assert (cache.hits, cache.misses) == (1, 1)


def test_cache_of_size_zero_keeps_nothing():
    cache = VocabularyCache(0)
    cache.put(("a",), embeddings(1))
    assert len(cache) == 0 and cache.get(("a",)) is None
    with pytest.raises(ValueError, match="capacity must be >= 0"):
        VocabularyCache(-1)


def test_requests_are_grouped_by_ordered_vocabulary_in_request_order():
    groups = group_by_vocabulary({0: ("a", "b"), 2: ("b", "a"), 3: ("a", "b"), 5: ("c",), 6: ("b", "a")})
    assert groups == {("a", "b"): [0, 3], ("b", "a"): [2, 6], ("c",): [5]}
    assert list(groups) == [("a", "b"), ("b", "a"), ("c",)]


def test_top_k_is_best_first_stable_and_clipped():
    scores = np.array([[0.1, 0.9, 0.5, 0.9], [0.4, 0.3, 0.2, 0.1]], dtype=np.float32)
    names, values = top_k(scores, ("a", "b", "c", "d"), 3)
    assert names.tolist() == [[b"b", b"d", b"c"], [b"a", b"b", b"c"]]
    np.testing.assert_array_equal(values, np.array([[0.9, 0.9, 0.5], [0.4, 0.3, 0.2]], dtype=np.float32))
    assert values.dtype == np.float32
    names, values = top_k(scores, ("a", "b", "c", "d"), 10)
    assert names.shape == values.shape == (2, 4)


# ------------------------------------------------------------------------------ preprocessing


@pytest.fixture(scope="module")
def preprocess_model(fake_engines, tmp_path_factory) -> PreprocessModel:
    """The ``preprocess`` model initialised from a built repository's config, outside Triton."""
    repo = build_repository(fake_engines, "python", tmp_path_factory.mktemp("pre") / "repo")
    config = read_config(repo, "preprocess")
    model_config = json.dumps({"parameters": {k: {"string_value": v} for k, v in params_of(config).items()}})
    model = PreprocessModel()
    model.initialize({"model_config": model_config, "model_repository": str(repo / "preprocess"),
                      "model_version": "1"})
    return model


def test_preprocess_is_exactly_the_evaluation_transform(preprocess_model):
    images = [png_bytes((80, 60), 0), png_bytes((50, 90), 1)]
    transform = build_transform(64, False, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    expected = np.stack([transform(Image.open(io.BytesIO(b)).convert("RGB")).numpy() for b in images])
    pixels = preprocess_model.pixels(images)
    assert pixels.shape == (2, 3, 64, 64) and pixels.dtype == np.float32
    np.testing.assert_array_equal(pixels, expected)


def test_preprocess_converts_grey_and_rgba_to_rgb(preprocess_model):
    buffer = io.BytesIO()
    Image.new("LA", (70, 70), (128, 200)).save(buffer, format="PNG")
    assert preprocess_model.pixels([buffer.getvalue()]).shape == (1, 3, 64, 64)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"definitely not an image", "image 1 is not in an image format this server reads"),
        (png_bytes()[:200], "image 1 cannot be decoded"),  # a truncated PNG
    ],
)
def test_preprocess_names_the_image_it_cannot_decode(preprocess_model, data, message):
    with pytest.raises(RequestError, match=message):
        preprocess_model.pixels([png_bytes(), data])
