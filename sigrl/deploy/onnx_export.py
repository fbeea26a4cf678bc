"""Export a trained model as two self-contained ONNX graphs: ``text_gmc.onnx`` and ``image_svfr.onnx``.

The dynamo-based exporter (``torch.onnx.export(..., dynamo=True)``) at opset 18 (22 for bf16, int8-qdq and
fp8), one file per engine (``external_data=False``; the vit-b16 graphs are well under 2 GB). Each graph gets the full
``onnx.checker`` check and strict shape inference, and carries metadata (config, preprocessing,
prompt template, checkpoint hash, opset) that Triton and the parity tools read back. Both files are
written to a temporary folder beside the output and renamed into place only when both succeeded.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

import sigrl
from sigrl.checkpoint import load_checkpoint
from sigrl.deploy.engines import MAX_CLASSES, EngineSpec, ImageSVFREngine, engine_specs
from sigrl.deploy.graphs import ImageSVFRGraph, TextGMCGraph
from sigrl.deploy.metadata import EngineMetadata, file_sha256
from sigrl.deploy.onnx_passes import close_scan_bodies, count_loops, per_image_loop, prune_scans, quantize_int8
from sigrl.deploy.quantization import calibration_images, quantize_image_engine
from sigrl.files import staged_files
from sigrl.model import SigRL
from sigrl.precision import cast_model, check_precision, float_precision
from sigrl.preprocess import EvalTransform
from sigrl.registry import CALIBRATED_PRECISIONS

OPSET = 18
# opset 18 has no bf16 Conv or Elu, and its QuantizeLinear takes neither fp16 scales nor FP8; opset 22 has all
# three (TensorRT 10.x reads opsets 9-24)
LATE_OPSET = 22
CALIBRATION_BATCH = 8  # calibration images per ONNX Runtime run
CPU_PRECISIONS = ("int8",)  # graphs for CPU runtimes: Scan bodies closed completely (see onnx_passes)


def opset_for(precision: str) -> int:
    """The ONNX opset an engine of ``precision`` is exported at."""
    return LATE_OPSET if precision in ("bf16", *CALIBRATED_PRECISIONS) else OPSET


def engine_metadata(model: SigRL, spec: EngineSpec, checkpoint_sha256: str | None,
                    precision: str = "fp32") -> dict[str, str]:
    """What a consumer of one engine file needs besides the graph, as ONNX ``metadata_props``
    (:class:`~sigrl.deploy.metadata.EngineMetadata`)."""
    config = model.config
    preprocess = EvalTransform(config.vision_cfg["image_size"], config.image_mean, config.image_std).describe()
    return EngineMetadata(
        engine=spec.name, config=config, config_name=model.config_name or "", prompt_template=model.prompt_template,
        preprocess=preprocess, vocabulary=list(model.vocabulary or []), checkpoint_sha256=checkpoint_sha256 or "",
        opset=opset_for(precision), axis_ranges={k: list(v) for k, v in spec.axis_ranges.items()},
        precision=precision, sigrl_version=sigrl.__version__,
        torch_version=torch.__version__,
    ).props()


def _name_dynamic_axes(model: onnx.ModelProto, spec: EngineSpec) -> None:
    """Give graph inputs/outputs the spec's axis names (C, L, B) instead of the exporter's s0, s1, ..."""
    tensors = {t.name: t for t in (*spec.inputs, *spec.outputs)}
    for value in (*model.graph.input, *model.graph.output):
        for axis, name in tensors[value.name].dynamic_axes().items():
            value.type.tensor_type.shape.dim[axis].dim_param = name


def export_engine(module: nn.Module, spec: EngineSpec, example: tuple[torch.Tensor, ...],
                  metadata: dict[str, str], path: Path, precision: str = "fp32",
                  calibration: Iterator[dict[str, np.ndarray]] | None = None) -> onnx.ModelProto:
    """Export one engine wrapper to ``path``, checked; returns the saved model proto.

    fp16 and bf16 come from the wrapper's module, already cast (as does the fp16 base of int8-qdq and
    fp8). ``int8`` quantizes the graph dynamically and runs it image by image, with every Scan body
    closed for CPU runtimes; ``int8-qdq`` and ``fp8`` add Q/DQ pairs calibrated on ``calibration``
    (engine inputs). Every graph loses its placeholder loop states and unread loop outputs.
    """
    with torch.no_grad():
        program = torch.onnx.export(
            module, example, input_names=spec.input_names, output_names=spec.output_names,
            dynamic_shapes=spec.export_dynamic_shapes(), opset_version=opset_for(precision), dynamo=True,
            external_data=False, verbose=False)
    if program is None:  # only the TorchScript exporter (dynamo=False) returns nothing
        raise RuntimeError(f"torch.onnx.export returned no program for {spec.name}")
    model = program.model_proto
    prune_scans(model.graph)
    if precision == "int8":
        model = per_image_loop(quantize_int8(model), spec.inputs[0].name)
    close_scan_bodies(model.graph, carry_activations=precision in CPU_PRECISIONS)
    if precision in CALIBRATED_PRECISIONS:
        if calibration is None:
            raise ValueError(f"a {precision} engine needs calibration inputs (--calibration-images)")
        quantize_image_engine(model, precision, calibration)
    _name_dynamic_axes(model, spec)
    onnx.helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    onnx.save(model, str(path))
    return model


def engine_precisions(precision: str) -> dict[str, str]:
    """Each engine's own precision for an export at ``precision``. The quantized exports quantize the image
    engine only: int8 keeps the text engine fp32 (quantizing it costs ~4 % relative error on 1006 labels,
    for a step that runs once per vocabulary), int8-qdq and fp8 keep it at their fp16 base."""
    text = {"int8": "fp32"}.get(check_precision(precision), float_precision(precision))
    return {"text_gmc": text, "image_svfr": precision}


def check_calibration(precision: str, folder: str | Path | None) -> None:
    """ValueError naming ``--calibration-images`` unless a folder of images comes with a calibrated precision
    and with no other."""
    if folder is None and precision in CALIBRATED_PRECISIONS:
        raise ValueError(f"--precision {precision} needs --calibration-images DIR (a folder of your images)")
    if folder is not None and precision not in CALIBRATED_PRECISIONS:
        raise ValueError(f"--calibration-images is for --precision {' or '.join(CALIBRATED_PRECISIONS)}, "
                         f"not {precision}")
    if folder is not None:
        calibration_images(folder)


def calibration_feeds(model: SigRL, folder: str | Path, max_classes: int) -> Iterator[dict[str, np.ndarray]]:
    """Image-engine inputs for calibration: every image under ``folder``, preprocessed as served, in batches,
    against the model's vocabulary (its first ``max_classes`` labels; 81 made-up names for a model without one)
    encoded by the fp32 model."""
    from sigrl.data import build_transform, load_rgb
    from sigrl.tokenizer import tokenize

    paths = calibration_images(folder)
    transform = build_transform(model.config.vision_cfg["image_size"], False, model.config.image_mean,
                                model.config.image_std)
    names = (model.vocabulary or [f"concept {i}" for i in range(81)])[:max_classes]
    with torch.no_grad():
        label_emb, graph_emb = (t.float().numpy() for t in model.encode_labels(tokenize(names, model.prompt_template)))
    for start in range(0, len(paths), CALIBRATION_BATCH):
        images = torch.stack([transform(load_rgb(str(p))) for p in paths[start:start + CALIBRATION_BATCH]])
        yield ImageSVFREngine.feeds(images.numpy(), label_emb, graph_emb)


def export_model(model: SigRL, out_dir: str | Path, checkpoint_sha256: str | None = None, precision: str = "fp32",
                 class_chunk: int | None = None, max_classes: int = MAX_CLASSES,
                 calibration_images: str | Path | None = None) -> dict[str, dict]:
    """Write ``text_gmc.onnx`` and ``image_svfr.onnx`` into ``out_dir``; returns per engine its path, precision,
    loops, seconds and bytes.

    ``precision``: fp32, fp16 or bf16 (weights and matrix products; fp32 islands, fp32 I/O), int8 (image
    engine dynamically quantized for ONNX Runtime, text engine fp32), or int8-qdq / fp8 (image engine with
    Q/DQ pairs for TensorRT, calibrated on the images in ``calibration_images``; text engine fp16).
    ``class_chunk``: SVFR classes per loop iteration (more means fewer iterations and more memory);
    ``max_classes``: the largest vocabulary the engines take. Where a chunk covers ``max_classes``, its
    loop is left out of the graph. The parameters are frozen first: with ``requires_grad`` on, the
    exporter fails inside the scan loops.
    """
    precisions = engine_precisions(precision)
    check_calibration(precision, calibration_images)
    model = model.eval().requires_grad_(False)
    if class_chunk is not None:
        model.set_class_chunk(class_chunk)
        model.config = replace(model.config, class_chunk=class_chunk)
    text_spec, image_spec = engine_specs(model.config, max_classes)
    calibration = calibration_feeds(model, calibration_images, max_classes) if calibration_images else None
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    cast = {p: cast_model(model, float_precision(p)) for p in set(precisions.values())}
    jobs = [(TextGMCGraph(cast[precisions["text_gmc"]], max_classes).eval(), text_spec, None),
            (ImageSVFRGraph(cast[precisions["image_svfr"]], max_classes).eval(), image_spec, calibration)]
    report = {}
    with staged_files(out_dir) as staging:  # both engines, or neither
        for module, spec, feeds in jobs:
            start = time.perf_counter()
            own = precisions[spec.name]
            metadata = engine_metadata(model, spec, checkpoint_sha256, own)
            proto = export_engine(module, spec, spec.example_inputs(), metadata, staging / spec.file_name, own, feeds)
            report[spec.name] = {"seconds": time.perf_counter() - start, "precision": own,
                                 "path": out_dir / spec.file_name, "loops": count_loops(proto.graph),
                                 "bytes": (staging / spec.file_name).stat().st_size}
    return report


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path, expect_config: str | None = None,
                      precision: str = "fp32", class_chunk: int | None = None, max_classes: int = MAX_CLASSES,
                      calibration_images: str | Path | None = None) -> dict[str, dict]:
    """Load a sigrl checkpoint and export both engines (see :func:`export_model`).

    ``expect_config`` guards against exporting a checkpoint of another configuration than intended.
    """
    check_precision(precision)
    if class_chunk is not None and class_chunk < 1:
        raise ValueError(f"--class-chunk must be a positive number of classes, got {class_chunk}")
    check_calibration(precision, calibration_images)
    model = load_checkpoint(checkpoint)
    if expect_config is not None and model.config_name != expect_config:
        raise ValueError(f"checkpoint {checkpoint} holds config {model.config_name!r}, not {expect_config!r}")
    return export_model(model, out_dir, checkpoint_sha256=file_sha256(checkpoint), precision=precision,
                        class_chunk=class_chunk, max_classes=max_classes, calibration_images=calibration_images)
