"""Static TensorRT-readiness check for exported ONNX graphs, for machines without TensorRT.

The facts come from onnx-tensorrt's ``docs/operators.md`` for TensorRT 10, kept as data in
``sigrl/deploy/data/tensorrt10_onnx_ops.json``: which operators the ONNX parser imports, on which data
types, the opset range, and per-operator restrictions. A model that passes can still fail to build
(dynamic shapes, restrictions that need values known only at build time), but one that fails here
will not parse.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
import onnx
from onnx import AttributeProto, NodeProto, TensorProto, ValueInfoProto, helper, numpy_helper, shape_inference

_DEFAULT_DOMAINS = frozenset({"", "ai.onnx"})

# Element types TensorRT takes as engine inputs and outputs. Source: the data-type list in onnx-tensorrt
# docs/operators.md (TensorRT 10.x), less DOUBLE ("TensorRT will attempt to cast DOUBLE down to FLOAT")
# and the quantized types INT8, INT4, FP8, FP4 ("support is available only through quantization");
# UINT8 is supported "only as network input or output". INT64 I/O is native since TensorRT 9.0
# (docs/Changelog.md: "ONNX models with INT64 I/O require INT64 bindings").
ENGINE_IO_TYPES = frozenset(
    {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.INT32, TensorProto.INT64,
     TensorProto.UINT8, TensorProto.BOOL}
)

# Type names of the "Supported Types" column of operators.md, as ONNX element type names (names, so
# that onnx releases without FLOAT4E2M1 still import this module).
_DOC_TYPES = {
    "FP32": "FLOAT",
    "FP16": "FLOAT16",
    "BF16": "BFLOAT16",
    "FP8": "FLOAT8E4M3FN",
    "FP4": "FLOAT4E2M1",
    "INT64": "INT64",
    "INT32": "INT32",
    "INT8": "INT8",
    "INT4": "INT4",
    "UINT8": "UINT8",
    "BOOL": "BOOL",
}

# The "Supported Types" column describes an operator's data tensor: input 0, except where noted.
_DATA_INPUT = {"Where": 1}

_REDUCE_OPS = frozenset(
    {"ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin",
     "ReduceProd", "ReduceSum", "ReduceSumSquare"}
)
_TOPK_MAX_K = 3840  # operators.md, TopK: "`K` input must be less than 3840."


def load_supported_ops() -> dict[str, Any]:
    """The TensorRT 10 operator data (source, version, opset range, operators, types, restrictions)."""
    text = resources.files("sigrl.deploy.data").joinpath("tensorrt10_onnx_ops.json").read_text("utf-8")
    return json.loads(text)


@dataclass(frozen=True)
class _Scope:
    """One graph body (main graph, subgraph or local function) with the names visible in it."""

    where: str
    nodes: Sequence[NodeProto]
    declared: dict[str, int]  # element types of the tensors this scope declares
    types: dict[str, int]  # element types visible here, outer scopes included
    constants: dict[str, TensorProto | AttributeProto]  # initializers and Constant outputs visible here


def _scopes(
    where: str,
    nodes: Sequence[NodeProto],
    values: Sequence[ValueInfoProto],
    initializers: Sequence[TensorProto],
    outer: _Scope | None,
) -> Iterator[_Scope]:
    """Yield this scope and, depth first, those of the subgraphs (GRAPH / GRAPHS attributes) in it."""
    declared = {v.name: v.type.tensor_type.elem_type for v in values if v.type.HasField("tensor_type")}
    declared |= {t.name: t.data_type for t in initializers}
    constants: dict[str, TensorProto | AttributeProto] = {t.name: t for t in initializers}
    for node in nodes:
        if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS and node.attribute:
            constants[node.output[0]] = node.attribute[0]
    scope = _Scope(
        where,
        nodes,
        declared,
        {**(outer.types if outer else {}), **declared},
        {**(outer.constants if outer else {}), **constants},
    )
    yield scope
    for node in nodes:
        for attr in node.attribute:
            for sub in [attr.g] if attr.type == AttributeProto.GRAPH else attr.graphs:
                yield from _scopes(
                    f"{where} > {node.op_type} '{node.name}'.{attr.name}",
                    sub.node,
                    [*sub.input, *sub.output, *sub.value_info],
                    sub.initializer,
                    scope,
                )


def _constant_value(proto: TensorProto | AttributeProto) -> np.ndarray:
    """The value of an initializer or of a Constant node's attribute."""
    value = helper.get_attribute_value(proto) if isinstance(proto, AttributeProto) else proto
    return numpy_helper.to_array(value) if isinstance(value, TensorProto) else np.asarray(value)


def _type_name(elem_type: int) -> str:
    """ONNX name of an element type, e.g. ``INT64``."""
    return TensorProto.DataType.Name(elem_type)


