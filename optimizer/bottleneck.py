"""Channel bottlenecks: find Conv/Gemm layers wider than the information they carry, and factor them.

GoogLeNet puts a 1x1 reduce in front of its 5x5 convolutions by hand (28x28x192 -> 5x5x32 costs
120 M multiplications; with a 192->16 1x1 in front, 12.4 M). This module does it on trained
models without retraining, so every bottleneck approximates its layer and is measured:

* ``analyze_bottlenecks`` (detection): per layer, the singular values of the weights along both
  channel modes (the Tucker-2 unfoldings), the spectra of the input and output activations on
  calibration inputs (or seeded random ones, flagged ``evidence="random"``), the break-even ranks
  of the cost model, and a ranked table of opportunities with their predicted error.
* ``insert_bottlenecks`` (the engine behind the ``insert-bottleneck`` pass): layers in
  topological order, each fitted against the ORIGINAL network's response from the inputs the
  already-approximated network gives it (asymmetric reconstruction), ranks chosen per layer to
  meet the budget, kept only below break-even, then verified end to end with the executor and
  rolled back, largest layer error first, until the model is within budget.

Structures (r = rank; W the layer's weights; x its input; y its output):

* ``input``: 1x1 (Cin->r, no bias) then KxK (r->Cout). The projection's row space is the top-r
  right singular subspace of ``W_(in) C^{1/2}`` (W unfolded as (Cout·kh·kw) x Cin, C = E[x x^T]
  uncentred over pixels): with C = I it is the weight factor, with W = I it is PCA of the input;
  the PCA and weight-factor bases are tried too and the best is kept. Bias-free, so zero padding
  stays exact. The KxK weights are then refitted by least squares per kernel tap against the
  original response: ``W' = W C_oz C_zz^{-1}`` with z the (actual) 1x1 output.
* ``output``: KxK (Cin->r, weights P^T W, bias P^T b) then 1x1 (r->Cout) with bias: channel
  decomposition (Zhang et al. 2015), P from centred PCA of the layer's output; the 1x1 and its
  bias are refitted by least squares against the original output.
* ``tucker2``: 1x1 -> KxK core -> 1x1 (input side, then output side on its result).
* ``svd``: a 1x1 Conv or Gemm as two (the input-side math with kh = kw = 1 is the data-aware
  truncated SVD).

Predicted errors (the detection table and the rank search) are relative RMS errors of the layer
output from the discarded singular values, treating kernel taps as uncorrelated; decisions rest
on the measured error ``max|d| / max|y|`` of the layer output and, at the end, of every model
output. A layer is refused when it is depthwise or grouped, its weights are not constant, or it
is already one side of a linear bottleneck (a Conv/Gemm feeding another directly, or through a
ReLU after a bias-free 1x1, through a tensor narrower than the ends): that keeps the pass
idempotent, since everything it inserts is such a pair.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Mapping

import numpy as np

from optimizer.cost import node_macs
from optimizer.executor import default_max_tensor_bytes, lookup, run as run_graph, unsupported_ops
from optimizer.executor.registry import NodeContext
from optimizer.ir import Graph, Node

#: Largest number of pixels (rows) a layer's statistics keep per sample; more only costs time.
MAX_PIXELS_PER_SAMPLE = 1 << 14
#: Ops known to produce non-negative outputs (a ReLU after a non-negative projection of them is exact).
NONNEGATIVE_OPS = frozenset({"Relu", "Sigmoid", "Softmax", "Abs", "Exp", "Softplus"})
#: Step of the rank search once the prediction turns out optimistic: r <- r + max(1, r * STEP).
RANK_STEP = 0.25
#: Widest input or output the engine factors: its eigen-decompositions are dense Cin x Cin.
MAX_CHANNELS = 2048
#: Pixels (rows) per channel the moments need before the data may shape a fit.
TRUST_ROWS = 4
_RCOND = 1e-10


# ---------------------------------------------------------------------- layers
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
    """A bias-free 1x1 Conv: the reduce this module inserts (GoogLeNet's own reduces have biases)."""
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
    after a bias-free 1x1, the form this module inserts) by a tensor narrower than the wider
    end. Factoring it again would factor a factor; keeping or fusing such a pair is the fusing
    passes' question. Everything this module inserts is such a pair, which keeps it idempotent.
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


# ---------------------------------------------------------------------- cost model
def _conv_macs(cout: int, cin: int, kk: int, pixels: int) -> int:
    return cout * cin * kk * pixels


def structure_macs(layer: Layer, structure: str, rank: int | tuple[int, int], px_in: int, px_out: int) -> int:
    """MACs of a factored layer; ``px_*`` are output-grid pixel counts (N·H·W, or M rows of a Gemm)."""
    cin, cout, kk = layer.cin, layer.cout, layer.kk
    if structure in ("input", "svd"):
        return _conv_macs(rank, cin, 1, px_in) + _conv_macs(cout, rank, kk, px_out)
    if structure == "output":
        return _conv_macs(rank, cin, kk, px_out) + _conv_macs(cout, rank, 1, px_out)
    if structure == "tucker2":
        r1, r2 = rank
        return _conv_macs(r1, cin, 1, px_in) + _conv_macs(r2, r1, kk, px_out) + _conv_macs(cout, r2, 1, px_out)
    raise ValueError(structure)


