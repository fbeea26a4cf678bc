"""The TensorRT layer: profiles, trtexec commands, build records, plans tied to the serving TensorRT, Triton
configs for plans, and the runtime.

TensorRT cannot be installed on the CPU machines this suite runs on, so everything that does not need it
runs on trivial ONNX graphs that carry the real ``sigrl`` metadata (the record, the commands, the serving
check and the Triton configs read only metadata and files). The build and the runtime themselves are
exercised by ``test_plans_match_pytorch_at_their_precision`` and
``test_version_compatible_and_loop_free_plans_run``, which skip with the missing piece where TensorRT or a
GPU is absent, and by ``benchmarks/gpu_tensorrt_check.py``.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from stand_in_engines import write_engines

import sigrl
from sigrl.cli import main
from sigrl.deploy.engines import engine_specs
from sigrl.deploy.metadata import ExportedEngines, file_sha256
from sigrl.deploy.runtimes import TensorRTRuntime
from sigrl.deploy.tensorrt import (
    BUILD_RECORD,
    TENSORRT_10,
    TENSORRT_11,
    BuildOptions,
    BuildRecord,
    TensorRTFeatures,
    describe_build,
    parse_errors,
    profile_shapes,
    serving_problems,
    serving_tensorrt,
    trtexec_command,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
HAS_TENSORRT = importlib.util.find_spec("tensorrt") is not None
GPU = ("NVIDIA H100 80GB HBM3", "9.0", "12.4")
BUILT_WITH = TensorRTFeatures("10.13.3.9", weak_typing=True)  # what `tensorrt.__version__` looks like


@pytest.fixture(scope="module")
def tiny_model() -> sigrl.SigRL:
    return sigrl.create_model("tiny")


def write_plans(engines: Path, out: Path, gpu: tuple[str, str, str | None] = GPU,
                options: BuildOptions | None = None) -> BuildRecord:
    """Placeholder plan files with the build record ``sigrl build-engines`` would write for ``engines``
    with TensorRT 10.13.3.9 (nothing here deserializes them: Triton configs and checks read only the record
    and file names)."""
    record = describe_build(ExportedEngines.read(engines), out, BUILT_WITH, options or BuildOptions(), gpu)
    out.mkdir(parents=True, exist_ok=True)
    for build in record.engines.values():
        (out / build.plan).write_bytes(f"placeholder plan {build.engine} sm{gpu[1]}".encode())
    (out / BUILD_RECORD).write_text(record.to_json())
    return record


@pytest.fixture(scope="module")
def engines(tiny_model, tmp_path_factory) -> Path:
    return write_engines(tiny_model, tmp_path_factory.mktemp("engines"))


# ------------------------------------------------------------------------------ profiles and commands


def test_profiles_come_from_the_engine_specs(tiny_model):
    text, image = engine_specs(tiny_model.config)
    assert profile_shapes(text) == {"token_ids": {"min": [1, 2], "opt": [81, 16], "max": [1024, 77]}}
    assert profile_shapes(image) == {
        "images": {"min": [1, 3, 64, 64], "opt": [8, 3, 64, 64], "max": [32, 3, 64, 64]},
        "label_emb": {"min": [1, 64], "opt": [81, 64], "max": [1024, 64]},
        "graph_emb": {"min": [1, 64], "opt": [81, 64], "max": [1024, 64]},
    }


def test_trtexec_commands_for_tensorrt_10_and_11(tiny_model):
    text, _ = engine_specs(tiny_model.config)
    shapes = "--minShapes=token_ids:1x2 --optShapes=token_ids:81x16 --maxShapes=token_ids:1024x77"
    start = f"trtexec --onnx=e/text_gmc.onnx --saveEngine=p/text_gmc.plan {shapes}"
    args = (text, Path("e/text_gmc.onnx"), Path("p/text_gmc.plan"))
    assert trtexec_command(*args, TENSORRT_10) == (
        f"{start} --stronglyTyped --noTF32 --memPoolSize=workspace:4096M --skipInference")
    assert trtexec_command(*args, TENSORRT_11) == f"{start} --noTF32 --memPoolSize=workspace:4096M --skipInference"

    options = BuildOptions(workspace_gb=1.5, timing_cache=Path("t.cache"), hardware_compat="ampere+",
                           builder_optimization_level=5)
    assert trtexec_command(*args, TENSORRT_11, options) == (
        f"{start} --noTF32 --memPoolSize=workspace:1536M --timingCacheFile=t.cache "
        "--hardwareCompatibilityLevel=ampere+ --builderOptimizationLevel=5 --skipInference")
    compatible = BuildOptions(version_compatible=True)
    assert trtexec_command(*args, TENSORRT_10, compatible) == (
        f"{start} --stronglyTyped --noTF32 --memPoolSize=workspace:4096M --versionCompatible --skipInference")
    removed_in_11 = {"--fp16", "--bf16", "--int8", "--fp8", "--best", "--stronglyTyped", "--precisionConstraints"}
    assert not removed_in_11 & set(trtexec_command(*args, TENSORRT_11, options).split())


def test_feature_detection_reads_the_documented_enum_members():
    """``detect`` looks only at which members exist. The namespaces list the members TensorRT's Python API
    reference documents for 10.x and 11.x (BuilderFlag.FP16/BF16/INT8 removed in 11); no TensorRT is run."""
    def module(version, flags):
        return SimpleNamespace(__version__=version, BuilderFlag=SimpleNamespace(**dict.fromkeys(flags)),
                               HardwareCompatibilityLevel=SimpleNamespace(NONE=0, AMPERE_PLUS=1))

    ten = TensorRTFeatures.detect(module("10.13.0", ["FP16", "BF16", "INT8", "TF32", "REFIT", "VERSION_COMPATIBLE"]))
    eleven = TensorRTFeatures.detect(module("11.4.0", ["TF32", "REFIT", "VERSION_COMPATIBLE"]))
    assert (ten.weak_typing, ten.tf32_flag, ten.hardware_compat, ten.version_compatible) == (True, True, True, True)
    assert (eleven.weak_typing, eleven.tf32_flag, eleven.version) == (False, True, "11.4.0")
    assert not TensorRTFeatures.detect(module("10.0.1", ["FP16", "TF32"])).version_compatible


@pytest.mark.parametrize("options, flag", [
    (BuildOptions(workspace_gb=0), "--workspace-gb"), (BuildOptions(hardware_compat="hopper+"), "--hardware-compat"),
    (BuildOptions(builder_optimization_level=6), "--builder-optimization-level")])
def test_build_options_name_the_bad_flag(options, flag):
    with pytest.raises(ValueError, match=flag):
        options.check()


# ------------------------------------------------------------------------------ build record


def test_build_record_describes_the_plans_and_round_trips(tiny_model, engines, tmp_path):
    options = BuildOptions(hardware_compat="ampere+", builder_optimization_level=4, version_compatible=True)
    record = describe_build(ExportedEngines.read(engines), tmp_path / "plans", TENSORRT_11, options, GPU)
    data = json.loads(record.to_json())
    assert data["schema"] == "sigrl.tensorrt-build/2"
    assert {k: data[k] for k in ("gpu_name", "compute_capability", "cuda_version", "hardware_compat",
                                 "builder_optimization_level", "config_name", "strongly_typed", "version_compatible",
                                 "max_classes")} == {
        "gpu_name": GPU[0], "compute_capability": "9.0", "cuda_version": "12.4", "hardware_compat": "ampere+",
        "builder_optimization_level": 4, "config_name": "tiny", "strongly_typed": True, "version_compatible": True,
        "max_classes": 1024}
    assert sorted(data["engines"]) == ["image_svfr", "text_gmc"]
    text = data["engines"]["text_gmc"]
    assert text["plan"] == "text_gmc.plan" and text["onnx_sha256"] == file_sha256(engines / "text_gmc.onnx")
    assert (text["precision"], text["class_chunk"], text["loops"]) == ("fp32", 32, 0)  # stand-in graph, no loops
    assert text["inputs"] == {"token_ids": {"dtype": "int32", "shape": ["C", "L"]}}
    assert text["profile"] == profile_shapes(engine_specs(tiny_model.config)[0])
    assert text["trtexec"].startswith(f"trtexec --onnx={engines / 'text_gmc.onnx'} ")
    assert "--stronglyTyped" not in text["trtexec"] and "--hardwareCompatibilityLevel=ampere+" in text["trtexec"]
    assert BuildRecord.from_dict(data) == record


def test_build_record_reads_precision_and_class_chunk_from_the_metadata(tiny_model, tmp_path):
    engines = write_engines(sigrl.create_model("tiny", class_chunk=8), tmp_path / "engines", precision="fp16")
    record = describe_build(ExportedEngines.read(engines), tmp_path / "plans", TENSORRT_10, BuildOptions(), GPU)
    assert {(b.precision, b.class_chunk) for b in record.engines.values()} == {("fp16", 8)}
    assert record.precision == "fp16"
    with pytest.raises(ValueError, match="precision 'fp12'"):
        ExportedEngines.read(write_engines(tiny_model, tmp_path / "bad", precision="fp12"))


@pytest.mark.parametrize("change, message", [
    (lambda d: d.pop("gpu_name"), r"missing keys \['gpu_name'\]"),
    (lambda d: d.update(extra=1), r"unknown keys \['extra'\]"),
    (lambda d: d.update(schema="sigrl.tensorrt-build/1"), "schema must be 'sigrl.tensorrt-build/2'"),
    (lambda d: d.pop("version_compatible"), r"missing keys \['version_compatible'\]"),
    (lambda d: d["engines"]["image_svfr"].pop("loops"), r"engines.image_svfr: missing keys \['loops'\]"),
    (lambda d: d.update(strongly_typed="yes"), "strongly_typed must be bool"),
    (lambda d: d["engines"]["text_gmc"].update(class_chunk=True), "engines.text_gmc: class_chunk must be int"),
    (lambda d: d["engines"]["text_gmc"].update(precision="fp64"), "engines.text_gmc.precision must be one of"),
    (lambda d: d["engines"]["text_gmc"].pop("onnx_sha256"), r"engines.text_gmc: missing keys \['onnx_sha256'\]"),
    (lambda d: d.update(engines={}), "'engines' must be a non-empty object"),
])
def test_build_record_schema_rejects_bad_records(engines, tmp_path, change, message):
    record = describe_build(ExportedEngines.read(engines), tmp_path, TENSORRT_10, BuildOptions(), GPU)
    data = json.loads(record.to_json())
    change(data)
    with pytest.raises(ValueError, match=message):
        BuildRecord.from_dict(data)


# ------------------------------------------------------------------------------ the command without TensorRT


@pytest.mark.skipif(HAS_TENSORRT, reason="TensorRT is installed here, so its absence cannot be shown")
def test_build_engines_without_tensorrt_fails_in_one_line_with_the_trtexec_commands(engines, tmp_path):
    out = tmp_path / "plans"
    out.mkdir()
    (out / "text_gmc.plan").write_bytes(b"an earlier plan")
    result = subprocess.run([sys.executable, str(REPO_ROOT / "export" / "build_engines.py"), "--engines", str(engines),
                             "--out", str(out), "--workspace-gb", "2"], capture_output=True, text=True, timeout=300)
    assert result.returncode == 1 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("sigrl build-engines: error: the tensorrt Python package cannot be imported")
    for name in ("text_gmc", "image_svfr"):
        assert f"trtexec --onnx={engines / (name + '.onnx')} --saveEngine={out / (name + '.plan')} " in lines[0]
    assert "--memPoolSize=workspace:2048M" in lines[0]
    assert sorted(p.name for p in out.iterdir()) == ["text_gmc.plan"]
    assert (out / "text_gmc.plan").read_bytes() == b"an earlier plan"


def test_build_engines_names_missing_engines_and_bad_flags(tmp_path, capsys):
    assert main(["build-engines", "--engines", str(tmp_path), "--out", str(tmp_path / "p")]) == 2
    assert capsys.readouterr().err.strip() == (f"sigrl build-engines: error: {tmp_path} lacks text_gmc.onnx, "
                                               "image_svfr.onnx: create them with `sigrl export`")
    with pytest.raises(SystemExit) as raised:
        main(["build-engines", "--engines", str(tmp_path), "--out", str(tmp_path), "--hardware-compat", "hopper+"])
    assert raised.value.code == 2 and "--hardware-compat" in capsys.readouterr().err


# ------------------------------------------------------------------------------ Triton configs for plans


def _config(repo: Path, name: str):
    from sigrl.serving.repository import parse_model_config

    return parse_model_config((repo / name / "config.pbtxt").read_text())


def test_triton_configs_for_plans_match_the_build_record(engines, tmp_path):
    pytest.importorskip("tritonclient.grpc", reason="parsing Triton configs needs tritonclient (.[serve])")
    from sigrl.serving.repository import build_repository

    record = write_plans(engines, tmp_path / "plans")
    repo = build_repository(engines, "tensorrt", tmp_path / "repo", plans=[tmp_path / "plans"])
    for name, build in record.engines.items():
        config = _config(repo, name)
        assert config.platform == "tensorrt_plan" and not config.cc_model_filenames
        assert [i.name for i in config.input] == list(build.inputs)
        assert [o.name for o in config.output] == list(build.outputs)
        assert [list(i.dims) for i in config.input] == [[-1 if isinstance(d, str) else d for d in t["shape"]]
                                                         for t in build.inputs.values()]
        warmup = config.model_warmup[0].inputs
        assert {n: list(warmup[n].dims) for n in warmup} == {n: p["min"] for n, p in build.profile.items()}
        assert sorted(p.name for p in (repo / name / "1").iterdir()) == ["model.plan"]
        assert (repo / name / "1" / "model.plan").read_bytes() == (tmp_path / "plans" / build.plan).read_bytes()


def test_plans_for_several_compute_capabilities_use_cc_model_filenames(engines, tmp_path):
    pytest.importorskip("tritonclient.grpc", reason="parsing Triton configs needs tritonclient (.[serve])")
    from sigrl.serving.repository import build_repository

    write_plans(engines, tmp_path / "a100", ("NVIDIA A100-SXM4-80GB", "8.0", "12.4"))
    write_plans(engines, tmp_path / "l4", ("NVIDIA L4", "8.9", "12.4"))
    repo = build_repository(engines, "tensorrt", tmp_path / "repo", plans=[tmp_path / "a100", tmp_path / "l4"])
    for name in ("text_gmc", "image_svfr"):
        assert dict(_config(repo, name).cc_model_filenames) == {"8.0": "model_sm80.plan", "8.9": "model_sm89.plan"}
        assert sorted(p.name for p in (repo / name / "1").iterdir()) == ["model_sm80.plan", "model_sm89.plan"]
        assert (repo / name / "1" / "model_sm89.plan").read_bytes() == f"placeholder plan {name} sm8.9".encode()

    write_plans(engines, tmp_path / "other-l4", ("NVIDIA L4", "8.9", "12.4"))
    with pytest.raises(ValueError, match=r"both hold plans for compute capability 8\.9"):
        build_repository(engines, "tensorrt", tmp_path / "repo2", plans=[tmp_path / "l4", tmp_path / "other-l4"])


def test_plans_of_another_precision_or_engine_are_refused(tiny_model, engines, tmp_path):
    pytest.importorskip("tritonclient.grpc", reason="parsing Triton configs needs tritonclient (.[serve])")
    from sigrl.serving.repository import build_repository

    fp16 = write_engines(tiny_model, tmp_path / "fp16-engines", precision="fp16")
    write_plans(fp16, tmp_path / "fp16-plans")
    with pytest.raises(ValueError, match=r"text_gmc was built at fp16, but .*text_gmc.onnx is fp32"):
        build_repository(engines, "tensorrt", tmp_path / "repo", plans=[tmp_path / "fp16-plans"])

    other = write_engines(tiny_model, tmp_path / "other-engines", checkpoint_note="retrained")
    write_plans(other, tmp_path / "other-plans")
    with pytest.raises(ValueError, match=r"text_gmc was built from another text_gmc.onnx"):
        build_repository(engines, "tensorrt", tmp_path / "repo", plans=[tmp_path / "other-plans"])

    record = json.loads((tmp_path / "fp16-plans" / BUILD_RECORD).read_text())
    record["engines"]["image_svfr"]["profile"]["images"]["max"] = [64, 3, 64, 64]
    (tmp_path / "fp16-plans" / BUILD_RECORD).write_text(json.dumps(record))
    with pytest.raises(ValueError, match=r"image_svfr profile .* differs from the engine's"):
        build_repository(fp16, "tensorrt", tmp_path / "repo", plans=[tmp_path / "fp16-plans"])
    assert not (tmp_path / "repo").exists()


def test_missing_plans_name_the_build_commands(engines, tmp_path):
    pytest.importorskip("tritonclient.grpc", reason="parsing Triton configs needs tritonclient (.[serve])")
    from sigrl.serving.repository import build_repository

    with pytest.raises(FileNotFoundError) as raised:
        build_repository(engines, "tensorrt", tmp_path / "repo", plans=[tmp_path / "none"])
    message = str(raised.value)
    assert str(tmp_path / "none" / BUILD_RECORD) in message
    assert f"sigrl build-engines --engines {engines} --out {tmp_path / 'none'}" in message
    plan = tmp_path / "none" / "image_svfr.plan"
    assert f"trtexec --onnx={engines / 'image_svfr.onnx'} --saveEngine={plan}" in message


def test_onnxruntime_tensorrt_accelerator_config(engines, tmp_path):
    pytest.importorskip("tritonclient.grpc", reason="parsing Triton configs needs tritonclient (.[serve])")
    from sigrl.serving.repository import build_repository

    repo = build_repository(engines, "onnxruntime", tmp_path / "repo", ort_tensorrt="FP16",
                            ort_tensorrt_cache="/models/trt-cache")
    for name in ("text_gmc", "image_svfr"):
        config = _config(repo, name)
        (accelerator,) = config.optimization.execution_accelerators.gpu_execution_accelerator
        assert accelerator.name == "tensorrt"
        assert dict(accelerator.parameters) == {"precision_mode": "FP16", "trt_engine_cache_enable": "1",
                                                "trt_engine_cache_path": "/models/trt-cache"}
    plain = build_repository(engines, "onnxruntime", tmp_path / "plain")
    assert not _config(plain, "text_gmc").HasField("optimization")

    for runtime, kwargs, flag in [("tensorrt", {"ort_tensorrt": "FP16"}, "--ort-tensorrt"),
                                  ("python", {"plans": [tmp_path]}, "--plans"),
                                  ("onnxruntime", {"ort_tensorrt_cache": "/c"}, "--ort-tensorrt-cache"),
                                  ("onnxruntime", {"ort_tensorrt": "FP8"}, "precision_mode")]:
        with pytest.raises(ValueError, match=flag):
            build_repository(engines, runtime, tmp_path / "bad", **kwargs)
    assert not (tmp_path / "bad").exists()


# ------------------------------------------------------------------------------ plans tied to their server


@pytest.mark.parametrize("built, compatible, served, loads", [
    ("10.13.3.9", False, "10.13.3.9", True),
    ("10.13.3.9", False, "10.13.3", True),  # a version given without the build number
    ("10.13.3.9", False, "10.13.2", False),
    ("10.13.3.9", False, "11.1.0", False),
    ("10.8.0.43", True, "10.13.3", True),  # version-compatible: a later release of the same major
    ("10.13.3.9", True, "10.8.0", False),  # never an earlier one
    ("10.13.3.9", True, "11.4.1", True),  # 10.x plans in 11.x
    ("11.1.0", True, "10.16.1", False),
    ("10.13.3.9", True, "12.0.0", False),
])
def test_a_plan_loads_only_where_its_tensorrt_allows(engines, tmp_path, built, compatible, served, loads):
    record = describe_build(ExportedEngines.read(engines), tmp_path, TensorRTFeatures(built, weak_typing=True),
                            BuildOptions(version_compatible=compatible), GPU)
    problems = serving_problems(record, served)
    assert (problems == []) == loads, problems


def test_triton_containers_name_their_tensorrt():
    assert serving_tensorrt("nvcr.io/nvidia/tritonserver:24.10-py3") == "10.5.0.18"
    assert serving_tensorrt("25.01-py3") == "10.8.0.43"
    assert serving_tensorrt(tensorrt_version="10.13.3") == "10.13.3"
    assert serving_tensorrt() is None
    unknown = r"does not know the TensorRT of Triton container 99\.01-py3.*--tensorrt-version"
    with pytest.raises(ValueError, match=unknown):
        serving_tensorrt("99.01-py3")
    with pytest.raises(ValueError, match="either --triton-container or --tensorrt-version"):
        serving_tensorrt("24.10-py3", "10.5.0")
    with pytest.raises(ValueError, match=r"--tensorrt-version must be major\.minor\.patch"):
        serving_tensorrt(tensorrt_version="10.13")


def test_triton_repo_refuses_plans_the_serving_tensorrt_cannot_load(engines, tmp_path, capsys):
    pytest.importorskip("tritonclient.grpc", reason="parsing Triton configs needs tritonclient (.[serve])")
    write_plans(engines, tmp_path / "plans")
    base = ["triton-repo", "--engines", str(engines), "--runtime", "tensorrt", "--plans", str(tmp_path / "plans")]
    assert main([*base, "--out", str(tmp_path / "repo")]) == 2
    assert "--runtime tensorrt needs --triton-container TAG or --tensorrt-version" in capsys.readouterr().err
    assert main([*base, "--triton-container", "24.10-py3", "--out", str(tmp_path / "repo")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "built with TensorRT 10.13.3.9 load only in that TensorRT" in err
    assert "has 10.5.0.18" in err and not (tmp_path / "repo").exists()
    assert main([*base, "--tensorrt-version", "10.13.3", "--out", str(tmp_path / "repo")]) == 0
    assert "version-compatible" not in capsys.readouterr().out
    assert (tmp_path / "repo" / "image_svfr" / "1" / "model.plan").is_file()

    write_plans(engines, tmp_path / "vc-plans", options=BuildOptions(version_compatible=True))
    assert main(["triton-repo", "--engines", str(engines), "--runtime", "tensorrt", "--plans",
                 str(tmp_path / "vc-plans"), "--tensorrt-version", "11.4.1", "--out", str(tmp_path / "vc-repo")]) == 0
    assert "--backend-config=tensorrt,version-compatible=true" in capsys.readouterr().out
    assert main(["triton-repo", "--engines", str(engines), "--runtime", "python", "--tensorrt-version", "10.13.3",
                 "--out", str(tmp_path / "py-repo")]) == 2
    assert "tensorrt runtime only" in capsys.readouterr().err


def test_build_engines_refuses_dynamic_int8_and_takes_the_qdq_precisions(tiny_model, tmp_path, capsys):
    int8 = write_engines(tiny_model, tmp_path / "int8", precision="int8")
    assert main(["build-engines", "--engines", str(int8), "--out", str(tmp_path / "plans")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "MatMulInteger" in err and "--precision int8-qdq" in err
    if HAS_TENSORRT:
        return  # beyond the precision check a real build starts; test_plans_match_pytorch_at_their_precision covers it
    for precision in ("int8-qdq", "fp8"):
        engines = write_engines(tiny_model, tmp_path / precision, precision=precision)
        assert main(["build-engines", "--engines", str(engines), "--out", str(tmp_path / "plans")]) == 1
        assert "the tensorrt Python package cannot be imported" in capsys.readouterr().err  # past the precision check


def test_onnx_parser_errors_are_one_line_with_every_node():
    """The format of TensorRT's IParserError list (objects with its accessor methods; no parser runs here)."""
    def error(index, name, op, desc):
        return SimpleNamespace(node=lambda: index, node_name=lambda: name, node_operator=lambda: op,
                               code=lambda: "ErrorCode.UNSUPPORTED_NODE", desc=lambda: desc)

    text = parse_errors([error(12, "node_scan_3", "Scan", "Assertion failed:\n  loop output\n"),
                         error(40, "node_mm", "MatMulInteger", "no importer")])
    assert "\n" not in text
    assert text == ("node 12 'node_scan_3' (Scan): ErrorCode.UNSUPPORTED_NODE: Assertion failed: loop output; "
                    "node 40 'node_mm' (MatMulInteger): ErrorCode.UNSUPPORTED_NODE: no importer")


