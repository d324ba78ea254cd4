"""Folding of per-channel Mul/Add/Sub/Div/Sum constants into the op before them."""

import numpy as np

from optimizer.pattern import P
from optimizer.registry import register_pass
from passes._affine import (ONNX_DOMAINS, FoldPass, absorb, absorb_blocker, out_channels, output_rank,
                            replace_node)

NON_CHANNEL_REASON = "the constant varies along a non-channel axis"


@register_pass("fold-affine", exact=True)
class FoldAffine(FoldPass):
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

    def candidates(self, g):
        return [n for n in super().candidates(g) if n.domain in ONNX_DOMAINS and _operands(g, n) is not None]

    def check(self, g, m):
        node = m.root
        data, consts = _operands(g, node)
        reasons = []
        for index in data:  # a Sum may have several: the first whose producer can absorb the constants
            plan = self._plan(g, node, index, consts)
            if isinstance(plan, str):
                reasons.append(plan)
                continue
            m.plan = plan
            return m
        return m.fail(reasons[0])

    def rewrite(self, g, m):
        node, (producer, s, t) = m.root, m.plan
        data, _ = _operands(g, node)
        if len(data) == 1:
            def fold_whole():
                g.remove_node(node)
                return [absorb(g, producer, s, t, node.outputs[0])]

            self.fold(g, node, [producer, node], fold_whole)
        else:
            def fold_constants_only():
                new = absorb(g, producer, s, t, producer.outputs[0])
                g.remove_node(node)
                return [new, replace_node(g, node, [node.inputs[i] for i in data], node.outputs[0])]

            self.fold(g, node, [producer, node], fold_constants_only)

    def _plan(self, g, node, index, consts):
        """(producer, s, t) with node(y) = y * s + t per channel of the producer of input ``index``, or a reason."""
        name = node.inputs[index]
        producer = g.producer(name)
        reason = "no Conv, ConvTranspose, Gemm or BatchNormalization produces its input" if producer is None \
            else absorb_blocker(g, producer)
        if reason:
            return reason
        if g.num_uses(name) > 1:
            return f"{producer.op_type} output feeds other nodes too"
        rank, channels = output_rank(producer, g, self.shapes(g)), out_channels(g, producer)
        vectors = []
        for i, value in consts:
            vector = _channel_vector(value, rank, channels, _old_broadcast_axis(g, node, i, rank))
            if isinstance(vector, str):
                return vector
            vectors.append(vector)
        ones, zeros = np.ones(channels), np.zeros(channels)
        if node.op_type == "Mul":
            return producer, vectors[0], zeros
        if node.op_type == "Div":
            if not np.all(vectors[0]):
                return "it divides by a zero constant"
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
    """``value`` as a (channels,) vector when it broadcasts along the channel axis (1) only, else a reason."""
    if rank is None:
        if value.size == 1 and value.ndim <= 2:  # any input of rank >= 2 keeps its shape
            return np.full(channels, float(value.reshape(())))
        return "the rank of its input is unknown"
    shape = value.shape if axis is None else (1,) * axis + value.shape + (1,) * (rank - axis - value.ndim)
    if len(shape) > rank:
        return NON_CHANNEL_REASON
    shape = (1,) * (rank - len(shape)) + shape
    if any(d != 1 for i, d in enumerate(shape) if i != 1) or shape[1] not in (1, channels):
        return NON_CHANNEL_REASON
    return np.broadcast_to(value.astype(np.float64).reshape(-1), (channels,))
