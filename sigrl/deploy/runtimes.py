"""Both engines behind one interface, whatever runs them (nanoowl style).

A runtime takes numpy arrays and returns numpy arrays: ``encode_labels(token_ids) -> (T, G)`` once per
vocabulary and ``score_images(images, T, G) -> scores`` per batch. Parity checks and benchmarks loop
over runtimes (PyTorch eager, ONNX Runtime, and the TensorRT and Triton runtimes of later modules)
instead of repeating code per runtime.
"""

from __future__ import annotations

import copy
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from sigrl.config import SigRLConfig
from sigrl.deploy.engines import ImageSVFREngine, TextGMCEngine, engine_specs
from sigrl.deploy.metadata import ExportedEngines
from sigrl.model import SigRL
from sigrl.precision import FLOAT_DTYPES, QUANTIZED_BASE, cast_model, check_precision
from sigrl.registry import RUNTIMES
from sigrl.tokenizer import trim_token_ids


def prepare_token_ids(token_ids: np.ndarray | torch.Tensor) -> np.ndarray:
    """Token ids as the text engine takes them: int32, cut to the longest prompt (see ``trim_token_ids``)."""
    ids = torch.as_tensor(np.asarray(token_ids))
    return np.ascontiguousarray(trim_token_ids(ids).numpy().astype(np.int32))