# ------------------------------------------------------------------------------ the runtime


def test_tensorrt_runtime_imports_without_tensorrt_and_names_what_it_needs(engines, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"build_record\.json not found: build the plans with"):
        TensorRTRuntime(tmp_path)
    write_plans(engines, tmp_path / "plans")
    with pytest.raises(RuntimeError, match="TensorRT plans run on a CUDA device; got device='cpu'"):
        TensorRTRuntime(tmp_path / "plans", device="cpu")


def _gpu_tensorrt_missing() -> str | None:
    import torch

    if not HAS_TENSORRT:
        return "needs the tensorrt Python package with libnvinfer (not installed)"
    if not torch.cuda.is_available():
        return "needs a CUDA GPU (torch.cuda.is_available() is False)"
    return None


GPU_TENSORRT = pytest.mark.skipif(_gpu_tensorrt_missing() is not None, reason=str(_gpu_tensorrt_missing()))


def _engines_at(precision: str, tiny_engines, tmp_path: Path) -> Path:
    """The trained tiny's engines at ``precision`` (int8-qdq and fp8 calibrated on synthetic training images)."""
    from sigrl.deploy.onnx_export import export_checkpoint
    from sigrl.deploy.quantization import write_synthetic_images

    checkpoint, fp32 = tiny_engines
    if precision == "fp32":
        return fp32
    calibration = write_synthetic_images(tmp_path / "calibration", 64) if precision in ("int8-qdq", "fp8") else None
    export_checkpoint(checkpoint, tmp_path / precision, precision=precision, calibration_images=calibration)
    return tmp_path / precision


