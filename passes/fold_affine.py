"""Folding of per-channel Mul/Add/Sub/Div/Sum constants into the op before them."""

import numpy as np

from optimizer.pattern import P
from optimizer.pipeline import RewritePass, register_pass
from optimizer.rewrite import Refuse, Replacement
from passes._affine import ONNX_DOMAINS, absorb, out_channels, output_rank, priced_fold, require_absorber

NON_CHANNEL_REASON = "the constant varies along a non-channel axis"


@register_pass("fold-affine", exact=True)
class FoldAffine(RewritePass):
    """Mul/Add/Sub/Div/Sum by per-channel constants after a Conv/ConvTranspose/Gemm/BN -> folded into its parameters.

    y*c, y+c, y-c, c-y, y/c and Sum(y, c, ...) are y * s + t per channel. This is how
    older exporters (caffe2) write BatchNormalization: Mul and Add by (C,1,1)
    constants, sometimes (C,) ones brought to (C,1,1) by an Unsqueeze, which is looked
    through. Chains fold one op at a time (each fold leaves the producer right before the
    next op). Scalars count as per-channel; a constant that varies along any other axis,
    or an op whose input has other readers, is refused. A Sum of several non-constant
    operands gives its constants to one of them and keeps summing the rest.
    """

    pattern = P.op("Mul|Add|Sub|Div|Sum", ...)

    def matches(self, g, ctx):
        """Only ops with both constant and non-constant operands are candidates."""
        return (m for m in super().matches(g, ctx) if _operands(g, m.root) is not None)

    def check(self, g, m):
        _absorption(g, m)

    def rewrite(self, g, m):
        node = m.root
        producer, s, t = _absorption(g, m)
        data, _ = _operands(g, node)
        replacement = Replacement(remove=[node])
        if len(data) == 1:
            absorb(g, replacement, producer, s, t, node.outputs[0])
        else:
            absorb(g, replacement, producer, s, t, producer.outputs[0])
            replacement.replace(node, inputs=[node.inputs[i] for i in data])
        return priced_fold(g, m, replacement)


def _absorption(g, m):
    """(producer, s, t) with node(y) = y * s + t per channel of the producer of a data input: for a Sum
    of several, the first whose producer can take the constants in; refuses with the first reason."""
    node = m.root
    data, consts = _operands(g, node)
    refusals = []
    for index in data:
        try:
            return _affine_of_input(g, m, index, consts)
        except Refuse as refusal:
            refusals.append(refusal)
    raise refusals[0]


def _affine_of_input(g, m, index, consts):
    """(producer, s, t) with node(y) = y * s + t per channel of the producer of input ``index``."""
    node = m.root
    name = node.inputs[index]
    producer = g.producer(name)
    if producer is None:
        raise Refuse("no Conv, ConvTranspose, Gemm or BatchNormalization produces its input")
    require_absorber(g, producer)
    if g.num_uses(name) > 1:
        raise Refuse(f"{producer.op_type} output feeds other nodes too")
    rank, channels = output_rank(g, producer, m), out_channels(g, producer)
    vectors = [_channel_vector(value, rank, channels, _old_broadcast_axis(g, node, i, rank)) for i, value in consts]
    ones, zeros = np.ones(channels), np.zeros(channels)
    if node.op_type == "Mul":
        return producer, vectors[0], zeros
    if node.op_type == "Div":
        if not np.all(vectors[0]):
            raise Refuse("it divides by a zero constant")
        return producer, 1.0 / vectors[0], zeros
    if node.op_type == "Sub":
        return (producer, ones, -vectors[0]) if index == 0 else (producer, -ones, vectors[0])
    return producer, ones, np.sum(vectors, axis=0)  # Add, Sum


def _operands(g, node):
    """(data input indices, [(index, constant value)]) of an affine-shaped op, or None."""
    consts, data = [], []
    for i, name in enumerate(node.inputs):
        value = _const_operand(g, name) if name else None
        if value is None:
            data.append(i)
        else:
            consts.append((i, value))
    if not consts or not data:
        return None
    if node.op_type != "Sum" and (len(node.inputs) != 2 or (node.op_type == "Div" and data != [0])):
        return None
    return data, consts


def _const_operand(g, name):
    """A constant's value, looking through one Unsqueeze of a constant (older exporters' (C,) -> (C,1,1))."""
    value = g.const(name)
    node = g.producer(name)
    if value is not None or node is None or node.op_type != "Unsqueeze" or node.domain not in ONNX_DOMAINS:
        return value
    data = g.const(node.inputs[0])
    if g.opset(node.domain) < 13:
        axes = node.attr("axes")
    else:
        axes = g.const(node.inputs[1]) if len(node.inputs) > 1 and node.inputs[1] else None
    if data is None or axes is None:
        return None
    try:
        return np.expand_dims(data, tuple(int(a) for a in np.ravel(axes)))
    except ValueError:  # an invalid Unsqueeze (AxisError is a ValueError): leave it to the executor
        return None


def _old_broadcast_axis(g, node, index, rank):
    """Before opset 7, Mul/Add/Sub/Div with broadcast=1 and ``axis`` align their second input at ``axis``."""
    if g.opset(node.domain) >= 7 or node.op_type == "Sum" or index != 1 or not node.attr("broadcast", 0):
        return None
    axis = node.attr("axis")
    return None if axis is None or rank is None else axis % rank


def _channel_vector(value, rank, channels, axis=None):
    """``value`` as a (channels,) vector; refuses unless it broadcasts along the channel axis (1) only."""
    if rank is None:
        if value.size == 1 and value.ndim <= 2:  # any input of rank >= 2 keeps its shape
            return np.full(channels, float(value.reshape(())))
        raise Refuse("the rank of its input is unknown")
    shape = value.shape if axis is None else (1,) * axis + value.shape + (1,) * (rank - axis - value.ndim)
    if len(shape) > rank:
        raise Refuse(NON_CHANNEL_REASON)
    shape = (1,) * (rank - len(shape)) + shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
        raise Refuse(NON_CHANNEL_REASON)
    return np.broadcast_to(value.astype(np.float64).reshape(-1), (channels,))
