"""Rewrite matrix products that are really 1x1 convolutions as Conv, where that pays.

(b) ``Transpose(NCHW->NHWC) -> MatMul(x, M[C, Cout]) [-> Add(bias[Cout])] -> Transpose(NHWC->NCHW)``
is one 1x1 Conv with ``W = M^T`` reshaped to (Cout, C, 1, 1) and the bias as the conv's.
Same MACs, and at least two nodes fewer: always applied.

(a) ``X[N, C, 1, .., 1] -> Flatten/Reshape -> Gemm`` is a 1x1 Conv on X followed by a Flatten:
same MACs, same node count, so by itself it buys nothing and is refused ("nothing to
unlock"). It is applied only where it unlocks something:

* the Gemm's sole reader reshapes its output back to (N, Cout, 1, .., 1) (Reshape or
  Unsqueeze): the conv produces that tensor directly, so the Flatten and the reshape go;
* X is produced by a Conv read by nothing else, and fuse-conv1x1-chain's cost model says
  that Conv and the new 1x1 fuse into one cheaper-or-equal conv: the conversion keeps the
  node count and the fusion then removes one.

Where X comes from (GlobalAveragePool, a pool, a conv) does not matter for exactness, only
its 1x1 spatial shape. A Gemm followed by a BatchNormalization or another Gemm is left to
passes that fold into Gemm directly.
"""

from __future__ import annotations

import numpy as np

from optimizer.cost import node_macs
from optimizer.pattern import ANY, P, match
from optimizer.pipeline import Pass
from optimizer.registry import register_pass
from passes.fuse_conv1x1_chain import ConvGeom, ShapeCache, conv_macs, nonzero, plan_chain

_MATMUL = P.MatMul(P.Transpose("x", out="nhwc", node="to_nhwc"), "m", out="product")
_TRANSPOSE_PATTERNS = (
    P.Transpose(P.Add(_MATMUL, "bias", out="sum"), out="y", node="to_nchw"),
    P.Transpose(P.Add("bias", _MATMUL, out="sum"), out="y", node="to_nchw"),
    P.Transpose(_MATMUL, out="y", node="to_nchw"),
)
_GEMM_PATTERN = P.Gemm(P.op("Flatten|Reshape", "x", ANY, out="flat", node="flatten"), "b", ..., out="y", node="gemm")
#: Readers that turn (N, Cout) back into (N, Cout, 1, .., 1) without touching values.
_RESHAPES = ("Reshape", "Unsqueeze")


def _cost_refusal(before: int | None, after: int | None) -> str | None:
    """Why the conv is not applied on cost, or None. Both unknown (a symbolic dim) counts as equal:
    the conv does exactly the product's multiplications, so the cost model's None is the same None."""
    if before == after or (None not in (before, after) and after <= before):
        return None
    if None in (before, after):
        return "the cost model cannot price it: a dimension is unknown"
    return "the 1x1 conv would cost more MACs than the product it replaces"


def _reshape_back(g, shapes, y: str, y_shape: tuple):
    """The sole reader of ``y`` when it only restores the conv's (N, Cout, 1, .., 1) shape, else None."""
    readers = g.consumers(y)
    if g.num_uses(y) != 1 or len(readers) != 1 or readers[0].op_type not in _RESHAPES:
        return None
    return readers[0] if shapes.get(readers[0].outputs[0]) == y_shape else None


