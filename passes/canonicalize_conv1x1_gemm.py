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
from optimizer.decisions import ConvCanonicalization
from optimizer.pattern import ANY, P
from optimizer.pipeline import RewritePass, register_pass
from optimizer.rewrite import Refuse, Replacement
from passes._conv import ChainPlan, ConvGeom, conv_macs, plan_chain

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
class CanonicalizeConv1x1Gemm(RewritePass):
    """Transpose-MatMul-Transpose, and Gemms on 1x1 maps where it unlocks a fusion, -> 1x1 Conv."""

    pattern = (*_TRANSPOSE_PATTERNS, _GEMM_PATTERN)

    def check(self, g, m):
        if m.root.op_type == "Transpose":
            self._transpose_params(g, m)
        else:
            self._gemm_params(g, m)

    def rewrite(self, g, m):
        return self._transpose(g, m) if m.root.op_type == "Transpose" else self._gemm(g, m)

    # ------------------------------------------------------------------ (b) Transpose-MatMul-Transpose
    @staticmethod
    def _transpose_params(g, m) -> tuple[np.ndarray, np.ndarray | None]:
        """(MatMul matrix [C, Cout], bias or None) of a channels-last round trip; refuses any other."""
        to_nhwc, to_nchw = m.node("to_nhwc"), m.node("to_nchw")
        rank = len(to_nhwc.attr("perm") or [])
        if rank < 3 or list(to_nhwc.attr("perm")) != [0, *range(2, rank), 1] \
                or list(to_nchw.attr("perm") or []) != [0, rank - 1, *range(1, rank - 1)]:
            raise Refuse("the transposes are not channels-last and back")
        inner = [m["product"]] + ([m["sum"]] if "sum" in m.tensors else [])
        if any(g.num_uses(t) != 1 for t in inner):
            raise Refuse("the MatMul or Add output has other readers")
        if not g.all_constant(m["m"], m.tensors.get("bias", "")):
            raise Refuse("the MatMul matrix or the bias is not constant")
        weights = g.const(m["m"])
        if weights.ndim != 2 or weights.dtype.kind != "f":
            raise Refuse("the MatMul matrix is not a 2-D float constant")
        bias = g.const(m["bias"]) if "bias" in m.tensors else None
        if bias is not None and (bias.ndim > rank or bias.shape[-1:] != weights.shape[1:]
                                 or any(d != 1 for d in bias.shape[:-1])):
            raise Refuse("the bias does not run along the channel axis alone")
        return weights, bias

    def _transpose(self, g, m) -> Replacement:
        weights, bias = self._transpose_params(g, m)
        to_nhwc, to_nchw, matmul = m.node("to_nhwc"), m.node("to_nchw"), m.node("MatMul")
        rank = len(to_nhwc.attr("perm"))
        c, cout = weights.shape
        shapes = m.shapes.inferred
        w_shape = (cout, c) + (1,) * (rank - 2)
        before, after = node_macs(g, matmul, shapes), conv_macs(g, shapes, m["x"], m["y"], w_shape)
        dropped = [to_nchw, *(n for n in m.nodes if n.op_type == "Add"), matmul]
        if g.num_uses(m["nhwc"]) == 1:
            dropped.append(to_nhwc)
        refusal = _cost_refusal(before, after)
        decision = ConvCanonicalization(node=matmul.name, rewrite="transpose-matmul-transpose", macs_before=before,
                                        macs_after=after, nodes_before=len(dropped), nodes_after=1,
                                        applied=refusal is None)
        if refusal:
            raise Refuse(refusal, decision=decision)
        replacement = Replacement(remove=dropped, decision=decision)
        w = np.ascontiguousarray(weights.T).reshape(w_shape)
        inputs = [m["x"], replacement.add_initializer(g.fresh_name(f"{matmul.name or 'matmul'}_w"), w)]
        if bias is not None:
            inputs.append(replacement.add_initializer(g.fresh_name(f"{matmul.name or 'matmul'}_b"),
                                                      np.ascontiguousarray(bias.reshape(cout)).astype(w.dtype)))
        replacement.add_node("Conv", inputs, [m["y"]], {"kernel_shape": [1] * (rank - 2)}, name=matmul.name)
        return replacement

    # ------------------------------------------------------------------ (a) Gemm on a 1x1 map
    def _gemm_params(self, g, m) -> tuple[np.ndarray, np.ndarray | None, tuple]:
        """(W[Cout, C, 1, ..], bias[Cout] or None, the conv's output shape) of a Gemm on a flattened 1x1 map."""
        gemm = m.node("gemm")
        if gemm.attr("transA", 0):
            raise Refuse("the Gemm transposes its input")
        shapes = m.shapes.inferred
        x_shape, flat_shape = shapes.get(m["x"]), shapes.get(m["flat"])
        if x_shape is None or len(x_shape) < 3 or any(d != 1 for d in x_shape[2:]) or flat_shape != x_shape[:2]:
            raise Refuse("the Gemm does not read a flattened 1x1 map")
        if g.num_uses(m["flat"]) != 1:
            raise Refuse("the flattened tensor has other readers")
        c_name = gemm.inputs[2] if len(gemm.inputs) > 2 else ""
        if not g.all_constant(m["b"], c_name):
            raise Refuse("the Gemm's weights or bias are not constant")
        w, bias = self._as_conv(g, gemm, m["b"], c_name, len(x_shape))
        return w, bias, (x_shape[0], w.shape[0]) + (1,) * (len(x_shape) - 2)

    def _gemm(self, g, m) -> Replacement:
        w, b, y_shape = self._gemm_params(g, m)
        gemm, flatten = m.node("gemm"), m.node("flatten")
        shapes = m.shapes.inferred
        before = node_macs(g, gemm, shapes)
        after = conv_macs(g, shapes, m["x"], m["y"], w.shape, y_shape)
        refusal = _cost_refusal(before, after)
        if refusal:
            raise Refuse(refusal)
        back = _reshape_back(g, shapes, m["y"], y_shape)
        if back is not None:
            decision = ConvCanonicalization(node=gemm.name, rewrite="gemm-reshape-back", macs_before=before,
                                            macs_after=after, nodes_before=3, nodes_after=1, applied=True)
            replacement = Replacement(remove=[back, gemm, flatten], decision=decision)
            self._add_conv(g, replacement, gemm, m["x"], w, b, back.outputs[0])
            return replacement
        producer = g.producer(m["x"])
        if producer is None or producer.op_type != "Conv" or g.num_uses(m["x"]) != 1:
            raise Refuse("nothing to unlock")
        plan = self._chain_plan(g, shapes, producer, ConvGeom(m["x"], m["y"], w.shape, {}, y_shape))
        if plan is None:
            raise Refuse("nothing to unlock")
        decision = ConvCanonicalization(node=gemm.name, rewrite="gemm-to-conv-chain", chain=plan.label,
                                        macs_before=before, macs_after=after, nodes_before=2, nodes_after=2,
                                        fused_macs_after=plan.macs_after,
                                        unlocks=f"fuse-conv1x1-chain with {producer.name}", applied=True)
        replacement = Replacement(remove=[gemm, flatten], decision=decision)
        out = g.fresh_name(f"{gemm.name or 'gemm'}_conv_out")
        self._add_conv(g, replacement, gemm, m["x"], w, b, out)
        replacement.add_node("Flatten", [out], [m["y"]], {"axis": 1}, name=flatten.name)
        return replacement

    @staticmethod
    def _as_conv(g, gemm, b_name, c_name, rank) -> tuple[np.ndarray, np.ndarray | None]:
        """(W[Cout, C, 1, ..], bias[Cout] or None) of the Gemm; refuses when it is not a per-sample 1x1 conv."""
        b = g.const(b_name)
        if b.ndim != 2 or b.dtype.kind != "f":
            raise Refuse("the Gemm's weights are not a 2-D float matrix")
        w = (b if gemm.attr("transB", 0) else b.T) * np.asarray(gemm.attr("alpha", 1.0), b.dtype)
        bias = None
        if c_name:
            c = g.const(c_name)
            if c.ndim > 2 or (c.ndim == 2 and c.shape[0] != 1) or c.shape[-1:] not in ((), (1,), (w.shape[0],)):
                raise Refuse("the Gemm's bias varies over the batch")
            bias = (np.broadcast_to(c.reshape(-1), (w.shape[0],)) * np.asarray(gemm.attr("beta", 1.0), c.dtype))
            bias = bias.astype(w.dtype)
        return np.ascontiguousarray(w).reshape(w.shape + (1,) * (rank - 2)), bias

    @staticmethod
    def _chain_plan(g, shapes, producer, conv: ConvGeom) -> ChainPlan | None:
        """fuse-conv1x1-chain's plan for ``producer`` then ``conv`` when it would apply, else None."""
        if not g.all_constant(*producer.inputs[1:]):
            return None
        b1 = g.const(producer.inputs[2]) if len(producer.inputs) > 2 and producer.inputs[2] else None
        try:
            plan = plan_chain(g, shapes, ConvGeom.of(g, producer), conv, b1)
        except Refuse:
            return None
        return plan if plan.apply else None

    @staticmethod
    def _add_conv(g, replacement: Replacement, gemm, x, w, b, out) -> None:
        inputs = [x, replacement.add_initializer(g.fresh_name(f"{gemm.name or 'gemm'}_w"), w)]
        if b is not None:
            inputs.append(replacement.add_initializer(g.fresh_name(f"{gemm.name or 'gemm'}_b"), b))
        replacement.add_node("Conv", inputs, [out], {"kernel_shape": [1] * (w.ndim - 2)}, name=gemm.name)
