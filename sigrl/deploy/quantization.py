"""Explicit quantization for TensorRT: ``int8-qdq`` and ``fp8`` image engines, calibrated on the user's images.

TensorRT builds quantized layers from QuantizeLinear/DequantizeLinear (Q/DQ) pairs in the graph
("explicit quantization", the only kind a strongly typed network has). Its rules, which this module
follows: symmetric quantization (zero points 0), int8 in [-128, 127] or FP8 E4M3 in [-448, 448], one
scale per activation tensor, weights stored quantized behind a DequantizeLinear, and Q/DQ on the
inputs of the weighted operators (MatMul, Gemm, Conv). int8 weights get one scale per output channel;
FP8 weights one per tensor. Everything else stays in the graph's float type: the quantized graphs are
the fp16 export with Q/DQ added, so TensorRT runs the rest in fp16 with the fp32 islands kept.

Why not ModelOpt's ONNX quantizer or ONNX Runtime's ``quantize_static``: most of the image engine's
matrix products (the SDA and VFR projections, B×C×P×D each) sit inside ``Scan`` bodies, and both tools
quantize the main graph only (ONNX Runtime quantizes subgraphs in dynamic mode alone; ModelOpt walks the
main graph with onnx-graphsurgeon and calls ``quantize_static``). Calibration also has to see inside
the loops. Here every scope is treated alike: each activation to quantize gets an ``amax`` probe
(ReduceMax of Abs); a probe inside a loop body leaves the loop as a per-iteration scan output that the
enclosing graph reduces again, so one ONNX Runtime run per calibration batch measures them all.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sigrl.deploy.onnx_passes import add_scan_output, scan_body

WEIGHTED_OPS = ("MatMul", "Gemm", "Conv")
Scope = tuple[int, ...]  # indices of the Scan nodes from the main graph down to a body; () is the main graph


@dataclass(frozen=True)
class QuantFormat:
    """How one precision quantizes: the ONNX element type, its largest magnitude and the weight granularity."""

    elem_type: int
    limit: float
    per_channel_weights: bool

    def quantize(self, values: np.ndarray, scale: np.ndarray) -> np.ndarray:
        """``values / scale`` in the quantized type (int8: rounded half to even and clipped, as TensorRT does)."""
        scaled = np.clip(values / scale, -self.limit, self.limit)
        if self.elem_type == TensorProto.INT8:
            return np.rint(scaled).astype(np.int8)
        return scaled.astype(ml_dtypes.float8_e4m3fn)

    def zero(self, shape: tuple[int, ...], name: str) -> TensorProto:
        """A zero point of this type (TensorRT takes only 0)."""
        dtype = np.int8 if self.elem_type == TensorProto.INT8 else ml_dtypes.float8_e4m3fn
        return numpy_helper.from_array(np.zeros(shape, dtype=dtype), name)


FORMATS = {
    "int8-qdq": QuantFormat(TensorProto.INT8, 127.0, per_channel_weights=True),
    "fp8": QuantFormat(TensorProto.FLOAT8E4M3FN, 448.0, per_channel_weights=False),
}


@dataclass(frozen=True)
class _Site:
    """A weighted node to quantize: its scope, its index there, what it reads, the weight's channel axis."""

    scope: Scope
    index: int
    activation: str
    weight: str
    weight_axis: int | None  # None: the weight gets one scale


def _scopes(graph: onnx.GraphProto, scope: Scope = ()) -> Iterator[tuple[Scope, onnx.GraphProto]]:
    """The graph and every Scan body in it, depth first, with their scope paths."""
    yield scope, graph
    for index, node in enumerate(graph.node):
        if node.op_type == "Scan":
            yield from _scopes(scan_body(node), (*scope, index))


def _weight_axis(node: onnx.NodeProto, weight: TensorProto) -> int | None:
    """The output-channel axis of a 2-D MatMul/Gemm weight or a Conv kernel (None for other shapes)."""
    if node.op_type == "Conv":
        return 0
    if len(weight.dims) != 2:
        return None
    transposed = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
    return 0 if transposed else 1


