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
from stand_in_engines import write_engines

import sigrl
from sigrl.data.transforms import build_transform
from sigrl.deploy.metadata import ExportedEngines
from sigrl.deploy.runtimes import prepare_token_ids
from sigrl.deploy.tensorrt import BUILD_RECORD, TENSORRT_10, BuildOptions, describe_build

pytest.importorskip("tritonclient.grpc", reason='needs tritonclient (pip install -c constraints.txt -e ".[serve]")')

from tritonclient.grpc import model_config_pb2

from sigrl.bpe import ClipBPE
from sigrl.serving import repository as repository_module
from sigrl.serving.entry import (
    check_embeddings,
    group_by_vocabulary,
    parse_request,
    top_k,
    unscorable_images,
    validate_images,
    validate_top_k,
)
from sigrl.serving.images import ImagePreprocessor
from sigrl.serving.protocol import EntryLimits, LabelError, RequestError
from sigrl.serving.repository import Instances, build_repository
from sigrl.serving.vocabulary import (
    PromptTokenizer,
    VocabularyCache,
    check_token_ids,
    validate_labels,
)

VOCABULARY = ["red circle", "blue square", "green triangle", "café"]
MODELS = ["image_svfr", "sigrl", "text_gmc"]
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
    """Stand-ins for ``text_gmc.onnx`` / ``image_svfr.onnx`` with the metadata ``sigrl export`` writes."""
    return write_engines(tiny_model, tmp_path_factory.mktemp("fake-engines"))


