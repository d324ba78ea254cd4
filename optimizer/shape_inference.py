"""Shape inference: per-tensor shapes, element types, constness and small values of a Graph.

Split from ``optimizer.cost`` because shapes are needed far beyond pricing (passes,
verification, the bottleneck engine). Shapes come from the per-op rules of
``optimizer.shape_rules`` for the ops CNNs are made of (checked against
onnxruntime in the tests), then from onnx shape inference with data propagation for
everything else and for dims the rules leave open, then from the model's own value_info.
The rules come first because onnx inference is wrong where it matters here (with
ceil_mode it keeps a pooling window that would start in the end padding, which
onnxruntime and PyTorch drop) and because it is slow on big graphs: it runs only when the
rules leave a dim unknown. The rules also propagate the values of small numeric tensors
through shape-computing ops, so ConstantOfShape weights (the light zoo's) and computed
Reshape targets resolve. Nothing is written back into the Graph: a round trip stays
lossless and pinned input dims never leak into the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from optimizer.errors import NinoptError
from optimizer.ir import Graph, Node
from optimizer.onnx_checks import inferred_shapes
from optimizer.shape_rules import MAX_VALUE_ELEMS, SHAPE_RULES, VALUE_RULES, Shape, merge_shapes, output_elem_type
from optimizer.values import Dim

#: Ops with inputs all constant whose output still is not a constant.
_RANDOM_OPS = frozenset({"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                         "Multinomial", "Bernoulli"})


@dataclass
class TensorFacts:
    """What inference knows per tensor name: shape (None: unknown), element type (0: unknown), constness."""

    shapes: dict[str, Shape | None]
    elem_types: dict[str, int]
    constants: set[str]


def infer_shapes(graph: Graph, input_shapes: Mapping[str, Sequence[Dim]] | None = None, *,
                 use_onnx: bool = True) -> dict[str, Shape | None]:
    """Shape of every tensor the graph reads or produces (None where unknown).

    ``use_onnx=False`` never runs onnx shape inference: the per-op rules and the model's
    value_info alone.
    """
    return infer_facts(graph, graph.toposort(), input_shapes, use_onnx).shapes


#: Contrib ops priced as the standard op they fuse (the activation they add costs no MACs).
_COSTED_AS = {("com.microsoft", "FusedConv"): "Conv"}


def costed_op(node: Node) -> str | None:
    """The standard op type a node is priced and shaped as, or None for ops of unknown domains."""
    if node.domain in ("", "ai.onnx"):
        return node.op_type
    return _COSTED_AS.get((node.domain, node.op_type))


# ---------------------------------------------------------------------- inference driver
def infer_facts(graph: Graph, order: list[Node], input_shapes: Mapping[str, Sequence[Dim]] | None,
                use_onnx: bool) -> TensorFacts:
    """Rules first; onnx shape inference only when they leave a dim unknown (it costs more than the rules)."""
    pins = {name: tuple(d if d is None or isinstance(d, str) else int(d) for d in dims)
            for name, dims in (input_shapes or {}).items()}
    feeds = set(graph.feed_inputs())
    for name in pins:
        if name not in feeds:
            raise NinoptError(f"cannot pin the shape of {name!r}: it is not an input the model is fed.")
    facts = _propagate(graph, order, pins, {}, {})
    if use_onnx and any(s is None or None in s for s in facts.shapes.values()):
        facts = _propagate(graph, order, pins, *inferred_shapes(graph, pins))
    return facts


def _propagate(graph: Graph, order: list[Node], pins: dict[str, Shape], onnx_shapes: dict[str, Shape | None],
               onnx_types: dict[str, int]) -> TensorFacts:
    """One pass in topological order: shapes, element types, constness and small numeric values."""
    shapes: dict[str, Shape | None] = {}
    types: dict[str, int] = {}
    values: dict[str, np.ndarray] = {}
    constants = set(graph.initializers)
    for name in dict.fromkeys([*graph.inputs, *graph.initializers]):
        shapes[name] = pins[name] if name in pins else merge_shapes(onnx_shapes.get(name), graph.shape(name))
        info = graph.tensors.get(name)
        types[name] = (info.elem_type if info is not None else 0) or onnx_types.get(name, 0)
        value = _small_const(graph, name)
        if value is not None:
            values[name] = value
    opset = graph.opset()
    for node in order:
        outputs = node.outputs
        ins = [shapes.get(t) if t else None for t in node.inputs]
        vals = [values.get(t) for t in node.inputs]
        standard = node.domain in ("", "ai.onnx")
        op_type = costed_op(node)
        ruled = (_apply(SHAPE_RULES.get(op_type), node, ins, vals, opset) if op_type else None) or ()
        for i, out in enumerate(outputs):
            if not out:
                continue
            table = None if pins else graph.tensors[out].shape
            shapes[out] = merge_shapes(ruled[i] if i < len(ruled) else None, onnx_shapes.get(out), table)
            types[out] = onnx_types.get(out) or graph.tensors[out].elem_type or output_elem_type(graph, node, i, types)
        if (standard and node.op_type == "Constant") or (
                node.inputs and not node.implicit_inputs and node.op_type not in _RANDOM_OPS
                and all(t == "" or t in constants for t in node.inputs)):
            constants.update(o for o in outputs if o)
        if standard and outputs and outputs[0]:
            value = _node_value(graph, node, ins, vals, opset)
            if value is not None and value.dtype.kind in "biufO" and value.size <= MAX_VALUE_ELEMS:
                values[outputs[0]] = value
    return TensorFacts(shapes, types, constants)


def _node_value(graph: Graph, node: Node, ins: list, vals: list, opset: int) -> np.ndarray | None:
    if node.op_type == "Constant":
        return graph.const(node.outputs[0])
    if node.op_type != "Shape" and any(v is None for v, t in zip(vals, node.inputs) if t):
        return None
    return _apply(VALUE_RULES.get(node.op_type), node, ins, vals, opset)


def _apply(rule, node: Node, ins: list, vals: list, opset: int):
    """Run a shape or value rule; a missing input shape or malformed attribute means unknown.

    Rules read what they need directly: an unknown (None) shape or value they index into or
    read from, or a bad attribute, raises, and that is an answer ("unknown"), not an error;
    the executor reports malformed models.
    """
    if rule is None:
        return None
    try:
        return rule(node, ins, vals, opset)
    except (TypeError, IndexError, ValueError, ZeroDivisionError, AttributeError):
        return None


def _small_const(graph: Graph, name: str) -> np.ndarray | None:
    """The value of a small numeric constant (shapes, scales, pads), without loading weights."""
    const = graph.tensors[name].const if name in graph.tensors else None
    if const is not None and (const.dtype is None or const.dtype.kind not in "biuf" or const.shape is None
                              or math.prod(const.shape) > MAX_VALUE_ELEMS):
        return None
    value = graph.const(name)
    return value if value is not None and value.dtype.kind in "biuf" and value.size <= MAX_VALUE_ELEMS else None
