"""Fuse a Conv -> Conv chain with nothing between into one Conv, when the cost model says it is cheaper.

Two linear convolutions compose into one exactly when one of them is a 1x1:

* first conv anything (KxK, strides, pads, dilation, groups), second a 1x1 without pads:
  ``W[o,c,k] = sum_r W2[o,r] W1[r,c,k]``, ``b = W2 b1 + b2``. A strided 1x1 just samples
  the first conv's output, so the fused conv takes stride ``s1*s2`` with the first's pads
  (the output size works out the same; see ``plan_chain``). Borders are exact: the first
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

The helpers here (``ConvGeom``, ``plan_chain``, ``compose_chain``, ``ShapeCache``) are
shared with ``canonicalize-conv1x1-gemm``, which turns Gemms into 1x1 convs only when this
pass will then merge them.
"""

from __future__ import annotations

from collections import ChainMap
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from optimizer.cost import infer_shapes, node_macs
from optimizer.ir import Graph, Node
from optimizer.pattern import Opt, P
from optimizer.pipeline import RewritePass
from optimizer.registry import register_pass

SAME = ("SAME_UPPER", "SAME_LOWER")
#: Name a hypothetical weight takes while it is priced (shadows nothing: it lives in a ChainMap).
_PRICED_W = "<priced weight>"


class ShapeCache:
    """Tensor shapes from ``infer_shapes``, computed at most once per pass run (only if a candidate needs them)."""

    def __init__(self) -> None:
        self._shapes: dict | None = None

    def reset(self) -> None:
        self._shapes = None

    def get(self, g: Graph) -> dict:
        if self._shapes is None:
            self._shapes = infer_shapes(g)
        return self._shapes


@dataclass
class ConvGeom:
    """A Conv's geometry: read from a node (``of``) or described for a conv not built yet."""

    x: str
    y: str
    w_shape: tuple[int, ...]  # (M, C/group, *kernel)
    attrs: dict[str, Any] = field(default_factory=dict)
    y_shape: tuple | None = None  # only for a conv whose output is not in the graph yet

    @classmethod
    def of(cls, g: Graph, node: Node) -> ConvGeom | None:
        w_shape = g.shape(node.inputs[1])
        if w_shape is None or len(w_shape) < 3 or not all(isinstance(d, int) for d in w_shape):
            return None
        return cls(node.inputs[0], node.outputs[0], tuple(w_shape), dict(node.attrs))

    @property
    def kernel(self) -> tuple[int, ...]:
        return self.w_shape[2:]

    @property
    def group(self) -> int:
        return int(self.attrs.get("group", 1))

    @property
    def cin(self) -> int:
        return self.w_shape[1] * self.group

    @property
    def cout(self) -> int:
        return self.w_shape[0]

    def _ints(self, key: str, default: int, count: int) -> list[int]:
        return [int(v) for v in (self.attrs.get(key) or [default] * count)]

    @property
    def strides(self) -> list[int]:
        return self._ints("strides", 1, len(self.kernel))

    @property
    def auto_pad(self) -> str:
        return self.attrs.get("auto_pad", "NOTSET")

    @property
    def is_1x1(self) -> bool:
        return all(k == 1 for k in self.kernel)

    @property
    def pad_free(self) -> bool:
        """True when the conv never reads its zero border (SAME on a 1x1 pads nothing)."""
        if self.auto_pad == "VALID" or (self.auto_pad in SAME and self.is_1x1):
            return True
        return self.auto_pad == "NOTSET" and not any(self._ints("pads", 0, 2 * len(self.kernel)))

    def macs(self, g: Graph, shapes) -> int | None:
        return conv_macs(g, shapes, self.x, self.y, self.w_shape, self.y_shape)

    @property
    def macs_per_position(self) -> int:
        """MACs per output position and sample: (Cout·Cin/groups·kernel), the weight's element count."""
        return int(np.prod(self.w_shape))

    @property
    def keeps_grid(self) -> bool:
        """True when the output grid is the input grid, whatever its size (stride 1, padded to keep it)."""
        if any(s != 1 for s in self.strides):
            return False
        if self.auto_pad in SAME or self.is_1x1 and self.pad_free:
            return True
        dilations = self._ints("dilations", 1, len(self.kernel))
        pads = self._ints("pads", 0, 2 * len(self.kernel))
        n = len(self.kernel)
        return self.auto_pad == "NOTSET" and all(pads[i] + pads[i + n] == dilations[i] * (k - 1)
                                                 for i, k in enumerate(self.kernel))


