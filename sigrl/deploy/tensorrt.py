"""Compile the exported ONNX engines into TensorRT plans, and describe each build in a JSON record.

One plan per engine (``text_gmc.plan``, ``image_svfr.plan``), one optimisation profile per plan taken
from the engine spec's min/opt/max ranges, and ``build_record.json`` beside them: TensorRT version,
GPU and compute capability, the precision, class chunk and loop count read from the ONNX graph and
metadata, the profiles, the ONNX SHA-256 and the build seconds. Triton configs and
:class:`~sigrl.deploy.runtimes.TensorRTRuntime` read the record back, so a plan is never used with
engines it was not built from, nor (:func:`serving_problems`) by a Triton whose TensorRT cannot load it.

Precision comes from the graph: the network is strongly typed (opted into on TensorRT 10.x, always on
in 11.x, which removed the FP16/BF16/INT8 builder flags) and TF32 is turned off, so a plan computes in
the types ``sigrl export --precision`` wrote. TensorRT 10.x and 11.x are told apart by the features the
installed module has (:class:`TensorRTFeatures`), not by its version string. Like ``sigrl export``,
plans are written to a temporary folder beside the output and renamed into place when all succeeded.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from types import ModuleType
from typing import Any

import onnx

from sigrl.deploy.engines import EngineSpec, TensorSpec
from sigrl.deploy.metadata import EngineMetadata, ExportedEngines, file_sha256
from sigrl.deploy.onnx_passes import count_loops
from sigrl.deploy.triton_releases import container_tensorrt, parse_tensorrt_version, same_tensorrt
from sigrl.files import staged_files, write_atomic
from sigrl.registry import HARDWARE_COMPAT, PRECISIONS

PLAN_SUFFIX = ".plan"
BUILD_RECORD = "build_record.json"
RECORD_SCHEMA = "sigrl.tensorrt-build/2"
_HARDWARE_COMPAT_ENUM = {"ampere+": "AMPERE_PLUS"}  # HardwareCompatibilityLevel member per --hardware-compat
# Precisions TensorRT builds, and the compute capability each needs: bf16 from Ampere (8.0), FP8 from Ada and
# Hopper (8.9). The dynamic int8 graph (ONNX Runtime's MatMulInteger, DynamicQuantizeLinear) is for the CPU.
PLAN_PRECISIONS = {"fp32": (0, 0), "fp16": (0, 0), "bf16": (8, 0), "int8-qdq": (0, 0), "fp8": (8, 9)}


class TensorRTUnavailable(RuntimeError):
    """TensorRT (the Python module) or a CUDA GPU is missing on this machine."""


class OnnxParseError(ValueError):
    """TensorRT's ONNX parser rejected a graph; the message (one line, as the CLI prints one line) lists
    every error with its node's index, name and operator."""


@dataclass(frozen=True)
class TensorRTFeatures:
    """What the build depends on that differs between TensorRT releases, found by feature detection.

    ``weak_typing``: the FP16/BF16/INT8 builder flags exist (10.x), so a network is weakly typed unless
    created with ``STRONGLY_TYPED`` (``trtexec --stronglyTyped``); 11.x removed them and is always
    strongly typed. ``tf32_flag``: ``BuilderFlag.TF32`` exists (``--noTF32`` turns it off).
    ``hardware_compat``: ``HardwareCompatibilityLevel`` exists (``--hardwareCompatibilityLevel``).
    """

    version: str
    weak_typing: bool
    tf32_flag: bool = True
    hardware_compat: bool = True
    version_compatible: bool = True

    @classmethod
    def detect(cls, trt: ModuleType) -> TensorRTFeatures:
        """The features of an imported ``tensorrt`` module."""
        return cls(version=trt.__version__, weak_typing=hasattr(trt.BuilderFlag, "FP16"),
                   tf32_flag=hasattr(trt.BuilderFlag, "TF32"),
                   hardware_compat=hasattr(trt, "HardwareCompatibilityLevel"),
                   version_compatible=hasattr(trt.BuilderFlag, "VERSION_COMPATIBLE"))