@pytest.mark.gpu
@GPU_TENSORRT
@pytest.mark.parametrize("precision", ["fp32", "fp16", "bf16", "int8-qdq", "fp8"])
def test_plans_match_pytorch_at_their_precision(tiny_engines, tmp_path, precision):
    """Build the trained tiny engines into plans and compare them with PyTorch (real TensorRT, real GPU)."""
    import torch

    from sigrl.checkpoint import load_checkpoint
    from sigrl.deploy.parity import compare_runtimes, parity_inputs
    from sigrl.deploy.runtimes import TorchRuntime
    from sigrl.deploy.tensorrt import PLAN_PRECISIONS, build_plans

    if torch.cuda.get_device_capability() < PLAN_PRECISIONS[precision]:
        pytest.skip(f"{precision} plans need compute capability {PLAN_PRECISIONS[precision]}")
    engine_dir = _engines_at(precision, tiny_engines, tmp_path)
    record = build_plans(engine_dir, tmp_path / "plans")
    assert set(record.engines) == {"text_gmc", "image_svfr"} and all(b.plan_bytes for b in record.engines.values())
    assert {b.loops for b in record.engines.values()} == {2}
    model = load_checkpoint(tiny_engines[0])
    runtime = TensorRTRuntime(tmp_path / "plans")
    assert runtime.precision == precision
    vocabularies, images = parity_inputs(model.vocabulary or [], model.prompt_template, 64, [2, 12], [1, 8])
    rows = compare_runtimes(TorchRuntime(model, "cuda"), runtime, vocabularies, images)
    assert all(r.passed for r in rows), [r.to_dict() for r in rows if not r.passed]
    with pytest.raises(ValueError, match="outside the engine's range"):
        runtime.score_images(np.repeat(images[0], 33, axis=0), *runtime.encode_labels(vocabularies[0]))


