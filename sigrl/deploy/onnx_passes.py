"""Graph passes applied to exported ONNX engines: Scan bodies, int8 quantization, per-image loops.

- :func:`close_scan_bodies`: the dynamo exporter's ``Scan`` bodies read weights and activations from
  the enclosing graph (outer-scope captures). A captured initializer becomes the body's own (moved
  when only that body reads it, copied otherwise), so weights stay constants runtimes can pre-pack and
  reduce axes stay initializers as TensorRT requires. With ``carry_activations`` the body is closed
  completely: everything else it reads becomes an explicit loop-carried input passed through
  unchanged, for CPU runtimes that fail on captures (OpenVINO crashes on them). Graphs meant for
  TensorRT keep activations captured: there a carried input is one more loop-carried tensor per
  iteration for nothing. Nested bodies are handled first.
- :func:`prune_scans`: drops what a loop would carry for nothing: Scan outputs nobody reads, loop
  states that only pass a placeholder through (torch's ``scan`` needs a carry where a loop has none),
  the nodes and initializers left without readers, and empty per-output attribute lists (ONNX
  Runtime's quantizer cannot read them).
- :func:`quantize_int8`: ONNX Runtime's dynamic quantization (int8 weights per channel, int8
  activations with scales computed at run time), Scan bodies included.
- :func:`per_image_loop`: dynamic quantization computes one activation scale over a whole tensor, so
  with B > 1 an image's scores would depend on its batch-mates. Wrapping the engine in a Scan over
  the batch runs each image alone: its scores are then the same in any batch, as the fp32 engines'.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import onnx
from onnx import helper, numpy_helper

_PASS_SUFFIX = "__carried"


def _subgraphs(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    return [attr.g for attr in node.attribute if attr.type == onnx.AttributeProto.GRAPH]


def _used_names(graph: onnx.GraphProto) -> set[str]:
    """Names the graph's nodes read, including what nested subgraphs read from outside themselves."""
    used: set[str] = set()
    for node in graph.node:
        used.update(name for name in node.input if name)
        for sub in _subgraphs(node):
            used |= free_names(sub)
    return used