# The documented feature sets, for printing commands where TensorRT is not installed.
TENSORRT_10 = TensorRTFeatures("10.x", weak_typing=True)
TENSORRT_11 = TensorRTFeatures("11.x", weak_typing=False)


@dataclass(frozen=True)
class BuildOptions:
    """Builder settings that ``sigrl build-engines`` exposes (``None``: TensorRT's default)."""

    workspace_gb: float = 4.0
    timing_cache: Path | None = None
    hardware_compat: str = "none"
    builder_optimization_level: int | None = None
    version_compatible: bool = False

    def check(self) -> None:
        """ValueError naming the option that is out of range."""
        if not self.workspace_gb > 0:
            raise ValueError(f"--workspace-gb must be > 0, got {self.workspace_gb}")
        if self.hardware_compat not in HARDWARE_COMPAT:
            raise ValueError(f"--hardware-compat must be one of {HARDWARE_COMPAT}, got {self.hardware_compat!r}")
        level = self.builder_optimization_level
        if level is not None and not 0 <= level <= 5:
            raise ValueError(f"--builder-optimization-level must be in [0, 5], got {level}")

    @property
    def workspace_bytes(self) -> int:
        return int(self.workspace_gb * 2**30)


def profile_shapes(spec: EngineSpec) -> dict[str, dict[str, list[int]]]:
    """The spec's optimisation profile as ``{input: {"min": [...], "opt": [...], "max": [...]}}``."""
    return {name: dict(zip(("min", "opt", "max"), map(list, levels))) for name, levels in spec.profile().items()}


def trtexec_command(spec: EngineSpec, onnx_path: Path, plan_path: Path, features: TensorRTFeatures = TENSORRT_10,
                    options: BuildOptions = BuildOptions()) -> str:
    """The ``trtexec`` command equivalent to :func:`build_plans` for one engine on the given TensorRT.

    Flags follow trtexec's documented options: the three shape flags, ``--stronglyTyped`` only where
    networks are weakly typed by default (10.x), ``--noTF32`` where TF32 is a builder flag, the
    workspace pool in MiB, and the optional timing cache, hardware compatibility, optimisation level and
    version compatibility.
    """
    profile = spec.profile()

    def shapes(level: int) -> str:
        return ",".join(f"{name}:{'x'.join(map(str, shape[level]))}" for name, shape in profile.items())

    parts = [f"trtexec --onnx={onnx_path} --saveEngine={plan_path}",
             f"--minShapes={shapes(0)} --optShapes={shapes(1)} --maxShapes={shapes(2)}"]
    if features.weak_typing:
        parts.append("--stronglyTyped")
    if features.tf32_flag:
        parts.append("--noTF32")
    parts.append(f"--memPoolSize=workspace:{options.workspace_bytes // 2**20}M")
    if options.timing_cache is not None:
        parts.append(f"--timingCacheFile={options.timing_cache}")
    if options.hardware_compat != "none":
        parts.append(f"--hardwareCompatibilityLevel={options.hardware_compat}")
    if options.builder_optimization_level is not None:
        parts.append(f"--builderOptimizationLevel={options.builder_optimization_level}")
    if options.version_compatible:
        parts.append("--versionCompatible")
    parts.append("--skipInference")
    return " ".join(parts)


def _interface(tensors: Sequence[TensorSpec]) -> dict[str, dict[str, Any]]:
    """A spec's inputs or outputs as JSON: ``{name: {"dtype", "shape"}}``."""
    return {t.name: {"dtype": t.dtype, "shape": list(t.shape)} for t in tensors}


