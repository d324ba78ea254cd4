"""Per-channel affine maps (y -> y * s + t along the channel axis) folded into the op before them.

Shared by fold-batchnorm and fold-affine. Parameters are combined in float64 and cast back
to the parameter dtype once, so a fold changes outputs by float round-off only.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from optimizer.cost import infer_shapes, node_macs
from optimizer.executor.norm import bn_is_training
from optimizer.ir import Graph, Node
from optimizer.pipeline import PassStats, RewritePass

ONNX_DOMAINS = ("", "ai.onnx")
#: Ops whose parameters can absorb a per-channel affine applied to their output.
ABSORBERS = ("Conv", "ConvTranspose", "Gemm", "BatchNormalization")


def bn_blocker(g: Graph, bn: Node) -> str | None:
    """Why a BatchNormalization is not a fixed per-channel affine map, or None when it is."""
    if bn_is_training(bn, g.opset(bn.domain)):
        return "BN runs in training mode (training_mode=1 or mean/var outputs)"
    if any(o and g.num_uses(o) for o in bn.outputs[1:]):
        return "BN's mean/var outputs are used"
    if not g.all_constant(*bn.inputs[1:5]):
        return "BN parameters are not constant"
    if any(g.const(t).ndim != 1 for t in bn.inputs[1:5]):
        return "BN statistics are per activation (spatial=0), not per channel"
    return None


def bn_affine(g: Graph, bn: Node) -> tuple[np.ndarray, np.ndarray]:
    """(s, t) with BN(x) = x * s + t per channel, in float64."""
    scale, bias, mean, var = (g.const(t).astype(np.float64) for t in bn.inputs[1:5])
    s = scale / np.sqrt(var + float(bn.attr("epsilon", 1e-5)))
    return s, bias - mean * s


def absorb_blocker(g: Graph, node: Node) -> str | None:
    """Why ``node`` cannot take a per-channel affine of its output into its parameters, or None."""
    if node.domain not in ONNX_DOMAINS or node.op_type not in ABSORBERS:
        return "no Conv, ConvTranspose, Gemm or BatchNormalization produces its input"
    if node.op_type == "BatchNormalization":
        return bn_blocker(g, node)
    if not g.all_constant(*node.inputs[1:]):
        return f"{node.op_type} parameters are not constant"
    return None


def out_channels(g: Graph, node: Node) -> int:
    """Channels along axis 1 of the output of an op ``absorb_blocker`` accepts."""
    if node.op_type == "BatchNormalization":
        return g.const(node.inputs[1]).shape[0]
    w = g.const(node.inputs[1])
    if node.op_type == "Conv":
        return w.shape[0]
    if node.op_type == "ConvTranspose":
        return w.shape[1] * node.attr("group", 1)
    return w.shape[0] if node.attr("transB", 0) else w.shape[1]  # Gemm


def output_rank(node: Node, g: Graph, shapes: dict) -> int | None:
    """Rank of the op's output: from the weights where they fix it, else from inferred shapes."""
    if node.op_type in ("Conv", "ConvTranspose"):
        return g.const(node.inputs[1]).ndim
    if node.op_type == "Gemm":
        return 2
    shape = shapes.get(node.outputs[0]) or shapes.get(node.inputs[0])
    return None if shape is None else len(shape)


def absorb(g: Graph, node: Node, s: np.ndarray, t: np.ndarray, output: str) -> Node:
    """Replace ``node`` by the same op computing ``node(x) * s + t`` (per output channel) into ``output``.

    The caller has already removed the old reader of ``node``'s output that ``output`` names, if any.
    """
    w = g.const(node.inputs[1])
    dtype, w64 = w.dtype, w.astype(np.float64)
    b = g.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2] else None
    b64 = np.zeros(len(s)) if b is None else b.astype(np.float64)
    changed: dict = {}
    if node.op_type == "BatchNormalization":  # w, b are scale and bias; mean and var stay
        params = [w64 * s, b64 * s + t]
    elif node.op_type == "Gemm":  # Y = alpha A B + beta C: scale B's output columns, fold beta C into the new C
        params = [w64 * s[:, None] if node.attr("transB", 0) else w64 * s,
                  t if b is None else float(node.attr("beta", 1.0)) * b64 * s + t]
        changed["beta"] = 1.0
        if g.opset(node.domain) < 7:
            changed["broadcast"] = 1  # the new C may be (N,), which needs broadcasting before opset 7
    elif node.op_type == "Conv":
        params = [w64 * s.reshape((-1,) + (1,) * (w.ndim - 1)), b64 * s + t]
    else:  # ConvTranspose, weight (Cin, Cout/group, k...): output channel g*Cout/group + j is group g, column j
        group = node.attr("group", 1)
        grouped = w64.reshape((group, w.shape[0] // group) + w.shape[1:])
        scaled = grouped * s.reshape((group, 1, w.shape[1]) + (1,) * (w.ndim - 2))
        params = [scaled.reshape(w.shape), b64 * s + t]
    names = [new_initializer(g, params[0], dtype, node.inputs[1]),
             new_initializer(g, params[1], dtype, param_name(node, 2, "C" if node.op_type == "Gemm" else "b"))]
    g.remove_node(node)
    return replace_node(g, node, [node.inputs[0], *names, *node.inputs[3:5]], output, changed)


def replace_node(g: Graph, old: Node, inputs: list[str], output: str, changed: dict | None = None) -> Node:
    """Add the op ``old`` was (already removed), with new inputs and output, keeping its name and attributes."""
    new = g.add_like(old, inputs, [output])
    for key, value in (changed or {}).items():
        g.set_attr(new, key, value)
    return new


def param_name(node: Node, index: int, suffix: str) -> str:
    """A base name for a new parameter: the one it replaces, else the node's name and a suffix."""
    return node.inputs[index] if len(node.inputs) > index and node.inputs[index] else f"{node.name}_{suffix}"


def new_initializer(g: Graph, value: np.ndarray, dtype: np.dtype, base: str) -> str:
    return g.add_initializer(np.ascontiguousarray(value.astype(dtype)), name=g.fresh_name(base))


class FoldPass(RewritePass):
    """A RewritePass whose folds are priced with shapes inferred once per run and recorded as decisions.

    A fold keeps every MAC-counting op with the same weight and output shapes, so MACs stay
    equal and the node count drops: always no more expensive. Each decision records both counts.
    """

    def run(self, g: Graph, stats: PassStats) -> bool:
        self._shapes = None
        self._stats = stats
        return super().run(g, stats)

    def shapes(self, g: Graph) -> dict:
        if self._shapes is None:
            self._shapes = infer_shapes(g)
        return self._shapes

    def fold(self, g: Graph, root: Node, old: list[Node], rewrite: Callable[[], list[Node]]) -> None:
        """Run ``rewrite`` (which replaces ``old`` by the nodes it returns) and record the decision."""
        shapes = self.shapes(g)
        macs_before, nodes_before = _macs(g, old, shapes), len(g)
        new = rewrite()
        macs_after = _macs(g, new, shapes)
        self._stats.decisions.append({"node": root.name, "macs_before": macs_before, "macs_after": macs_after,
                                      "nodes_before": nodes_before, "nodes_after": len(g),
                                      "applied": True})


def _macs(g: Graph, nodes: list[Node], shapes: dict) -> int | None:
    """Total MACs of ``nodes``; None when a shape they need is unknown."""
    macs = [node_macs(g, n, shapes) for n in nodes]
    return None if None in macs else sum(macs)
