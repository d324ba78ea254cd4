"""BatchNormalization folding into the convolution (or Gemm) next to it."""

import numpy as np

from optimizer.pattern import P
from optimizer.registry import register_pass
from passes._affine import (ONNX_DOMAINS, FoldPass, absorb, absorb_blocker, bn_affine, bn_blocker, new_initializer,
                            out_channels, param_name, replace_node)

#: Ops a BN after them folds into (BN's channel axis is their output channels).
BEFORE_BN = ("Conv", "ConvTranspose", "Gemm")
PADDING_REASON = "the Conv pads its input, so the shift is not exact at the border"


@register_pass("fold-batchnorm", exact=True)
class FoldBatchNorm(FoldPass):
    """BatchNormalization after a Conv/ConvTranspose/Gemm, or before an unpadded Conv -> rescaled weights and bias.

    Inference BN is y = x * s + t per channel (s = scale / sqrt(var + eps), t = bias - mean * s).
    After an op: its output channel o gets weights * s[o] and bias b[o] * s[o] + t[o]. Before
    a Conv (nothing between): input channel c of the weights gets * s[c] and the bias gains
    sum W[o, c, k] * t[c]; that is exact only if the Conv never pads (a padded border would
    see t where it saw 0), so padded Convs are refused. Folding after the producer comes first.
    """

    pattern = P.BatchNormalization("x", "scale", "bias", "mean", "var", out="y")

    def check(self, g, m):
        bn = m.root
        reason = bn_blocker(g, bn)
        if reason:
            return m.fail(reason)
        after = None
        producer = g.producer(m["x"])
        if producer is not None and producer.op_type in BEFORE_BN and producer.domain in ONNX_DOMAINS:
            after = self._after_blocker(g, producer, bn)
            if after is None:
                m.bound_nodes["producer"] = producer
                return m
        before = self._before_blocker(g, bn)
        return m if before is None else m.fail(after or before)

    def rewrite(self, g, m):
        bn = m.root
        s, t = bn_affine(g, bn)
        producer = m.bound_nodes.get("producer")
        if producer is not None:
            def fold_after():
                g.remove_node(bn)
                return [absorb(g, producer, s, t, m["y"])]

            self.fold(g, bn, [producer, bn], fold_after)
        else:
            convs = g.consumers(m["y"])

            def fold_before():
                new = [self._absorb_input(g, conv, s, t, m["x"]) for conv in convs]
                g.remove_node(bn)
                return new

            self.fold(g, bn, [bn, *convs], fold_before)

    @staticmethod
    def _after_blocker(g, producer, bn):
        if g.num_uses(bn.inputs[0]) > 1:
            return f"{producer.op_type} output feeds other nodes too"
        reason = absorb_blocker(g, producer)
        if reason:
            return reason
        if out_channels(g, producer) != g.const(bn.inputs[1]).shape[0]:
            return f"BN and {producer.op_type} channel counts differ"
        return None

    @staticmethod
    def _before_blocker(g, bn):
        y = bn.outputs[0]
        uses = g.uses(y)
        if not uses or g.is_graph_output(y) \
                or any(n.op_type != "Conv" or n.domain not in ONNX_DOMAINS or i != 0 for n, i in uses):
            return "no Conv, ConvTranspose or Gemm before it and its readers are not all Convs"
        channels = g.const(bn.inputs[1]).shape[0]
        for conv, _ in uses:
            if not g.all_constant(*conv.inputs[1:]):
                return "Conv parameters are not constant"
            auto_pad = conv.attr("auto_pad", "NOTSET")
            if auto_pad in ("SAME_UPPER", "SAME_LOWER") or (auto_pad != "VALID" and any(conv.attr("pads") or ())):
                return PADDING_REASON
            if g.const(conv.inputs[1]).shape[1] * conv.attr("group", 1) != channels:
                return "BN and Conv channel counts differ"
        return None

    @staticmethod
    def _absorb_input(g, conv, s, t, x):
        """Conv(BN(x)) as one Conv of x; input channel c of a grouped Conv's output o is W[o, c - group(o) * Cin/g]."""
        w = g.const(conv.inputs[1])
        group, (cout, cin_group) = conv.attr("group", 1), w.shape[:2]

        def per_weight(v):  # (Cin,) -> broadcastable against W: (Cout, Cin/group, 1, ...)
            v = np.repeat(np.broadcast_to(v, (group * cin_group,)).reshape(group, 1, cin_group), cout // group, axis=1)
            return v.reshape((cout, cin_group) + (1,) * (w.ndim - 2))

        w64 = w.astype(np.float64)
        b = g.const(conv.inputs[2]) if len(conv.inputs) > 2 and conv.inputs[2] else np.zeros(cout)
        shift = b.astype(np.float64) + (w64 * per_weight(t)).sum(axis=tuple(range(1, w.ndim)))
        names = [new_initializer(g, w64 * per_weight(s), w.dtype, conv.inputs[1]),
                 new_initializer(g, shift, w.dtype, param_name(conv, 2, "b"))]
        g.remove_node(conv)
        return replace_node(g, conv, [x, *names], conv.outputs[0])