@register_pass("canonicalize-conv1x1-gemm", exact=True)
class CanonicalizeConv1x1Gemm(Pass):
    """Transpose-MatMul-Transpose, and Gemms on 1x1 maps where it unlocks a fusion, -> 1x1 Conv."""

    def __init__(self) -> None:
        self._shapes = ShapeCache()

    def run(self, g, stats):
        self._shapes.reset()
        changed = False
        for node in [n for n in g.nodes if n.op_type in ("Transpose", "Gemm")]:
            if g.node(node.id) is not node:
                continue
            patterns = _TRANSPOSE_PATTERNS if node.op_type == "Transpose" else (_GEMM_PATTERN,)
            m = next((m for m in (match(g, p, node) for p in patterns) if m is not None), None)
            if m is None:
                continue
            stats.matches += 1
            apply = self._transpose(g, m, stats) if node.op_type == "Transpose" else self._gemm(g, m, stats)
            if isinstance(apply, str):
                stats.refuse(apply)
                continue
            stats.rewrites += 1
            changed = True
        return changed

    # ------------------------------------------------------------------ (b) Transpose-MatMul-Transpose
    def _transpose(self, g, m, stats):
        to_nhwc, to_nchw, matmul = m.node("to_nhwc"), m.node("to_nchw"), m.node("MatMul")
        rank = len(to_nhwc.attr("perm") or [])
        if rank < 3 or list(to_nhwc.attr("perm")) != [0, *range(2, rank), 1] \
                or list(to_nchw.attr("perm") or []) != [0, rank - 1, *range(1, rank - 1)]:
            return "the transposes are not channels-last and back"
        inner = [m["product"]] + ([m["sum"]] if "sum" in m.tensors else [])
        if any(g.num_uses(t) != 1 for t in inner):
            return "the MatMul or Add output has other readers"
        if not g.all_constant(m["m"], m.tensors.get("bias", "")):
            return "the MatMul matrix or the bias is not constant"
        weights = g.const(m["m"])
        if weights.ndim != 2 or weights.dtype.kind != "f":
            return "the MatMul matrix is not a 2-D float constant"
        c, cout = weights.shape
        bias = None
        if "bias" in m.tensors:
            bias = g.const(m["bias"])
            if bias.ndim > rank or bias.shape[-1:] != (cout,) or any(d != 1 for d in bias.shape[:-1]):
                return "the bias does not run along the channel axis alone"
        shapes = self._shapes.get(g)
        w_shape = (cout, c) + (1,) * (rank - 2)
        before, after = node_macs(g, matmul, shapes), conv_macs(g, shapes, m["x"], m["y"], w_shape)
        dropped = [to_nchw, *(n for n in m.nodes if n.op_type == "Add"), matmul]
        keep_nhwc = g.num_uses(m["nhwc"]) > 1
        nodes_before, nodes_after = len(dropped) + (0 if keep_nhwc else 1), 1
        refusal = _cost_refusal(before, after)
        stats.decisions.append({"node": matmul.name, "rewrite": "transpose-matmul-transpose", "macs_before": before,
                                "macs_after": after, "nodes_before": nodes_before, "nodes_after": nodes_after,
                                "applied": refusal is None})
        if refusal:
            return refusal
        w = np.ascontiguousarray(weights.T).reshape(w_shape)
        inputs = [m["x"], g.add_initializer(w, g.fresh_name(f"{matmul.name or 'matmul'}_w"))]
        if bias is not None:
            inputs.append(g.add_initializer(np.ascontiguousarray(bias.reshape(cout)).astype(w.dtype),
                                            g.fresh_name(f"{matmul.name or 'matmul'}_b")))
        g.remove_nodes(dropped)
        if not keep_nhwc:
            g.remove_node(to_nhwc)
        g.add_node("Conv", inputs, [m["y"]], {"kernel_shape": [1] * (rank - 2)}, name=matmul.name)
        return True

    # ------------------------------------------------------------------ (a) Gemm on a 1x1 map
    def _gemm(self, g, m, stats):
        gemm, flatten = m.node("gemm"), m.node("flatten")
        if gemm.attr("transA", 0):
            return "the Gemm transposes its input"
        shapes = self._shapes.get(g)
        x_shape, flat_shape = shapes.get(m["x"]), shapes.get(m["flat"])
        if x_shape is None or len(x_shape) < 3 or any(d != 1 for d in x_shape[2:]) or flat_shape != x_shape[:2]:
            return "the Gemm does not read a flattened 1x1 map"
        if g.num_uses(m["flat"]) != 1:
            return "the flattened tensor has other readers"
        c_name = gemm.inputs[2] if len(gemm.inputs) > 2 else ""
        if not g.all_constant(m["b"], c_name):
            return "the Gemm's weights or bias are not constant"
        conv = self._as_conv(g, gemm, m["b"], c_name, len(x_shape))
        if isinstance(conv, str):
            return conv
        w, b = conv
        n, cout = x_shape[0], w.shape[0]
        y_shape = (n, cout) + (1,) * (len(x_shape) - 2)
        before = node_macs(g, gemm, shapes)
        after = conv_macs(g, shapes, m["x"], m["y"], w.shape, y_shape)
        refusal = _cost_refusal(before, after)
        if refusal:
            return refusal
        back = _reshape_back(g, shapes, m["y"], y_shape)
        if back is not None:
            stats.decisions.append({"node": gemm.name, "rewrite": "gemm-reshape-back", "macs_before": before,
                                    "macs_after": after, "nodes_before": 3, "nodes_after": 1, "applied": True})
            g.remove_nodes([back, gemm, flatten])
            self._add_conv(g, gemm, m["x"], w, b, back.outputs[0])
            return True
        producer = g.producer(m["x"])
        if producer is not None and producer.op_type == "Conv" and g.num_uses(m["x"]) == 1:
            plan = self._chain_plan(g, shapes, producer, ConvGeom(m["x"], m["y"], w.shape, {}, y_shape))
            if plan is not None:
                stats.decisions.append({"node": gemm.name, "rewrite": "gemm-to-conv-chain", "chain": plan.label,
                                        "macs_before": before, "macs_after": after, "nodes_before": 2,
                                        "nodes_after": 2, "fused_macs_after": plan.macs_after,
                                        "unlocks": f"fuse-conv1x1-chain with {producer.name}", "applied": True})
                g.remove_nodes([gemm, flatten])
                out = g.fresh_name(f"{gemm.name or 'gemm'}_conv_out")
                shapes[out] = y_shape
                self._add_conv(g, gemm, m["x"], w, b, out)
                g.add_node("Flatten", [out], [m["y"]], {"axis": 1}, name=flatten.name)
                return True
        return "nothing to unlock"

    @staticmethod
    def _as_conv(g, gemm, b_name, c_name, rank):
        """(W[Cout, C, 1, ..], bias[Cout] or None) of the Gemm, or why it is not a per-sample 1x1 conv."""
        b = g.const(b_name)
        if b.ndim != 2 or b.dtype.kind != "f":
            return "the Gemm's weights are not a 2-D float matrix"
        w = (b if gemm.attr("transB", 0) else b.T) * np.asarray(gemm.attr("alpha", 1.0), b.dtype)
        bias = None
        if c_name:
            c = g.const(c_name)
            if c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1) or c.shape[-1:] not in ((), (1,), (w.shape[0],)):
                return "the Gemm's bias varies over the batch"
            bias = (np.broadcast_to(c.reshape(-1), (w.shape[0],)) * np.asarray(gemm.attr("beta", 1.0), c.dtype))
            bias = bias.astype(w.dtype)
        return np.ascontiguousarray(w).reshape(w.shape + (1,) * (rank - 2)), bias

    @staticmethod
    def _chain_plan(g, shapes, producer, conv: ConvGeom):
        """fuse-conv1x1-chain's plan for ``producer`` then ``conv`` when it would apply, else None."""
        first = ConvGeom.of(g, producer)
        if first is None or not g.all_constant(*producer.inputs[1:]):
            return None
        b1 = g.const(producer.inputs[2]) if len(producer.inputs) > 2 and producer.inputs[2] else None
        plan = plan_chain(g, shapes, first, conv, nonzero(b1))
        return None if isinstance(plan, str) or not plan.apply else plan

    @staticmethod
    def _add_conv(g, gemm, x, w, b, out):
        inputs = [x, g.add_initializer(w, g.fresh_name(f"{gemm.name or 'gemm'}_w"))]
        if b is not None:
            inputs.append(g.add_initializer(b, g.fresh_name(f"{gemm.name or 'gemm'}_b")))
        g.add_node("Conv", inputs, [out], {"kernel_shape": [1] * (w.ndim - 2)}, name=gemm.name)