def break_even_rank(layer: Layer, structure: str, px_in: int, px_out: int) -> int:
    """Largest rank whose factored layer costs strictly fewer MACs than the layer (0: none)."""
    before = _conv_macs(layer.cout, layer.cin, layer.kk, px_out)
    per_rank = structure_macs(layer, structure, 1, px_in, px_out)
    return max(0, (before - 1) // per_rank)


# ---------------------------------------------------------------------- running nodes
_LIMITS = SimpleNamespace(max_tensor_bytes=None)


def _kernel(op_type: str, attrs: dict, opset: int, *inputs):
    """Run one op with the executor's kernel (standalone node, no graph needed)."""
    if _LIMITS.max_tensor_bytes is None:
        _LIMITS.max_tensor_bytes = default_max_tensor_bytes()
    node = Node(op_type, [], [], dict(attrs))
    spec = lookup("", op_type, opset)
    with np.errstate(all="ignore"):
        return spec.fn(NodeContext(node, opset, _LIMITS), *inputs)


def _conv_attrs(node: Node) -> dict:
    return {k: v for k, v in node.attrs.items() if k in ("pads", "strides", "dilations", "auto_pad", "kernel_shape")}


def _as_matrix(layer: Layer, a: np.ndarray) -> np.ndarray:
    """Channels x pixels (samples' rows for a Gemm)."""
    if layer.is_gemm:
        return a.T
    return np.moveaxis(a, 1, 0).reshape(a.shape[1], -1)


def random_feeds(graph: Graph, samples: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Seeded inputs, one feed dict per sample, drawn as verification draws them and at the shapes it
    chooses for dynamic dims (a symbolic H or W of 1 breaks real detectors and recognizers)."""
    from optimizer.verification import choose_input_shapes, random_inputs

    shapes = choose_input_shapes(graph, seed=seed).shapes
    return [random_inputs(graph, shapes, seed + i) for i in range(samples)]


def _calibration_feeds(graph: Graph, calibration, samples: int, seed: int) -> tuple[list[dict], str]:
    """Per-sample feeds: a calibration dict (its leading axis split into the model's batch) or random."""
    if calibration is None:
        return random_feeds(graph, samples, seed), "random"
    names = graph.feed_inputs()
    missing = [n for n in names if n not in calibration]
    if missing:
        raise ValueError(f"calibration lacks input(s) {', '.join(missing)}")
    batch = {n: (graph.shape(n) or (1,))[0] for n in names}
    counts = {n: np.asarray(calibration[n]).shape[0] // (batch[n] if isinstance(batch[n], int) else 1) for n in names}
    count = min(counts.values())
    feeds = []
    for i in range(count):
        feed = {}
        for n in names:
            b = batch[n] if isinstance(batch[n], int) else np.asarray(calibration[n]).shape[0]
            dtype = graph.tensors[n].dtype if n in graph.tensors else None
            value = np.asarray(calibration[n])[i * b:(i + 1) * b]
            feed[n] = value.astype(dtype) if dtype is not None else value
        feeds.append(feed)
    return feeds, "calibration"


def relative_error(reference: list[np.ndarray], approx: list[np.ndarray]) -> float:
    """max|d| / max|y| over all samples (the budget's metric)."""
    peak = max(float(np.max(np.abs(y))) for y in reference)
    worst = max(float(np.max(np.abs(a.astype(np.float64) - y))) for y, a in zip(reference, approx))
    return worst / peak if peak > 0 else (0.0 if worst == 0 else math.inf)


def output_error(reference: dict[str, list[np.ndarray]], candidate: Graph, feeds: list[dict]) -> float:
    """Largest relative error (max|d|/max|y|) of the candidate's outputs, run by the executor, against
    reference outputs (output name -> one array per feed)."""
    got = [run_graph(candidate, f) for f in feeds]
    return max((relative_error(ref, [c[o] for c in got]) for o, ref in reference.items()), default=0.0)


# ---------------------------------------------------------------------- statistics
@dataclass
class _Stats:
    """Second moments over pixels of a layer's input (approximated and original) and output."""

    c_aa: np.ndarray  # E[x_a x_a^T]
    c_oa: np.ndarray  # E[x_o x_a^T]
    c_oo: np.ndarray  # E[x_o x_o^T]
    ey2: float  # E||y_o||^2 per pixel (sum over channels)


def _moments(layer: Layer, xs_o, xs_a, ys_o, rng) -> _Stats:
    cin = layer.cin
    c_aa, c_oa, c_oo = (np.zeros((cin, cin)) for _ in range(3))
    n = 0
    for x_o, x_a in zip(xs_o, xs_a):
        a, o = _as_matrix(layer, x_a).astype(np.float64), _as_matrix(layer, x_o).astype(np.float64)
        if a.shape[1] > MAX_PIXELS_PER_SAMPLE:
            keep = rng.choice(a.shape[1], MAX_PIXELS_PER_SAMPLE, replace=False)
            a, o = a[:, keep], o[:, keep]
        c_aa += a @ a.T
        c_oa += o @ a.T
        c_oo += o @ o.T if x_o is not x_a else 0
        n += a.shape[1]
    if all(x_o is x_a for x_o, x_a in zip(xs_o, xs_a)):
        c_oo = c_oa = c_aa
    ey2 = sum(float(np.sum(np.square(y, dtype=np.float64))) for y in ys_o) / sum(_as_matrix(layer, y).shape[1]
                                                                             for y in ys_o)
    return _Stats(c_aa / n, c_oa / n, c_oo / n, ey2)


def _sqrt_psd(c: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh(c)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def input_bases(gram: np.ndarray, st: _Stats) -> dict[str, np.ndarray]:
    """Orthonormal Cin x k bases, best directions first: data-aware weight factor, weight factor, input PCA.

    ``gram`` = W_(in)^T W_(in). The data-aware basis spans the rows of L_r^T W_(in), L_r the top
    left singular vectors of W_(in) C^{1/2}; those rows are V'_r^T C^{1/2} G up to scale (V' the
    eigenvectors of C^{1/2} G C^{1/2}), so everything stays Cin x Cin.
    """
    root = _sqrt_psd(st.c_aa)
    vals, vecs = np.linalg.eigh(root @ gram @ root)
    data = gram @ root @ vecs[:, ::-1][:, :int(np.sum(vals > vals[-1] * 1e-12))]
    w_vals, w_vecs = np.linalg.eigh(gram)
    weights = w_vecs[:, ::-1][:, :int(np.sum(w_vals > w_vals[-1] * 1e-12))]
    _, pca = np.linalg.eigh(st.c_aa)
    pca = pca[:, ::-1]
    # a factor of rank k < Cin is completed to Cin directions (the PCA ones, made orthogonal), so
    # every basis serves every rank and the error keeps falling with r
    return {"data": np.linalg.qr(np.hstack([data, pca]))[0], "weights": np.linalg.qr(np.hstack([weights, pca]))[0],
            "pca": pca}


def _solve(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """rhs @ pinv(gram) for a PSD gram: directions the data never excites (dead channels, fewer
    samples than features) get no weight, so the fit and its predicted error stay monotone in rank."""
    vals, vecs = np.linalg.eigh(gram)
    keep = vals > _RCOND * max(float(vals[-1]), 1e-300)
    return ((rhs @ vecs[:, keep]) / vals[keep]) @ vecs[:, keep].T


class _InputError:
    """Predicted relative RMS error of the layer output for an input projection q, with the refit."""

    def __init__(self, gram: np.ndarray, st: _Stats):
        self.st = st
        self.m = st.c_oa.T @ gram @ st.c_oa
        self.total = float(np.sum(gram * st.c_oo))

    def __call__(self, q: np.ndarray) -> float:
        a = q.T @ self.m @ q
        explained = float(np.trace(_solve(q.T @ self.st.c_aa @ q, a)))
        return math.sqrt(max(self.total - explained, 0.0) / self.st.ey2) if self.st.ey2 > 0 else 0.0


def _smallest_rank(pred, hi: int, tol: float) -> int | None:
    """Smallest r in [1, hi] with pred(r) <= tol, assuming pred decreases with r."""
    if hi < 1 or pred(hi) > tol:
        return None
    lo = 1
    while lo < hi:
        mid = (lo + hi) // 2
        if pred(mid) <= tol:
            hi = mid
        else:
            lo = mid + 1
    return lo


# ---------------------------------------------------------------------- fitted structures
@dataclass
class Fit:
    """One factored layer: its new weights and the outputs it gives on the calibration inputs."""

    structure: str
    rank: Any
    macs: int
    error: float  # measured max|d|/max|y| of the layer output
    predicted: float
    weights: list[tuple[str, np.ndarray, np.ndarray | None, dict]]  # (role, W, bias, conv attrs) in order
    outputs: list[np.ndarray]
    basis: str = ""
    relu: str = "none"

    @property
    def nodes(self) -> int:
        return len(self.weights) + (1 if self.relu not in ("none",) else 0)


class _LayerFitter:
    """Fits the structures of one layer on the approximated inputs against the original outputs."""

    def __init__(self, layer: Layer, xs_o, xs_a, ys_o, opset: int, tol: float, relu_bottleneck: bool,
                 nonneg_input: bool, rng):
        self.layer, self.xs_a, self.ys_o, self.opset = layer, xs_a, ys_o, opset
        self.tol, self.relu_bottleneck, self.nonneg_input = tol, relu_bottleneck, nonneg_input
        self.st = _moments(layer, xs_o, xs_a, ys_o, rng)
        rows = sum(_as_matrix(layer, x).shape[1] for x in xs_a)
        #: with fewer pixels than TRUST_ROWS x channels the data would be fitted, not measured
        #: (a Gemm sees one row per sample): then the weights alone decide the input side and
        #: the output side is not tried
        self.trusted_in = rows >= TRUST_ROWS * layer.cin
        self.trusted_out = rows >= TRUST_ROWS * layer.cout
        if not self.trusted_in:
            scale = float(np.trace(self.st.c_aa)) / layer.cin
            eye = np.eye(layer.cin) * scale
            self.st = _Stats(eye, eye, eye, self.st.ey2)
        self.px_in = int(np.prod(_as_matrix(layer, xs_a[0]).shape[1:]))
        self.px_out = int(np.prod(_as_matrix(layer, ys_o[0]).shape[1:]))
        self.macs = _conv_macs(layer.cout, layer.cin, layer.kk, self.px_out)
        self.xo_mats = [_as_matrix(layer, x).astype(np.float64) for x in xs_o]
        self.same_input = all(o is a for o, a in zip(xs_o, xs_a))
        wi = layer.unfold_in()
        self.gram = wi.T @ wi
        self.predict_in = _InputError(self.gram, self.st)
        self._bases: dict[str, np.ndarray] | None = None
        self._input_fits: dict[tuple[str, int], Fit | None] = {}

    # ----- running factor layers on the calibration inputs
    def _apply(self, w: np.ndarray, b: np.ndarray | None, xs, attrs: dict) -> list[np.ndarray]:
        w32 = w.astype(np.float32)
        b32 = None if b is None else b.astype(np.float32)
        if self.layer.is_gemm:
            mat = w32[:, :, 0, 0]
            return [x @ mat.T + (0 if b32 is None else b32) for x in xs]
        return [_kernel("Conv", attrs, self.opset, x, w32, b32) for x in xs]

    def _err(self, outs) -> float:
        return relative_error(self.ys_o, outs)

    # ----- input side (also "svd" for 1x1 convs and Gemms)
    def input_side(self, tol: float) -> Fit | None:
        layer = self.layer
        structure = "svd" if layer.kk == 1 else "input"
        hi = break_even_rank(layer, structure, self.px_in, self.px_out)
        hi = min(hi, layer.cin - 1, layer.cout * layer.kk)
        if hi < 1:
            return None
        if self._bases is None:
            self._bases = input_bases(self.gram, self.st)
            if not self.trusted_in:
                self._bases = {"weights": self._bases["weights"]}
        bases = self._bases

        def pred(r):
            return min(self.predict_in(q[:, :r]) for q in bases.values() if q.shape[1] >= r)

        r = _smallest_rank(pred, hi, tol)
        while r is not None and r <= hi:
            name, q = min(((n, q) for n, q in bases.items() if q.shape[1] >= r),
                          key=lambda item: self.predict_in(item[1][:, :r]))
            if (name, r) not in self._input_fits:
                self._input_fits[name, r] = self._input_fit(q[:, :r], name, structure, hi)
            fit = self._input_fits[name, r]
            if fit is not None and fit.error <= tol:
                return fit
            r = min(hi, r + max(1, int(r * RANK_STEP))) if r < hi else None
        return None

    def _input_fit(self, q: np.ndarray, basis: str, structure: str, hi: int) -> Fit | None:
        layer, r = self.layer, q.shape[1]
        signs = np.where(q.sum(axis=0) < 0, -1.0, 1.0)  # the refit absorbs signs; a non-negative factor may appear
        reduce_w = (q * signs).T[:, :, None, None]
        zs = self._apply(reduce_w, None, self.xs_a, {})
        relu = "none"
        if self.nonneg_input and np.all(reduce_w >= 0):
            relu = "exact: non-negative input and factor"
        elif self.relu_bottleneck:
            if 2 * r <= hi:
                relu = "crelu: [W; -W] then ReLU, next layer [U, -U] (exact, 2r channels)"
            else:
                relu = "relu: measured deviation"
                zs = [np.maximum(z, 0) for z in zs]
        w_in = self._refit_taps(zs, q * signs)
        w_next = w_in.reshape(layer.cout, layer.w.shape[2], layer.w.shape[3], r).transpose(0, 3, 1, 2)
        attrs = _conv_attrs(layer.node)
        outs = self._apply(w_next, layer.bias, zs, attrs)
        if relu.startswith("crelu"):
            reduce_w = np.concatenate([reduce_w, -reduce_w])
            w_next = np.concatenate([w_next, -w_next], axis=1)
        rank = reduce_w.shape[0]
        weights = [("reduce", reduce_w, None, {}), ("main", w_next, layer.bias, attrs)]
        macs = structure_macs(layer, structure, rank, self.px_in, self.px_out)
        pred, err = self.predict_in(q), self._err(outs)
        if relu.startswith("relu"):
            relu = f"relu: measured layer deviation {err:.3g}"
        return Fit(structure, rank, macs, err, pred, weights, outs, basis, relu)

    def _refit_taps(self, zs, q: np.ndarray) -> np.ndarray:
        """(Cout·kh·kw) x r: per kernel tap, least squares of the original response on the features z."""
        layer = self.layer
        if not self.trusted_in:  # too few pixels to refit: project the weights (truncated SVD)
            return layer.unfold_in() @ q
        r = zs[0].shape[1]
        c_zz, c_oz, n = np.zeros((r, r)), np.zeros((layer.cin, r)), 0
        for x_o, z in zip(self.xo_mats, zs):
            zm = _as_matrix(layer, z).astype(np.float64)
            c_zz += zm @ zm.T
            c_oz += x_o @ zm.T
            n += zm.shape[1]
        return _solve(c_zz / n, layer.unfold_in() @ (c_oz / n))

    # ----- output side
    def output_side(self, tol: float, base: Fit | None = None) -> Fit | None:
        """KxK (Cin->r) + 1x1 (r->Cout); on top of ``base`` (an input-side fit) it makes a Tucker-2."""
        layer = self.layer
        structure = "output" if base is None else "tucker2"
        if base is None:
            ys_a = self.ys_o if self.same_input else self._apply(layer.w, layer.bias, self.xs_a,
                                                                    _conv_attrs(layer.node))
            per_rank = structure_macs(layer, "output", 1, self.px_in, self.px_out)
            budget = self.macs - 1
        else:
            ys_a = base.outputs
            r1 = base.rank
            per_rank = r1 * layer.kk * self.px_out + layer.cout * self.px_out
            budget = self.macs - 1 - layer.cin * r1 * self.px_in
        hi = min(max(0, budget // per_rank), layer.cout - 1)
        if hi < 1:
            return None
        ya = [_as_matrix(layer, y).astype(np.float64) for y in ys_a]
        yo = [_as_matrix(layer, y).astype(np.float64) for y in self.ys_o]
        n = sum(m.shape[1] for m in ya)
        m_a = sum(m.sum(axis=1) for m in ya) / n
        m_o = sum(m.sum(axis=1) for m in yo) / n
        c_aa = sum(m @ m.T for m in ya) / n
        c_oa = sum(o @ a.T for o, a in zip(yo, ya)) / n
        ey2 = sum(float(np.sum(o * o)) for o in yo) / n
        _, vecs = np.linalg.eigh(c_aa - np.outer(m_a, m_a))
        p_all = vecs[:, ::-1]

        def solve(r):
            p = p_all[:, :r]
            gram = np.block([[p.T @ c_aa @ p, (p.T @ m_a)[:, None]], [(m_a @ p)[None, :], np.ones((1, 1))]])
            cross = np.hstack([c_oa @ p, m_o[:, None]])
            coef = _solve(gram, cross)  # Cout x (r + 1)
            residual = ey2 - float(np.sum(coef * cross))
            return p, coef, math.sqrt(max(residual, 0.0) / ey2) if ey2 > 0 else 0.0

        r = _smallest_rank(lambda r: solve(r)[2], hi, tol)
        while r is not None and r <= hi:
            p, coef, pred = solve(r)
            expand_w, expand_b = coef[:, :r], coef[:, r]
            outs = [self._expand(expand_w, expand_b, p.T @ a, y) for a, y in zip(ya, self.ys_o)]
            err = self._err(outs)
            if err <= tol:
                return self._output_fit(structure, base, p, expand_w, expand_b, r, pred, err, outs)
            r = min(hi, r + max(1, int(r * RANK_STEP))) if r < hi else None
        return None

    def _expand(self, w, b, h, like):
        y = (w @ h + b[:, None]).astype(np.float32)
        if self.layer.is_gemm:
            return y.T
        return np.moveaxis(y.reshape((like.shape[1], like.shape[0]) + like.shape[2:]), 0, 1)

    def _output_fit(self, structure, base, p, expand_w, expand_b, r, pred, err, outs) -> Fit:
        layer = self.layer
        if base is None:
            core_w = np.einsum("or,oihw->rihw", p, layer.w)
            core_b = p.T @ layer.bias
            weights = [("core", core_w, core_b, _conv_attrs(layer.node))]
            rank, macs, basis, relu = r, structure_macs(layer, "output", r, self.px_in, self.px_out), "pca", "none"
        else:
            (_, reduce_w, _, _), (_, main_w, main_b, attrs) = base.weights
            core_w = np.einsum("or,oihw->rihw", p, main_w)
            weights = [("reduce", reduce_w, None, {}), ("core", core_w, p.T @ main_b, attrs)]
            rank = (base.rank, r)
            macs = structure_macs(layer, "tucker2", rank, self.px_in, self.px_out)
            basis, relu = base.basis + "+pca", base.relu
        weights.append(("expand", expand_w[:, :, None, None], expand_b, {}))
        return Fit(structure, rank, macs, err, pred, weights, outs, basis, relu)

    # ----- choice
    def _output_rank_estimate(self, tol: float) -> int:
        """Smallest output rank whose discarded centred output energy is within ``tol`` (PCA of y)."""
        yo = [_as_matrix(self.layer, y).astype(np.float64) for y in self.ys_o]
        n = sum(m.shape[1] for m in yo)
        mean = sum(m.sum(axis=1) for m in yo) / n
        eig = np.clip(np.linalg.eigvalsh(sum(m @ m.T for m in yo) / n - np.outer(mean, mean))[::-1], 0, None)
        tail = np.concatenate([np.cumsum(eig[::-1])[::-1], [0.0]]) / max(self.st.ey2, 1e-300)
        return int(np.argmax(np.sqrt(tail) <= tol))

    def best(self) -> tuple[Fit | None, str]:
        """The cheapest fit within the layer budget (ties: fewer nodes), or None and why.

        Output-side and Tucker-2 fits are only tried when the PCA estimate of their output rank
        leaves them a chance to beat the best fit so far (they cost a full run of the layer).
        """
        fits = []
        inp = self.input_side(self.tol)
        if inp is not None:
            fits.append(inp)
        if self.layer.kk > 1 and self.trusted_out:
            bound = inp.macs if inp is not None else self.macs
            r_out = self._output_rank_estimate(self.tol)
            if 0 < r_out and structure_macs(self.layer, "output", r_out, self.px_in, self.px_out) < bound:
                out = self.output_side(self.tol)
                if out is not None:
                    fits.append(out)
                    bound = min(bound, out.macs)
            r_out = self._output_rank_estimate(self.tol / math.sqrt(2))
            r_in = inp.rank if inp is not None else 1
            if 0 < r_out and structure_macs(self.layer, "tucker2", (r_in, r_out), self.px_in, self.px_out) < bound:
                half = self.input_side(self.tol / math.sqrt(2))
                if half is not None and half.relu == "none":
                    tucker = self.output_side(self.tol, base=half)
                    if tucker is not None:
                        fits.append(tucker)
        if not fits:
            return None, "no rank below break-even meets the error budget"
        return min(fits, key=lambda f: (f.macs, f.nodes)), ""


# ---------------------------------------------------------------------- the engine
@dataclass
class BottleneckResult:
    """What ``insert_bottlenecks`` did: one row per Conv/Gemm considered, and the measured end-to-end error."""

    graph: Graph
    rows: list[dict[str, Any]]
    error: float  # end-to-end max|d|/max|y| on the calibration inputs (0 when nothing was inserted)
    max_error: float
    evidence: str  # "calibration" or "random"
    rolled_back: list[str] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(r["applied"] for r in self.rows)

    @property
    def macs_before(self) -> int:
        return sum(r["macs_before"] for r in self.rows)

    @property
    def macs_after(self) -> int:
        return sum(r["macs_after"] for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {"max_error": self.max_error, "error": self.error, "evidence": self.evidence,
                "rolled_back": self.rolled_back, "layers": self.rows}


@dataclass
class _Insertion:
    node: Node  # the replaced node (re-added as is on rollback)
    fit: Fit
    added: list[Node] = field(default_factory=list)
    initializers: list[str] = field(default_factory=list)

    def apply(self, g: Graph) -> None:
        node, fit = self.node, self.fit
        g.remove_node(node)
        x, y = node.inputs[0], node.outputs[0]
        gemm = node.op_type == "Gemm"
        last = len(fit.weights) - 1
        for i, (role, w, b, attrs) in enumerate(fit.weights):
            out = y if i == last else g.fresh_name(f"{node.name or y}_{role}")
            if gemm:
                inputs = [x, self._init(g, w[:, :, 0, 0].T.astype(np.float32))]
                node_attrs = {}
            else:
                inputs = [x, self._init(g, w.astype(np.float32))]
                node_attrs = dict(attrs) if attrs else {}
                if attrs and "kernel_shape" in attrs:
                    node_attrs["kernel_shape"] = list(w.shape[2:])
            if b is None and gemm and g.opset(node.domain) < 11:  # Gemm's C is optional only from opset 11
                b = np.zeros(w.shape[0], np.float32)
            if b is not None:
                inputs.append(self._init(g, b.astype(np.float32)))
            name = node.name if i == last else g.fresh_name(f"{node.name or y}_{role}")
            self.added.append(g.add_node("Gemm" if gemm else "Conv", inputs, [out], node_attrs, name=name))
            x = out
            if i == 0 and role == "reduce" and fit.relu != "none":
                relu_out = g.fresh_name(f"{node.name or y}_relu")
                self.added.append(g.add_node("Relu", [x], [relu_out], name=g.fresh_name(f"{node.name or y}_relu")))
                x = relu_out

    def _init(self, g: Graph, array: np.ndarray) -> str:
        name = g.add_initializer(np.ascontiguousarray(array), g.fresh_name(f"{self.node.name or 'bottleneck'}_w"))
        self.initializers.append(name)
        return name

    def revert(self, g: Graph) -> None:
        g.remove_nodes(reversed(self.added))
        for name in self.initializers:
            g.remove_initializer(name)
        self.node = g.add_like(self.node)


def _nonnegative(g: Graph, tensor: str) -> bool:
    prod = g.producer(tensor)
    return prod is not None and prod.op_type in NONNEGATIVE_OPS


def _has_control_flow(g: Graph) -> bool:
    return any(n.implicit_inputs or any(type(v).__name__ == "GraphProto" for v in n.attrs.values()) for n in g.nodes)


def _walk_node(g: Graph, node: Node, env: dict, opset: int) -> list[list[np.ndarray]]:
    spec = lookup(node.domain, node.op_type, g.opset(node.domain))
    if spec is None:
        raise ValueError(f"the executor has no kernel for {node.op_type}")
    ctx = NodeContext(node, g.opset(node.domain), _LIMITS)
    if _LIMITS.max_tensor_bytes is None:
        _LIMITS.max_tensor_bytes = default_max_tensor_bytes()
    samples = len(next(iter(env.values())))
    outs: list[list[np.ndarray]] = [[] for _ in node.outputs]
    with np.errstate(all="ignore"):
        for s in range(samples):
            args = [env[t][s] if t else None for t in node.inputs]
            result = spec.fn(ctx, *args)
            result = result if isinstance(result, tuple) else (result,)
            for i, value in enumerate(result[:len(node.outputs)]):
                outs[i].append(np.asarray(value))
    return outs


def insert_bottlenecks(graph: Graph, *, max_error: float, calibration: Mapping[str, np.ndarray] | None = None,
                       relu_bottleneck: bool = False, seed: int = 0, samples: int = 8) -> BottleneckResult:
    """Factor the Conv/Gemm layers of ``graph`` (modified in place) within ``max_error`` at every output.

    ``max_error`` bounds max|d| / max|y| of every model output over the calibration inputs
    (``calibration``: input name -> array whose leading axis holds samples; None: ``samples``
    seeded standard-normal inputs). Rows name each considered layer with its structure, rank,
    MACs before/after, measured layer error and, for refusals, the reason.
    """
    blocker = "the graph has control flow (If/Loop/Scan), which the engine does not walk" \
        if _has_control_flow(graph) else None
    unsupported = unsupported_ops(graph) if blocker is None else []
    if unsupported:
        blocker = f"the executor cannot run {unsupported[0].op_type} (node {unsupported[0].node!r}), so nothing can be measured"
    if blocker:
        return BottleneckResult(graph, [{"node": "(graph)", "op": "", "macs_before": None, "macs_after": None,
                                         "nodes_before": 0, "nodes_after": 0, "applied": False, "reason": blocker}],
                                0.0, max_error, "none")
    feeds, evidence = _calibration_feeds(graph, calibration, samples, seed)
    rng = np.random.default_rng(seed)
    live = graph.live_nodes()
    order = [n for n in graph.toposort() if n.id in live]
    last_use: dict[str, int] = {}
    for i, node in enumerate(order):
        for t in node.inputs:
            last_use[t] = i
    keep = set(graph.outputs)
    env_o: dict[str, list[np.ndarray]] = {n: [f[n] for f in feeds] for n in graph.feed_inputs()}
    env_o.update({n: [graph.const(n)] * len(feeds) for n in graph.initializers})
    env_a = dict(env_o)
    rows: list[dict[str, Any]] = []
    insertions: list[_Insertion] = []
    opset = graph.opset()
    for i, node in enumerate(order):
        outs_o = _walk_node(graph, node, env_o, opset)
        layer, reason = layer_of(graph, node) if node.op_type in ("Conv", "Gemm") else (None, None)
        fit = None
        if node.op_type in ("Conv", "Gemm"):
            reason = reason or linear_bottleneck_blocker(graph, node)
            row = {"node": node.name or node.outputs[0], "op": node.op_type}
            if reason is None:
                xs_o, xs_a = env_o[node.inputs[0]], env_a[node.inputs[0]]
                fitter = _LayerFitter(layer, xs_o, xs_a, outs_o[0], opset, max_error, relu_bottleneck,
                                      _nonnegative(graph, node.inputs[0]), rng)
                fit, reason = fitter.best()
                row.update(_row(layer, fitter, fit))
            else:
                shapes = {t: env_o[t][0].shape for t in node.inputs if t in env_o}
                shapes[node.outputs[0]] = outs_o[0][0].shape
                macs = node_macs(graph, node, shapes)
                row.update(macs_before=macs, macs_after=macs, nodes_before=1, nodes_after=1)
            row.update(applied=fit is not None, reason=reason or "")
            rows.append(row)
        if fit is not None:
            insertions.append(_Insertion(node, fit))
            env_a.update({node.outputs[0]: fit.outputs})
        elif all(env_a[t] is env_o[t] for t in node.inputs if t):
            env_a.update({o: v for o, v in zip(node.outputs, outs_o) if o})
        else:
            env_a.update({o: v for o, v in zip(node.outputs, _walk_node(graph, node, env_a, opset)) if o})
        env_o.update({o: v for o, v in zip(node.outputs, outs_o) if o})
        for t in node.inputs:
            if last_use.get(t) == i and t not in keep and t not in graph.initializers:
                env_o.pop(t, None)
                env_a.pop(t, None)
    reference = {o: env_o[o] for o in graph.outputs}
    for ins in insertions:
        ins.apply(graph)
    error = output_error(reference, graph, feeds) if insertions else 0.0
    rolled_back = []
    by_row = {r["node"]: r for r in rows}
    for ins in sorted(insertions, key=lambda s: -s.fit.error):
        if error <= max_error:
            break
        ins.revert(graph)
        row = by_row[ins.node.name or ins.node.outputs[0]]
        row.update(applied=False, reason="rolled back: the model went over budget at its outputs",
                   macs_after=row["macs_before"])
        rolled_back.append(row["node"])
        error = output_error(reference, graph, feeds)
    for ins in insertions:
        if ins.node.name not in rolled_back:
            for name in ins.node.inputs[1:]:
                if name and name in graph.initializers and graph.num_uses(name) == 0:
                    graph.remove_initializer(name)
    return BottleneckResult(graph, rows, error, max_error, evidence, rolled_back)


def _row(layer: Layer, fitter: _LayerFitter, fit: Fit | None) -> dict[str, Any]:
    row = {"shape": [layer.cout, layer.cin, *layer.w.shape[2:]], "macs_before": fitter.macs,
           "macs_after": fitter.macs, "nodes_before": 1, "nodes_after": 1}
    if fit is not None:
        row.update(structure=fit.structure, rank=fit.rank, basis=fit.basis, relu=fit.relu, macs_after=fit.macs,
                   nodes_after=fit.nodes, layer_error=fit.error, predicted_error=fit.predicted)
    return row


# ---------------------------------------------------------------------- detection
@dataclass
class LayerAnalysis:
    """Spectra, break-even ranks and the best proposal for one Conv/Gemm."""

    node: str
    op: str
    shape: list[int] | None
    macs: int | None
    reason: str = ""  # why it is not a candidate ("" when it is)
    weight_spectrum_in: list[float] = field(default_factory=list)  # singular values, (Cout·k·k) x Cin unfolding
    weight_spectrum_out: list[float] = field(default_factory=list)  # Cout x (Cin·k·k) unfolding
    input_spectrum: list[float] = field(default_factory=list)  # eigenvalues of E[x x^T] (uncentred)
    output_spectrum: list[float] = field(default_factory=list)  # eigenvalues of the centred output covariance
    break_even: dict[str, int] = field(default_factory=dict)
    structure: str | None = None
    rank: Any = None
    macs_after: int | None = None
    predicted_error: float | None = None

    @property
    def saving(self) -> int:
        return (self.macs or 0) - (self.macs_after if self.macs_after is not None else (self.macs or 0))

    def row(self) -> dict[str, Any]:
        return {"layer": self.node, "op": self.op, "shape": "x".join(map(str, self.shape or [])), "macs": self.macs,
                "structure": self.structure, "rank": self.rank, "macs_after": self.macs_after,
                "predicted_error": self.predicted_error, "reason": self.reason}


@dataclass
class BottleneckReport:
    """The ranked table of bottleneck opportunities (largest MAC saving first)."""

    layers: list[LayerAnalysis]
    evidence: str  # "calibration" or "random" (weaker evidence: the data may not look like random inputs)
    max_error: float

    def rows(self) -> list[dict[str, Any]]:
        return [layer.row() for layer in self.layers]

    def to_dict(self) -> dict[str, Any]:
        return {"evidence": self.evidence, "max_error": self.max_error,
                "layers": [{**layer.row(), "break_even": layer.break_even,
                            "weight_spectrum_in": layer.weight_spectrum_in,
                            "weight_spectrum_out": layer.weight_spectrum_out,
                            "input_spectrum": layer.input_spectrum, "output_spectrum": layer.output_spectrum}
                           for layer in self.layers]}


def _floats(values) -> list[float]:
    return [float(f"{v:.6g}") for v in values]


def analyze_bottlenecks(graph: Graph, calibration: Mapping[str, np.ndarray] | None = None, *, samples: int = 8,
                        seed: int = 0, max_error: float = 1e-2) -> BottleneckReport:
    """Rank every Conv/Gemm by the MACs a bottleneck would save at ``max_error`` predicted relative error.

    Activations are captured with the executor on a copy of the graph whose outputs are the
    layers' inputs and outputs; moments accumulate per sample, so memory stays one sample's worth.
    """
    feeds, evidence = _calibration_feeds(graph, calibration, samples, seed)
    nodes = [n for n in graph.toposort() if n.op_type in ("Conv", "Gemm") and n.domain in ("", "ai.onnx")]
    layers = {n.id: layer_of(graph, n) for n in nodes}
    capture = graph.copy()
    capture.outputs = list(dict.fromkeys(t for n in nodes for t in (n.inputs[0], n.outputs[0])))
    moments: dict[int, list] = {}
    shapes: dict[str, tuple] = {}
    for feed in feeds:
        values = run_graph(capture, feed)
        shapes.update((k, v.shape) for k, v in values.items())
        for n in nodes:
            layer = layers[n.id][0]
            if layer is None:
                continue
            x = _as_matrix(layer, values[n.inputs[0]]).astype(np.float64)
            y = _as_matrix(layer, values[n.outputs[0]]).astype(np.float64)
            acc = moments.setdefault(n.id, [0.0, 0.0, 0.0, 0.0, 0])
            for i, v in enumerate((x @ x.T, y @ y.T, y.sum(axis=1), float(np.sum(y * y)))):
                acc[i] = acc[i] + v
            acc[4] += y.shape[1]
    table = []
    for n in nodes:
        layer, reason = layers[n.id]
        reason = reason or linear_bottleneck_blocker(graph, n) or ""
        name = n.name or n.outputs[0]
        if layer is None or reason:
            table.append(LayerAnalysis(name, n.op_type, None, node_macs(graph, n, shapes), reason))
            continue
        c_xx, c_yy, s_y, s_y2, count = moments[n.id]
        px_in = int(np.prod(_as_matrix(layer, np.empty(shapes[n.inputs[0]])).shape[1:]))
        px_out = count // len(feeds)
        c_xx = c_xx / (px_in * len(feeds))
        m_y = s_y / count
        out_eig = np.clip(np.linalg.eigvalsh(c_yy / count - np.outer(m_y, m_y))[::-1], 0, None)
        st = _Stats(c_xx, c_xx, c_xx, s_y2 / count)
        info = LayerAnalysis(name, n.op_type, [layer.cout, layer.cin, *layer.w.shape[2:]],
                             _conv_macs(layer.cout, layer.cin, layer.kk, px_out), reason,
                             _floats(np.linalg.svd(layer.unfold_in(), compute_uv=False)),
                             _floats(np.linalg.svd(layer.unfold_out(), compute_uv=False)),
                             _floats(np.clip(np.linalg.eigvalsh(c_xx)[::-1], 0, None)), _floats(out_eig))
        _propose(info, layer, st, out_eig, px_in, px_out, max_error)
        table.append(info)
    table.sort(key=lambda a: (a.structure is None, -a.saving))
    return BottleneckReport(table, evidence, max_error)


def _propose(info: LayerAnalysis, layer: Layer, st: _Stats, out_eig: np.ndarray, px_in: int, px_out: int,
             tol: float) -> None:
    """Fill in break-even ranks and the cheapest structure whose predicted error is within ``tol``."""
    in_structure = "svd" if layer.kk == 1 else "input"
    wi = layer.unfold_in()
    gram = wi.T @ wi
    q = input_bases(gram, st)["data"]
    predict = _InputError(gram, st)
    hi_in = min(break_even_rank(layer, in_structure, px_in, px_out), q.shape[1], layer.cin - 1)
    info.break_even = {in_structure: break_even_rank(layer, in_structure, px_in, px_out)}

    def pred_in(r):
        return predict(q[:, :r])

    def pred_out(r):
        return math.sqrt(float(np.sum(out_eig[r:])) / st.ey2) if st.ey2 > 0 else 0.0

    options = []
    r = _smallest_rank(pred_in, hi_in, tol)
    if r is not None:
        options.append((structure_macs(layer, in_structure, r, px_in, px_out), in_structure, r, pred_in(r)))
    if layer.kk > 1:
        info.break_even["output"] = break_even_rank(layer, "output", px_in, px_out)
        hi_out = min(info.break_even["output"], layer.cout - 1)
        r = _smallest_rank(pred_out, hi_out, tol)
        if r is not None:
            options.append((structure_macs(layer, "output", r, px_in, px_out), "output", r, pred_out(r)))
        r1 = _smallest_rank(pred_in, hi_in, tol / math.sqrt(2))
        r2 = _smallest_rank(pred_out, hi_out, tol / math.sqrt(2))
        if r1 is not None and r2 is not None:
            macs = structure_macs(layer, "tucker2", (r1, r2), px_in, px_out)
            options.append((macs, "tucker2", [r1, r2], math.hypot(pred_in(r1), pred_out(r2))))
    options = [o for o in options if o[0] < info.macs]
    if options:
        info.macs_after, info.structure, info.rank, err = min(options, key=lambda o: o[0])
        info.predicted_error = float(f"{err:.6g}")