@pytest.fixture
def plan_engines(fake_engines, tmp_path) -> Path:
    """The fake engines plus dummy TensorRT plans and their build record (nothing serves them here)."""
    engines = Path(shutil.copytree(fake_engines, tmp_path / "engines"))
    for name in ("text_gmc", "image_svfr"):
        (engines / f"{name}.plan").write_bytes(b"dummy plan " + name.encode())
    record = describe_build(ExportedEngines.read(engines), engines, TENSORRT_10, BuildOptions(),
                            ("test GPU", "8.6", None))
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
        assert [(g.kind, g.count, list(g.gpus)) for g in config.instance_group] == [(kind, 1, [])]
    if runtime == "python":  # the engine models warm themselves up (an error answer to Triton's warm-up crashes it)
        assert not text.model_warmup and not image.model_warmup and not (repo / "text_gmc" / "warmup").exists()
    else:
        assert all(len(c.model_warmup) == 1 and c.model_warmup[0].batch_size == 1 for c in (text, image))
        warm_text = text.model_warmup[0].inputs["token_ids"]  # an empty prompt: start and end token
        assert (warm_text.data_type, list(warm_text.dims), warm_text.input_data_file) == (int32, [1, 2], "token_ids")
        warm_file = (repo / "text_gmc" / "warmup" / "token_ids").read_bytes()
        assert np.frombuffer(warm_file, "<i4").tolist() == [49406, 49407]
        warm_images = image.model_warmup[0].inputs["images"]  # zeros: Triton's random data can be NaN
        assert (list(warm_images.dims), warm_images.zero_data) == ([1, 3, 64, 64], True)
        assert sorted(image.model_warmup[0].inputs) == ["graph_emb", "images", "label_emb"]

    backend = {"python": ("python", ""), "onnxruntime": ("", "onnxruntime_onnx"), "tensorrt": ("", "tensorrt_plan")}
    files = {"python": ["model.py", "sigrl.json", "{name}.onnx"], "onnxruntime": ["model.onnx"],
             "tensorrt": ["model.plan"]}
    for name in ("text_gmc", "image_svfr"):
        assert (configs[name].backend, configs[name].platform) == backend[runtime]
        expected = sorted(f.format(name=name) for f in files[runtime])
        assert sorted(p.name for p in (repo / name / "1").iterdir()) == expected
        threads = {"intra_op_threads": "0"} if runtime == "python" else {}  # ONNX Runtime's default
        assert params_of(configs[name]) == {"precision": "fp32", **threads}
    if runtime == "tensorrt":
        assert (repo / "text_gmc" / "1" / "model.plan").read_bytes() == b"dummy plan text_gmc"
    else:
        source = "text_gmc.onnx" if runtime == "python" else "model.onnx"
        assert (repo / "text_gmc" / "1" / source).read_bytes() == (plan_engines / "text_gmc.onnx").read_bytes()

    # the entry model: batched (no delay), ragged optional labels, caps and preprocessing in its parameters
    entry = configs["sigrl"]
    assert (entry.backend, entry.max_batch_size) == ("python", 16)
    assert entry.HasField("dynamic_batching") and entry.dynamic_batching.max_queue_delay_microseconds == 0
    assert inputs_of(entry) == {"image": (string, [1], False, False), "labels": (string, [-1], True, True),
                                  "top_k": (int32, [1], True, False)}
    assert outputs_of(entry) == {"scores": (fp32, [-1]), "top_labels": (string, [-1]),
                                   "top_scores": (fp32, [-1])}
    assert [(g.kind, g.count) for g in entry.instance_group] == [(Kind.KIND_CPU, 1)]
    params = params_of(entry)
    preprocess = json.loads(params.pop("preprocess"))
    assert preprocess["image_size"] == 64 and preprocess["mean"] == [0.485, 0.456, 0.406]
    assert params == {"max_image_bytes": "1000", "max_request_bytes": str(32 * 2**20),
                      "max_image_pixels": "25000000", "max_request_pixels": "25000000",
                      "max_resized_pixels": str(4 * 2**20), "max_labels": "100",
                      "max_label_chars": "200", "max_label_tokens": "67", "default_top_k": "5", "cache_size": "7",
                      "tokenizer_cache_size": "10000", "intra_op_threads": "0",
                      "prompt_template": sigrl.DEFAULT_TEMPLATE,
                      "default_vocabulary": json.dumps(VOCABULARY, ensure_ascii=False)}
    settings = json.loads((repo / "sigrl" / "1" / "sigrl.json").read_text(encoding="utf-8"))
    local = {"local_engines": {name: f"{name}/1/{name}.onnx" for name in ("text_gmc", "image_svfr")}}
    config = sigrl.get_model_config("tiny").to_dict()
    assert settings == {"config": config, "max_classes": 1024, "vocabulary": VOCABULARY,
                        "prompt_template": sigrl.DEFAULT_TEMPLATE,
                        "bpe_vocab": "bpe_simple_vocab_16e6.txt.gz",
                        **(local if runtime == "python" else {})}  # the python runtime runs them in the entry
    assert all((repo / path).is_file() for path in settings.get("local_engines", {}).values())
    assert sorted(p.name for p in (repo / "sigrl" / "1").iterdir()) == ["bpe_simple_vocab_16e6.txt.gz", "model.py",
                                                                        "sigrl.json"]
    ClipBPE(repo / "sigrl" / "1" / settings["bpe_vocab"])  # the served tokenizer reads its vocabulary there
    if runtime == "python":
        for name in ("text_gmc", "image_svfr"):
            engine = json.loads((repo / name / "1" / "sigrl.json").read_text(encoding="utf-8"))
            assert engine == {"config": config, "max_classes": 1024, "engine_file": f"{name}.onnx"}


