"""Removal of op chains that cancel and of ops that change nothing."""

import numpy as np

from optimizer.pattern import Match
from optimizer.pipeline import RewritePass, register_pass
from optimizer.rewrite import Refuse, Replacement
from optimizer.values import elem_type_to_dtype

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
class EliminateCancellingChains(RewritePass):
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

    Nodes are visited in topological order, so a chain of three composes from its start
    within one run. An op that is none of these forms is no match (and not counted).
    """

    def matches(self, g, ctx):
        for visited in g.toposort():
            node = g.node(visited.id)  # the graph's own node: a rolled-back rewrite restores copies
            if node is None or node.domain not in ("", "ai.onnx"):
                continue
            if _rule_for(g, node, ctx.shapes) is not None:
                yield Match(nodes=[node])

    def rewrite(self, g, m):
        return _rule_for(g, m.root, m.shapes)(g, m.root, m.shapes)


def _rule_for(g, node, shapes):
    """The rule for the form ``node`` has (the first form of its op type that applies), or None."""
    for applies, rule in _FORMS.get(node.op_type, ()):
        if applies(g, node, shapes):
            return rule
    return None


def _producer_of(g, node, op_type: str):
    """The producer of ``node``'s first input if it is an ``op_type`` op and that input is its first output."""
    if not node.inputs or not node.inputs[0]:
        return None
    producer = g.producer(node.inputs[0])
    if producer is None or producer.op_type != op_type or producer.domain not in ("", "ai.onnx"):
        return None
    return producer if producer.outputs[0] == node.inputs[0] else None


def _after(op_type: str):
    """Applies when ``node`` reads the output of an ``op_type`` op."""
    return lambda g, node, shapes: _producer_of(g, node, op_type) is not None


def _elem_type(g, tensor: str) -> int:
    """A tensor's element type: from the tensor table, else from the Cast that produced it; 0 when unknown."""
    elem_type = g.tensor(tensor).elem_type
    producer = g.producer(tensor)
    if not elem_type and producer is not None and producer.op_type == "Cast":
        elem_type = producer.attr("to", 0)
    return elem_type


def _read_through(g, node, x: str, *, identity: bool, attrs: dict | None = None) -> Replacement:
    """``node`` reads ``x``, the start of the chain, instead of the inner op's output; it goes too when
    the composed chain is the identity, unless its output is a graph output (then one op stays instead of two)."""
    if identity and not g.is_graph_output(node.outputs[0]):
        return Replacement(remove=[node], rename={node.outputs[0]: x})
    replacement = Replacement()
    replacement.replace(node, inputs=[x, *node.inputs[1:]], attrs=attrs)
    return replacement


def _bypass(g, node, shapes) -> Replacement:
    return Replacement().bypass(node)


def _casts_to_own_type(g, node, shapes) -> bool:
    source = _elem_type(g, node.inputs[0])
    return bool(source) and source == node.attr("to")


def _compose_casts(g, node, shapes) -> Replacement:
    inner = g.producer(node.inputs[0])
    x = inner.inputs[0]
    source, middle = elem_type_to_dtype(_elem_type(g, x)), elem_type_to_dtype(inner.attr("to", 0))
    if source is None or middle is None:
        raise Refuse("the element type of the first Cast's input is unknown")
    if not widens_exactly(source, middle):
        raise Refuse(f"a cast from {source} to {middle} is not exact")
    return _read_through(g, node, x, identity=_elem_type(g, x) == node.attr("to"))


def _compose_reshapes(g, node, shapes) -> Replacement:
    target = g.const(node.inputs[1])
    if target is None:
        raise Refuse("the outer Reshape's target is not constant")
    if (target == 0).any() and not node.attr("allowzero", 0):
        raise Refuse("the outer Reshape's target copies a dim (0) from its input")
    return _read_through(g, node, g.producer(node.inputs[0]).inputs[0], identity=False)


def _compose_transposes(g, node, shapes) -> Replacement:
    inner = g.producer(node.inputs[0])
    outer_perm, inner_perm = node.attr("perm"), inner.attr("perm")
    if outer_perm is None or inner_perm is None:
        raise Refuse("a Transpose without perm (reverse axes) needs the rank")
    composed = [inner_perm[axis] for axis in outer_perm]
    return _read_through(g, node, inner.inputs[0], identity=composed == list(range(len(composed))),
                         attrs={"perm": composed})


def _axes(g, node) -> list[int] | None:
    """A Squeeze/Unsqueeze's axes (attribute before opset 13, input after); None when not constant or absent."""
    if "axes" in node.attrs:
        return list(node.attrs["axes"])
    if len(node.inputs) > 1 and node.inputs[1]:
        axes = g.const(node.inputs[1])
        return None if axes is None else [int(a) for a in axes.reshape(-1)]
    return None


