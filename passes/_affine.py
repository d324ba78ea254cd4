"""Per-channel affine maps (y -> y * s + t along the channel axis) folded into the op before them.

Shared by fold-batchnorm and fold-affine. Parameters are combined in float64 and cast back
to the parameter dtype once, so a fold changes outputs by float round-off only.
"""

from __future__ import annotations

import numpy as np

from optimizer.cost import node_macs
from optimizer.decisions import FoldDecision
from optimizer.executor import bn_is_training
from optimizer.ir import Graph, Node
from optimizer.pattern import Match
from optimizer.rewrite import Refuse, Replacement

ONNX_DOMAINS = ("", "ai.onnx")
#: Ops whose parameters can absorb a per-channel affine applied to their output.
ABSORBERS = ("Conv", "ConvTranspose", "Gemm", "BatchNormalization")


def require_inference_bn(g: Graph, bn: Node) -> None:
    """Refuses unless the BatchNormalization is a fixed per-channel affine map."""
    if bn_is_training(bn, g.opset(bn.domain)):
        raise Refuse("BN runs in training mode (training_mode=1 or mean/var outputs)")
    if any(o and g.num_uses(o) for o in bn.outputs[1:]):
        raise Refuse("BN's mean/var outputs are used")
    if not g.all_constant(*bn.inputs[1:5]):
        raise Refuse("BN parameters are not constant")
    if any(g.const(t).ndim != 1 for t in bn.inputs[1:5]):
        raise Refuse("BN statistics are per activation (spatial=0), not per channel")


def bn_affine(g: Graph, bn: Node) -> tuple[np.ndarray, np.ndarray]:
    """(s, t) with BN(x) = x * s + t per channel, in float64."""
    scale, bias, mean, var = (g.const(t).astype(np.float64) for t in bn.inputs[1:5])
    s = scale / np.sqrt(var + float(bn.attr("epsilon", 1e-5)))
    return s, bias - mean * s


def require_absorber(g: Graph, node: Node) -> None:
    """Refuses unless ``node`` can take a per-channel affine of its output into its parameters."""
    if node.domain not in ONNX_DOMAINS or node.op_type not in ABSORBERS:
        raise Refuse("no Conv, ConvTranspose, Gemm or BatchNormalization produces its input")
    if node.op_type == "BatchNormalization":
        require_inference_bn(g, node)
    elif not g.all_constant(*node.inputs[1:]):
        raise Refuse(f"{node.op_type} parameters are not constant")


def out_channels(g: Graph, node: Node) -> int:
    """Channels along axis 1 of the output of an op ``require_absorber`` accepts."""
    if node.op_type == "BatchNormalization":
        return g.const(node.inputs[1]).shape[0]
    w = g.const(node.inputs[1])
    if node.op_type == "Conv":
        return w.shape[0]
    if node.op_type == "ConvTranspose":
        return w.shape[1] * node.attr("group", 1)
    return w.shape[0] if node.attr("transB", 0) else w.shape[1]  # Gemm


def output_rank(g: Graph, node: Node, m: Match) -> int | None:
    """Rank of the op's output: from the weights where they fix it, else from the run's shapes."""
    if node.op_type in ("Conv", "ConvTranspose"):
        return g.const(node.inputs[1]).ndim
    if node.op_type == "Gemm":
        return 2
    shape = m.shapes.of(node.outputs[0]) or m.shapes.of(node.inputs[0])
    return None if shape is None else len(shape)


def absorb(g: Graph, r: Replacement, node: Node, s: np.ndarray, t: np.ndarray, output: str) -> None:
    """Add to ``r``: ``node`` again as the same op computing ``node(x) * s + t`` (per output channel) into ``output``."""
    w = g.const(node.inputs[1])
    w64 = w.astype(np.float64)
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
    names = [new_parameter(g, r, params[0], w.dtype, node.inputs[1]),
             new_parameter(g, r, params[1], w.dtype, param_name(node, 2, "C" if node.op_type == "Gemm" else "b"))]
    r.replace(node, inputs=[node.inputs[0], *names, *node.inputs[3:5]], outputs=[output], attrs=changed)


def param_name(node: Node, index: int, suffix: str) -> str:
    """A base name for a new parameter: the one it replaces, else the node's name and a suffix."""
    return node.inputs[index] if len(node.inputs) > index and node.inputs[index] else f"{node.name}_{suffix}"


def new_parameter(g: Graph, r: Replacement, value: np.ndarray, dtype: np.dtype, base: str) -> str:
    """Add ``value``, cast to the parameter dtype, to ``r`` as a new initializer named after ``base``."""
    return r.add_initializer(g.fresh_name(base), np.ascontiguousarray(value.astype(dtype)))


def priced_fold(g: Graph, m: Match, r: Replacement) -> Replacement:
    """``r`` with its FoldDecision. A fold re-adds each MAC-counting op it removes with the same weight
    and output shapes (``Replacement.replace``), so the new nodes cost what the nodes they continue cost."""
    shapes = m.shapes.inferred
    r.decision = FoldDecision(node=m.root.name, macs_before=_macs(g, r.remove, shapes),
                              macs_after=_macs(g, [n.like for n in r.nodes], shapes), nodes_before=len(g),
                              nodes_after=len(g) - len(r.remove) + len(r.nodes), applied=True)
    return r


def _macs(g: Graph, nodes: list[Node], shapes) -> int | None:
    """Total MACs of ``nodes``; None when a shape they need is unknown."""
    macs = [node_macs(g, n, shapes) for n in nodes]
    return None if None in macs else sum(macs)