@dataclass
class EngineBuild:
    """The build record of one plan: where it came from, its interface and profile, and what it cost."""

    engine: str
    plan: str
    onnx: str
    onnx_sha256: str
    precision: str
    class_chunk: int
    loops: int
    inputs: dict[str, dict[str, Any]]
    outputs: dict[str, dict[str, Any]]
    profile: dict[str, dict[str, list[int]]]
    trtexec: str
    build_seconds: float | None = None
    plan_bytes: int | None = None

    @classmethod
    def describe(cls, spec: EngineSpec, metadata: EngineMetadata, onnx_path: Path, plan_name: str,
                 trtexec: str) -> EngineBuild:
        """The record of ``spec``'s plan before it is built: interface, profile, metadata, loops, ONNX hash."""
        return cls(engine=spec.name, plan=plan_name, onnx=onnx_path.name, onnx_sha256=file_sha256(onnx_path),
                   precision=metadata.precision, class_chunk=metadata.config.class_chunk,
                   loops=count_loops(onnx.load(str(onnx_path)).graph), inputs=_interface(spec.inputs),
                   outputs=_interface(spec.outputs), profile=profile_shapes(spec), trtexec=trtexec)

    def matches(self, spec: EngineSpec) -> list[str]:
        """How this plan's interface or profile differs from ``spec`` (empty when it fits)."""
        problems = []
        if self.engine != spec.name:
            problems.append(f"built for engine {self.engine!r}, not {spec.name!r}")
        for kind, have, want in (("inputs", self.inputs, _interface(spec.inputs)),
                                 ("outputs", self.outputs, _interface(spec.outputs))):
            if have != want:
                problems.append(f"{kind} {have} differ from the engine's {want}")
        if self.profile != profile_shapes(spec):
            problems.append(f"profile {self.profile} differs from the engine's {profile_shapes(spec)}")
        return problems


@dataclass
class BuildRecord:
    """``build_record.json``: the TensorRT and GPU a set of plans was built with, and one entry per plan."""

    tensorrt_version: str
    strongly_typed: bool
    version_compatible: bool
    gpu_name: str
    compute_capability: str
    cuda_version: str | None
    hardware_compat: str
    builder_optimization_level: int | None
    workspace_gb: float
    config_name: str
    config: dict[str, Any]
    max_classes: int
    engines: dict[str, EngineBuild] = field(default_factory=dict)
    schema: str = RECORD_SCHEMA

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "build record") -> BuildRecord:
        """Parse and check a record: ValueError naming the missing, unknown or mistyped key."""
        if not isinstance(data, dict) or data.get("schema") != RECORD_SCHEMA:
            found = data.get("schema") if isinstance(data, dict) else type(data).__name__
            raise ValueError(f"{source}: schema must be {RECORD_SCHEMA!r}, got {found!r}")
        engines = data.get("engines")
        if not isinstance(engines, dict) or not engines:
            raise ValueError(f"{source}: 'engines' must be a non-empty object")
        record = _checked(cls, {**data, "engines": {}}, source)
        for name, entry in engines.items():
            build = _checked(EngineBuild, entry, f"{source}: engines.{name}")
            if build.engine != name:
                raise ValueError(f"{source}: engines.{name} records engine {build.engine!r}")
            if build.precision not in PRECISIONS:
                raise ValueError(f"{source}: engines.{name}.precision must be one of {PRECISIONS}")
            record.engines[name] = build
        if record.hardware_compat not in HARDWARE_COMPAT:
            raise ValueError(f"{source}: hardware_compat must be one of {HARDWARE_COMPAT}")
        return record

    @classmethod
    def load(cls, plan_dir: str | Path) -> BuildRecord:
        """The record in ``plan_dir`` (FileNotFoundError naming it when absent)."""
        path = Path(plan_dir) / BUILD_RECORD
        if not path.is_file():
            raise FileNotFoundError(f"{path} not found: build the plans with `sigrl build-engines`")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{path} is not JSON: {err}") from err
        return cls.from_dict(data, str(path))

    @property
    def precision(self) -> str:
        """The precision all plans share (ValueError if they differ)."""
        found = {b.precision for b in self.engines.values()}
        if len(found) != 1:
            raise ValueError(f"the plans were built at different precisions {sorted(found)}")
        return found.pop()


_JSON_TYPES: dict[str, type | tuple[type, ...]] = {
    "str": str, "int": int, "float": (int, float), "bool": bool, "dict": dict, "None": type(None)}


