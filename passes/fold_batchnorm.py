"""BatchNormalization folding into the convolution (or Gemm) next to it."""

import numpy as np

from optimizer.pattern import P
from optimizer.pipeline import RewritePass, register_pass
from optimizer.rewrite import Refuse, Replacement
from passes._affine import (ONNX_DOMAINS, absorb, bn_affine, new_parameter, out_channels, param_name, priced_fold,
                            require_absorber, require_inference_bn)
from passes._conv import pad_free

#: Ops a BN after them folds into (BN's channel axis is their output channels).
BEFORE_BN = ("Conv", "ConvTranspose", "Gemm")
PADDING_REASON = "the Conv pads its input, so the shift is not exact at the border"


@register_pass("fold-batchnorm", exact=True)
class FoldBatchNorm(RewritePass):
    """BatchNormalization after a Conv/ConvTranspose/Gemm, or before an unpadded Conv -> rescaled weights and bias.

    Inference BN is y = x * s + t per channel (s = scale / sqrt(var + eps), t = bias - mean * s).
    After an op: its output channel o gets weights * s[o] and bias b[o] * s[o] + t[o]. Before
    a Conv (nothing between): input channel c of the weights gets * s[c] and the bias gains
    sum W[o, c, k] * t[c]; that is exact only if the Conv never pads (a padded border would
    see t where it saw 0), so padded Convs are refused. Folding after the producer comes first.
    """

    pattern = P.BatchNormalization("x", "scale", "bias", "mean", "var", out="y")

    def check(self, g, m):
        require_inference_bn(g, m.root)
        _absorbing_producer(g, m)

    def rewrite(self, g, m):
        bn = m.root
        s, t = bn_affine(g, bn)
        replacement = Replacement(remove=[bn])
        producer = _absorbing_producer(g, m)
        if producer is not None:
            absorb(g, replacement, producer, s, t, m["y"])
        else:
            for conv in g.consumers(m["y"]):
                _absorb_input(g, replacement, conv, s, t, m["x"])
        return priced_fold(g, m, replacement)


def _absorbing_producer(g, m):
    """The op before the BN that takes it in, or None when the Convs reading it do; refuses when neither
    can (with the reason about the op before it, when there is one)."""
    bn, producer = m.root, g.producer(m["x"])
    if producer is None or producer.op_type not in BEFORE_BN or producer.domain not in ONNX_DOMAINS:
        _require_conv_readers(g, bn)
        return None
    try:
        _require_after(g, producer, bn)
    except Refuse as after:
        try:
            _require_conv_readers(g, bn)
        except Refuse:
            raise after from None
        return None
    return producer


def _require_after(g, producer, bn):
    """Refuses unless the BN can fold into ``producer``, the op before it."""
    if g.num_uses(bn.inputs[0]) > 1:
        raise Refuse(f"{producer.op_type} output feeds other nodes too")
    require_absorber(g, producer)
    if out_channels(g, producer) != g.const(bn.inputs[1]).shape[0]:
        raise Refuse(f"BN and {producer.op_type} channel counts differ")


def _require_conv_readers(g, bn):
    """Refuses unless every reader of the BN is an unpadded Conv with constant parameters that can take it in."""
    y = bn.outputs[0]
    uses = g.uses(y)
    if not uses or g.is_graph_output(y) \
            or any(n.op_type != "Conv" or n.domain not in ONNX_DOMAINS or i != 0 for n, i in uses):
        raise Refuse("no Conv, ConvTranspose or Gemm before it and its readers are not all Convs")
    channels = g.const(bn.inputs[1]).shape[0]
    for conv, _ in uses:
        if not g.all_constant(*conv.inputs[1:]):
            raise Refuse("Conv parameters are not constant")
        w_shape = g.const(conv.inputs[1]).shape
        if not pad_free(conv.attrs, w_shape[2:]):
            raise Refuse(PADDING_REASON)
        if w_shape[1] * conv.attr("group", 1) != channels:
            raise Refuse("BN and Conv channel counts differ")


def _absorb_input(g, r, conv, s, t, x):
    """Add to ``r``: Conv(BN(x)) as one Conv of x; input channel c of a grouped Conv's output o is
    W[o, c - group(o) * Cin/g]."""
    w = g.const(conv.inputs[1])
    group, (cout, cin_group) = conv.attr("group", 1), w.shape[:2]

    def per_weight(v):  # (Cin,) -> broadcastable against W: (Cout, Cin/group, 1, ...)
        v = np.repeat(np.broadcast_to(v, (group * cin_group,)).reshape(group, 1, cin_group), cout // group, axis=1)
        return v.reshape((cout, cin_group) + (1,) * (w.ndim - 2))

    w64 = w.astype(np.float64)
    b = g.const(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] else np.zeros(cout)
    shift = b.astype(np.float64) + (w64 * per_weight(t)).sum(axis=tuple(range(1, w.ndim)))
    names = [new_parameter(g, r, w64 * per_weight(s), w.dtype, conv.inputs[1]),
             new_parameter(g, r, shift, w.dtype, param_name(conv, 2, "b"))]
    r.replace(conv, inputs=[x, *names])
