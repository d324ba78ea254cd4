"""Which Conv/Gemm layers can be factored, seen as Cout x Cin x kh x kw, and what a factored one costs.

Detection and the insertion engine both start from the same questions (is the layer a plain
group-1 Conv or a Gemm with constant float32 weights, is it already one side of a bottleneck,
what does each structure cost in MACs), so the answers live here once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from optimizer.ir import Graph, Node

#: Widest input or output the engine factors: its eigen-decompositions are dense Cin x Cin.
MAX_CHANNELS = 2048


@dataclass
class Layer:
    """A Conv (2-D, group 1) or Gemm with constant weights, seen as Cout x Cin x kh x kw."""

    node: Node
    w: np.ndarray  # (Cout, Cin, kh, kw) float64; a Gemm is (N, K, 1, 1)
    bias: np.ndarray  # (Cout,) float64, zeros when absent
    has_bias: bool

    @property
    def is_gemm(self) -> bool:
        return self.node.op_type == "Gemm"

    @property
    def cout(self) -> int:
        return self.w.shape[0]

    @property
    def cin(self) -> int:
        return self.w.shape[1]

    @property
    def kk(self) -> int:
        return self.w.shape[2] * self.w.shape[3]

    def unfold_in(self) -> np.ndarray:
        """(Cout·kh·kw) x Cin: the input-channel mode unfolding."""
        return self.w.transpose(0, 2, 3, 1).reshape(-1, self.cin)

    def unfold_out(self) -> np.ndarray:
        """Cout x (Cin·kh·kw): the output-channel mode unfolding."""
        return self.w.reshape(self.cout, -1)


def layer_of(g: Graph, node: Node) -> tuple[Layer | None, str | None]:
    """The node as a Layer, or (None, why it cannot be factored)."""
    if node.op_type not in ("Conv", "Gemm") or node.domain not in ("", "ai.onnx"):
        return None, "not a Conv or Gemm"
    if len(node.inputs) < 2 or not g.is_const(node.inputs[1]):
        return None, "weights are not constant"
    bias_name = node.inputs[2] if len(node.inputs) > 2 else ""
    if bias_name and not g.is_const(bias_name):
        return None, "bias is not constant"
    w = g.const(node.inputs[1])
    if w.dtype != np.float32:
        return None, "weights are not float32"
    if node.op_type == "Conv":
        if int(node.attr("group", 1)) != 1:
            return None, "depthwise and grouped convolutions are left alone"
        if w.ndim != 4:
            return None, "only 2-D convolutions are handled"
        w64 = w.astype(np.float64)
        bias = g.const(bias_name).astype(np.float64).reshape(-1) if bias_name else np.zeros(w.shape[0])
    else:
        if node.attr("transA", 0):
            return None, "Gemm with transA is not handled"
        mat = w.T if not node.attr("transB", 0) else w  # (N, K)
        w64 = (float(node.attr("alpha", 1.0)) * mat.astype(np.float64))[:, :, None, None]
        bias = np.zeros(w64.shape[0])
        if bias_name:
            c = g.const(bias_name).astype(np.float64) * float(node.attr("beta", 1.0))
            if c.size == 1:
                bias = np.full(w64.shape[0], float(c.reshape(-1)[0]))
            elif c.size == w64.shape[0] and (c.ndim == 1 or c.shape[0] == 1):
                bias = c.reshape(-1)
            else:
                return None, "Gemm bias is not a per-output vector"
    if max(w64.shape[:2]) > MAX_CHANNELS:
        return None, f"wider than {MAX_CHANNELS} channels (the engine's dense decompositions would be too slow)"
    return Layer(node, w64, bias, bool(bias_name)), None


def _channels(g: Graph, node: Node, side: str) -> int:
    """Input or output channels of a Conv/Gemm (0 when its weights are unknown)."""
    layer, _ = layer_of(g, node)
    return 0 if layer is None else (layer.cin if side == "in" else layer.cout)


def _is_reducer(g: Graph, node: Node) -> bool:
    """A bias-free 1x1 Conv: the reduce the engine inserts (GoogLeNet's own reduces have biases)."""
    shape = g.shape(node.inputs[1]) if len(node.inputs) > 1 else None
    return node.op_type == "Conv" and (len(node.inputs) < 3 or not node.inputs[2]) \
        and shape is not None and tuple(shape[2:]) == (1, 1)


def _linear_next(g: Graph, node: Node) -> Node | None:
    """The Conv/Gemm that alone reads this node's output as its data, directly or (after a bias-free
    1x1) through one ReLU."""
    out = node.outputs[0]
    readers = [] if g.is_graph_output(out) else g.consumers(out)
    if len(readers) == 1 and readers[0].op_type == "Relu" and _is_reducer(g, node):
        out = readers[0].outputs[0]
        readers = [] if g.is_graph_output(out) else g.consumers(out)
    if len(readers) == 1 and readers[0].op_type in ("Conv", "Gemm") and readers[0].inputs[0] == out \
            and out not in readers[0].inputs[1:]:
        return readers[0]
    return None


def linear_bottleneck_blocker(g: Graph, node: Node) -> str | None:
    """Why ``node`` is already one side of a linear bottleneck, or None.

    That is a Conv/Gemm linked to another with nothing non-linear between (or through a ReLU
    after a bias-free 1x1, the form the engine inserts) by a tensor narrower than the wider
    end. Factoring it again would factor a factor; keeping or fusing such a pair is the fusing
    passes' question. Everything the engine inserts is such a pair, which keeps it idempotent.
    """
    layer, _ = layer_of(g, node)
    if layer is None:
        return None
    src = g.producer(node.inputs[0])
    if src is not None and src.op_type == "Relu":
        src = g.producer(src.inputs[0])
    if src is not None and src.op_type in ("Conv", "Gemm") and _linear_next(g, src) is node \
            and layer.cin < max(_channels(g, src, "in"), layer.cout):
        return "already one side of a linear bottleneck"
    nxt = _linear_next(g, node)
    if nxt is not None and layer.cout < max(layer.cin, _channels(g, nxt, "out")):
        return "already one side of a linear bottleneck"
    return None


def conv_macs(cout: int, cin: int, kk: int, pixels: int) -> int:
    """MACs of a dense convolution with ``kk`` kernel taps over ``pixels`` output pixels."""
    return cout * cin * kk * pixels


def structure_macs(layer: Layer, structure: str, rank: int | tuple[int, int], px_in: int, px_out: int) -> int:
    """MACs of a factored layer; ``px_*`` are output-grid pixel counts (N·H·W, or M rows of a Gemm)."""
    cin, cout, kk = layer.cin, layer.cout, layer.kk
    if structure in ("input", "svd"):
        return conv_macs(rank, cin, 1, px_in) + conv_macs(cout, rank, kk, px_out)
    if structure == "output":
        return conv_macs(rank, cin, kk, px_out) + conv_macs(cout, rank, 1, px_out)
    if structure == "tucker2":
        r1, r2 = rank
        return conv_macs(r1, cin, 1, px_in) + conv_macs(r2, r1, kk, px_out) + conv_macs(cout, r2, 1, px_out)
    raise ValueError(structure)


def break_even_rank(layer: Layer, structure: str, px_in: int, px_out: int) -> int:
    """Largest rank whose factored layer costs strictly fewer MACs than the layer (0: none)."""
    before = conv_macs(layer.cout, layer.cin, layer.kk, px_out)
    per_rank = structure_macs(layer, structure, 1, px_in, px_out)
    return max(0, (before - 1) // per_rank)


def conv_attrs(node: Node) -> dict:
    """The node's geometry attributes, which the factor that keeps its kernel inherits."""
    return {k: v for k, v in node.attrs.items() if k in ("pads", "strides", "dilations", "auto_pad", "kernel_shape")}


def as_matrix(layer: Layer, a: np.ndarray) -> np.ndarray:
    """Channels x pixels (samples' rows for a Gemm)."""
    if layer.is_gemm:
        return a.T
    return np.moveaxis(a, 1, 0).reshape(a.shape[1], -1)
