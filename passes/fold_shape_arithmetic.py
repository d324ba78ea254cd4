"""Reshape targets computed from the reshaped tensor's own dims become constants."""

import numpy as np

from optimizer.pattern import P
from optimizer.pipeline import RewritePass, register_pass
from optimizer.rewrite import Refuse, Replacement

#: Casts a dim survives unchanged (a dim below 2**31 is the same int32 or int64 value).
_INTEGER_TYPES = {6, 7}  # TensorProto.INT32, TensorProto.INT64


@register_pass("fold-shape-arithmetic", exact=True)
class FoldShapeArithmetic(RewritePass):
    """Reshape(x, Concat(Shape(x)[0], ..., 512)) -> Reshape(x, [0, ..., 512]).

    Exporters build a Reshape's target from the dims of its own input that stay dynamic
    (the batch): Shape -> Gather/Slice -> Cast/Unsqueeze -> Concat with constants. A 0 in a
    Reshape target (``allowzero`` = 0) copies the input's dim at that position, so every
    entry that reads the input's own dim at its own position becomes 0; when nothing else
    is dynamic the target becomes a constant and the shape arithmetic goes dead. Entries
    whose dim is static fold to it. A symbolic dim read at another position stays.
    """

    pattern = P.Reshape("x", "target", ..., out="y")

    def check(self, g, m):
        if m.root.attr("allowzero", 0):
            raise Refuse("with allowzero=1 a 0 in the target means an empty dim, not a copy")

    def matches(self, g, ctx):
        """Only Reshapes whose computed target is made of dims and constants are candidates."""
        for m in super().matches(g, ctx):
            node = m.root
            if node.domain in ("", "ai.onnx") and len(node.inputs) > 1 and not g.is_const(node.inputs[1]) \
                    and _dim_sources(g, node.inputs[1], ctx.shapes) is not None:
                yield m

    def rewrite(self, g, m):
        entries = _dim_sources(g, m["target"], m.shapes)
        target = []
        for position, entry in enumerate(entries):
            if isinstance(entry, int):
                target.append(entry)
            elif entry == (m["x"], position):
                target.append(0)
            else:
                dim = _dim(m.shapes, *entry)
                if dim is None:
                    raise Refuse("the target reads a symbolic dim at another position or of another tensor")
                target.append(dim)
        replacement = Replacement()
        shape = replacement.add_initializer(g.fresh_name("shape"), np.array(target, np.int64))
        replacement.replace(m.root, inputs=[m["x"], shape, *m.root.inputs[2:]])
        return replacement


def _dim(shapes, tensor: str, index: int) -> int | None:
    shape = shapes.of(tensor)
    dim = shape[index] if shape is not None and index < len(shape) else None
    return dim if isinstance(dim, int) else None


def _dim_sources(g, tensor: str, shapes, depth: int = 0) -> list | None:
    """What each element of a 1-D integer tensor is: an int, or (tensor, axis) for a dim of a tensor.

    None when some element is computed otherwise (arithmetic, data). Follows Concat, Unsqueeze/Squeeze of one element,
    integer Casts, Gather and Slice of a Shape, and Shape itself.
    """
    value = g.const(tensor)
    if value is not None:
        return [int(v) for v in value.reshape(-1)] if value.dtype.kind in "iu" and value.size <= 64 else None
    node = g.producer(tensor)
    if node is None or depth > 16 or node.domain not in ("", "ai.onnx"):
        return None
    op = node.op_type
    if op == "Shape":
        rank = _rank(shapes, node.inputs[0])
        if rank is None:
            return None
        start, end = (node.attr("start", 0), node.attr("end")) if g.opset() >= 15 else (0, None)
        return [(node.inputs[0], axis) for axis in range(rank)[start:end]]
    if op == "Concat" and node.attr("axis") in (0, -1):
        parts = [_dim_sources(g, t, shapes, depth + 1) for t in node.inputs]
        return None if any(p is None for p in parts) else [e for p in parts for e in p]
    if op == "Cast" and node.attr("to") in _INTEGER_TYPES:
        return _dim_sources(g, node.inputs[0], shapes, depth + 1)
    if op in ("Unsqueeze", "Squeeze"):  # of one element: the value is unchanged whatever the axes
        inner = _dim_sources(g, node.inputs[0], shapes, depth + 1)
        return inner if inner is not None and len(inner) == 1 else None
    if op in ("Gather", "Slice") and g.all_constant(*node.inputs[1:]):
        inner = _dim_sources(g, node.inputs[0], shapes, depth + 1)
        if inner is None or (op == "Gather" and node.attr("axis", 0) not in (0, -1)):
            return None
        picked = _pick(g, node, len(inner))
        return None if picked is None else [inner[i] for i in picked]
    return None


def _pick(g, node, length: int) -> list[int] | None:
    """The positions a Gather (scalar or 1-D indices) or a unit-step Slice on axis 0 takes from a 1-D tensor."""
    values = [g.const(t) if t else None for t in node.inputs[1:]]
    if node.op_type == "Gather":
        indices = values[0].reshape(-1)
        if values[0].ndim > 1 or ((indices < -length) | (indices >= length)).any():
            return None
        return [int(i) % length for i in indices]
    starts, ends = values[0], values[1]
    axes = values[2] if len(values) > 2 and values[2] is not None else np.zeros(1, np.int64)
    steps = values[3] if len(values) > 3 and values[3] is not None else np.ones(1, np.int64)
    if starts.size != 1 or int(axes.reshape(-1)[0]) not in (0, -1) or int(steps.reshape(-1)[0]) != 1:
        return None
    return list(range(length))[int(starts.reshape(-1)[0]):int(ends.reshape(-1)[0])]


def _rank(shapes, tensor: str) -> int | None:
    shape = shapes.of(tensor)
    return None if shape is None else len(shape)
