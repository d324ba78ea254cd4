"""Fusing a Conv and the activation after it into onnxruntime's com.microsoft FusedConv."""

from __future__ import annotations

import numpy as np

from optimizer.pattern import Opt, P
from optimizer.pipeline import RewritePass, register_pass
from optimizer.rewrite import Refuse, Replacement

DOMAIN = "com.microsoft"
_FLOAT_MAX = float(np.finfo(np.float32).max)


@register_pass("fuse-conv-activation", exact=True)
class FuseConvActivation(RewritePass):
    """Conv + Relu/Clip/LeakyRelu/Sigmoid/HardSigmoid/Tanh -> com.microsoft FusedConv (onnxruntime only).

    The fused node computes the same conv and applies the same activation, so the result is
    exact; only onnxruntime (and ninopt's executor) run it, hence only in the ``onnxruntime`` pipeline.
    """

    pattern = P.op("Relu|Clip|LeakyRelu|Sigmoid|HardSigmoid|Tanh", P.Conv("x", "w", Opt("b"), out="y"), ...,
                   node="act")

    def check(self, g, m):
        dtype = _dtype(g, m["w"])
        dtype = _dtype(g, m["x"]) if dtype is None else dtype
        if dtype != np.float32:
            raise Refuse("FusedConv runs float32 only and the conv's element type is "
                          + ("unknown" if dtype is None else str(dtype)))
        activation_params(g, m.node("act"))

    def rewrite(self, g, m):
        conv, act = m.node("Conv"), m.node("act")
        attrs = dict(conv.attrs, activation=act.op_type)
        params = activation_params(g, act)
        if params:
            attrs["activation_params"] = params
        inputs = [m["x"], m["w"]] + ([m["b"]] if m["b"] else [])
        replacement = Replacement(remove=[act, conv], opsets={DOMAIN: 1})
        replacement.add_node("FusedConv", inputs, [act.outputs[0]], attrs, name=conv.name or None, domain=DOMAIN)
        return replacement


def activation_params(g, act) -> list[float]:
    """FusedConv's ``activation_params`` for an activation node; refuses when they are not constant scalars."""
    if act.op_type == "LeakyRelu":
        return [float(act.attr("alpha", 0.01))]
    if act.op_type == "HardSigmoid":
        return [float(act.attr("alpha", 0.2)), float(act.attr("beta", 0.5))]
    if act.op_type != "Clip":
        return []
    if g.opset() < 11:  # bounds are attributes before opset 11
        return [float(act.attr("min", -_FLOAT_MAX)), float(act.attr("max", _FLOAT_MAX))]
    bounds = []
    for name, default in zip((list(act.inputs[1:3]) + ["", ""])[:2], (-_FLOAT_MAX, _FLOAT_MAX)):
        if not name:
            bounds.append(default)
            continue
        value = g.const(name)
        if value is None:
            raise Refuse("Clip bounds are not constant")
        if value.size != 1:
            raise Refuse("Clip bounds are not scalars")
        bounds.append(float(value.reshape(())))
    return bounds


def _dtype(g, tensor: str) -> np.dtype | None:
    """Element type from the tensor table, else from a Constant op's value."""
    dtype = g.tensor(tensor).dtype
    if dtype is None and g.is_const(tensor):
        dtype = g.const(tensor).dtype
    return dtype
