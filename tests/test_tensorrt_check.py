"""The static TensorRT-readiness check, on small hand-built ONNX graphs (opset 18)."""

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402

from sigrl.deploy.tensorrt_check import load_supported_ops, tensorrt_problems  # noqa: E402


def _value(name, elem_type=TensorProto.FLOAT, shape=(2, 3)):
    return helper.make_tensor_value_info(name, elem_type, list(shape))


def _model(nodes, inputs, outputs, *, initializers=(), opset=18, opsets=(), functions=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(initializers))
    return helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", opset), *opsets], functions=list(functions)
    )


def _ints(name, values):
    return helper.make_tensor(name, TensorProto.INT64, [len(values)], values)


def _scan_model(body_op):
    """Scan over the rows of x whose body runs ``body_op`` on each row."""
    body = helper.make_graph(
        [helper.make_node("Add", ["s_in", "row"], ["s_out"]), helper.make_node(body_op, ["row"], ["o"], name="inner")],
        "body",
        [_value("s_in", shape=[3]), _value("row", shape=[3])],
        [_value("s_out", shape=[3]), _value("o", shape=[3])],
    )
    scan = helper.make_node("Scan", ["s0", "x"], ["s", "y"], num_scan_inputs=1, body=body, name="scan")
    return _model([scan], [_value("s0", shape=[3]), _value("x")], [_value("s", shape=[3]), _value("y")])


def _only(problems, *parts):
    """Assert there is exactly one problem and that it names every part; return it."""
    assert len(problems) == 1, problems
    assert all(part in problems[0] for part in parts), problems[0]
    return problems[0]


def test_operator_list_has_source_and_the_ops_we_export():
    ops = load_supported_ops()
    assert ops["source"].startswith("https://github.com/onnx/onnx-tensorrt/") and ops["source"].endswith("operators.md")
    assert ops["tensorrt_version"].startswith("10.")
    assert len(ops["operators"]) > 100 and ops["operators"] == sorted(ops["operators"])
    ours = {"Conv", "MatMul", "Softmax", "Scan", "LayerNormalization", "Einsum", "TopK", "ArgMax", "GatherElements"}
    assert ours <= set(ops["operators"])
    assert not set(ops["operators"]) & set(ops["unsupported_operators"])
    assert set(ops["supported_types"]) == set(ops["operators"])
    assert "INT64" in ops["supported_types"]["ArgMax"] and "INT64" not in ops["supported_types"]["MatMul"]
    assert (ops["opset_min"], ops["opset_max"]) == (9, 24)


def test_supported_graph_with_scan_passes():
    weight = helper.make_tensor("w", TensorProto.FLOAT, [3, 3], [0.1] * 9)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Softmax", ["h"], ["y"])]
    assert tensorrt_problems(_model(nodes, [_value("x")], [_value("y")], initializers=[weight])) == []
    assert tensorrt_problems(_scan_model("Relu")) == []


def test_unknown_op_is_reported():
    model = _model([helper.make_node("NonExistentOp", ["x"], ["y"], name="bad")], [_value("x")], [_value("y")])
    _only(tensorrt_problems(model), "NonExistentOp", "'bad'", "main graph", "not in TensorRT")


def test_op_marked_unsupported_is_reported():
    model = _model([helper.make_node("Det", ["x"], ["y"], name="det")], [_value("x", shape=[3, 3])],
                   [_value("y", shape=[])])
    _only(tensorrt_problems(model), "Det", "'det'", "unsupported (N)")


def test_unsupported_op_inside_scan_body_is_found():
    _only(tensorrt_problems(_scan_model("NonExistentOp")), "Scan 'scan'.body", "NonExistentOp", "'inner'")


def test_custom_domain_node_is_reported():
    node = helper.make_node("FancyOp", ["x"], ["y"], domain="com.example", name="fancy")
    model = _model([node], [_value("x")], [_value("y")], opsets=[helper.make_opsetid("com.example", 1)])
    _only(tensorrt_problems(model), "custom domain 'com.example'", "'fancy'")