def test_model_py_shims_import_the_package_classes(fake_engines, tmp_path):
    repo = build_repository(fake_engines, "python", tmp_path / "repo")
    classes = {"text_gmc": "TextGMCModel", "image_svfr": "ImageSVFRModel", "sigrl": "SigRLModel"}
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
        ({"entry_engines": "remote"}, r"entry_engines must be one of \('local', 'bls'\), got 'remote'"),
        ({"runtime": "onnxruntime", "entry_engines": "local"}, r"only with the python runtime"),
        ({"max_batch": 0}, r"max_batch must be in \[1, 32\], got 0"),
        ({"max_batch": 33}, r"max_batch must be in \[1, 32\], got 33"),
        ({"max_labels": 1025}, r"max_labels must be in \[1, 1024\]"),
        ({"max_image_bytes": 0}, r"max_image_bytes must be >= 1"),
        ({"max_request_pixels": 0}, r"max_request_pixels must be >= 1"),
        ({"max_label_tokens": 68}, r"max_label_tokens must be in \[1, 67\], got 68"),
        ({"queue_delay_us": -1}, r"queue_delay_us must be >= 0"),
        ({"threads": -1}, r"threads must be >= 0"),
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
    with pytest.raises(FileNotFoundError, match=r"lacks text_gmc\.onnx, image_svfr\.onnx"):
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
    config = repository_module.entry_model_config(4, EntryLimits(), 1, 1, {"note": 'a "quoted" \\ café\nline'},
                                                  'A "{}" \\ here.')
    parsed = text_format.Parse(config, ModelConfig())
    assert json.loads(params_of(parsed)["preprocess"]) == {"note": 'a "quoted" \\ café\nline'}
    assert params_of(parsed)["prompt_template"] == 'A "{}" \\ here.'


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


def test_label_length_request_bytes_and_a_missing_image_are_named():
    with pytest.raises(RequestError, match="label 1 is 11 characters, over the limit of 10"):
        validate_labels(labels("a", "b" * 11), 4, max_label_chars=10)
    with pytest.raises(RequestError, match="label 0 is over the limit of 10 characters"):
        validate_labels(labels("x" * 100_000), 4, max_label_chars=10)  # refused before decoding
    with pytest.raises(RequestError, match="5 bytes in all, over the limit of 4 bytes per request"):
        validate_images(np.array([[b"abc"], [b"de"]], dtype=object), 3, 4)
    with pytest.raises(RequestError, match="the required input 'image' is missing"):
        validate_images(None, 3, 4)


def test_top_k_defaults_and_must_be_positive_and_shared():
    assert validate_top_k(None, 5) == 5
    assert validate_top_k(np.array([[3], [3]], dtype=np.int32), 5) == 3
    with pytest.raises(RequestError, match="top_k must be at least 1, got 0"):
        validate_top_k(np.array([[0]], dtype=np.int32), 5)
    with pytest.raises(RequestError, match=r"top_k must be the same for all images of a request, got \[1, 2\]"):
        validate_top_k(np.array([[1], [2]], dtype=np.int32), 5)


def test_parse_request_falls_back_to_the_default_vocabulary():
    limits = EntryLimits(max_image_bytes=100, max_request_bytes=100, max_labels=10, default_top_k=2)
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
def preprocessor(fake_engines, tmp_path_factory) -> ImagePreprocessor:
    """The entry model's preprocessing from a built repository's config, outside Triton (caps: 10k pixels per image,
    12k per request, 20k from a resize)."""
    repo = build_repository(fake_engines, "python", tmp_path_factory.mktemp("pre") / "repo")
    limits = EntryLimits(max_image_pixels=10_000, max_request_pixels=12_000, max_resized_pixels=20_000)
    return ImagePreprocessor(json.loads(params_of(read_config(repo, "sigrl"))["preprocess"]), limits)