def conv_macs(g: Graph, shapes, x: str, y: str, w_shape: tuple[int, ...], y_shape: tuple | None = None) -> int | None:
    """MACs of a conv (real or hypothetical) from ``x`` to ``y`` with weights of ``w_shape``, by the cost model."""
    priced = {_PRICED_W: tuple(w_shape)}
    if y_shape is not None:
        priced[y] = tuple(y_shape)
    return node_macs(g, Node("Conv", [x, _PRICED_W], [y]), ChainMap(priced, shapes))


@dataclass
class ChainPlan:
    """How two convs fuse and what it costs; ``reason`` says why not when ``apply`` is False."""

    pointwise_second: bool  # True: first anything, second 1x1; False: first 1x1, second anything
    attrs: dict[str, Any]
    w_shape: tuple[int, ...]
    macs_before: int
    macs_after: int
    channels: tuple[int, int, int]  # Cin, r, Cout
    per_position: bool = False  # MACs are per output position: the grid is unknown but the same for all three convs

    @property
    def kernel(self) -> str:
        return "x".join(map(str, self.w_shape[2:]))

    @property
    def label(self) -> str:
        return "->".join(map(str, self.channels)) + f" fused {self.kernel}"

    @property
    def apply(self) -> bool:
        return self.macs_after <= self.macs_before  # on a tie the single node wins

    @property
    def reason(self) -> str:
        cin, r, cout = self.channels
        return f"the {cin}->{r}->{cout} bottleneck is cheaper than one fused {self.kernel}"


def plan_chain(g: Graph, shapes, first: ConvGeom, second: ConvGeom, first_bias_nonzero: bool) -> ChainPlan | str:
    """The exact fusion of ``second(first(x))`` with its cost, or why there is none."""
    if len(first.kernel) != len(second.kernel):
        return "the two convs have different spatial ranks"
    if second.is_1x1 and second.pad_free:
        strides = [a * b for a, b in zip(first.strides, second.strides)]
        if strides != first.strides and first.auto_pad in SAME:
            return "the 1x1 is strided and the first conv uses auto_pad SAME: the pads would change"
        attrs = {k: v for k, v in first.attrs.items() if k != "group"}
        if strides != first.strides:
            attrs["strides"] = strides
        pointwise_second, kernel = True, first.kernel
    elif first.is_1x1 and first.pad_free and all(s == 1 for s in first.strides):
        if first_bias_nonzero and not second.pad_free:
            return "the 1x1 has a bias and the KxK pads: the border would not be exact"
        attrs = {k: v for k, v in second.attrs.items() if k != "group"}
        pointwise_second, kernel = False, second.kernel
    elif first.is_1x1 and first.pad_free:
        return "the 1x1 is strided: folding it into the following KxK is not implemented"
    elif first.is_1x1:
        return "the first 1x1 pads its input: its border cannot move into the following conv"
    elif second.is_1x1:
        return "the second 1x1 pads its input: its border would not be exact"
    else:
        return "neither conv is a 1x1"
    w_shape = (second.cout, first.cin, *kernel)
    channels = (first.cin, first.cout, second.cout)
    before = [first.macs(g, shapes), second.macs(g, shapes)]
    after = conv_macs(g, shapes, first.x, second.y, w_shape, second.y_shape)
    if after is not None and None not in before:
        return ChainPlan(pointwise_second, attrs, w_shape, sum(before), after, channels)
    # Unknown spatial (or batch) sizes cancel when the second conv keeps its input's grid: the first
    # conv's output grid is then the second's and the fused conv's, and every conv's MACs are
    # (positions x samples) x its weight's element count.
    if second.keeps_grid:
        return ChainPlan(pointwise_second, attrs, w_shape, first.macs_per_position + second.macs_per_position,
                         int(np.prod(w_shape)), channels, per_position=True)
    return "the cost model cannot price it: a dimension is unknown and the convs' grids differ"


