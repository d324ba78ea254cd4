"""Removal of op chains that cancel and of ops that change nothing."""

import numpy as np

from optimizer.ir import elem_type_to_dtype
from optimizer.pipeline import Pass
from optimizer.registry import register_pass
from passes.fold_constants import ShapeFacts

#: Significand bits of each float type: an integer type converts to it exactly when it has no more bits.
_SIGNIFICAND_BITS = {2: 11, 4: 24, 8: 53}


def widens_exactly(source: np.dtype, target: np.dtype) -> bool:
    """Every value of ``source`` is a value of ``target`` (so casting there and back is the identity).

    numpy's "safe" casting, minus the integer -> float casts it calls safe although they round
    (int64 -> float64 loses integers above 2**53).
    """
    if not np.can_cast(source, target, casting="safe"):
        return False
    if source.kind in "iu" and target.kind == "f":
        return source.itemsize * 8 - (source.kind == "i") <= _SIGNIFICAND_BITS.get(target.itemsize, 0)
    return source.kind in "biuf" and target.kind in "biuf"


@register_pass("eliminate-cancelling-chains", exact=True)
class EliminateCancellingChains(Pass):
    """Chains that cancel or compose (Cast, Reshape, Transpose, Slice, Unsqueeze) and ops that change nothing go.

    - Cast(Cast(x, T1), T2) reads x directly when T1 holds every value of x's type exactly,
      and vanishes when T2 is x's type (float -> double -> float; int8 -> float -> int8 is
      not exact for floats that are not integers, so only widening first casts qualify).
    - Reshape(Reshape(x, s1), s2) -> Reshape(x, s2) when s2 is constant and has no 0
      (a 0 copies a dim from its input, which differs between x and the inner result).
    - Transpose(Transpose(x, p), q) -> one Transpose of the composed permutation, or none.
    - Slice(Slice(x)) on disjoint axes -> one Slice (slices of different axes commute).
    - Squeeze(Unsqueeze(x, axes), axes) -> x.
    - Squeeze/Reshape/Flatten/Expand/unit-step Slice whose static output shape
      is its input's, and Concat of one input -> the input.
    - x*1, x/1, x-0 (and x+0 for integers, and x+(-0.0)) when the constant does not
      broaden x's static shape. x+(+0.0) stays for floats: it turns -0.0 into +0.0.
    """

    def run(self, g, stats):
        shapes = ShapeFacts(g)
        changed = False
        for node in g.toposort():
            rule = _RULES.get(node.op_type)
            if rule is None or g.node(node.id) is None or node.domain not in ("", "ai.onnx"):
                continue
            outcome = rule(g, node, shapes)
            if outcome is None:
                continue
            stats.matches += 1
            if isinstance(outcome, str):
                stats.refuse(outcome)
                continue
            stats.rewrites += 1
            changed = True
        return changed


def _remove(g, node, input_index: int = 0):
    """Bypass ``node`` (its output becomes its input): True, or the reason it cannot be."""
    blocker = g.bypass_blocker(node, input_index)
    if blocker:
        return blocker
    g.bypass(node, input_index)
    return True


def _producer_of(g, node, op_type: str):
    """The producer of ``node``'s first input if it is an ``op_type`` op and that input is its first output."""
    if not node.inputs or not node.inputs[0]:
        return None
    producer = g.producer(node.inputs[0])
    if producer is None or producer.op_type != op_type or producer.domain not in ("", "ai.onnx"):
        return None
    return producer if producer.outputs[0] == node.inputs[0] else None


def _elem_type(g, tensor: str) -> int:
    """A tensor's element type: from the tensor table, else from the Cast that produced it; 0 when unknown."""
    elem_type = g.tensor(tensor).elem_type
    producer = g.producer(tensor)
    if not elem_type and producer is not None and producer.op_type == "Cast":
        elem_type = producer.attr("to", 0)
    return elem_type


def _cast(g, node, shapes):
    source = _elem_type(g, node.inputs[0])
    if source and source == node.attr("to"):
        return _remove(g, node)
    inner = _producer_of(g, node, "Cast")
    if inner is None:
        return None
    x = inner.inputs[0]
    source, middle = elem_type_to_dtype(_elem_type(g, x)), elem_type_to_dtype(inner.attr("to", 0))
    if source is None or middle is None:
        return "the element type of the first Cast's input is unknown"
    if not widens_exactly(source, middle):
        return f"a cast from {source} to {middle} is not exact"
    g.set_input(node, 0, x)
    if _elem_type(g, x) == node.attr("to"):
        _remove(g, node)  # a blocked bypass still leaves one Cast instead of two
    return True


def _reshape(g, node, shapes):
    inner = _producer_of(g, node, "Reshape")
    if inner is None:
        return _unchanged_shape(g, node, shapes)
    target = g.const(node.inputs[1])
    if target is None:
        return "the outer Reshape's target is not constant"
    if (target == 0).any() and not node.attr("allowzero", 0):
        return "the outer Reshape's target copies a dim (0) from its input"
    g.set_input(node, 0, inner.inputs[0])
    return True


