"""Stand-in engine files for tests that read only what surrounds the graph (metadata, names, file layout)."""

from __future__ import annotations

from pathlib import Path

import onnx

import sigrl
from sigrl.deploy.engines import engine_specs
from sigrl.deploy.onnx_export import engine_metadata


def write_engines(model: sigrl.SigRL, out: Path, checkpoint_sha256: str | None = None, **changes: str) -> Path:
    """``text_gmc.onnx`` and ``image_svfr.onnx`` in ``out`` as one-node graphs carrying the metadata ``sigrl export``
    writes for ``model``, with ``changes`` to its ``sigrl.*`` keys (e.g. ``precision="fp16"``)."""
    out.mkdir(parents=True, exist_ok=True)
    for spec in engine_specs(model.config):
        value = onnx.helper.make_tensor_value_info("v", onnx.TensorProto.FLOAT, [1])
        graph = onnx.helper.make_graph([onnx.helper.make_node("Neg", ["v"], ["w"])], spec.name, [value],
                                       [onnx.helper.make_tensor_value_info("w", onnx.TensorProto.FLOAT, [1])])
        proto = onnx.helper.make_model(graph)
        props = engine_metadata(model, spec, checkpoint_sha256) | {f"sigrl.{k}": v for k, v in changes.items()}
        onnx.helper.set_model_props(proto, props)
        onnx.save(proto, out / spec.file_name)
    return out
