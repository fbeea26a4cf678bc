"""Build a Triton model repository that serves both exported engines, vocabulary chosen per request.

Four models, one folder each (``config.pbtxt`` + version ``1/``):

* ``text_gmc`` and ``image_svfr``: the two engines, unbatched (``max_batch_size: 0``; their first
  axis is the class count C or the image batch B), warmed up at their smallest shapes. The runtime
  picks how they run: ``python`` (ONNX Runtime on CPU in python-backend models, what the CPU-only
  server bundled in nvidia-pytriton runs), ``onnxruntime`` (Triton's onnxruntime backend, GPU) or
  ``tensorrt`` (prebuilt TensorRT plans, GPU).
* ``preprocess``: encoded image bytes → the evaluation transform's pixels (python backend, batched).
* ``sigrl``: the public entry (python backend, BLS), images + optional label names + optional top_k
  → scores and top labels; see :class:`sigrl.serving.backend.SigRLModel`.

Every config is generated from the engine specs and the engines' metadata, parsed back with the
``ModelConfig`` protobuf that tritonclient ships, and the whole repository is written to a temporary
folder beside ``out`` and renamed into place only when complete.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from google.protobuf import text_encoding, text_format

from sigrl.deploy.engines import EngineSpec, engine_specs
from sigrl.deploy.onnx_export import read_metadata
from sigrl.deploy.runtimes import engine_config
from sigrl.deploy.tensorrt import BuildRecord, load_plans
from sigrl.serving.backend import (
    ENTRY_MODEL,
    PARAM_CACHE_SIZE,
    PARAM_DEFAULT_TOP_K,
    PARAM_DEFAULT_VOCABULARY,
    PARAM_MAX_IMAGE_BYTES,
    PARAM_MAX_LABELS,
    PARAM_PREPROCESS,
    PREPROCESS_MODEL,
    SETTINGS_FILE,
    ImageSVFRModel,
    PreprocessModel,
    SigRLModel,
    TextGMCModel,
)

Runtime = Literal["python", "onnxruntime", "tensorrt"]
RUNTIMES: tuple[Runtime, ...] = ("python", "onnxruntime", "tensorrt")
VERSION = "1"
ENTRY_QUEUE_DELAY_US = 2000

_TRITON_TYPES = {"float32": "TYPE_FP32", "int32": "TYPE_INT32"}
# The config line that names how each runtime serves an engine.
_ENGINE_BACKENDS = {"python": 'backend: "python"', "onnxruntime": 'platform: "onnxruntime_onnx"',
                    "tensorrt": 'platform: "tensorrt_plan"'}
_PYTHON_MODELS = {cls.engine: cls for cls in (TextGMCModel, ImageSVFRModel)}
ORT_TENSORRT_PRECISIONS = ("FP32", "FP16", "BF16", "INT8")
_INSTALL_HINT = 'pip install -c constraints.txt -e ".[serve]"'


def _escape(text: str) -> str:
    """``text`` as the body of a protobuf text-format string literal."""
    return text_encoding.CEscape(text, as_utf8=True)


def _dims(shape: Sequence[int | str]) -> str:
    """Triton dims for a spec shape: named (dynamic) axes become -1."""
    return "[ " + ", ".join(str(d) if isinstance(d, int) else "-1" for d in shape) + " ]"


def _tensor(name: str, data_type: str, shape: Sequence[int | str], *flags: str) -> str:
    """One ``input``/``output`` entry; ``flags`` are boolean fields set to true (optional, allow_ragged_batch)."""
    fields = [f'name: "{name}"', f"data_type: {data_type}", f"dims: {_dims(shape)}", *(f"{f}: true" for f in flags)]
    return "{ " + " ".join(fields) + " }"


def _tensor_list(kind: str, entries: Sequence[str]) -> str:
    return f"{kind} [\n  " + ",\n  ".join(entries) + "\n]"


def _parameters(values: Mapping[str, Any]) -> str:
    return "\n".join(f'parameters {{ key: "{key}" value: {{ string_value: "{_escape(str(value))}" }} }}'
                     for key, value in values.items())


def _instance_group(kind: str) -> str:
    return f"instance_group [ {{ count: 1 kind: {kind} }} ]"


def _warmup(spec: EngineSpec) -> str:
    """One warm-up request at the engine's smallest shapes: zeros for token ids (any random id could be
    out of the vocabulary), random values for floats."""
    inputs = []
    for tensor in spec.inputs:
        shape = spec.profile()[tensor.name][0]
        data = "zero_data" if tensor.dtype == "int32" else "random_data"
        inputs.append(f'  inputs {{ key: "{tensor.name}" value: {{ data_type: {_TRITON_TYPES[tensor.dtype]} '
                      f"dims: {_dims(shape)} {data}: true }} }}")
    body = "\n".join([f'  name: "{spec.name}_smallest_shapes"', "  batch_size: 1", *inputs])
    return "model_warmup [ {\n" + body + "\n} ]"


def engine_model_config(spec: EngineSpec, runtime: Runtime, extra: Sequence[str] = ()) -> str:
    """``config.pbtxt`` of an engine model: its interface, written once in the engine spec, plus ``extra``
    runtime-specific lines (TensorRT plans per compute capability, ONNX Runtime's TensorRT accelerator)."""
    tensors = {kind: [_tensor(t.name, _TRITON_TYPES[t.dtype], t.shape) for t in group]
               for kind, group in (("input", spec.inputs), ("output", spec.outputs))}
    return "\n".join([
        f'name: "{spec.name}"', _ENGINE_BACKENDS[runtime], "max_batch_size: 0",
        _tensor_list("input", tensors["input"]), _tensor_list("output", tensors["output"]),
        _instance_group("KIND_CPU" if runtime == "python" else "KIND_GPU"), _warmup(spec), *extra,
    ]) + "\n"


def preprocess_model_config(image_size: int, params: Mapping[str, Any], max_batch: int) -> str:
    """``config.pbtxt`` of ``preprocess``: one encoded image per batch item → its 3×H×W pixels."""
    return "\n".join([
        f'name: "{PREPROCESS_MODEL}"', 'backend: "python"', f"max_batch_size: {max_batch}",
        _tensor_list("input", [_tensor("image", "TYPE_STRING", [1])]),
        _tensor_list("output", [_tensor("pixels", "TYPE_FP32", [3, image_size, image_size])]),
        "dynamic_batching { }", _instance_group("KIND_CPU"),
        _parameters({PARAM_PREPROCESS: json.dumps(dict(params))}),
    ]) + "\n"


def entry_model_config(max_batch: int, max_image_bytes: int, max_labels: int, cache_size: int,
                       default_top_k: int, default_vocabulary: Sequence[str] = ()) -> str:
    """``config.pbtxt`` of ``sigrl``: per batch item one image, its label names (ragged) and top_k."""
    inputs = [_tensor("image", "TYPE_STRING", [1]),
              _tensor("labels", "TYPE_STRING", [-1], "optional", "allow_ragged_batch"),
              _tensor("top_k", "TYPE_INT32", [1], "optional")]
    outputs = [_tensor("scores", "TYPE_FP32", [-1]), _tensor("top_labels", "TYPE_STRING", [-1]),
               _tensor("top_scores", "TYPE_FP32", [-1])]
    return "\n".join([
        f'name: "{ENTRY_MODEL}"', 'backend: "python"', f"max_batch_size: {max_batch}",
        _tensor_list("input", inputs), _tensor_list("output", outputs),
        f"dynamic_batching {{ max_queue_delay_microseconds: {ENTRY_QUEUE_DELAY_US} }}", _instance_group("KIND_CPU"),
        _parameters({PARAM_MAX_IMAGE_BYTES: max_image_bytes, PARAM_MAX_LABELS: max_labels,
                     PARAM_CACHE_SIZE: cache_size, PARAM_DEFAULT_TOP_K: default_top_k,
                     PARAM_DEFAULT_VOCABULARY: json.dumps(list(default_vocabulary), ensure_ascii=False)}),
    ]) + "\n"


def parse_model_config(text: str) -> Any:
    """``text`` parsed as Triton's ``ModelConfig`` (the protobuf tritonclient ships); ParseError if invalid."""
    try:
        from tritonclient.grpc import model_config_pb2
    except ImportError as err:
        raise RuntimeError(f"checking Triton configs needs tritonclient: {_INSTALL_HINT}") from err
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def _shim(model_class: type) -> str:
    """The ``1/model.py`` of a python-backend model: the class lives in sigrl.serving.backend."""
    return (f'"""Triton python-backend model: {model_class.__doc__.splitlines()[0]}"""\n'
            f"from {model_class.__module__} import {model_class.__name__} as TritonPythonModel  # noqa: F401\n")


def _engine_files(engines: Path, runtime: Runtime, specs: Sequence[EngineSpec],
                  plans: Sequence[Path] = ()) -> dict[str, list[tuple[Path, str]]]:
    """Per engine model: the files to copy and their names in ``1/`` (see :func:`_plan_files` for TensorRT)."""
    if runtime == "python":  # the backend models load <engine>.onnx from their version folder
        return {s.name: [(engines / s.file_name, s.file_name)] for s in specs}
    if runtime == "onnxruntime":
        return {s.name: [(engines / s.file_name, "model.onnx")] for s in specs}
    return _plan_files(engines, specs, plans or [engines])


def _plan_files(engines: Path, specs: Sequence[EngineSpec],
                plan_dirs: Sequence[Path]) -> dict[str, list[tuple[Path, str]]]:
    """The plans of each folder in ``plan_dirs``, checked by :func:`~sigrl.deploy.tensorrt.load_plans`. One
    folder: ``model.plan``; several (one per compute capability): ``model_sm<cc>.plan``, which Triton picks
    through ``cc_model_filenames``."""
    files: dict[str, list[tuple[Path, str]]] = {s.name: [] for s in specs}
    capabilities: dict[str, Path] = {}
    for plan_dir in map(Path, plan_dirs):
        record = load_plans(engines, plan_dir)
        if record.compute_capability in capabilities:
            raise ValueError(f"{plan_dir} and {capabilities[record.compute_capability]} both hold plans for compute "
                             f"capability {record.compute_capability}")
        capabilities[record.compute_capability] = plan_dir
        sm = record.compute_capability.replace(".", "")
        for spec in specs:
            target = f"model_sm{sm}.plan" if len(plan_dirs) > 1 else "model.plan"
            files[spec.name].append((plan_dir / record.engines[spec.name].plan, target))
    return files


def _plan_capabilities(files: Sequence[tuple[Path, str]]) -> list[str]:
    """``cc_model_filenames`` entries for plans named ``model_sm<cc>.plan`` (none for a single ``model.plan``)."""
    return [f'cc_model_filenames {{ key: "{BuildRecord.load(source.parent).compute_capability}" value: "{target}" }}'
            for source, target in files if target != "model.plan"]


def _check_runtime_options(runtime: Runtime, plans: Sequence[Path], ort_tensorrt: str | None,
                           ort_tensorrt_cache: str | None) -> None:
    """ValueError when an option is given to a runtime that does not use it."""
    if plans and runtime != "tensorrt":
        raise ValueError("plans (--plans) are served by the tensorrt runtime only")
    if (ort_tensorrt or ort_tensorrt_cache) and runtime != "onnxruntime":
        raise ValueError("ONNX Runtime's TensorRT accelerator (--ort-tensorrt) needs the onnxruntime runtime")
    if ort_tensorrt_cache and not ort_tensorrt:
        raise ValueError("an engine cache (--ort-tensorrt-cache) needs the accelerator on (--ort-tensorrt)")


def _engine_extras(runtime: Runtime, files: Mapping[str, Sequence[tuple[Path, str]]], ort_tensorrt: str | None,
                   ort_tensorrt_cache: str | None) -> dict[str, list[str]]:
    """Per engine model, the runtime-specific config lines (see :func:`engine_model_config`)."""
    if runtime == "tensorrt":
        return {name: _plan_capabilities(entries) for name, entries in files.items()}
    accelerator = [ort_tensorrt_accelerator(ort_tensorrt, ort_tensorrt_cache)] if ort_tensorrt else []
    return {name: list(accelerator) for name in files}


def ort_tensorrt_accelerator(precision_mode: str, engine_cache: str | None = None) -> str:
    """The ``optimization`` block that runs an ``onnxruntime_onnx`` model through ONNX Runtime's TensorRT
    execution provider (parameter names of Triton's onnxruntime backend). ``FP32`` keeps the graph's own
    types; ``engine_cache``, a folder on the serving machine, keeps built engines across restarts."""
    if precision_mode not in ORT_TENSORRT_PRECISIONS:
        raise ValueError(f"precision_mode must be one of {ORT_TENSORRT_PRECISIONS}, got {precision_mode!r}")
    values = {"precision_mode": precision_mode}
    if engine_cache:
        values |= {"trt_engine_cache_enable": "1", "trt_engine_cache_path": engine_cache}
    parameters = " ".join(f'parameters {{ key: "{k}" value: "{_escape(v)}" }}' for k, v in values.items())
    return ("optimization { execution_accelerators { gpu_execution_accelerator: [ "
            f'{{ name: "tensorrt" {parameters} }} ] }} }}')


def _preprocess_params(metadata: Mapping[str, str], image_size: int) -> dict[str, Any]:
    """The engines' recorded preprocessing, checked to be the evaluation transform the server applies."""
    params = json.loads(metadata["preprocess"])
    expected = {"image_size": image_size, "resize_shorter_side": round(image_size * 256 / 224),
                "center_crop": image_size, "interpolation": "bicubic", "color": "RGB", "layout": "NCHW"}
    different = {k: params.get(k) for k, v in expected.items() if params.get(k) != v}
    if different:
        raise ValueError(f"the engines record preprocessing {different}, but the server applies {expected}")
    return params


def _check_range(name: str, value: int, low: int, high: int | None = None) -> None:
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty: pass overwrite=True (--overwrite) to replace it")


def _move_into_place(staging: Path, out: Path) -> None:
    """Rename the finished ``staging`` folder to ``out``; an existing ``out`` is renamed away first, then removed."""
    if out.is_dir() and any(out.iterdir()):
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old)  # ``old`` is an empty folder: replacing it is allowed
        os.replace(staging, out)
        shutil.rmtree(old)
    else:
        os.replace(staging, out)  # onto nothing or an empty folder