def dense_weight(w: np.ndarray, group: int) -> np.ndarray:
    """A grouped conv's weights (M, C/group, *k) as the equivalent dense block-diagonal (M, C, *k)."""
    if group == 1:
        return w
    m, cg = w.shape[:2]
    dense = np.zeros((m, cg * group) + w.shape[2:], w.dtype)
    mg = m // group
    for i in range(group):
        dense[i * mg:(i + 1) * mg, i * cg:(i + 1) * cg] = w[i * mg:(i + 1) * mg]
    return dense


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


def record(stats, node: str, plan: ChainPlan, nodes_before: int, nodes_after: int, applied: bool, **extra) -> None:
    if plan.per_position:
        extra = {"macs_per": "output position and sample (the grid size is unknown and cancels)", **extra}
    stats.decisions.append({"node": node, "chain": plan.label, "macs_before": plan.macs_before,
                            "macs_after": plan.macs_after, "nodes_before": nodes_before,
                            "nodes_after": nodes_after, "applied": applied, **extra})


def nonzero(array: np.ndarray | None) -> bool:
    return array is not None and bool(np.any(array))


@register_pass("fuse-conv1x1-chain", exact=True)
class FuseConv1x1Chain(RewritePass):
    """Conv -> Conv with a 1x1 on either side and nothing between -> one Conv, when no more MACs."""

    pattern = P.Conv(P.Conv("x", "w1", Opt("b1"), out="y1", node="first"), "w2", Opt("b2"), out="y", node="second")

    def __init__(self) -> None:
        self._shapes = ShapeCache()
        self._plan: ChainPlan | None = None
        self._stats = None

    def run(self, g, stats):
        self._shapes.reset()
        self._stats = stats
        return super().run(g, stats)

    def check(self, g, m):
        if g.num_uses(m["y1"]) != 1:
            return m.fail("the first conv's output has other readers or is a graph output")
        if not g.all_constant(m["w1"], m["b1"], m["w2"], m["b2"]):
            return m.fail("conv weights or biases are not constant")
        if any(np.dtype(g.const(m[w]).dtype).kind != "f" for w in ("w1", "w2")):
            return m.fail("the weights are not floating point")
        first, second = ConvGeom.of(g, m.node("first")), ConvGeom.of(g, m.node("second"))
        if first is None or second is None:
            return m.fail("a weight shape is unknown")
        b1 = g.const(m["b1"]) if m["b1"] else None
        plan = plan_chain(g, self._shapes.get(g), first, second, nonzero(b1))
        if isinstance(plan, str):
            return m.fail(plan)
        record(self._stats, m.root.name, plan, 2, 1, plan.apply)
        if not plan.apply:
            return m.fail(plan.reason)
        self._plan = plan
        return m

    def rewrite(self, g, m):
        first, second = m.node("first"), m.node("second")
        w, b = compose_chain(self._plan, g.const(m["w1"]), g.const(m["b1"]) if m["b1"] else None,
                             int(first.attr("group", 1)), g.const(m["w2"]), g.const(m["b2"]) if m["b2"] else None,
                             int(second.attr("group", 1)))
        inputs = [m["x"], g.add_initializer(w, g.fresh_name(f"{second.name or 'conv'}_fused_w"))]
        if b is not None:
            inputs.append(g.add_initializer(b, g.fresh_name(f"{second.name or 'conv'}_fused_b")))
        g.remove_nodes([second, first])
        g.add_node("Conv", inputs, [m["y"]], self._plan.attrs, name=second.name)