def _transpose(g, node, shapes):
    inner = _producer_of(g, node, "Transpose")
    if inner is None:
        return None
    outer_perm, inner_perm = node.attr("perm"), inner.attr("perm")
    if outer_perm is None or inner_perm is None:
        return "a Transpose without perm (reverse axes) needs the rank"
    composed = [inner_perm[axis] for axis in outer_perm]
    g.set_input(node, 0, inner.inputs[0])
    g.set_attr(node, "perm", composed)
    if composed == list(range(len(composed))):
        _remove(g, node)  # blocked: one Transpose stays instead of two
    return True


def _axes(g, node) -> list[int] | None:
    """A Squeeze/Unsqueeze's axes (attribute before opset 13, input after); None when not constant or absent."""
    if "axes" in node.attrs:
        return list(node.attrs["axes"])
    if len(node.inputs) > 1 and node.inputs[1]:
        axes = g.const(node.inputs[1])
        return None if axes is None else [int(a) for a in axes.reshape(-1)]
    return None


def _squeeze(g, node, shapes):
    inner = _producer_of(g, node, "Unsqueeze")
    if inner is not None:
        axes, inner_axes = _axes(g, node), _axes(g, inner)
        if axes is not None and inner_axes is not None and all(a >= 0 for a in axes + inner_axes) \
                and sorted(axes) == sorted(inner_axes):
            if g.is_graph_output(node.outputs[0]):
                return "its output is a graph output"
            g.replace_all_uses(node.outputs[0], inner.inputs[0])
            g.remove_node(node)
            return True
    return _unchanged_shape(g, node, shapes)


def _unchanged_shape(g, node, shapes):
    """A shape op whose static output shape is its input's is the identity on values."""
    before, after = shapes.of(node.inputs[0]), shapes.of(node.outputs[0])
    if not _static(before) or not _static(after) or tuple(before) != tuple(after):
        return None
    if node.op_type == "Slice" and len(node.inputs) > 4 and node.inputs[4]:
        steps = g.const(node.inputs[4])
        if steps is None or (steps != 1).any():
            return "a Slice with a step other than 1 may reverse or skip elements"
    return _remove(g, node)


def _slice(g, node, shapes):
    inner = _producer_of(g, node, "Slice")
    if inner is None or g.opset() < 10:
        return _unchanged_shape(g, node, shapes)
    outer, first = _slice_params(g, node, shapes), _slice_params(g, inner, shapes)
    if outer is None or first is None:
        return "a Slice's starts, ends, axes or steps are not constant, or its rank is unknown"
    if set(outer[2]) & set(first[2]):
        return "both Slices cut the same axis"
    inputs = [inner.inputs[0]] + [g.add_initializer(np.concatenate([a, b]), name=g.fresh_name(f"{node.name}_{part}"))
                                  for a, b, part in zip(first, outer, ("starts", "ends", "axes", "steps"))]
    g.remove_node(node)
    g.add_like(node, inputs=inputs)
    return True


def _slice_params(g, node, shapes) -> list[np.ndarray] | None:
    """A Slice's starts, ends, axes (non-negative) and steps as int64 arrays; None when not all are known."""
    values = [g.const(t) if t else None for t in node.inputs[1:5]]
    values += [None] * (4 - len(values))
    starts, ends, axes, steps = values
    if starts is None or ends is None or (len(node.inputs) > 3 and node.inputs[3] and axes is None) \
            or (len(node.inputs) > 4 and node.inputs[4] and steps is None):
        return None
    shape = shapes.of(node.inputs[0])
    axes = np.arange(len(starts)) if axes is None else axes.astype(np.int64)
    if (axes < 0).any():
        if shape is None:
            return None
        axes = axes % len(shape)
    steps = np.ones(len(starts), np.int64) if steps is None else steps
    return [starts.astype(np.int64), ends.astype(np.int64), axes, steps.astype(np.int64)]


def _concat(g, node, shapes):
    return _remove(g, node) if len([t for t in node.inputs if t]) == 1 else None


#: op -> (identity constant, may the constant be the first operand)
_NEUTRAL = {"Mul": (1, True), "Div": (1, False), "Add": (0, True), "Sub": (0, False)}


def _neutral_arithmetic(g, node, shapes):
    identity, commutes = _NEUTRAL[node.op_type]
    for const_index in ((1, 0) if commutes else (1,)):
        value = g.const(node.inputs[const_index])
        if value is None or value.size == 0 or not (value == identity).all():
            continue
        x_index = 1 - const_index
        x, out = shapes.of(node.inputs[x_index]), shapes.of(node.outputs[0])
        if not _static(x) or not _static(out) or tuple(x) != tuple(out):
            return "the constant's broadcast may change the shape"
        if node.op_type == "Add" and value.dtype.kind == "f" and not np.signbit(value).all():
            return "x + 0.0 turns -0.0 into +0.0"
        x_type, out_type = _elem_type(g, node.inputs[x_index]), _elem_type(g, node.outputs[0])
        if x_type and out_type and x_type != out_type:
            return "the element type would change"
        return _remove(g, node, x_index)
    return None


def _static(shape) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


_RULES = {"Cast": _cast, "Reshape": _reshape, "Transpose": _transpose, "Squeeze": _squeeze,
          "Flatten": _unchanged_shape, "Expand": _unchanged_shape,
          "Slice": _slice, "Concat": _concat, **{op: _neutral_arithmetic for op in _NEUTRAL}}
