"""Inference-mode Dropout elimination."""

import numpy as np

from optimizer.pattern import P
from optimizer.pipeline import RewritePass, register_pass
from optimizer.rewrite import Refuse, Replacement


@register_pass("eliminate-dropout", exact=True)
class EliminateDropout(RewritePass):
    """Dropout(x) in inference mode -> x (its mask output must be unused)."""

    pattern = P.Dropout("x", ...)

    def check(self, g, m):
        node = m.root
        if len(node.outputs) > 1 and node.outputs[1] and g.num_uses(node.outputs[1]):
            raise Refuse("its mask output is used")
        opset = g.opset(node.domain)
        if opset < 7 and node.attr("is_test", 0) != 1:
            raise Refuse("it is in training mode (is_test=0)")
        if opset >= 12 and len(node.inputs) > 2 and node.inputs[2]:
            training = g.const(node.inputs[2])
            if training is None:
                raise Refuse("its training_mode input is not constant")
            if np.any(training):
                raise Refuse("it is in training mode (training_mode=true)")

    def rewrite(self, g, m):
        return Replacement().bypass(m.root)