def test_preprocess_is_exactly_the_evaluation_transform(preprocessor):
    images = [png_bytes((80, 60), 0), png_bytes((50, 90), 1)]
    transform = build_transform(64, False, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    expected = np.stack([transform(Image.open(io.BytesIO(b)).convert("RGB")).numpy() for b in images])
    pixels = preprocessor.pixels(images)
    assert pixels.shape == (2, 3, 64, 64) and pixels.dtype == np.float32
    np.testing.assert_array_equal(pixels, expected)


def encoded(image: Image.Image, format: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=format, **options)
    return buffer.getvalue()


def test_images_are_decoded_as_displayed(preprocessor):
    """Every mode is read as a viewer shows it: the reference is the displayed RGB image, saved as plain RGB."""
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (40, 70, 3), dtype=np.uint8)
    upright = encoded(Image.fromarray(rgb))
    white = encoded(Image.new("RGB", (70, 40), (255, 255, 255)))
    grey = rng.integers(0, 256, (40, 70), dtype=np.uint8)
    grey16 = grey.astype(np.uint16) * 257  # the same grey levels in 16 bits
    cases = {
        # stored rotated by 90 degrees with the EXIF orientation tag that displays it upright
        "EXIF orientation": (encoded(Image.fromarray(np.rot90(rgb, 1).copy()), exif=_orientation(6)), upright),
        "16-bit grey (I;16)": (encoded(Image.fromarray(grey16)), encoded(Image.fromarray(grey).convert("RGB"))),
        "RGBA fully transparent": (encoded(Image.fromarray(np.dstack([rgb, np.zeros((40, 70), np.uint8)]))), white),
        "LA fully transparent": (encoded(Image.fromarray(np.dstack([grey, np.zeros_like(grey)]), "LA")), white),
        "P with a transparent index": (encoded(Image.new("P", (70, 40), 0), transparency=0), white),
        "P opaque": (encoded(Image.fromarray(rgb).quantize(16)),
                     encoded(Image.fromarray(rgb).quantize(16).convert("RGB"))),
        "CMYK JPEG": (encoded(Image.new("CMYK", (70, 40), (0, 0, 0, 0)), "JPEG", quality=100), white),
    }
    for name, (data, reference) in cases.items():
        np.testing.assert_allclose(preprocessor.pixels([data]), preprocessor.pixels([reference]), atol=0.02,
                                   err_msg=name)


def _orientation(value: int) -> Image.Exif:
    exif = Image.Exif()
    exif[0x0112] = value
    return exif


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"definitely not an image", "image 1 is not in a format this server reads"),
        (png_bytes()[:200], "image 1 cannot be decoded"),  # a truncated PNG
        (png_bytes((101, 100)), "image 1 is 101x100 pixels, over the limit of 10000 pixels per image"),
        (png_bytes((100, 80)), "the images of this request have 12800 pixels in all, over the limit of 12000"),
        (encoded(Image.new("F", (8, 8)), "TIFF"), "image 1 is not in a format this server reads"),
        # 86 bytes, 2,000 pixels: its resize to a shorter side of 73 would make 73 x 146,000 pixels
        (encoded(Image.new("RGB", (2000, 1))), r"image 1 is 2000x1 pixels: resizing its shorter side to 73 would "
                                               r"make 10658000 pixels, over the limit of 20000 \(too elongated\)"),
        (encoded(Image.new("L", (1, 300))), "image 1 is 1x300 pixels: resizing its shorter side to 73 would make"),
    ],
)
def test_preprocess_names_the_image_it_refuses(preprocessor, data, message):
    with pytest.raises(RequestError, match=message):
        preprocessor.pixels([png_bytes(), data])


# ------------------------------------------------------------------------------ tokens


def test_a_resize_within_the_cap_is_scored_like_any_other(preprocessor):
    wide = encoded(Image.fromarray(np.random.default_rng(5).integers(0, 256, (40, 19, 3), dtype=np.uint8)))
    assert preprocessor.transform.output_pixels(19, 40) == 73 * 153 <= 20_000
    assert preprocessor.pixels([wide]).shape == (1, 3, 64, 64)


def test_sixteen_bit_grey_is_scaled_with_rounding_in_integers():
    from sigrl.serving.images import to_rgb

    levels = np.array([[0, 128, 129, 385, 386, 65535, 257 * 100 + 128, 257 * 100 + 129]], dtype=np.uint16)
    grey = np.asarray(to_rgb(Image.fromarray(levels)))[..., 0]
    assert grey.tolist() == [[0, 0, 1, 1, 2, 255, 100, 101]]  # round(v / 257)