def _checked(cls: type, data: Any, source: str) -> Any:
    """``cls(**data)`` for a dataclass, after checking keys and the JSON types the annotations name."""
    if not isinstance(data, dict):
        raise ValueError(f"{source} must be an object, got {type(data).__name__}")
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(data) - set(known))
    missing = sorted(n for n, f in known.items() if n not in data and f.default is f.default_factory is MISSING)
    if unknown or missing:
        raise ValueError(f"{source}: missing keys {missing}, unknown keys {unknown}")
    for name, value in data.items():
        allowed: list[type | tuple[type, ...]] = [_JSON_TYPES[t.strip().split("[")[0]]
                                                  for t in str(known[name].type).split("|")]
        if (isinstance(value, bool) and bool not in allowed) or not isinstance(value, tuple(allowed)):
            raise ValueError(f"{source}: {name} must be {known[name].type}, got {type(value).__name__}")
    return cls(**data)


def import_tensorrt() -> ModuleType:
    """``import tensorrt``, or TensorRTUnavailable naming what is missing."""
    try:
        import tensorrt
    except ImportError as err:  # also raised when the wheel is present but libnvinfer is not
        raise TensorRTUnavailable(f"the tensorrt Python package cannot be imported ({err})") from err
    return tensorrt


def _gpu() -> tuple[str, str, str | None]:
    """Name and compute capability (``"8.6"``) of the current device, and the CUDA version torch was built with."""
    import torch

    if not torch.cuda.is_available():
        raise TensorRTUnavailable("no CUDA GPU is visible (torch.cuda.is_available() is False)")
    major, minor = torch.cuda.get_device_capability()
    return torch.cuda.get_device_name(), f"{major}.{minor}", torch.version.cuda


def parse_errors(errors: list[Any]) -> str:
    """TensorRT ONNX parser errors (``IParserError``) as one line: each with its node's index, name and
    operator, its code and its description (newlines in it folded)."""
    return "; ".join(f"node {e.node()} '{e.node_name()}' ({e.node_operator()}): {e.code()}: "
                     + " ".join(str(e.desc()).split()) for e in errors)


def _parse(trt: ModuleType, parser: Any, onnx_path: Path) -> None:
    """Parse ``onnx_path``; OnnxParseError listing every parser error (see :func:`parse_errors`)."""
    if parser.parse_from_file(str(onnx_path)):
        return
    errors = [parser.get_error(i) for i in range(parser.num_errors)]
    raise OnnxParseError(f"TensorRT {trt.__version__} cannot parse {onnx_path}: {parse_errors(errors)}")