def test_local_function_is_checked_instead_of_reported_as_custom_domain():
    def model_with(body_op):
        function = helper.make_function(
            "local", "Fn", ["a"], ["b"], [helper.make_node(body_op, ["a"], ["b"], name="in_fn")],
            [helper.make_opsetid("", 18)],
        )
        node = helper.make_node("Fn", ["x"], ["y"], domain="local", name="call")
        return _model([node], [_value("x")], [_value("y")], opsets=[helper.make_opsetid("local", 1)],
                      functions=[function])

    assert tensorrt_problems(model_with("Relu")) == []
    _only(tensorrt_problems(model_with("NonExistentOp")), "function 'local.Fn'", "'in_fn'")


def test_string_and_double_graph_io_are_reported():
    node = helper.make_node("Identity", ["x"], ["y"])
    string_io = _model([node], [_value("x", TensorProto.STRING)], [_value("y", TensorProto.STRING)])
    problems = tensorrt_problems(string_io)
    assert any("graph input 'x' is STRING" in p for p in problems), problems
    assert any("graph output 'y' is STRING" in p for p in problems), problems
    double_io = tensorrt_problems(_model([node], [_value("x", TensorProto.DOUBLE)], [_value("y")]))
    assert any("graph input 'x' is DOUBLE" in p for p in double_io), double_io


def test_int64_graph_input_is_accepted_as_tensorrt_10_engine_io():
    # TensorRT >= 9 binds INT64 I/O natively (onnx-tensorrt Changelog, 9.0 EA); it no longer casts to INT32.
    table = helper.make_tensor("table", TensorProto.FLOAT, [5, 3], [0.0] * 15)
    nodes = [helper.make_node("Gather", ["table", "ids"], ["y"])]
    model = _model(nodes, [_value("ids", TensorProto.INT64, [2])], [_value("y")], initializers=[table])
    assert tensorrt_problems(model) == []


def test_argmax_over_int64_is_accepted_but_matmul_over_int64_is_not():
    # operators.md lists INT64 for ArgMax (native since 9.3) but only FP32/FP16/BF16 for MatMul.
    argmax = helper.make_node("ArgMax", ["x"], ["y"], axis=1, keepdims=0, name="am")
    ints = _value("x", TensorProto.INT64)
    assert tensorrt_problems(_model([argmax], [ints], [_value("y", TensorProto.INT64, [2])])) == []
    matmul = helper.make_node("MatMul", ["x", "x_t"], ["y"], name="mm")
    transpose = helper.make_node("Transpose", ["x"], ["x_t"])
    model = _model([transpose, matmul], [ints], [_value("y", TensorProto.INT64, [2, 2])])
    _only(tensorrt_problems(model), "MatMul node 'mm'", "input 'x' is INT64", "FP32, FP16, BF16")


def test_where_is_checked_on_its_data_input_not_its_condition():
    cond = helper.make_node("Cast", ["x"], ["c"], to=TensorProto.BOOL)
    where = helper.make_node("Where", ["c", "x", "x"], ["y"], name="w")
    model = _model([cond, where], [_value("x", TensorProto.UINT8)], [_value("y", TensorProto.UINT8)])
    _only(tensorrt_problems(model), "Where node 'w'", "input 'x' is UINT8")


def test_double_tensor_inside_the_graph_is_reported():
    nodes = [helper.make_node("Cast", ["x"], ["x64"], to=TensorProto.DOUBLE),
             helper.make_node("Cast", ["x64"], ["y"], to=TensorProto.FLOAT)]
    _only(tensorrt_problems(_model(nodes, [_value("x")], [_value("y")])), "tensor 'x64' is DOUBLE")


@pytest.mark.parametrize("opset", [8, 25])
def test_opset_outside_the_documented_range_is_reported(opset):
    model = _model([helper.make_node("Relu", ["x"], ["y"])], [_value("x")], [_value("y")], opset=opset)
    _only(tensorrt_problems(model), f"opset {opset}", "9..24")