def build_repository(engines: Path, runtime: Runtime, out: Path, *, max_batch: int = 32,
                     max_image_bytes: int = 20 * 2**20, max_labels: int | None = None, cache_size: int = 32,
                     default_top_k: int = 5, overwrite: bool = False, plans: Sequence[Path] = (),
                     ort_tensorrt: str | None = None, ort_tensorrt_cache: str | None = None) -> Path:
    """Write a Triton model repository for the engines in ``engines`` (``sigrl export``) to ``out``.

    ``max_batch`` caps the images per batch of ``sigrl`` and ``preprocess`` (at most the image
    engine's batch range), ``max_labels`` the labels per request (default and at most the engines'
    class range), ``max_image_bytes`` an encoded image's size; ``cache_size`` vocabularies stay
    encoded. A non-empty ``out`` is replaced only with ``overwrite``. Returns ``out``.
    ``plans``: folders of ``sigrl build-engines`` for the tensorrt runtime (default ``engines``), one per
    compute capability; ``ort_tensorrt``: a precision_mode that turns on ONNX Runtime's TensorRT
    accelerator for the onnxruntime runtime, with its engine cache in ``ort_tensorrt_cache``.
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    engines, out = Path(engines), Path(out)
    config = engine_config(engines)
    text_spec, image_spec = specs = engine_specs(config)
    metadata = read_metadata(engines / text_spec.file_name)
    class_max, batch_max = text_spec.axis_ranges["C"][2], image_spec.axis_ranges["B"][2]
    max_labels = class_max if max_labels is None else max_labels
    _check_range("max_batch", max_batch, 1, batch_max)
    _check_range("max_labels", max_labels, 1, class_max)
    _check_range("max_image_bytes", max_image_bytes, 1)
    _check_range("cache_size", cache_size, 0)
    _check_range("default_top_k", default_top_k, 1)
    preprocess = _preprocess_params(metadata, image_spec.image_size)
    _check_target(out, overwrite)
    _check_runtime_options(runtime, plans, ort_tensorrt, ort_tensorrt_cache)
    files = _engine_files(engines, runtime, specs, plans)
    extra = _engine_extras(runtime, files, ort_tensorrt, ort_tensorrt_cache)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.building-", dir=out.parent))
    try:
        configs = {spec.name: engine_model_config(spec, runtime, extra[spec.name]) for spec in specs}
        configs[PREPROCESS_MODEL] = preprocess_model_config(image_spec.image_size, preprocess, max_batch)
        configs[ENTRY_MODEL] = entry_model_config(max_batch, max_image_bytes, max_labels, cache_size, default_top_k,
                                                  json.loads(metadata["vocabulary"]))
        python_models = {PREPROCESS_MODEL: PreprocessModel, ENTRY_MODEL: SigRLModel}
        if runtime == "python":
            python_models.update(_PYTHON_MODELS)
        for name, text in configs.items():
            parse_model_config(text)
            (staging / name / VERSION).mkdir(parents=True)
            (staging / name / "config.pbtxt").write_text(text)
            if name in python_models:
                (staging / name / VERSION / "model.py").write_text(_shim(python_models[name]))
            for source, target in files.get(name, []):
                shutil.copyfile(source, staging / name / VERSION / target)
        settings = {"vocabulary": json.loads(metadata["vocabulary"]), "prompt_template": metadata["prompt_template"]}
        settings_text = json.dumps(settings, indent=2, ensure_ascii=False)
        (staging / ENTRY_MODEL / VERSION / SETTINGS_FILE).write_text(settings_text, encoding="utf-8")
        os.chmod(staging, 0o755)  # mkdtemp made it private
        _move_into_place(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out