def _build_plan(trt: ModuleType, features: TensorRTFeatures, spec: EngineSpec, onnx_path: Path,
                options: BuildOptions, timing_cache: bytes) -> tuple[bytes, bytes]:
    """Build one serialized plan; returns it with the (updated) serialized timing cache."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED) if features.weak_typing else 0
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    _parse(trt, parser, onnx_path)

    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, options.workspace_bytes)
    if features.tf32_flag:
        config.clear_flag(trt.BuilderFlag.TF32)
    if options.hardware_compat != "none":
        level = getattr(trt.HardwareCompatibilityLevel, _HARDWARE_COMPAT_ENUM[options.hardware_compat])
        config.hardware_compatibility_level = level
    if options.builder_optimization_level is not None:
        config.builder_optimization_level = options.builder_optimization_level
    if options.version_compatible:  # the plan carries TensorRT's lean runtime (see serving_problems)
        config.set_flag(trt.BuilderFlag.VERSION_COMPATIBLE)
    if not config.set_timing_cache(config.create_timing_cache(timing_cache), ignore_mismatch=False):
        raise ValueError(f"the timing cache {options.timing_cache} comes from another GPU or TensorRT version: "
                         "delete it or pass another --timing-cache")
    profile = builder.create_optimization_profile()
    for name, (low, opt, high) in spec.profile().items():
        profile.set_shape(name, low, opt, high)
    config.add_optimization_profile(profile)

    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT {trt.__version__} failed to build {onnx_path.name}; see its log above")
    return bytes(plan), bytes(config.get_timing_cache().serialize())


def plan_commands(engines: Path, out: Path, features: TensorRTFeatures = TENSORRT_10,
                  options: BuildOptions = BuildOptions()) -> dict[str, str]:
    """Per engine, the trtexec command that builds its plan into ``out``."""
    specs = ExportedEngines.read(engines).specs()
    return {s.name: trtexec_command(s, engines / s.file_name, out / f"{s.name}{PLAN_SUFFIX}", features, options)
            for s in specs}


def load_plans(engines: str | Path, plan_dir: str | Path, serving_tensorrt: str | None = None) -> BuildRecord:
    """The build record of the plans in ``plan_dir``, checked against the engines in ``engines`` and, given
    ``serving_tensorrt``, against the TensorRT of the Triton that will serve them (:func:`serving_problems`).

    FileNotFoundError naming what is missing and how to build it; ValueError when a plan was built for
    another interface or profile, at another precision than the engine's metadata, from other ONNX
    files (SHA-256), or with a TensorRT the server cannot load it in.
    """
    engines, plan_dir = Path(engines), Path(plan_dir)
    exported = ExportedEngines.read(engines)
    specs = exported.specs()
    needed = [p for p in [*(plan_dir / f"{s.name}{PLAN_SUFFIX}" for s in specs), plan_dir / BUILD_RECORD]
              if not p.is_file()]
    if needed:
        commands = "\n".join(plan_commands(engines, plan_dir).values())
        raise FileNotFoundError(f"the tensorrt runtime needs {', '.join(map(str, needed))}; build them on the "
                                f"serving GPU with `sigrl build-engines --engines {engines} --out {plan_dir}`, "
                                f"or with:\n{commands}")
    record, precisions = BuildRecord.load(plan_dir), exported.precisions()
    for spec in specs:
        build, onnx_path = record.engines.get(spec.name), engines / spec.file_name
        precision = precisions[spec.name]
        problems = build.matches(spec) if build else ["has no entry for this engine"]
        if build and build.precision != precision:
            problems.append(f"was built at {build.precision}, but {onnx_path} is {precision}")
        elif build and build.onnx_sha256 != file_sha256(onnx_path):
            problems.append(f"was built from another {spec.file_name} (SHA-256 {build.onnx_sha256[:12]}...)")
        if problems:
            raise ValueError(f"{plan_dir / BUILD_RECORD}: {spec.name} " + "; ".join(problems))
    if serving_tensorrt is not None and (problems := serving_problems(record, serving_tensorrt)):
        raise ValueError(f"{plan_dir / BUILD_RECORD}: " + "; ".join(problems))
    return record


def serving_tensorrt(triton_container: str | None = None, tensorrt_version: str | None = None) -> str | None:
    """The TensorRT version of the Triton that will serve plans: ``tensorrt_version`` as given, or the one
    ``triton_container`` (an NGC tag such as ``25.01-py3``) ships; None when neither is given."""
    if triton_container is not None and tensorrt_version is not None:
        raise ValueError("give either --triton-container or --tensorrt-version, not both")
    if tensorrt_version is not None:
        parse_tensorrt_version(tensorrt_version, "--tensorrt-version")
        return tensorrt_version
    if triton_container is None:
        return None
    try:
        return container_tensorrt(triton_container)
    except ValueError as err:
        raise ValueError(f"--triton-container: {err}; pass that version as --tensorrt-version X.Y.Z") from None


def serving_problems(record: BuildRecord, serving: str) -> list[str]:
    """Why a Triton with TensorRT ``serving`` cannot load plans built as ``record`` says (empty if it can).

    A plan loads only in the TensorRT release it was built with. A version-compatible plan (TensorRT's
    ``VERSION_COMPATIBLE`` flag, which embeds its lean runtime) also loads in later releases of the same
    major version, and 10.x ones in 11.x (8.x in 10.x), never in earlier ones; Triton's TensorRT backend
    loads them only when started with ``--backend-config=tensorrt,version-compatible=true``.
    """
    built = parse_tensorrt_version(record.tensorrt_version, "build_record.json tensorrt_version")
    served = parse_tensorrt_version(serving)
    if not record.version_compatible:
        if not same_tensorrt(record.tensorrt_version, serving):
            return [f"plans built with TensorRT {record.tensorrt_version} load only in that TensorRT, and the "
                    f"server has {serving}: build them with the server's TensorRT, or with --version-compatible"]
        return []
    same_major = built[0] == served[0] and served >= built
    if built >= (8, 6) and (same_major or (built[0], served[0]) in ((8, 10), (10, 11))):
        return []
    return [f"version-compatible plans built with TensorRT {record.tensorrt_version} load in that release or a "
            f"later one of the same major version (10.x also in 11.x), not in the server's {serving}"]


def check_plan_precisions(exported: ExportedEngines) -> dict[str, str]:
    """Each engine's precision, or ValueError for one TensorRT does not build (the CPU-only dynamic int8)."""
    precisions, engines = exported.precisions(), exported.folder
    if "int8" in precisions.values():
        raise ValueError(f"{engines} holds int8 engines: ONNX Runtime's dynamic quantization (MatMulInteger, "
                         "DynamicQuantizeLinear), which TensorRT cannot import; for TensorRT export with "
                         "--precision int8-qdq (or fp8) --calibration-images DIR")
    return precisions