def test_topk_restrictions():
    def topk(k, **attrs):
        node = helper.make_node("TopK", ["x", "k"], ["v", "i"], axis=1, name="tk", **attrs)
        outputs = [_value("v", shape=[2, k]), _value("i", TensorProto.INT64, [2, k])]
        return tensorrt_problems(_model([node], [_value("x", shape=[2, 5000])], outputs,
                                        initializers=[_ints("k", [k])]))

    assert topk(16) == []
    _only(topk(16, sorted=0), "TopK node 'tk'", "sorted=0")
    _only(topk(4000), "TopK node 'tk'", "K=4000", "K < 3840")


def test_layer_normalization_extra_outputs_are_reported():
    scale = helper.make_tensor("scale", TensorProto.FLOAT, [3], [1.0] * 3)
    node = helper.make_node("LayerNormalization", ["x", "scale"], ["y", "mean"], name="ln")
    model = _model([node], [_value("x")], [_value("y"), _value("mean", shape=[2, 1])], initializers=[scale])
    _only(tensorrt_problems(model), "LayerNormalization node 'ln'", "only the first output")


def test_reduce_with_computed_axes_is_reported():
    nodes = [helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Size", ["s"], ["n"]),
             helper.make_node("Sub", ["n", "one"], ["last"]), helper.make_node("Unsqueeze", ["last", "zero"], ["axes"]),
             helper.make_node("ReduceSum", ["x", "axes"], ["y"], name="rs")]
    initializers = [helper.make_tensor("one", TensorProto.INT64, [], [1]), _ints("zero", [0])]
    model = _model(nodes, [_value("x")], [_value("y", shape=[2, 1])], initializers=initializers)
    _only(tensorrt_problems(model), "ReduceSum node 'rs'", "axes 'axes' is computed")
    initializer_axes = _model([nodes[-1]], [_value("x")], [_value("y", shape=[2, 1])],
                              initializers=[_ints("axes", [1])])
    assert tensorrt_problems(initializer_axes) == []
    constant_node = helper.make_node("Constant", [], ["axes"], value=_ints("axes_value", [1]))
    assert tensorrt_problems(_model([constant_node, nodes[-1]], [_value("x")], [_value("y", shape=[2, 1])])) == []


@pytest.mark.parametrize("elem_type", [TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16])
def test_reduced_precision_block_with_fp32_io_passes(elem_type):
    """The shape of a ``sigrl export --precision`` graph: float32 I/O cast to the compute type, MatMul,
    LayerNormalization, Softmax and a Scan carrying state in that type, cast back to float32."""
    def typed(name, shape):
        return helper.make_tensor_value_info(name, elem_type, list(shape))

    def weight(name, shape):
        return helper.make_tensor(name, TensorProto.FLOAT, list(shape), [0.5] * int(np.prod(shape)))

    body = helper.make_graph([helper.make_node("Add", ["s_in", "row"], ["s_out"]),
                              helper.make_node("Softmax", ["row"], ["o"], name="inner")],
                             "body", [typed("s_in", [3]), typed("row", [3])], [typed("s_out", [3]), typed("o", [3])])
    nodes = [helper.make_node("Cast", [name], [f"{name}_t"], to=elem_type) for name in ("x", "w", "scale", "s0")]
    nodes += [helper.make_node("MatMul", ["x_t", "w_t"], ["h"], name="mm"),
              helper.make_node("LayerNormalization", ["h", "scale_t"], ["n"], name="ln"),
              helper.make_node("Scan", ["s0_t", "n"], ["s", "rows"], num_scan_inputs=1, body=body, name="scan"),
              helper.make_node("Cast", ["rows"], ["y"], to=TensorProto.FLOAT)]
    initializers = [weight("w", [3, 3]), weight("scale", [3]), weight("s0", [3])]
    model = _model(nodes, [_value("x")], [_value("y")], initializers=initializers)
    assert tensorrt_problems(model) == []