@pytest.mark.gpu
@GPU_TENSORRT
def test_version_compatible_and_loop_free_plans_run(tiny_engines, tmp_path):
    """A version-compatible build (lean runtime inside) of the loop-free engines loads and matches PyTorch."""
    from sigrl.checkpoint import load_checkpoint
    from sigrl.deploy.onnx_export import export_checkpoint
    from sigrl.deploy.parity import compare_runtimes, parity_inputs
    from sigrl.deploy.runtimes import TorchRuntime
    from sigrl.deploy.tensorrt import build_plans

    checkpoint, _ = tiny_engines
    export_checkpoint(checkpoint, tmp_path / "engines", class_chunk=32, max_classes=32)
    record = build_plans(tmp_path / "engines", tmp_path / "plans", BuildOptions(version_compatible=True))
    assert record.version_compatible and record.max_classes == 32
    assert {b.loops for b in record.engines.values()} == {0}
    model = load_checkpoint(checkpoint)
    vocabularies, images = parity_inputs(model.vocabulary or [], model.prompt_template, 64, [2, 32], [1, 8])
    rows = compare_runtimes(TorchRuntime(model, "cuda"), TensorRTRuntime(tmp_path / "plans"), vocabularies, images)
    assert all(r.passed for r in rows), [r.to_dict() for r in rows if not r.passed]