def _node_problems(
    node: NodeProto, scope: _Scope, ops: dict[str, Any], local_functions: set[tuple[str, str]]
) -> list[str]:
    """Problems of one node: operator support, data type, and the statically decidable restrictions."""
    op, label = node.op_type, f"{scope.where}: {node.op_type} node '{node.name}'"
    if node.domain not in _DEFAULT_DOMAINS:
        if (node.domain, op) in local_functions:
            return []  # the parser inlines model-local functions; their bodies are checked as scopes
        return [f"{label} is in custom domain '{node.domain}'; TensorRT has no importer for it (needs a plugin)"]
    if op in ops["unsupported_operators"]:
        return [f"{label}: operators.md marks {op} unsupported (N) in TensorRT {ops['tensorrt_version']}"]
    if op not in ops["operators"]:
        return [f"{label}: {op} is not in TensorRT {ops['tensorrt_version']}'s ONNX operator list"]

    problems = []
    data_index = _DATA_INPUT.get(op, 0)
    if len(node.input) > data_index and node.input[data_index]:
        name = node.input[data_index]
        elem_type = _type_name(scope.types.get(name, TensorProto.UNDEFINED))
        allowed = {_DOC_TYPES[t] for t in ops["supported_types"][op]}
        if elem_type not in {"UNDEFINED", "DOUBLE", *allowed}:  # DOUBLE tensors are reported once each
            problems.append(
                f"{label}: input '{name}' is {elem_type}; TensorRT {ops['tensorrt_version']} takes "
                f"{op} on {', '.join(ops['supported_types'][op])}"
            )
    if op == "TopK":
        if any(a.name == "sorted" and a.i == 0 for a in node.attribute):
            problems.append(f"{label}: sorted=0, but TensorRT needs sorted=1")
        if len(node.input) > 1 and node.input[1] in scope.constants:
            k = _constant_value(scope.constants[node.input[1]])
            if k.size and int(k.max()) >= _TOPK_MAX_K:
                problems.append(f"{label}: K={int(k.max())}, but TensorRT needs K < {_TOPK_MAX_K}")
    if op == "LayerNormalization" and any(node.output[1:]):
        problems.append(f"{label}: uses the Mean/InvStdDev outputs; TensorRT supports only the first output Y")
    if op in _REDUCE_OPS and len(node.input) > 1 and node.input[1] and node.input[1] not in scope.constants:
        problems.append(f"{label}: axes '{node.input[1]}' is computed; TensorRT needs an initializer")
    return problems


def tensorrt_problems(model: onnx.ModelProto) -> list[str]:
    """Reasons TensorRT 10 would not import ``model``, as readable lines; an empty list means ready.

    Checks the default-domain opset, engine I/O types, DOUBLE tensors anywhere, and every node in the
    main graph, in subgraphs (Scan / Loop / If bodies) and in model-local functions: operator support,
    custom domains, the operator's data type, and the TopK, LayerNormalization and Reduce* restrictions.
    Types come from ONNX shape inference; a tensor whose type stays unknown is not type-checked.
    """
    ops = load_supported_ops()
    problems = []
    try:
        model = shape_inference.infer_shapes(model)
    except shape_inference.InferenceError as err:
        problems.append(f"ONNX shape inference failed, type checks see declared types only: {err}")

    opset = next((o.version for o in model.opset_import if o.domain in _DEFAULT_DOMAINS), None)
    if opset is None:
        problems.append("model imports no default-domain (ai.onnx) opset")
    elif not ops["opset_min"] <= opset <= ops["opset_max"]:
        problems.append(
            f"default-domain opset {opset} is outside TensorRT {ops['tensorrt_version']}'s range "
            f"{ops['opset_min']}..{ops['opset_max']}"
        )

    graph = model.graph
    initializer_names = {t.name for t in graph.initializer}
    for kind, values in (("input", graph.input), ("output", graph.output)):
        for value in values:
            if value.name in initializer_names:
                continue  # IR < 4 lists initializers among the inputs
            if not value.type.HasField("tensor_type"):
                problems.append(f"graph {kind} '{value.name}' is not a tensor; TensorRT engine I/O must be tensors")
            elif value.type.tensor_type.elem_type not in ENGINE_IO_TYPES:
                allowed = ", ".join(sorted(_type_name(t) for t in ENGINE_IO_TYPES))
                problems.append(
                    f"graph {kind} '{value.name}' is {_type_name(value.type.tensor_type.elem_type)}; "
                    f"TensorRT engine I/O takes {allowed}"
                )

    values = [*graph.input, *graph.output, *graph.value_info]
    scopes = [*_scopes("main graph", graph.node, values, graph.initializer, None)]
    for function in model.functions:
        where = f"function '{function.domain}.{function.name}'"
        scopes += _scopes(where, function.node, function.value_info, [], None)
    local_functions = {(f.domain, f.name) for f in model.functions}
    for scope in scopes:
        problems += [
            f"{scope.where}: tensor '{name}' is DOUBLE; TensorRT casts DOUBLE down to FLOAT (clamping to ±FLT_MAX)"
            for name, elem_type in scope.declared.items()
            if elem_type == TensorProto.DOUBLE
        ]
        for node in scope.nodes:
            problems += _node_problems(node, scope, ops, local_functions)
    return problems