class EngineRuntime(ABC):
    """The text + GMC engine and the image + SVFR engine of one model, run by one backend.

    ``engine_precisions`` says what each engine computes in (``fp32``, ``fp16``, ``bf16``, ``int8``);
    parity holds each engine's outputs to that precision's tolerances.
    """

    name: str
    engine_precisions: dict[str, str]  # by engine name

    @property
    def precision(self) -> str:
        """The precision the runtime was asked for (the image engine's: int8 keeps the text engine fp32)."""
        return self.engine_precisions[ImageSVFREngine.name]

    @property
    @abstractmethod
    def provider(self) -> str:
        """Where the engines actually run (e.g. ``cpu``, ``cuda:0``, ``CPUExecutionProvider``)."""

    def encode_labels(self, token_ids: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """(label_emb, graph_emb), both C×D float32, for CLIP token ids (C×77 from ``sigrl.tokenize``)."""
        return self._encode_labels(prepare_token_ids(token_ids))

    def score_images(self, images: np.ndarray, label_emb: np.ndarray, graph_emb: np.ndarray) -> np.ndarray:
        """Scores B×C for normalised images B×3×H×W against an encoded vocabulary."""
        return self._score_images(np.ascontiguousarray(images, dtype=np.float32),
                                  np.ascontiguousarray(label_emb, dtype=np.float32),
                                  np.ascontiguousarray(graph_emb, dtype=np.float32))

    def predict(self, images: np.ndarray, token_ids: np.ndarray | torch.Tensor) -> np.ndarray:
        """Both engines composed: scores B×C of ``images`` against the labels in ``token_ids``."""
        return self.score_images(images, *self.encode_labels(token_ids))

    @abstractmethod
    def _encode_labels(self, token_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...

    @abstractmethod
    def _score_images(self, images: np.ndarray, label_emb: np.ndarray, graph_emb: np.ndarray) -> np.ndarray: ...


class TorchRuntime(EngineRuntime):
    """The eager PyTorch model: the reference every exported engine is compared with.

    ``precision`` fp16 or bf16 runs a cast copy of the model (weights and products in that precision,
    the sensitive steps in fp32; see ``sigrl.precision``), not autocast: on CPU, bf16 autocast at B > 1
    leaves the fused attention path and is slower than fp32.
    """

    name = "torch"

    def __init__(self, model: SigRL, device: str | torch.device = "cpu", precision: str = "fp32") -> None:
        check_precision(precision, tuple(FLOAT_DTYPES))
        self.device = torch.device(device)
        cast = cast_model(model.eval(), precision)
        if cast is model and not _on_device(model, self.device):  # never move the caller's model (fp32 is not copied)
            cast = copy.deepcopy(model)
        self.model = cast.to(self.device)
        self.dtype = FLOAT_DTYPES[precision]
        self.engine_precisions = {TextGMCEngine.name: precision, ImageSVFREngine.name: precision}

    @property
    def provider(self) -> str:
        return str(self.device)

    @torch.no_grad()
    def _encode_labels(self, token_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ids = torch.from_numpy(token_ids).to(self.device, torch.long)
        label_emb, graph_emb = self.model.encode_labels(ids)
        return label_emb.float().cpu().numpy(), graph_emb.float().cpu().numpy()

    @torch.no_grad()
    def _score_images(self, images: np.ndarray, label_emb: np.ndarray, graph_emb: np.ndarray) -> np.ndarray:
        pixels, labels, graph = (torch.from_numpy(a).to(self.device, self.dtype)
                                 for a in (images, label_emb, graph_emb))
        return self.model.score_images(pixels, labels, graph).float().cpu().numpy()


def _on_device(model: nn.Module, device: torch.device) -> bool:
    """Whether the model's parameters are on ``device`` (``cuda`` without an index means the current GPU)."""
    where = next(model.parameters()).device
    return where.type == device.type and (device.index is None or where.index == device.index)


def ort_providers(device: str) -> list[str]:
    """Execution providers to ask ONNX Runtime for: ``cpu``, ``cuda``, or ``auto`` (CUDA when installed)."""
    import onnxruntime as ort

    if device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {device!r}")
    has_cuda = "CUDAExecutionProvider" in ort.get_available_providers()
    if device == "cuda" and not has_cuda:
        raise RuntimeError("device='cuda' needs onnxruntime-gpu (pip install -e '.[gpu]'); "
                           f"this onnxruntime offers {ort.get_available_providers()}")
    if device == "cpu" or not has_cuda:
        return ["CPUExecutionProvider"]
    return ["CUDAExecutionProvider", "CPUExecutionProvider"]


class OnnxRuntime(EngineRuntime):
    """The two exported ONNX graphs in ONNX Runtime sessions, inputs checked against the engine specs.

    A session silently falls back to CPU when the CUDA libraries are missing, so the provider in use
    is read back from the session, reported as :attr:`provider`, and a fallback raises a warning.
    """

    name = "onnxruntime"

    def __init__(self, engine_dir: str | Path, device: str = "auto", threads: int | None = None) -> None:
        import onnxruntime as ort

        engine_dir = self._read_engines(engine_dir)
        requested = ort_providers(device)
        if "bf16" in self.engine_precisions.values() and requested[0] == "CPUExecutionProvider":
            raise ValueError(f"ONNX Runtime's CPU provider cannot run the bf16 graphs in {engine_dir}: check them "
                             "with --runtime onnx-reference (slow), or run them with TensorRT or on CUDA")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self.sessions = {spec.name: ort.InferenceSession(str(engine_dir / spec.file_name), options, providers=requested)
                         for spec in (self.text_spec, self.image_spec)}
        active = self.sessions[ImageSVFREngine.name].get_providers()
        if active[0] != requested[0]:
            warnings.warn(f"ONNX Runtime fell back from {requested[0]} to {active[0]} (are the CUDA/cuDNN "
                          "libraries onnxruntime-gpu needs installed?)", RuntimeWarning, stacklevel=2)
        self._provider = active[0]

    def _read_engines(self, engine_dir: str | Path) -> Path:
        """Set the engine specs and precisions from the engines' metadata; returns the folder as a Path."""
        exported = ExportedEngines.read(engine_dir)
        self.text_spec, self.image_spec = exported.specs()
        self.engine_precisions = exported.precisions()
        return exported.folder

    @property
    def provider(self) -> str:
        return self._provider

    def _run(self, engine: str, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.sessions[engine].run(names, feeds)

    def _encode_labels(self, token_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        feeds = TextGMCEngine.feeds(token_ids)
        self.text_spec.check_inputs(feeds)
        label_emb, graph_emb = self._run(self.text_spec.name, self.text_spec.output_names, feeds)
        return label_emb, graph_emb

    def _score_images(self, images: np.ndarray, label_emb: np.ndarray, graph_emb: np.ndarray) -> np.ndarray:
        feeds = ImageSVFREngine.feeds(images, label_emb, graph_emb)
        self.image_spec.check_inputs(feeds)
        return self._run(self.image_spec.name, self.image_spec.output_names, feeds)[0]


class OnnxReferenceRuntime(OnnxRuntime):
    """The exported graphs run by ``onnx.reference`` (ONNX's own evaluator, in numpy): an independent check
    of graphs ONNX Runtime's CPU provider cannot run (bf16). Slow: for small configurations and batches."""

    name = "onnx-reference"

    def __init__(self, engine_dir: str | Path) -> None:
        from onnx.reference import ReferenceEvaluator

        engine_dir = self._read_engines(engine_dir)
        self.sessions = {spec.name: ReferenceEvaluator(str(engine_dir / spec.file_name))
                         for spec in (self.text_spec, self.image_spec)}
        self._provider = "onnx.reference"

    def _run(self, engine: str, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(out, dtype=np.float32) for out in self.sessions[engine].run(names, feeds)]


def create_runtime(kind: str, *, model: SigRL | None = None, engines: str | Path | None = None,
                   precision: str | None = None, device: str = "auto") -> EngineRuntime:
    """One runtime by name, the registry parity, evaluation and benchmarks loop over.

    ``torch`` runs ``model`` at ``precision`` (default fp32); the others run the engines in ``engines``
    (ONNX files, or TensorRT plans for ``tensorrt``), whose precision is their own: a ``precision`` that
    contradicts it is an error rather than a silently different comparison.
    """
    if kind not in RUNTIMES:
        raise ValueError(f"unknown runtime {kind!r}: choose one of {', '.join(RUNTIMES)}")
    if kind == "torch":
        if model is None:
            raise ValueError("the torch runtime needs a checkpoint")
        if precision in QUANTIZED_BASE:
            raise ValueError(f"{precision} is a precision of exported engines, not of the PyTorch model: "
                             f"export with --precision {precision} and pass --engines")
        torch_device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        return TorchRuntime(model, torch_device, precision or "fp32")
    if engines is None:
        raise ValueError(f"the {kind} runtime needs --engines (a folder written by `sigrl export`)")
    if kind == "onnxruntime":
        runtime: EngineRuntime = OnnxRuntime(engines, device=device)
    elif kind == "onnx-reference":
        runtime = OnnxReferenceRuntime(engines)
    else:
        runtime = TensorRTRuntime(engines, device="cuda:0" if device == "auto" else device)
    if precision is not None and precision != runtime.precision:
        raise ValueError(f"the engines in {engines} are {runtime.precision}, not {precision}: "
                         f"export them with --precision {precision}")
    return runtime


class TensorRTRuntime(EngineRuntime):
    """Both engines as TensorRT plans from ``sigrl build-engines``, run on one CUDA device.

    ``plan_dir`` holds the plans and their ``build_record.json``. Buffers are torch CUDA tensors, the
    input shapes are set on every call (one execution context serves every size in the profile), and
    inputs are checked against the engine spec and against the profile the plan itself reports. Each
    plan runs on a stream of its own (on the default stream TensorRT adds synchronisations). Plans built
    version-compatible carry TensorRT's lean runtime, whose host code the runtime is allowed to run.
    :attr:`precision` is the precision recorded at build time, the tolerance parity applies.
    TensorRT is imported here, so this module imports without it.
    """

    name = "tensorrt"

    def __init__(self, plan_dir: str | Path, device: str = "cuda:0") -> None:
        from sigrl.deploy.tensorrt import BuildRecord, import_tensorrt

        plan_dir = Path(plan_dir)
        self.record = BuildRecord.load(plan_dir)
        self.engine_precisions = {name: build.precision for name, build in self.record.engines.items()}
        self.device = torch.device(device)
        if self.device.type != "cuda" or not torch.cuda.is_available():
            raise RuntimeError(f"TensorRT plans run on a CUDA device; got device={device!r} with "
                               f"torch.cuda.is_available() = {torch.cuda.is_available()}")
        trt = import_tensorrt()
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        runtime.engine_host_code_allowed = self.record.version_compatible
        self.text_spec, self.image_spec = engine_specs(SigRLConfig(**self.record.config), self.record.max_classes)
        self.plans = {}
        for spec in (self.text_spec, self.image_spec):
            build = self.record.engines.get(spec.name)
            problems = build.matches(spec) if build else [f"has no entry for {spec.name}"]
            if build is None or problems:
                raise ValueError(f"{plan_dir / 'build_record.json'}: " + "; ".join(problems))
            self.plans[spec.name] = _TensorRTPlan(trt, runtime, plan_dir / build.plan, spec, self.device)

    @property
    def provider(self) -> str:
        return f"TensorRT {self.record.tensorrt_version} on {self.device} ({self.record.gpu_name})"

    def _encode_labels(self, token_ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        label_emb, graph_emb = self.plans[self.text_spec.name].run(TextGMCEngine.feeds(token_ids))
        return label_emb, graph_emb

    def _score_images(self, images: np.ndarray, label_emb: np.ndarray, graph_emb: np.ndarray) -> np.ndarray:
        return self.plans[self.image_spec.name].run(ImageSVFREngine.feeds(images, label_emb, graph_emb))[0]


_TORCH_DTYPES = {"FLOAT": torch.float32, "HALF": torch.float16, "BF16": torch.bfloat16, "INT32": torch.int32,
                 "INT64": torch.int64, "BOOL": torch.bool}


class _TensorRTPlan:
    """One deserialized plan with its execution context, I/O dtypes and profile 0."""

    def __init__(self, trt: Any, runtime: Any, path: Path, spec: TextGMCEngine | ImageSVFREngine,
                 device: torch.device) -> None:
        with torch.cuda.device(device):
            self.engine = runtime.deserialize_cuda_engine(path.read_bytes())
            if self.engine is None:
                raise RuntimeError(f"TensorRT {trt.__version__} cannot load {path}: plans are tied to the TensorRT "
                                   "version and GPU they were built on (see build_record.json)")
            self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        if sorted(inputs) != sorted(spec.input_names) or sorted(set(names) - set(inputs)) != sorted(spec.output_names):
            raise ValueError(f"{path} has tensors {names}, the {spec.name} engine "
                             f"{spec.input_names} -> {spec.output_names}")
        self.spec, self.device = spec, device
        self.stream = torch.cuda.Stream(device)
        self.dtypes = {n: _TORCH_DTYPES[self.engine.get_tensor_dtype(n).name] for n in names}
        self.profile = {n: [tuple(s) for s in self.engine.get_tensor_profile_shape(n, 0)] for n in inputs}

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """The outputs (float32 numpy) for ``feeds``; ValueError for a shape outside the plan's profile."""
        self.spec.check_inputs(feeds)
        for name, array in feeds.items():
            low, _, high = self.profile[name]
            if not all(lo <= d <= hi for d, lo, hi in zip(array.shape, low, high)):
                raise ValueError(f"{self.spec.name}: input {name!r} has shape {list(array.shape)}, outside the "
                                 f"plan's profile {list(low)} .. {list(high)}")
        tensors = {}  # kept alive until the stream is done with them
        with torch.cuda.device(self.device), torch.cuda.stream(self.stream):  # copies and kernels on one stream
            for name, array in feeds.items():
                tensors[name] = torch.from_numpy(array).to(self.device, self.dtypes[name]).contiguous()
                if not self.context.set_input_shape(name, tuple(tensors[name].shape)):
                    raise ValueError(f"{self.spec.name}: TensorRT rejected shape {list(array.shape)} for {name!r}")
                self.context.set_tensor_address(name, tensors[name].data_ptr())
            for name in self.spec.output_names:
                shape = tuple(self.context.get_tensor_shape(name))
                if any(dim < 0 for dim in shape):  # -1: a dimension the input shapes did not determine
                    raise RuntimeError(f"{self.spec.name}: TensorRT left output {name!r} at shape {list(shape)} for "
                                       f"inputs {({n: list(a.shape) for n, a in feeds.items()})}")
                tensors[name] = torch.empty(shape, dtype=self.dtypes[name], device=self.device)
                self.context.set_tensor_address(name, tensors[name].data_ptr())
            if not self.context.execute_async_v3(self.stream.cuda_stream):
                raise RuntimeError(f"{self.spec.name}: TensorRT execution failed (see its log above)")
            self.stream.synchronize()
            return [tensors[n].float().cpu().numpy() for n in self.spec.output_names]