def describe_build(exported: ExportedEngines, out: Path, features: TensorRTFeatures, options: BuildOptions,
                   gpu: tuple[str, str, str | None]) -> BuildRecord:
    """The record of building the plans of the ``exported`` engines into ``out`` on ``gpu`` (name, compute
    capability, CUDA version), before the build: everything but the seconds and sizes, which the build fills in."""
    specs, engines = exported.specs(), exported.folder
    record = BuildRecord(tensorrt_version=features.version, strongly_typed=True,
                         version_compatible=options.version_compatible, gpu_name=gpu[0],
                         compute_capability=gpu[1], cuda_version=gpu[2], hardware_compat=options.hardware_compat,
                         builder_optimization_level=options.builder_optimization_level,
                         workspace_gb=options.workspace_gb,
                         config_name=exported.text.config_name, config=exported.config.to_dict(),
                         max_classes=exported.text.max_classes)
    for spec, metadata in zip(specs, (exported.text, exported.image), strict=True):
        plan_name = f"{spec.name}{PLAN_SUFFIX}"
        command = trtexec_command(spec, engines / spec.file_name, out / plan_name, features, options)
        record.engines[spec.name] = EngineBuild.describe(spec, metadata, engines / spec.file_name, plan_name, command)
    return record


def build_plans(engines: str | Path, out: str | Path, options: BuildOptions = BuildOptions()) -> BuildRecord:
    """Build ``text_gmc.plan`` and ``image_svfr.plan`` from the engines in ``engines`` into ``out``.

    Raises TensorRTUnavailable (TensorRT or GPU missing), OnnxParseError, or RuntimeError when the
    builder fails; in every case the plans and record already in ``out`` stay as they were.
    """
    engines, out = Path(engines), Path(out)
    options.check()
    exported = ExportedEngines.read(engines)
    specs = exported.specs()
    precisions = check_plan_precisions(exported)
    trt = import_tensorrt()
    features = TensorRTFeatures.detect(trt)
    if options.hardware_compat != "none" and not features.hardware_compat:
        raise ValueError(f"TensorRT {features.version} has no hardware compatibility levels (--hardware-compat)")
    if options.version_compatible and not features.version_compatible:
        raise ValueError(f"TensorRT {features.version} cannot build version-compatible plans (--version-compatible)")
    gpu = _gpu()
    for precision in set(precisions.values()):
        need = PLAN_PRECISIONS[precision]
        if tuple(map(int, gpu[1].split("."))) < need:
            raise ValueError(f"{precision} plans need a GPU of compute capability {need[0]}.{need[1]} or newer; "
                             f"{gpu[0]} has {gpu[1]}")
    record = describe_build(exported, out, features, options, gpu)
    cache_path = options.timing_cache
    timing_cache = cache_path.read_bytes() if cache_path is not None and cache_path.is_file() else b""

    with staged_files(out) as staging:
        for spec in specs:
            build = record.engines[spec.name]
            start = time.perf_counter()
            plan, timing_cache = _build_plan(trt, features, spec, engines / spec.file_name, options, timing_cache)
            build.build_seconds, build.plan_bytes = round(time.perf_counter() - start, 3), len(plan)
            (staging / build.plan).write_bytes(plan)
        (staging / BUILD_RECORD).write_text(record.to_json())
    if cache_path is not None:
        write_atomic(cache_path, timing_cache)
    return record