def test_prompt_tokenizer_refuses_what_the_text_engine_would_not_see_as_asked():
    tokenizer = PromptTokenizer(sigrl.DEFAULT_TEMPLATE, 67, ClipBPE())
    ids = tokenizer.token_ids(("dog", "red fish"))
    np.testing.assert_array_equal(ids, prepare_token_ids(sigrl.tokenize(["dog", "red fish"])))
    for labels, message in [
        (("Cat", "dog", "cat"), r"labels 0 \('Cat'\) and 2 \('cat'\) are the same prompt"),
        (("a  b", "a b"), "are the same prompt"),
        (("fish &amp; chips", "fish & chips"), "are the same prompt"),
        (("ok", "x <end_of_text> y"), "label 1 contains a special token"),
        (("dog " * 67,), "label 0 has 67 tokens, over the limit of 60 tokens"),
        (("dog " * 100,), "label 0 has more tokens than fit the text encoder"),
    ]:
        with pytest.raises(LabelError, match=message):
            PromptTokenizer(sigrl.DEFAULT_TEMPLATE, 60, ClipBPE()).token_ids(labels)


def test_the_tokenizer_word_cache_is_bounded():
    bpe = ClipBPE(cache_size=1000)
    tokenizer = PromptTokenizer(sigrl.DEFAULT_TEMPLATE, 67, bpe)
    words = tuple("zq" + "".join(chr(97 + i // 26**k % 26) for k in range(3)) for i in range(1500))  # letters only
    tokenizer.token_ids(words)
    assert len(bpe._cache) == 1000
    np.testing.assert_array_equal(tokenizer.token_ids(("dog",)), prepare_token_ids(sigrl.tokenize(["dog"])))


def test_a_label_list_is_checked_without_a_request_as_the_server_checks_it():
    from sigrl.serving.vocabulary import check_vocabulary

    limits = EntryLimits(max_labels=3, max_label_tokens=67)
    assert check_vocabulary([" dog", "cat"], limits, sigrl.DEFAULT_TEMPLATE, ClipBPE()) == ("dog", "cat")
    for names, message in [(["Cat", "cat"], "labels: labels 0 .* and 1 .* are the same prompt"),
                           (["a", "b", "c", "d"], "labels: 4 labels, more than the 3"),
                           (["x <start_of_text>"], "labels: label 0 contains a special token")]:
        with pytest.raises(LabelError, match=message):
            check_vocabulary(names, limits, sigrl.DEFAULT_TEMPLATE, ClipBPE())


def test_engine_outputs_that_are_not_finite_are_refused():
    good = np.ones((3, 4), np.float32)
    check_embeddings(good, good)
    bad = good.copy()
    bad[1, 2] = np.nan
    with pytest.raises(LabelError, match="labels: the text engine cannot encode label 1: its graph embedding"):
        check_embeddings(good, bad)
    scores = np.zeros((4, 5), np.float32)
    scores[2, 0], scores[3, 4] = np.inf, np.nan
    assert unscorable_images(scores) == [2, 3] and unscorable_images(good) == []


@pytest.mark.parametrize(
    ("row", "message"),
    [
        ([49406, 1000, 49407, 0], None),
        ([49406, 49408, 49407, 0], r"token_ids\[0, 1\] is 49408, outside the vocabulary \[0, 49408\)"),
        ([49406, -1, 49407, 0], r"token_ids\[0, 1\] is -1"),
        ([1000, 1000, 49407, 0], "row 0 is not a tokenized prompt"),
        ([49406, 1000, 1000, 0], "row 0 is not a tokenized prompt"),
        ([49406, 49407, 49407, 0], "row 0 is not a tokenized prompt"),
        ([49406, 49407, 0, 5], "row 0 is not a tokenized prompt"),
        ([49406, 49406, 49407, 0], "row 0 is not a tokenized prompt"),
    ],
)
def test_token_ids_must_be_tokenized_prompts(row, message):
    ids = np.array([row], np.int32)
    if message is None:
        check_token_ids(ids, 49408, 49406, 49407)
    else:
        with pytest.raises(RequestError, match=message):
            check_token_ids(ids, 49408, 49406, 49407)


def test_triton_repo_command_sets_the_caps_and_the_queue_delay(fake_engines, tmp_path, capsys):
    from sigrl.cli import main

    assert main(["triton-repo", "--engines", str(fake_engines), "--out", str(tmp_path / "repo"),
                 "--max-label-chars", "50", "--max-request-pixels", "1000000", "--queue-delay-us", "100"]) == 0
    entry = read_config(tmp_path / "repo", "sigrl")
    params = params_of(entry)
    assert (params["max_label_chars"], params["max_request_pixels"], params["max_image_bytes"]) == (
        "50", "1000000", str(20 * 2**20))
    assert entry.dynamic_batching.max_queue_delay_microseconds == 100
    assert main(["triton-repo", "--engines", str(fake_engines), "--out", str(tmp_path / "bad"),
                 "--max-label-tokens", "500"]) == 2
    assert "max_label_tokens must be in [1, 67], got 500" in capsys.readouterr().err


@pytest.mark.parametrize("runtime", ["python", "onnxruntime"])
def test_instances_set_each_models_instance_group(runtime, fake_engines, tmp_path):
    repo = build_repository(fake_engines, runtime, tmp_path / "repo",
                            instances=Instances(entry=3, engines=2, gpus=() if runtime == "python" else (0, 2)))
    kind, gpus = (Kind.KIND_CPU, []) if runtime == "python" else (Kind.KIND_GPU, [0, 2])
    for name in ("text_gmc", "image_svfr"):
        assert [(g.kind, g.count, list(g.gpus)) for g in read_config(repo, name).instance_group] == [(kind, 2, gpus)]
    assert [(g.kind, g.count) for g in read_config(repo, "sigrl").instance_group] == [(Kind.KIND_CPU, 3)]


@pytest.mark.parametrize(
    ("runtime", "instances", "message"),
    [("python", Instances(gpus=(0,)), r"GPUs \(--gpus\) are for the onnxruntime and tensorrt runtimes"),
     ("onnxruntime", Instances(gpus=(1, 1)), r"GPUs must be distinct device numbers >= 0, got \[1, 1\]"),
     ("python", Instances(entry=0), "entry instances must be >= 1"),
     ("python", Instances(engines=0), "engine instances must be >= 1")],
)
def test_instances_that_do_not_fit_the_runtime_are_refused(runtime, instances, message, fake_engines, tmp_path):
    with pytest.raises(ValueError, match=message):
        build_repository(fake_engines, runtime, tmp_path / "repo", instances=instances)
    assert list(tmp_path.iterdir()) == []


def test_triton_repo_command_sets_instances(fake_engines, tmp_path, capsys):
    from sigrl.cli import main

    assert main(["triton-repo", "--engines", str(fake_engines), "--out", str(tmp_path / "repo"), "--runtime",
                 "onnxruntime", "--entry-instances", "2", "--engine-instances", "3", "--gpus", "1"]) == 0
    assert [(g.count, list(g.gpus)) for g in read_config(tmp_path / "repo", "image_svfr").instance_group] == [(3, [1])]
    assert read_config(tmp_path / "repo", "sigrl").instance_group[0].count == 2
    assert main(["triton-repo", "--engines", str(fake_engines), "--out", str(tmp_path / "bad"), "--gpus", "0"]) == 2
    assert "GPUs (--gpus) are for the onnxruntime and tensorrt runtimes" in capsys.readouterr().err


def test_served_thresholds_add_the_tags_output_and_are_kept_in_the_settings(fake_engines, tmp_path):
    from sigrl.thresholds import Thresholds

    thresholds = Thresholds({"cat": 0.25}, default=0.5)
    repo = build_repository(fake_engines, "python", tmp_path / "repo", thresholds=thresholds)
    assert outputs_of(read_config(repo, "sigrl"))["tags"] == (DataType.TYPE_STRING, [-1])
    settings = json.loads((repo / "sigrl" / "1" / "sigrl.json").read_text(encoding="utf-8"))
    assert settings["thresholds"] == {"cat": 0.25, "*": 0.5}
