"""Build a Triton model repository that serves both exported engines, vocabulary chosen per request.

Three models, one folder each (``config.pbtxt`` + version ``1/``):

* ``text_gmc`` and ``image_svfr``: the two engines, unbatched (``max_batch_size: 0``; their first
  axis is the class count C or the image batch B), warmed up at their smallest shapes. The runtime
  picks how they run: ``python`` (ONNX Runtime on CPU in python-backend models, what the CPU-only
  server bundled in nvidia-pytriton runs), ``onnxruntime`` (Triton's onnxruntime backend, GPU) or
  ``tensorrt`` (prebuilt TensorRT plans, GPU).
* ``sigrl``: the public entry (python backend), images + optional label names + optional top_k
  → scores and top labels; it decodes and transforms the images itself and runs the engines in its
  own sessions (python runtime) or through BLS (GPU runtimes), with the caps of
  :class:`sigrl.serving.backend.EntryLimits` as config parameters; see
  :class:`sigrl.serving.backend.SigRLModel`.

Every config is generated from the engine specs and the engines' metadata, parsed back with the
``ModelConfig`` protobuf that tritonclient ships, and the whole repository is written to a temporary
folder beside ``out`` and renamed into place only when complete.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from google.protobuf import text_encoding, text_format

from sigrl.bpe import VOCAB_FILE, clip_bpe, default_vocab_file
from sigrl.deploy.engines import EngineSpec
from sigrl.deploy.metadata import ExportedEngines
from sigrl.deploy.tensorrt import BuildRecord, load_plans
from sigrl.files import staged_folder
from sigrl.preprocess import EvalTransform
from sigrl.registry import ENTRY_ENGINES, ORT_TENSORRT_PRECISIONS, SERVED_RUNTIMES
from sigrl.serving.backend import ImageSVFRModel, SigRLModel, TextGMCModel
from sigrl.serving.protocol import (
    ENTRY_MODEL,
    INPUT_IMAGE,
    INPUT_LABELS,
    INPUT_TOP_K,
    OUTPUT_SCORES,
    OUTPUT_TAGS,
    OUTPUT_TOP_LABELS,
    OUTPUT_TOP_SCORES,
    PARAM_CACHE_SIZE,
    PARAM_DEFAULT_VOCABULARY,
    PARAM_PRECISION,
    PARAM_PREPROCESS,
    PARAM_PROMPT_TEMPLATE,
    PARAM_THREADS,
    PARAM_TOKENIZER_CACHE_SIZE,
    SETTING_BPE_VOCAB,
    SETTING_CONFIG,
    SETTING_ENGINE_FILE,
    SETTING_LOCAL_ENGINES,
    SETTING_MAX_CLASSES,
    SETTING_PROMPT_TEMPLATE,
    SETTING_THRESHOLDS,
    SETTING_VOCABULARY,
    SETTINGS_FILE,
    EntryLimits,
)
from sigrl.serving.vocabulary import max_label_tokens
from sigrl.thresholds import Thresholds

Runtime = Literal["python", "onnxruntime", "tensorrt"]
RUNTIMES: tuple[str, ...] = SERVED_RUNTIMES
EntryEngines = Literal["local", "bls"]

VERSION = "1"
# 0: a request is never held back waiting for others; those that queue while the model is busy still batch
ENTRY_QUEUE_DELAY_US = 0

_TRITON_TYPES = {"float32": "TYPE_FP32", "int32": "TYPE_INT32"}
# The config line that names how each runtime serves an engine.
_ENGINE_BACKENDS = {"python": 'backend: "python"', "onnxruntime": 'platform: "onnxruntime_onnx"',
                    "tensorrt": 'platform: "tensorrt_plan"'}
_PYTHON_MODELS = {cls.engine: cls for cls in (TextGMCModel, ImageSVFRModel)}
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


@dataclass(frozen=True)
class Instances:
    """How many copies of each model Triton runs, and where (``instance_group``).

    ``entry``: instances of the entry model, each its own python stub process on the CPU (decoding, tokenizing
    and, with local engines, the engines); the dynamic batcher hands each free instance the requests queued so
    far, so more instances mean several batches at once. ``engines``: instances of each engine model, per GPU
    for the GPU runtimes (on the GPUs in ``gpus``, all visible ones when empty), CPU stubs for the python runtime.
    """

    entry: int = 1
    engines: int = 1
    gpus: tuple[int, ...] = ()

    def check(self, runtime: Runtime) -> None:
        """ValueError naming the setting that does not fit ``runtime``."""
        _check_range("entry instances", self.entry, 1)
        _check_range("engine instances", self.engines, 1)
        if self.gpus and runtime == "python":
            raise ValueError("GPUs (--gpus) are for the onnxruntime and tensorrt runtimes; the python runtime runs "
                             "on the CPU")
        if any(gpu < 0 for gpu in self.gpus) or len(set(self.gpus)) != len(self.gpus):
            raise ValueError(f"GPUs must be distinct device numbers >= 0, got {list(self.gpus)}")


def _instance_group(count: int, kind: str, gpus: Sequence[int] = ()) -> str:
    placement = f" gpus: [ {', '.join(map(str, gpus))} ]" if gpus else ""
    return f"instance_group [ {{ count: {count} kind: {kind}{placement} }} ]"


def warmup_files(spec: EngineSpec) -> dict[str, bytes]:
    """The warm-up data files of an engine model (``<model>/warmup/<input>``): its int32 input (token ids of empty
    prompts, :meth:`~sigrl.deploy.engines.EngineSpec.warmup_inputs`); floats are zeros in the config."""
    return {name: array.astype("<i4").tobytes() for name, array in spec.warmup_inputs().items()
            if array.dtype == np.int32}


def _warmup(spec: EngineSpec) -> str:
    """One warm-up request at the engine's smallest shapes: valid token ids from :func:`warmup_files`,
    zeros for floats (Triton's random data can hold NaN)."""
    inputs = []
    files = warmup_files(spec)
    for tensor in spec.inputs:
        shape = spec.profile()[tensor.name][0]
        data = f'input_data_file: "{tensor.name}"' if tensor.name in files else "zero_data: true"
        inputs.append(f'  inputs {{ key: "{tensor.name}" value: {{ data_type: {_TRITON_TYPES[tensor.dtype]} '
                      f"dims: {_dims(shape)} {data} }} }}")
    body = "\n".join([f'  name: "{spec.name}_smallest_shapes"', "  batch_size: 1", *inputs])
    return "model_warmup [ {\n" + body + "\n} ]"


def engine_model_config(spec: EngineSpec, runtime: Runtime, extra: Sequence[str] = (),
                        instances: Instances = Instances()) -> str:
    """``config.pbtxt`` of an engine model: its interface, written once in the engine spec, plus ``extra``
    runtime-specific lines (TensorRT plans per compute capability, ONNX Runtime's TensorRT accelerator).

    Triton warms up the GPU runtimes' engines at their smallest shapes. The python runtime's engine models warm
    themselves up in ``initialize`` instead: Triton 2.51 crashes (SIGSEGV) when a python model answers a
    warm-up request with an error, which a served engine does for outputs that are not finite."""
    tensors = {kind: [_tensor(t.name, _TRITON_TYPES[t.dtype], t.shape) for t in group]
               for kind, group in (("input", spec.inputs), ("output", spec.outputs))}
    if runtime == "python":
        placement = [_instance_group(instances.engines, "KIND_CPU")]
    else:
        placement = [_instance_group(instances.engines, "KIND_GPU", instances.gpus), _warmup(spec)]
    return "\n".join([
        f'name: "{spec.name}"', _ENGINE_BACKENDS[runtime], "max_batch_size: 0",
        _tensor_list("input", tensors["input"]), _tensor_list("output", tensors["output"]), *placement, *extra,
    ]) + "\n"


def entry_model_config(max_batch: int, limits: EntryLimits, cache_size: int, tokenizer_cache_size: int,
                       preprocess: Mapping[str, Any], prompt_template: str, default_vocabulary: Sequence[str] = (),
                       queue_delay_us: int = ENTRY_QUEUE_DELAY_US, tags: bool = False, threads: int = 0,
                       instances: int = 1) -> str:
    """``config.pbtxt`` of ``sigrl``: per batch item one image, its label names (ragged) and top_k; ``tags``
    adds the output of the labels at or above the served thresholds."""
    inputs = [_tensor(INPUT_IMAGE, "TYPE_STRING", [1]),
              _tensor(INPUT_LABELS, "TYPE_STRING", [-1], "optional", "allow_ragged_batch"),
              _tensor(INPUT_TOP_K, "TYPE_INT32", [1], "optional")]
    outputs = [_tensor(OUTPUT_SCORES, "TYPE_FP32", [-1]), _tensor(OUTPUT_TOP_LABELS, "TYPE_STRING", [-1]),
               _tensor(OUTPUT_TOP_SCORES, "TYPE_FP32", [-1])]
    if tags:
        outputs.append(_tensor(OUTPUT_TAGS, "TYPE_STRING", [-1]))
    return "\n".join([
        f'name: "{ENTRY_MODEL}"', 'backend: "python"', f"max_batch_size: {max_batch}",
        _tensor_list("input", inputs), _tensor_list("output", outputs),
        f"dynamic_batching {{ max_queue_delay_microseconds: {queue_delay_us} }}",
        _instance_group(instances, "KIND_CPU"),
        _parameters({**limits.to_parameters(), PARAM_CACHE_SIZE: cache_size,
                     PARAM_TOKENIZER_CACHE_SIZE: tokenizer_cache_size, PARAM_PREPROCESS: json.dumps(dict(preprocess)),
                     PARAM_THREADS: threads, PARAM_PROMPT_TEMPLATE: prompt_template,
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
    summary = (model_class.__doc__ or model_class.__name__).splitlines()[0]
    return (f'"""Triton python-backend model: {summary}"""\n'
            f"from {model_class.__module__} import {model_class.__name__} as TritonPythonModel  # noqa: F401\n")


def _engine_files(engines: Path, runtime: Runtime, specs: Sequence[EngineSpec], plans: Sequence[Path] = (),
                  tensorrt_version: str | None = None) -> dict[str, list[tuple[Path, str]]]:
    """Per engine model: the files to copy and their names in ``1/`` (see :func:`_plan_files` for TensorRT)."""
    if runtime == "python":  # the backend models load <engine>.onnx from their version folder
        return {s.name: [(engines / s.file_name, s.file_name)] for s in specs}
    if runtime == "onnxruntime":
        return {s.name: [(engines / s.file_name, "model.onnx")] for s in specs}
    return _plan_files(engines, specs, plans or [engines], tensorrt_version)


def _plan_files(engines: Path, specs: Sequence[EngineSpec], plan_dirs: Sequence[Path],
                tensorrt_version: str | None = None) -> dict[str, list[tuple[Path, str]]]:
    """The plans of each folder in ``plan_dirs``, checked by :func:`~sigrl.deploy.tensorrt.load_plans` (against
    the serving TensorRT where ``tensorrt_version`` is given). One folder: ``model.plan``; several (one per
    compute capability): ``model_sm<cc>.plan``, which Triton picks through ``cc_model_filenames``."""
    files: dict[str, list[tuple[Path, str]]] = {s.name: [] for s in specs}
    capabilities: dict[str, Path] = {}
    for plan_dir in map(Path, plan_dirs):
        record = load_plans(engines, plan_dir, tensorrt_version)
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
                           ort_tensorrt_cache: str | None, tensorrt_version: str | None = None) -> None:
    """ValueError when an option is given to a runtime that does not use it."""
    if plans and runtime != "tensorrt":
        raise ValueError("plans (--plans) are served by the tensorrt runtime only")
    if tensorrt_version and runtime != "tensorrt":
        raise ValueError("the serving TensorRT (--triton-container, --tensorrt-version) checks plans: "
                         "tensorrt runtime only")
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


def _preprocess_params(params: Mapping[str, Any], image_size: int) -> dict[str, Any]:
    """The engines' recorded preprocessing, checked to be the evaluation transform the server applies."""
    expected = {key: value for key, value in EvalTransform(image_size).describe().items()
                if key not in ("mean", "std", "scale")}  # the server applies the engines' mean and std
    different = {k: params.get(k) for k, v in expected.items() if params.get(k) != v}
    if different:
        raise ValueError(f"the engines record preprocessing {different}, but the server applies {expected}")
    return dict(params)


def _check_range(name: str, value: int, low: int, high: int | None = None) -> None:
    if value < low or (high is not None and value > high):
        bound = f"in [{low}, {high}]" if high is not None else f">= {low}"
        raise ValueError(f"{name} must be {bound}, got {value}")


def _check_target(out: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise FileExistsError(f"{out} exists and is not empty: pass overwrite=True (--overwrite) to replace it")


def build_repository(engines: Path, runtime: Runtime, out: Path, *, max_batch: int = 32, cache_size: int = 32,
                     tokenizer_cache_size: int = 10_000, queue_delay_us: int = ENTRY_QUEUE_DELAY_US,
                     overwrite: bool = False, plans: Sequence[Path] = (), ort_tensorrt: str | None = None,
                     ort_tensorrt_cache: str | None = None, entry_engines: EntryEngines | None = None,
                     thresholds: Thresholds | None = None, threads: int = 0, instances: Instances = Instances(),
                     tensorrt_version: str | None = None,
                     **caps: int) -> Path:
    """Write a Triton model repository for the engines in ``engines`` (``sigrl export``) to ``out``.

    ``max_batch`` caps the images per batch of ``sigrl`` (at most the image engine's batch range);
    ``caps`` are the entry model's :class:`~sigrl.serving.protocol.EntryLimits` (``max_image_bytes``,
    ``max_request_bytes``, ``max_image_pixels``, ``max_request_pixels``, ``max_resized_pixels``,
    ``max_labels`` (default and at most the engines' class range), ``max_label_chars``, ``max_label_tokens``
    (default and at most what fits the text encoder's context with the prompt template), ``default_top_k``).
    ``cache_size`` vocabularies stay encoded, ``tokenizer_cache_size`` BPE words stay cached;
    ``queue_delay_us`` is how long the dynamic batcher may hold a request for others. A non-empty ``out`` is
    replaced only with ``overwrite``. Returns ``out``.
    ``plans``: folders of ``sigrl build-engines`` for the tensorrt runtime (default ``engines``), one per
    compute capability, refused unless the TensorRT of the serving Triton, ``tensorrt_version`` (when
    given), can load them; ``ort_tensorrt``: a precision_mode that turns on ONNX Runtime's TensorRT
    accelerator for the onnxruntime runtime, with its engine cache in ``ort_tensorrt_cache``.
    ``entry_engines``: how ``sigrl`` runs the engines: ``local``, in its own ONNX Runtime sessions (python
    runtime only, its default: no hop to another stub per request, at the cost of a second copy of each
    engine in memory), or ``bls``, calling the engine models (default for the GPU runtimes).
    ``thresholds`` (e.g. ``Thresholds.read`` of ``sigrl calibrate``'s file): the entry model also answers
    ``tags``, each image's labels at or above their thresholds. ``threads``: ONNX Runtime's intra-op
    threads per engine session of the python runtime (0: its default, one per core). ``instances``: how
    many instances of each model Triton runs, and on which GPUs (:class:`Instances`).
    """
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime must be one of {RUNTIMES}, got {runtime!r}")
    unknown = sorted(set(caps) - {f.name for f in fields(EntryLimits)})
    if unknown:
        raise TypeError(f"build_repository() got unknown caps {unknown}")
    engines, out = Path(engines), Path(out)
    exported = ExportedEngines.read(engines)
    config, metadata = exported.config, exported.text
    text_spec, image_spec = specs = exported.specs()
    template, vocabulary = metadata.prompt_template, metadata.vocabulary
    class_max, batch_max = text_spec.axis_ranges["C"][2], image_spec.axis_ranges["B"][2]
    bpe_vocab = default_vocab_file()
    token_max = max_label_tokens(template, clip_bpe(str(bpe_vocab)))
    limits = replace(EntryLimits(max_labels=class_max, max_label_tokens=token_max), **caps)
    _check_range("max_batch", max_batch, 1, batch_max)
    for cap in fields(EntryLimits):
        high = {"max_labels": class_max, "max_label_tokens": token_max}.get(cap.name)
        _check_range(cap.name, getattr(limits, cap.name), 1, high)
    _check_range("cache_size", cache_size, 0)
    _check_range("tokenizer_cache_size", tokenizer_cache_size, 0)
    _check_range("queue_delay_us", queue_delay_us, 0)
    _check_range("threads", threads, 0)
    instances.check(runtime)
    preprocess = _preprocess_params(metadata.preprocess, image_spec.image_size)
    _check_target(out, overwrite)
    _check_runtime_options(runtime, plans, ort_tensorrt, ort_tensorrt_cache, tensorrt_version)
    entry_engines = entry_engines or ("local" if runtime == "python" else "bls")
    if entry_engines not in ENTRY_ENGINES:
        raise ValueError(f"entry_engines must be one of {ENTRY_ENGINES}, got {entry_engines!r}")
    if entry_engines == "local" and runtime != "python":
        raise ValueError(f"the entry model runs the engines itself (--entry-engines local) only with the python "
                         f"runtime; the {runtime} runtime serves them on the GPU through BLS")
    files = _engine_files(engines, runtime, specs, plans, tensorrt_version)
    extra = _engine_extras(runtime, files, ort_tensorrt, ort_tensorrt_cache)
    precisions = exported.precisions()
    if runtime == "python" and "bf16" in precisions.values():
        raise ValueError(f"the engines in {engines} are bf16, which ONNX Runtime's CPU provider (the python runtime) "
                         "cannot run: serve them as TensorRT plans (--runtime tensorrt) or with onnxruntime on a GPU")
    for name, precision in precisions.items():  # recorded for operators and clients reading the config
        extra[name].append(_parameters({PARAM_PRECISION: precision,
                                        **({PARAM_THREADS: threads} if runtime == "python" else {})}))

    settings: dict[str, dict[str, Any]] = {ENTRY_MODEL: {
        SETTING_CONFIG: config.to_dict(), SETTING_MAX_CLASSES: class_max, SETTING_VOCABULARY: vocabulary,
        SETTING_PROMPT_TEMPLATE: template, SETTING_BPE_VOCAB: VOCAB_FILE}}
    if thresholds is not None:
        settings[ENTRY_MODEL][SETTING_THRESHOLDS] = thresholds.to_json()
    if entry_engines == "local":
        settings[ENTRY_MODEL][SETTING_LOCAL_ENGINES] = {spec.name: f"{spec.name}/{VERSION}/{spec.file_name}"
                                                        for spec in specs}
    python_models: dict[str, type] = {ENTRY_MODEL: SigRLModel}
    if runtime == "python":
        python_models.update(_PYTHON_MODELS)
        for spec in specs:
            settings[spec.name] = {SETTING_CONFIG: config.to_dict(), SETTING_MAX_CLASSES: class_max,
                                   SETTING_ENGINE_FILE: spec.file_name}

    with staged_folder(out) as staging:
        configs = {spec.name: engine_model_config(spec, runtime, extra[spec.name], instances) for spec in specs}
        configs[ENTRY_MODEL] = entry_model_config(max_batch, limits, cache_size, tokenizer_cache_size, preprocess,
                                                  template, vocabulary, queue_delay_us, tags=thresholds is not None,
                                                  threads=threads, instances=instances.entry)
        for spec in specs if runtime != "python" else ():
            (staging / spec.name / "warmup").mkdir(parents=True)
            for file_name, data in warmup_files(spec).items():
                (staging / spec.name / "warmup" / file_name).write_bytes(data)
        for name, text in configs.items():
            parse_model_config(text)
            (staging / name / VERSION).mkdir(parents=True, exist_ok=True)
            (staging / name / "config.pbtxt").write_text(text)
            if name in python_models:
                (staging / name / VERSION / "model.py").write_text(_shim(python_models[name]))
                (staging / name / VERSION / SETTINGS_FILE).write_text(
                    json.dumps(settings[name], indent=2, ensure_ascii=False), encoding="utf-8")
            for source, target in files.get(name, []):
                shutil.copyfile(source, staging / name / VERSION / target)
        shutil.copyfile(bpe_vocab, staging / ENTRY_MODEL / VERSION / VOCAB_FILE)  # the served tokenizer's vocabulary
    return out
