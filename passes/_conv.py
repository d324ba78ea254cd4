"""Convolution geometry shared by the passes that compose or merge convolutions.

One place for what those passes ask of a Conv: its geometry (``ConvGeom``), whether it
reads its zero border (``pad_free``) or keeps its input's grid, its explicit strides,
dilations and pads (``spatial_attrs``), a grouped kernel as a dense one (``dense_weight``),
the MACs of a conv not built yet (``conv_macs``), and how two convs in a chain fuse and
what that costs (``plan_chain``), which both fuse-conv1x1-chain and
canonicalize-conv1x1-gemm (to see what a 1x1 it creates unlocks) rely on.
"""

from __future__ import annotations

from collections import ChainMap
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from optimizer.cost import node_macs
from optimizer.ir import Graph, Node
from optimizer.rewrite import Refuse

SAME = ("SAME_UPPER", "SAME_LOWER")
#: Name a hypothetical weight takes while it is priced (shadows nothing: it lives in a ChainMap).
_PRICED_W = "<priced weight>"


def _ints(attrs: Mapping[str, Any], key: str, default: int, count: int) -> list[int]:
    return [int(v) for v in (attrs.get(key) or [default] * count)]


def pad_free(attrs: Mapping[str, Any], kernel: Sequence[int]) -> bool:
    """True when a Conv or pool with ``attrs`` never reads its zero border (SAME on a 1x1 pads nothing)."""
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad == "VALID" or (auto_pad in SAME and all(k == 1 for k in kernel)):
        return True
    return auto_pad == "NOTSET" and not any(_ints(attrs, "pads", 0, 2 * len(kernel)))


def spatial_attrs(attrs: Mapping[str, Any], nd: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """(strides, dilations, pads) over ``nd`` spatial axes with defaults filled in.

    Refuses auto_pad SAME, whose pads depend on the input size.
    """
    auto_pad = attrs.get("auto_pad", "NOTSET")
    if auto_pad not in ("NOTSET", "VALID"):
        raise Refuse(f"auto_pad {auto_pad} is not supported")
    pads = (0,) * (2 * nd) if auto_pad == "VALID" else tuple(_ints(attrs, "pads", 0, 2 * nd))
    return tuple(_ints(attrs, "strides", 1, nd)), tuple(_ints(attrs, "dilations", 1, nd)), pads


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


def conv_macs(g: Graph, shapes: Mapping, x: str, y: str, w_shape: Sequence[int],
              y_shape: Sequence | None = None) -> int | None:
    """MACs of a conv (real or hypothetical) from ``x`` to ``y`` with weights of ``w_shape``, by the cost model.

    ``y_shape`` gives the output's shape when ``y`` is not (yet) that conv's output in ``shapes``.
    """
    priced = {_PRICED_W: tuple(w_shape)}
    if y_shape is not None:
        priced[y] = tuple(y_shape)
    return node_macs(g, Node("Conv", [x, _PRICED_W], [y]), ChainMap(priced, shapes))


@dataclass
class ConvGeom:
    """A Conv's geometry: read from a node (``of``) or described for a conv not built yet."""

    x: str
    y: str
    w_shape: tuple[int, ...]  # (M, C/group, *kernel)
    attrs: dict[str, Any] = field(default_factory=dict)
    y_shape: tuple | None = None  # only for a conv whose output is not in the graph yet

    @classmethod
    def of(cls, g: Graph, node: Node) -> ConvGeom:
        w_shape = g.shape(node.inputs[1])
        if w_shape is None or len(w_shape) < 3 or not all(isinstance(d, int) for d in w_shape):
            raise Refuse("a weight shape is unknown")
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

    @property
    def strides(self) -> list[int]:
        return _ints(self.attrs, "strides", 1, len(self.kernel))

    @property
    def auto_pad(self) -> str:
        return self.attrs.get("auto_pad", "NOTSET")

    @property
    def is_1x1(self) -> bool:
        return all(k == 1 for k in self.kernel)

    @property
    def pad_free(self) -> bool:
        return pad_free(self.attrs, self.kernel)

    def macs(self, g: Graph, shapes: Mapping) -> int | None:
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
        n = len(self.kernel)
        dilations = _ints(self.attrs, "dilations", 1, n)
        pads = _ints(self.attrs, "pads", 0, 2 * n)
        return self.auto_pad == "NOTSET" and all(pads[i] + pads[i + n] == dilations[i] * (k - 1)
                                                 for i, k in enumerate(self.kernel))


@dataclass
class ChainPlan:
    """How two convs fuse into one and what each form costs; ``apply`` says whether it pays."""

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


def plan_chain(g: Graph, shapes: Mapping, first: ConvGeom, second: ConvGeom,
               first_bias: np.ndarray | None) -> ChainPlan:
    """The exact fusion of ``second(first(x))`` with its cost; refuses when there is none.

    A strided 1x1 second conv samples the first's output, so the fused conv takes stride
    ``s1*s2`` with the first's pads. A 1x1 first conv moves under the second's kernel; a
    padded second conv would then see zeros where the 1x1 gave its bias, so a non-zero
    ``first_bias`` is refused there.
    """
    if len(first.kernel) != len(second.kernel):
        raise Refuse("the two convs have different spatial ranks")
    if second.is_1x1 and second.pad_free:
        strides = [a * b for a, b in zip(first.strides, second.strides)]
        if strides != first.strides and first.auto_pad in SAME:
            raise Refuse("the 1x1 is strided and the first conv uses auto_pad SAME: the pads would change")
        attrs = {k: v for k, v in first.attrs.items() if k != "group"}
        if strides != first.strides:
            attrs["strides"] = strides
        pointwise_second, kernel = True, first.kernel
    elif first.is_1x1 and first.pad_free and all(s == 1 for s in first.strides):
        if first_bias is not None and np.any(first_bias) and not second.pad_free:
            raise Refuse("the 1x1 has a bias and the KxK pads: the border would not be exact")
        attrs = {k: v for k, v in second.attrs.items() if k != "group"}
        pointwise_second, kernel = False, second.kernel
    elif first.is_1x1 and first.pad_free:
        raise Refuse("the 1x1 is strided: folding it into the following KxK is not implemented")
    elif first.is_1x1:
        raise Refuse("the first 1x1 pads its input: its border cannot move into the following conv")
    elif second.is_1x1:
        raise Refuse("the second 1x1 pads its input: its border would not be exact")
    else:
        raise Refuse("neither conv is a 1x1")
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
    raise Refuse("the cost model cannot price it: a dimension is unknown and the convs' grids differ")