def free_names(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads but does not define: its outer-scope captures."""
    defined = {v.name for v in graph.input} | {t.name for t in graph.initializer}
    defined |= {name for node in graph.node for name in node.output}
    used = _used_names(graph) | {v.name for v in graph.output}
    return used - defined


def _rename_uses(graph: onnx.GraphProto, old: str, new: str) -> None:
    """Point every read of ``old`` in ``graph`` (and in its nested subgraphs) at ``new``."""
    for node in graph.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for sub in _subgraphs(node):
            if old in free_names(sub):
                _rename_uses(sub, old, new)
    for value in graph.output:
        if value.name == old:
            value.name = new


def _close_scan(node: onnx.NodeProto, outer: onnx.GraphProto, users: dict[str, int], carry_activations: bool) -> None:
    body = scan_body(node)
    captured = sorted(free_names(body))
    if not captured:
        return
    outer_inits = {t.name: t for t in outer.initializer}
    num_states = len(node.input) - _required(node, "num_scan_inputs").i
    num_state_outputs = num_states  # body/node outputs: states first, then scan outputs
    new_node_inputs, new_body_inputs, new_body_outputs, new_node_outputs, passes = [], [], [], [], []
    for name in captured:
        init = outer_inits.get(name)
        if init is not None:  # a constant stays a constant: the body gets its own copy (moved if only it reads it)
            body.initializer.append(init)
            if users.get(name, 0) == 1:
                outer.initializer.remove(init)
            continue
        if not carry_activations:  # activations stay captured: the body reads them from the enclosing graph
            continue
        inner, carried = f"{name}{_PASS_SUFFIX}_in", f"{name}{_PASS_SUFFIX}_out"
        _rename_uses(body, name, inner)
        new_node_inputs.append(name)
        new_body_inputs.append(helper.make_empty_tensor_value_info(inner))
        new_body_outputs.append(helper.make_empty_tensor_value_info(carried))
        passes.append(helper.make_node("Identity", [inner], [carried], name=f"{carried}_identity"))
        new_node_outputs.append(f"{node.name or 'scan'}_{name}{_PASS_SUFFIX}_final")
    if not new_node_inputs:
        return
    _insert(node.input, num_states, new_node_inputs)
    _insert(body.input, num_states, new_body_inputs)
    _insert(body.output, num_state_outputs, new_body_outputs)
    _insert(node.output, num_state_outputs, new_node_outputs)
    body.node.extend(passes)


def _insert(container, index: int, items: list) -> None:
    """Insert ``items`` at ``index`` of a protobuf repeated field (which has no insert)."""
    tail = list(container)[index:]
    del container[index:]
    for item in (*items, *tail):
        if isinstance(item, (str, int)):
            container.append(item)
        else:
            container.add().CopyFrom(item)


def close_scan_bodies(graph: onnx.GraphProto, carry_activations: bool = True) -> None:
    """Give every Scan body in ``graph`` (recursively) its own copy of the initializers it reads; with
    ``carry_activations`` also pass every other captured value in as a loop-carried input, so that the
    body reads nothing from its enclosing graph."""
    for node in graph.node:
        for sub in _subgraphs(node):
            close_scan_bodies(sub, carry_activations)
    users: dict[str, int] = {}
    for node in graph.node:
        reads = set(node.input) | set().union(*(free_names(sub) for sub in _subgraphs(node)))
        for name in reads:
            users[name] = users.get(name, 0) + 1
    for node in graph.node:
        if node.op_type == "Scan":
            _close_scan(node, graph, users, carry_activations)
    read = _used_names(graph) | {v.name for v in graph.output}
    for init in [t for t in graph.initializer if t.name not in read]:  # copied into every loop that read it
        graph.initializer.remove(init)
    _sort_nodes(graph)


def _sort_nodes(graph: onnx.GraphProto) -> None:
    """Order nodes so each comes after the producers of what it reads (stable otherwise).

    Needed after closing: ONNX Runtime's quantizer sorts nodes by their explicit inputs only, so a value
    a loop body captured may be produced after the loop; once it is an explicit input the order matters.
    """
    nodes = list(graph.node)
    producer = {name: i for i, node in enumerate(nodes) for name in node.output}
    reads = [{producer[n] for n in (set(node.input) | set().union(*map(free_names, _subgraphs(node))))
              if n in producer} for node in nodes]
    done: set[int] = set()
    order: list[int] = []

    def visit(i: int) -> None:  # depth-first; graphs are acyclic
        stack = [(i, iter(sorted(reads[i])))]
        while stack:
            current, pending = stack[-1]
            nxt = next((j for j in pending if j not in done), None)
            if nxt is None:
                stack.pop()
                if current not in done:
                    done.add(current)
                    order.append(current)
            else:
                stack.append((nxt, iter(sorted(reads[nxt]))))

    for i in range(len(nodes)):
        if i not in done:
            visit(i)
    if order != list(range(len(nodes))):
        del graph.node[:]
        graph.node.extend(nodes[i] for i in order)


def scan_bodies(graph: onnx.GraphProto) -> Iterable[onnx.GraphProto]:
    """Every Scan body in ``graph``, nested ones included."""
    for node in graph.node:
        for sub in _subgraphs(node):
            if node.op_type == "Scan":
                yield sub
            yield from scan_bodies(sub)


def count_loops(graph: onnx.GraphProto) -> int:
    """How many loops (Scan and Loop nodes, nested ones included) ``graph`` holds."""
    return sum((node.op_type in ("Scan", "Loop")) + sum(count_loops(sub) for sub in _subgraphs(node))
               for node in graph.node)


def _attribute(node: onnx.NodeProto, name: str) -> onnx.AttributeProto | None:
    return next((attr for attr in node.attribute if attr.name == name), None)


def _required(node: onnx.NodeProto, name: str) -> onnx.AttributeProto:
    """An attribute the operator requires (ValueError naming the node if the graph lacks it)."""
    attr = _attribute(node, name)
    if attr is None:
        raise ValueError(f"{node.op_type} node {node.name!r} has no {name} attribute")
    return attr


def scan_body(node: onnx.NodeProto) -> onnx.GraphProto:
    """The body graph of a Scan node."""
    return _required(node, "body").g


def add_scan_output(node: onnx.NodeProto, value: str, output: str) -> None:
    """Make ``value`` (computed in the Scan's body each iteration) a new scan output named ``output``: the
    values of all iterations stacked on axis 0. Keeps the per-output attributes, where present, aligned."""
    num_outputs = len(node.output) - (len(node.input) - _required(node, "num_scan_inputs").i)
    for name in ("scan_output_axes", "scan_output_directions"):
        attr = _attribute(node, name)
        if attr is not None and len(attr.ints) == num_outputs:
            attr.ints.append(0)
    scan_body(node).output.append(helper.make_empty_tensor_value_info(value))
    node.output.append(output)


def _identity_chain(graph: onnx.GraphProto, name: str) -> tuple[str, list[onnx.NodeProto]]:
    """The value ``name`` copies through Identity nodes in ``graph``, and those Identity nodes."""
    producers = {out: node for node in graph.node for out in node.output}
    chain = []
    while name in producers and producers[name].op_type == "Identity":
        chain.append(producers[name])
        name = chain[-1].input[0]
    return name, chain


def _placeholder_states(node: onnx.NodeProto, body: onnx.GraphProto, read: set[str]) -> list[int]:
    """Loop states of a Scan that carry a placeholder: the body passes the state through unchanged
    (Identity nodes only), reads it for nothing else, and nobody reads its final value."""
    num_states = len(node.input) - _required(node, "num_scan_inputs").i
    found = []
    for i in range(num_states):
        source, chain = _identity_chain(body, body.output[i].name)
        if source != body.input[i].name or node.output[i] in read:
            continue
        carried = {source} | {n.output[0] for n in chain}
        other_outputs = {v.name for j, v in enumerate(body.output) if j != i}
        readers = [n for n in body.node if n not in chain and carried & (set(n.input) | _captures(n))]
        if not readers and not carried & other_outputs:
            found.append(i)
    return found


def _captures(node: onnx.NodeProto) -> set[str]:
    """What the subgraphs of ``node`` read from the graph around it."""
    return set().union(*(free_names(sub) for sub in _subgraphs(node)))


def _keep_only(container, indices_to_drop: set[int]) -> None:
    """Remove the items at ``indices_to_drop`` from a protobuf repeated field."""
    kept = [item for i, item in enumerate(container) if i not in indices_to_drop]
    del container[:]
    _insert(container, 0, kept)


def _prune_scan(node: onnx.NodeProto, read: set[str]) -> bool:
    """Drop the unread scan outputs and the placeholder states of one Scan node; True if it changed."""
    body = scan_body(node)
    num_states = len(node.input) - _required(node, "num_scan_inputs").i
    states = set(_placeholder_states(node, body, read))
    outputs = {j for j in range(len(node.output) - num_states) if node.output[num_states + j] not in read}
    emptied = False
    for attr_name in ("scan_output_axes", "scan_output_directions"):
        attr = _attribute(node, attr_name)
        if attr is not None and attr.ints:
            _keep_only(attr.ints, outputs)
        if attr is not None and not attr.ints:  # an empty list means the default; some tools cannot read it
            node.attribute.remove(attr)
            emptied = True
    dropped = states | {num_states + j for j in outputs}
    _keep_only(node.input, states)
    _keep_only(body.input, states)
    _keep_only(node.output, dropped)
    _keep_only(body.output, dropped)
    return bool(dropped) or emptied


def _drop_unread(graph: onnx.GraphProto, keep: set[str]) -> bool:
    """Remove the nodes (last to first) and initializers nothing in ``keep`` depends on; True if any went."""
    needed, kept = set(keep), []
    for node in reversed(graph.node):
        if needed & set(node.output):
            kept.append(node)
            needed |= set(node.input) | _captures(node)
    unread = [t for t in graph.initializer if t.name not in needed]
    changed = len(kept) != len(graph.node) or bool(unread)
    if len(kept) != len(graph.node):
        del graph.node[:]
        graph.node.extend(reversed(kept))
    for init in unread:
        graph.initializer.remove(init)
    return changed


def prune_scans(graph: onnx.GraphProto, keep: set[str] | None = None) -> bool:
    """Drop every Scan output nobody reads, every placeholder loop state (:func:`_placeholder_states`),
    and the nodes and initializers this leaves unread, in ``graph`` and every nested body, until nothing
    changes. ``keep``: names that must stay (default: the graph's outputs). True if anything went."""
    keep = {v.name for v in graph.output} if keep is None else keep
    pruned = False
    while True:
        # every body and every Scan is pruned in each round: lists, not any()'s short circuit
        bodies = [prune_scans(sub) for node in graph.node for sub in _subgraphs(node)]
        read = _used_names(graph) | keep
        scans = [_prune_scan(node, read) for node in graph.node if node.op_type == "Scan"]
        changed = any(bodies) or any(scans)
        changed = _drop_unread(graph, keep) or changed
        if not changed:
            return pruned
        pruned = True


def strip_value_info(model: onnx.ModelProto) -> None:
    """Drop the exporter's intermediate shape annotations (stale ones break later shape inference)."""
    def strip(graph: onnx.GraphProto) -> None:
        del graph.value_info[:]
        for node in graph.node:
            for sub in _subgraphs(node):
                strip(sub)
    strip(model.graph)


def quantize_int8(model: onnx.ModelProto) -> onnx.ModelProto:
    """Dynamic int8 quantization of MatMul/Gemm weights (per channel, signed), Scan bodies included."""
    import tempfile
    from pathlib import Path

    from onnxruntime.quantization import QuantType, quantize_dynamic

    strip_value_info(model)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "quantized.onnx"
        quantize_dynamic(model, out, weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Gemm"], extra_options={"EnableSubgraph": True})
        return onnx.load(str(out))


def per_image_loop(model: onnx.ModelProto, batched_input: str) -> onnx.ModelProto:
    """Run the graph once per item of ``batched_input``'s first axis (a Scan over it) and stack the outputs.

    Every other input is passed to each iteration unchanged; every output gains the batch axis back.
    The graph's weights become the loop body's own initializers.
    """
    graph = model.graph
    body = helper.make_graph(list(graph.node), f"{graph.name}_per_item", [], [], initializer=list(graph.initializer))
    states = [v for v in graph.input if v.name != batched_input]
    axes = numpy_helper.from_array(np.array([0], dtype=np.int64), f"{batched_input}__axis0")
    body.initializer.append(axes)
    item, single = f"{batched_input}__item", f"{batched_input}__single"
    for value in states:  # inside the body, inputs get names of their own (no shadowing of outer names)
        _rename_uses(body, value.name, f"{value.name}__state_in")
        body.input.append(helper.make_empty_tensor_value_info(f"{value.name}__state_in"))
    _rename_uses(body, batched_input, single)
    body.input.append(helper.make_empty_tensor_value_info(item))
    _insert(body.node, 0, [helper.make_node("Unsqueeze", [item, axes.name], [single])])
    for value in states:
        body.output.append(helper.make_empty_tensor_value_info(f"{value.name}__state_out"))
        body.node.append(helper.make_node("Identity", [f"{value.name}__state_in"], [f"{value.name}__state_out"]))
    for value in graph.output:
        body.output.append(helper.make_empty_tensor_value_info(f"{value.name}__row"))
        body.node.append(helper.make_node("Squeeze", [value.name, axes.name], [f"{value.name}__row"]))
    loop = helper.make_node(
        "Scan", [v.name for v in states] + [batched_input],
        [f"{v.name}__final" for v in states] + [v.name for v in graph.output],
        name="per_image", body=body, num_scan_inputs=1)
    new_graph = helper.make_graph([loop], graph.name, list(graph.input), list(graph.output))
    wrapped = helper.make_model(new_graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    wrapped.functions.extend(model.functions)
    for prop in model.metadata_props:
        wrapped.metadata_props.add().CopyFrom(prop)
    return wrapped