def _undoes_unsqueeze(g, node, shapes) -> bool:
    inner = _producer_of(g, node, "Unsqueeze")
    if inner is None:
        return False
    axes, inner_axes = _axes(g, node), _axes(g, inner)
    return axes is not None and inner_axes is not None and all(a >= 0 for a in axes + inner_axes) \
        and sorted(axes) == sorted(inner_axes)


def _drop_squeeze_of_unsqueeze(g, node, shapes) -> Replacement:
    if g.is_graph_output(node.outputs[0]):
        raise Refuse("its output is a graph output")
    return Replacement(remove=[node], rename={node.outputs[0]: g.producer(node.inputs[0]).inputs[0]})


def _keeps_shape(g, node, shapes) -> bool:
    before, after = shapes.of(node.inputs[0]), shapes.of(node.outputs[0])
    return _static(before) and _static(after) and tuple(before) == tuple(after)


def _drop_shape_op(g, node, shapes) -> Replacement:
    """A shape op whose static output shape is its input's is the identity on values."""
    if node.op_type == "Slice" and len(node.inputs) > 4 and node.inputs[4]:
        steps = g.const(node.inputs[4])
        if steps is None or (steps != 1).any():
            raise Refuse("a Slice with a step other than 1 may reverse or skip elements")
    return Replacement().bypass(node)


def _after_slice(g, node, shapes) -> bool:
    return g.opset() >= 10 and _producer_of(g, node, "Slice") is not None


def _compose_slices(g, node, shapes) -> Replacement:
    inner = g.producer(node.inputs[0])
    outer, first = _slice_params(g, node, shapes), _slice_params(g, inner, shapes)
    if outer is None or first is None:
        raise Refuse("a Slice's starts, ends, axes or steps are not constant, or its rank is unknown")
    if set(outer[2]) & set(first[2]):
        raise Refuse("both Slices cut the same axis")
    replacement = Replacement()
    params = [replacement.add_initializer(g.fresh_name(f"{node.name}_{part}"), np.concatenate([a, b]))
              for a, b, part in zip(first, outer, ("starts", "ends", "axes", "steps"))]
    replacement.replace(node, inputs=[inner.inputs[0], *params])
    return replacement


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


def _single_input(g, node, shapes) -> bool:
    return len([t for t in node.inputs if t]) == 1


#: op -> (identity constant, may the constant be the first operand)
_NEUTRAL = {"Mul": (1, True), "Div": (1, False), "Add": (0, True), "Sub": (0, False)}


def _neutral_operand(g, node) -> int | None:
    """The index of the first operand that is a constant all equal to the op's identity, or None."""
    identity, commutes = _NEUTRAL[node.op_type]
    for const_index in ((1, 0) if commutes else (1,)):
        value = g.const(node.inputs[const_index])
        if value is not None and value.size and (value == identity).all():
            return const_index
    return None


def _has_neutral_operand(g, node, shapes) -> bool:
    return _neutral_operand(g, node) is not None


def _drop_neutral_arithmetic(g, node, shapes) -> Replacement:
    const_index = _neutral_operand(g, node)
    value, x_index = g.const(node.inputs[const_index]), 1 - const_index
    x, out = shapes.of(node.inputs[x_index]), shapes.of(node.outputs[0])
    if not _static(x) or not _static(out) or tuple(x) != tuple(out):
        raise Refuse("the constant's broadcast may change the shape")
    if node.op_type == "Add" and value.dtype.kind == "f" and not np.signbit(value).all():
        raise Refuse("x + 0.0 turns -0.0 into +0.0")
    x_type, out_type = _elem_type(g, node.inputs[x_index]), _elem_type(g, node.outputs[0])
    if x_type and out_type and x_type != out_type:
        raise Refuse("the element type would change")
    return Replacement().bypass(node, x_index)


def _static(shape) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


_SHAPE_UNCHANGED = (_keeps_shape, _drop_shape_op)
#: op -> its forms in order of precedence: (applies(g, node, shapes), rule(g, node, shapes) -> Replacement)
_FORMS = {
    "Cast": [(_casts_to_own_type, _bypass), (_after("Cast"), _compose_casts)],
    "Reshape": [(_after("Reshape"), _compose_reshapes), _SHAPE_UNCHANGED],
    "Transpose": [(_after("Transpose"), _compose_transposes)],
    "Squeeze": [(_undoes_unsqueeze, _drop_squeeze_of_unsqueeze), _SHAPE_UNCHANGED],
    "Slice": [(_after_slice, _compose_slices), _SHAPE_UNCHANGED],
    "Flatten": [_SHAPE_UNCHANGED],
    "Expand": [_SHAPE_UNCHANGED],
    "Concat": [(_single_input, _bypass)],
    **{op: [(_has_neutral_operand, _drop_neutral_arithmetic)] for op in _NEUTRAL},
}
