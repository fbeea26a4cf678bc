"""Export a trained model as two self-contained ONNX graphs: ``text_gmc.onnx`` and ``image_svfr.onnx``.

The dynamo-based exporter (``torch.onnx.export(..., dynamo=True)``) at opset 18, one file per engine
(``external_data=False``; the vit-b16 graphs are well under 2 GB). Each graph gets the full
``onnx.checker`` check and strict shape inference, and carries metadata (config, preprocessing,
prompt template, checkpoint hash, opset) that Triton and the parity tools read back. Both files are
written to a temporary folder beside the output and renamed into place only when both succeeded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import onnx
import torch
from torch import nn

import sigrl
from sigrl.checkpoint import load_checkpoint
from sigrl.deploy.engines import EngineSpec, engine_specs
from sigrl.deploy.graphs import ImageSVFRGraph, TextGMCGraph
from sigrl.deploy.onnx_passes import close_scan_bodies, per_image_loop, quantize_int8
from sigrl.deploy.tolerances import TOLERANCES
from sigrl.model import SigRL
from sigrl.precision import FLOAT_DTYPES, cast_model, check_precision
from sigrl.preprocess import EvalTransform

OPSET = 18
BF16_OPSET = 22  # opset 18 has no bf16 Conv or Elu; opset 22 gave most operators bf16 (TensorRT 10.x reads 9-24)


def opset_for(precision: str) -> int:
    """The ONNX opset an engine of ``precision`` is exported at."""
    return BF16_OPSET if precision == "bf16" else OPSET
METADATA_PREFIX = "sigrl."


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def engine_metadata(model: SigRL, spec: EngineSpec, checkpoint_sha256: str | None, precision: str = "fp32",
                    export_precision: str | None = None) -> dict[str, str]:
    """What a consumer of one engine file needs besides the graph, as ONNX ``metadata_props``.

    ``precision`` is this graph's own; ``export_precision`` what ``sigrl export --precision`` asked for
    (they differ for int8, whose text engine stays fp32).
    """
    config = model.config
    preprocess = EvalTransform(config.vision_cfg["image_size"], config.image_mean, config.image_std).describe()
    values = {
        "engine": spec.name, "config_name": model.config_name or "", "config": json.dumps(config.to_dict()),
        "prompt_template": model.prompt_template, "preprocess": json.dumps(preprocess),
        "vocabulary": json.dumps(model.vocabulary or []), "checkpoint_sha256": checkpoint_sha256 or "",
        "opset": str(opset_for(precision)), "axis_ranges": json.dumps(spec.axis_ranges),
        "precision": precision, "export_precision": export_precision or precision,
        "tolerances": TOLERANCES[precision].to_json(),
        "class_chunk": str(config.class_chunk), "gmc_node_chunk": str(config.gmc_node_chunk),
        "sigrl_version": sigrl.__version__, "torch_version": torch.__version__,
    }
    return {METADATA_PREFIX + key: value for key, value in values.items()}


def read_metadata(path: str | Path) -> dict[str, str]:
    """The ``sigrl.*`` metadata of an exported engine, prefix removed (the weights are not loaded)."""
    model = onnx.load(str(path), load_external_data=False)
    return {p.key.removeprefix(METADATA_PREFIX): p.value for p in model.metadata_props
            if p.key.startswith(METADATA_PREFIX)}


def _name_dynamic_axes(model: onnx.ModelProto, spec: EngineSpec) -> None:
    """Give graph inputs/outputs the spec's axis names (C, L, B) instead of the exporter's s0, s1, ..."""
    tensors = {t.name: t for t in (*spec.inputs, *spec.outputs)}
    for value in (*model.graph.input, *model.graph.output):
        for axis, name in tensors[value.name].dynamic_axes().items():
            value.type.tensor_type.shape.dim[axis].dim_param = name


def export_engine(module: nn.Module, spec: EngineSpec, example: tuple[torch.Tensor, ...],
                  metadata: dict[str, str], path: Path, precision: str = "fp32") -> onnx.ModelProto:
    """Export one engine wrapper to ``path``, checked; returns the saved model proto.

    ``precision`` int8 quantizes the graph and runs it image by image (see ``onnx_passes``); fp16 and
    bf16 come from the wrapper's module, already cast. Every Scan body is closed in every precision.
    """
    with torch.no_grad():
        program = torch.onnx.export(
            module, example, input_names=spec.input_names, output_names=spec.output_names,
            dynamic_shapes=spec.export_dynamic_shapes(), opset_version=opset_for(precision), dynamo=True,
            external_data=False, verbose=False)
    model = program.model_proto
    if precision == "int8":
        model = per_image_loop(quantize_int8(model), spec.inputs[0].name)
    close_scan_bodies(model.graph)
    _name_dynamic_axes(model, spec)
    onnx.helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.save(model, str(path))
    return model


def engine_precisions(precision: str) -> dict[str, str]:
    """Each engine's own precision for an export at ``precision``: int8 keeps the text engine fp32
    (quantizing it costs ~4 % relative error on 1006 labels, for a step that runs once per vocabulary)."""
    check_precision(precision)
    return {"text_gmc": "fp32" if precision == "int8" else precision, "image_svfr": precision}


def export_model(model: SigRL, out_dir: str | Path, checkpoint_sha256: str | None = None, precision: str = "fp32",
                 class_chunk: int | None = None) -> dict[str, dict]:
    """Write ``text_gmc.onnx`` and ``image_svfr.onnx`` into ``out_dir``; returns per-engine path, seconds, bytes.

    ``precision``: fp32, fp16 or bf16 (weights and matrix products; fp32 islands, fp32 I/O) or int8 (image
    engine quantized, text engine fp32). ``class_chunk``: SVFR classes per loop iteration in the graph
    (more means fewer iterations and more memory). The parameters are frozen first: with
    ``requires_grad`` on, the exporter fails inside the scan loops.
    """
    precisions = engine_precisions(precision)
    model = model.eval().requires_grad_(False)
    if class_chunk is not None:
        model.set_class_chunk(class_chunk)
        model.config = replace(model.config, class_chunk=class_chunk)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    text_spec, image_spec = engine_specs(model.config)
    cast = {p: cast_model(model, p if p in FLOAT_DTYPES else "fp32") for p in set(precisions.values())}
    jobs = [(TextGMCGraph(cast[precisions["text_gmc"]]).eval(), text_spec),
            (ImageSVFRGraph(cast[precisions["image_svfr"]]).eval(), image_spec)]
    staging = Path(tempfile.mkdtemp(prefix=".export-", dir=out_dir))
    report = {}
    try:
        for module, spec in jobs:
            start = time.perf_counter()
            own = precisions[spec.name]
            metadata = engine_metadata(model, spec, checkpoint_sha256, own, precision)
            export_engine(module, spec, spec.example_inputs(), metadata, staging / spec.file_name, own)
            report[spec.name] = {"seconds": time.perf_counter() - start, "precision": own,
                                 "bytes": (staging / spec.file_name).stat().st_size}
        for _, spec in jobs:
            os.replace(staging / spec.file_name, out_dir / spec.file_name)
            report[spec.name]["path"] = out_dir / spec.file_name
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return report


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, expect_config: str | None = None,
                      precision: str = "fp32", class_chunk: int | None = None) -> dict[str, dict]:
    """Load a sigrl checkpoint and export both engines (see :func:`export_model`).

    ``expect_config`` guards against exporting a checkpoint of another configuration than intended.
    """
    check_precision(precision)
    if class_chunk is not None and class_chunk < 1:
        raise ValueError(f"--class-chunk must be a positive number of classes, got {class_chunk}")
    model = load_checkpoint(checkpoint)
    if expect_config is not None and model.config_name != expect_config:
        raise ValueError(f"checkpoint {checkpoint} holds config {model.config_name!r}, not {expect_config!r}")
    return export_model(model, out_dir, checkpoint_sha256=file_sha256(checkpoint), precision=precision,
                        class_chunk=class_chunk)
