"""Fuse a Conv -> Conv chain with nothing between into one Conv, when the cost model says it is cheaper.

Two linear convolutions compose into one exactly when one of them is a 1x1:

* first conv anything (KxK, strides, pads, dilation, groups), second a 1x1 without pads:
  ``W[o,c,k] = sum_r W2[o,r] W1[r,c,k]``, ``b = W2 b1 + b2``. A strided 1x1 just samples
  the first conv's output, so the fused conv takes stride ``s1*s2`` with the first's pads
  (the output size works out the same; see ``passes._conv.plan_chain``). Borders are exact: the first
  conv's padded border is a conv output like any other.
* first a stride-1 1x1 without pads, second anything: ``W[o,c,k] = sum_r W2[o,r,k] W1[r,c]``,
  ``b = b2 + sum_{r,k} W2[o,r,k] b1[r]``. When the second conv pads, its zero border would
  become ``b1`` under the 1x1, so a non-zero first bias is refused there.

Grouped convs (depthwise included) are expanded to their dense block-diagonal weights,
which keeps the composition exact; the fused conv is dense (group 1) and the cost model,
which then prices the dense conv, decides. A fusion applies only when its MACs do not
grow (ties go to the single node): a Cin->r->Cout 1x1 chain fuses when
``r > Cin*Cout/(Cin+Cout)``; GoogLeNet's 192->16->5x5 32 bottleneck stays. With a dynamic
batch or image size the decision is taken per output position, which is the same decision
whenever the second conv keeps its input's grid (the unknown factor cancels); otherwise
the chain is left alone.

The conv geometry and the chain plan live in ``passes._conv``, shared with
``canonicalize-conv1x1-gemm``, which turns Gemms into 1x1 convs only when this pass will
then merge them.
"""

from __future__ import annotations

import numpy as np

from optimizer.decisions import ChainFusion
from optimizer.pattern import Opt, P
from optimizer.pipeline import RewritePass, register_pass
from optimizer.rewrite import Refuse, Replacement
from passes._conv import ChainPlan, ConvGeom, dense_weight, plan_chain

#: What ``macs_per`` says when a chain is priced per output position.
PER_POSITION = "output position and sample (the grid size is unknown and cancels)"


def compose_chain(plan: ChainPlan, w1: np.ndarray, b1: np.ndarray | None, group1: int,
                  w2: np.ndarray, b2: np.ndarray | None, group2: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Fused (weight, bias) of ``plan``, computed in float64 and returned in ``w2``'s dtype."""
    dtype = w2.dtype
    d1 = dense_weight(w1.astype(np.float64), group1)
    d2 = dense_weight(w2.astype(np.float64), group2)
    r = d1.shape[0]
    if plan.pointwise_second:
        m2 = d2.reshape(d2.shape[0], r)
        w = np.tensordot(m2, d1, axes=1)
        bias_map = m2
    else:
        w = np.einsum("or...,rc->oc...", d2, d1.reshape(r, -1))
        bias_map = d2.reshape(d2.shape[0], r, -1).sum(axis=2)  # every window sees b1 at each tap
    b = None
    if b1 is not None or b2 is not None:
        b = np.zeros(w.shape[0])
        if b1 is not None:
            b = b + bias_map @ b1.astype(np.float64)
        if b2 is not None:
            b = b + b2.astype(np.float64)
        b = b.astype(dtype)
    return w.astype(dtype), b


def _decision(node: str, plan: ChainPlan, applied: bool) -> ChainFusion:
    """The verdict on fusing the two convs ending at ``node`` into one."""
    return ChainFusion(node=node, chain=plan.label, macs_before=plan.macs_before, macs_after=plan.macs_after,
                       nodes_before=2, nodes_after=1, applied=applied,
                       macs_per=PER_POSITION if plan.per_position else None)


@register_pass("fuse-conv1x1-chain", exact=True)
class FuseConv1x1Chain(RewritePass):
    """Conv -> Conv with a 1x1 on either side and nothing between -> one Conv, when no more MACs."""

    pattern = P.Conv(P.Conv("x", "w1", Opt("b1"), out="y1", node="first"), "w2", Opt("b2"), out="y", node="second")

    def check(self, g, m):
        if not g.all_constant(m["w1"], m["b1"], m["w2"], m["b2"]):
            raise Refuse("conv weights or biases are not constant")
        if any(np.dtype(g.const(m[w]).dtype).kind != "f" for w in ("w1", "w2")):
            raise Refuse("the weights are not floating point")

    def rewrite(self, g, m):
        first, second = m.node("first"), m.node("second")
        b1 = g.const(m["b1"]) if m["b1"] else None
        plan = plan_chain(g, m.shapes.inferred, ConvGeom.of(g, first), ConvGeom.of(g, second), b1)
        if not plan.apply:
            raise Refuse(plan.reason, decision=_decision(second.name, plan, applied=False))
        w, b = compose_chain(plan, g.const(m["w1"]), b1, int(first.attr("group", 1)), g.const(m["w2"]),
                             g.const(m["b2"]) if m["b2"] else None, int(second.attr("group", 1)))
        replacement = Replacement(remove=[second, first], decision=_decision(second.name, plan, applied=True))
        inputs = [m["x"], replacement.add_initializer(g.fresh_name(f"{second.name or 'conv'}_fused_w"), w)]
        if b is not None:
            inputs.append(replacement.add_initializer(g.fresh_name(f"{second.name or 'conv'}_fused_b"), b))
        replacement.add_node("Conv", inputs, [m["y"]], plan.attrs, name=second.name)
        return replacement