def quantization_sites(model: onnx.ModelProto) -> list[_Site]:
    """Weighted nodes whose weight (input 1) is a float initializer of their own scope that only such
    nodes read as their weight: those can be quantized without changing any other reader."""
    sites = []
    for scope, graph in _scopes(model.graph):
        weights = {t.name: t for t in graph.initializer
                   if t.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16)}
        readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for node in graph.node:
            for position, name in enumerate(node.input):
                readers.setdefault(name, []).append((node, position))
        for index, node in enumerate(graph.node):
            if node.op_type not in WEIGHTED_OPS or len(node.input) < 2 or node.input[1] not in weights:
                continue
            if all(reader.op_type in WEIGHTED_OPS and position == 1 for reader, position in readers[node.input[1]]):
                sites.append(_Site(scope, index, node.input[0], node.input[1],
                                   _weight_axis(node, weights[node.input[1]])))
    return sites


def _probe_name(scope: Scope, name: str) -> str:
    return "amax__" + "_".join(map(str, scope)) + "__" + name


def _expose(model: onnx.ModelProto, probes: dict[Scope, set[str]]) -> list[str]:
    """Add an amax probe (float32 scalar) for each activation in ``probes`` and make every probe a graph
    output: a probe in a body leaves its Scan as a scan output and is reduced again outside. Returns the
    graph outputs, named by :func:`_probe_name`."""

    def probe(graph: onnx.GraphProto, scope: Scope) -> list[str]:  # the probes of this scope and below, as scalars here
        found = []
        for name in sorted(probes.get(scope, ())):
            out = _probe_name(scope, name)
            graph.node.extend([helper.make_node("Abs", [name], [f"{out}__abs"]),
                               helper.make_node("ReduceMax", [f"{out}__abs"], [f"{out}__max"], keepdims=0),
                               helper.make_node("Cast", [f"{out}__max"], [out], to=TensorProto.FLOAT)])
            found.append(out)
        for index, node in enumerate(list(graph.node)):
            if node.op_type != "Scan" or not any(s[:len(scope) + 1] == (*scope, index) for s in probes):
                continue
            for inner in probe(scan_body(node), (*scope, index)):
                add_scan_output(node, inner, f"{inner}__per_iteration")
                graph.node.append(helper.make_node("ReduceMax", [f"{inner}__per_iteration"], [inner], keepdims=0))
                found.append(inner)
        return found

    outputs = probe(model.graph, ())
    model.graph.output.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, []) for name in outputs)
    return outputs


def calibrate(model: onnx.ModelProto, sites: Sequence[_Site],
              feeds: Iterable[dict[str, np.ndarray]]) -> dict[str, float]:
    """The largest |value| (amax) of each site's activation over every feed, keyed by :func:`_probe_name`,
    measured by ONNX Runtime (CPU) on a copy of ``model`` with probes added."""
    import onnxruntime as ort

    probes: dict[Scope, set[str]] = {}
    for site in sites:
        probes.setdefault(site.scope, set()).add(site.activation)
    augmented = onnx.ModelProto()
    augmented.CopyFrom(model)
    names = _expose(augmented, probes)
    session = ort.InferenceSession(augmented.SerializeToString(), providers=["CPUExecutionProvider"])
    amax = dict.fromkeys(names, 0.0)
    for feed in feeds:
        for name, value in zip(names, session.run(names, feed)):
            amax[name] = max(amax[name], float(value))
    return amax


def _scale(amax: float | np.ndarray, fmt: QuantFormat, dtype: np.dtype) -> np.ndarray:
    """amax / limit in ``dtype`` (the type the graph computes in), never 0 nor below its smallest normal."""
    return np.maximum(np.asarray(amax, dtype=np.float32) / fmt.limit, np.finfo(dtype).tiny).astype(dtype)


def insert_qdq(model: onnx.ModelProto, sites: Sequence[_Site], amax: dict[str, float], fmt: QuantFormat) -> int:
    """Quantize each site in place: its activation through a Q/DQ pair with the calibrated scale, its
    weight stored in ``fmt`` behind a DequantizeLinear. Returns how many nodes were quantized."""
    graphs = dict(_scopes(model.graph))
    by_scope: dict[Scope, list[_Site]] = {}
    for site in sites:
        by_scope.setdefault(site.scope, []).append(site)
    for scope in sorted(by_scope, key=len, reverse=True):  # bodies first: rebuilding a graph copies its Scan nodes
        _quantize_scope(graphs[scope], scope, by_scope[scope], amax, fmt)
    return len(sites)


def _quantize_scope(graph: onnx.GraphProto, scope: Scope, sites: Sequence[_Site], amax: dict[str, float],
                    fmt: QuantFormat) -> None:
    weights = {t.name: t for t in graph.initializer}
    before: dict[int, list[onnx.NodeProto]] = {}  # new nodes to insert before the node at this index
    replaced: dict[str, str] = {}  # original name -> its dequantized stand-in
    for site in sites:
        activation, weight_name = site.activation, site.weight
        inserted = before.setdefault(site.index, [])
        if activation not in replaced:
            dtype = helper.tensor_dtype_to_np_dtype(weights[weight_name].data_type)  # MatMul/Conv inputs share it
            scale = _scale(amax[_probe_name(scope, activation)], fmt, dtype)
            replaced[activation] = f"{activation}__dq"
            graph.initializer.extend([numpy_helper.from_array(scale, f"{activation}__scale"),
                                      fmt.zero((), f"{activation}__zero")])
            inserted += [helper.make_node("QuantizeLinear", [activation, f"{activation}__scale", f"{activation}__zero"],
                                          [f"{activation}__q"], name=f"{activation}__quantize"),
                         helper.make_node("DequantizeLinear", [f"{activation}__q", f"{activation}__scale",
                                                               f"{activation}__zero"], [replaced[activation]],
                                          name=f"{activation}__dequantize")]
        if weight_name not in replaced:
            inserted += _quantized_weight(graph, weights[weight_name], site.weight_axis, fmt)
            replaced[weight_name] = f"{weight_name}__dq"
        graph.node[site.index].input[0], graph.node[site.index].input[1] = replaced[activation], replaced[weight_name]
    nodes = [new for index, node in enumerate(graph.node) for new in (*before.get(index, []), node)]
    del graph.node[:]
    graph.node.extend(nodes)


def _quantized_weight(graph: onnx.GraphProto, weight: TensorProto, axis: int | None,
                      fmt: QuantFormat) -> list[onnx.NodeProto]:
    """Replace the float initializer ``weight`` by its quantized values and scales; returns the
    DequantizeLinear that gives it back (as ``<name>__dq``) in the weight's float type."""
    values = numpy_helper.to_array(weight)
    channel = axis if fmt.per_channel_weights and axis is not None else None
    reduce_axes = tuple(a for a in range(values.ndim) if a != channel)
    amax = np.abs(values.astype(np.float32)).max(axis=reduce_axes)
    scale = _scale(amax, fmt, values.dtype)
    shaped = scale.reshape([-1 if a == channel else 1 for a in range(values.ndim)]) if channel is not None else scale
    name = weight.name
    graph.initializer.remove(weight)
    graph.initializer.extend([numpy_helper.from_array(fmt.quantize(values.astype(np.float32),
                                                                   shaped.astype(np.float32)), f"{name}__quantized"),
                              numpy_helper.from_array(scale, f"{name}__scale"), fmt.zero(scale.shape, f"{name}__zero")])
    node = helper.make_node("DequantizeLinear", [f"{name}__quantized", f"{name}__scale", f"{name}__zero"],
                            [f"{name}__dq"], name=f"{name}__dequantize")
    if channel is not None:
        node.attribute.append(helper.make_attribute("axis", channel))
    return [node]


def quantize_image_engine(model: onnx.ModelProto, precision: str, feeds: Iterable[dict[str, np.ndarray]]) -> int:
    """Quantize the weighted nodes of an exported image engine (the fp16 graph) in place for ``precision``
    (``int8-qdq`` or ``fp8``), calibrated on ``feeds`` (engine inputs); returns how many were quantized."""
    sites = quantization_sites(model)
    return insert_qdq(model, sites, calibrate(model, sites, feeds), FORMATS[precision])


def calibration_images(folder: str | Path) -> list[Path]:
    """The image files under ``folder`` (any suffix PIL reads), sorted; ValueError naming the folder if none."""
    from PIL import Image

    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"--calibration-images {folder}: no such folder")
    suffixes = set(Image.registered_extensions())
    found = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in suffixes)
    if not found:
        raise ValueError(f"--calibration-images {folder} holds no image files")
    return found


def write_synthetic_images(folder: str | Path, image_size: int, count: int = 64) -> Path:
    """``count`` synthetic training images as PNG files in ``folder``: calibration images for checks and
    benchmarks that must not download anything (the synthetic shapes are what ``tiny`` is trained on)."""
    from sigrl.data.synthetic import SyntheticShapes
    from sigrl.serving.measure import png_bytes

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(SyntheticShapes("train", num_images=count, image_size=image_size).images):
        (folder / f"{i:04d}.png").write_bytes(png_bytes(image))
    return folder
