"""Fitting one layer: the input-side (or SVD), output-side and Tucker-2 structures at a given rank.

Each fit runs on the inputs the already-approximated network gives the layer and is measured
against the original network's response (asymmetric reconstruction). ``ladder`` proposes the
ranks worth measuring (the smallest ranks whose predicted layer error meets a ladder of targets,
below break-even); which one a layer gets is the global allocation's choice.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from optimizer.bottleneck.calibration import relative_error
from optimizer.bottleneck.layers import Layer, as_matrix, break_even_rank, conv_attrs, conv_macs, structure_macs
from optimizer.bottleneck.spectra import InputError, LayerStats, input_bases, layer_moments, smallest_rank, solve_psd
from optimizer.executor import run_node
from optimizer.ir import Node

#: Pixels (rows) per channel the moments need before the data may shape a fit.
TRUST_ROWS = 4
#: Predicted relative RMS layer errors whose smallest ranks make a layer's ladder.
LADDER_TARGETS = (0.3, 0.1, 0.03, 0.01, 1e-3, 1e-5)


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


class LayerFitter:
    """Fits the structures of one layer on the approximated inputs against the original outputs."""

    def __init__(self, layer: Layer, xs_o, xs_a, ys_o, opset: int, relu_bottleneck: bool, nonneg_input: bool, rng):
        self.layer, self.xs_a, self.ys_o, self.opset = layer, xs_a, ys_o, opset
        self.relu_bottleneck, self.nonneg_input = relu_bottleneck, nonneg_input
        self.st = layer_moments(layer, xs_o, xs_a, ys_o, rng)
        rows = sum(as_matrix(layer, x).shape[1] for x in xs_a)
        #: with fewer pixels than TRUST_ROWS x channels the data would be fitted, not measured
        #: (a Gemm sees one row per sample): then the weights alone decide the input side and
        #: the output side is not tried
        self.trusted_in = rows >= TRUST_ROWS * layer.cin
        self.trusted_out = rows >= TRUST_ROWS * layer.cout
        if not self.trusted_in:
            scale = float(np.trace(self.st.c_aa)) / layer.cin
            eye = np.eye(layer.cin) * scale
            self.st = LayerStats(eye, eye, eye, self.st.ey2)
        self.px_in = int(np.prod(as_matrix(layer, xs_a[0]).shape[1:]))
        self.px_out = int(np.prod(as_matrix(layer, ys_o[0]).shape[1:]))
        self.macs = conv_macs(layer.cout, layer.cin, layer.kk, self.px_out)
        self.xo_mats = [as_matrix(layer, x).astype(np.float64) for x in xs_o]
        self.same_input = all(o is a for o, a in zip(xs_o, xs_a))
        wi = layer.unfold_in()
        self.gram = wi.T @ wi
        self.predict_in = InputError(self.gram, self.st)
        self._bases: dict[str, np.ndarray] | None = None
        self._fits: dict[tuple[str, int], Fit | None] = {}
        self._out = None
        self.in_structure = "svd" if layer.kk == 1 else "input"
        self.hi = {self.in_structure: min(break_even_rank(layer, self.in_structure, self.px_in, self.px_out),
                                          layer.cin - 1, layer.cout * layer.kk)}
        if layer.kk > 1 and self.trusted_out:
            self.hi["output"] = min(break_even_rank(layer, "output", self.px_in, self.px_out), layer.cout - 1)

    def ladder(self) -> list[tuple[str, Any]]:
        """(structure, rank) pairs worth measuring: per structure, the smallest ranks below break-even
        whose predicted layer error meets each of LADDER_TARGETS, and a half and a quarter of break-even
        (where the predictions are optimistic); for a KxK layer also Tucker-2 pairs that split each
        target between the sides (errors of the two cuts add in squares), where they cost fewer MACs
        than either side alone at that target."""
        rungs = []
        for structure, hi in self.hi.items():
            pred = self._predict_in if structure == self.in_structure else self._predict_out
            ranks = ({smallest_rank(pred, hi, t) for t in LADDER_TARGETS} | {hi // 2, hi // 4}) - {None, 0}
            rungs += [(structure, r) for r in sorted(ranks)]
        if "output" in self.hi:
            pairs = set()
            for t in LADDER_TARGETS:
                r1 = smallest_rank(self._predict_in, self.hi[self.in_structure], t / math.sqrt(2))
                r2 = smallest_rank(self._predict_out, self.hi["output"], t / math.sqrt(2))
                alone = [self._macs(structure, smallest_rank(pred, self.hi[structure], t))
                         for structure, pred in ((self.in_structure, self._predict_in), ("output", self._predict_out))]
                if r1 and r2 and self._macs("tucker2", (r1, r2)) < min(alone):
                    pairs.add((r1, r2))
            rungs += [("tucker2", pair) for pair in sorted(pairs)]
        return rungs

    def _macs(self, structure: str, rank) -> int:
        """MACs of the layer factored so (the layer's own when ``rank`` is None: no such rank)."""
        return self.macs if rank is None else structure_macs(self.layer, structure, rank, self.px_in, self.px_out)

    def fit(self, structure: str, rank: Any) -> Fit | None:
        """The layer factored as ``structure`` at ``rank`` (cached; Tucker-2: a pair), or None below one channel."""
        if (structure, rank) not in self._fits:
            if structure == "tucker2":
                self._fits[structure, rank] = self._tucker_fit(*rank)
            elif rank < 1:
                self._fits[structure, rank] = None
            elif structure == self.in_structure:
                name, q = min(((n, q) for n, q in self._input_bases().items() if q.shape[1] >= rank),
                              key=lambda item: self.predict_in(item[1][:, :rank]))
                self._fits[structure, rank] = self._input_fit(q[:, :rank], name, structure)
            else:
                self._fits[structure, rank] = self._output_fit(rank)
        return self._fits[structure, rank]

    # ----- running factor layers on the calibration inputs
    def _apply(self, w: np.ndarray, b: np.ndarray | None, xs, attrs: dict) -> list[np.ndarray]:
        w32 = w.astype(np.float32)
        b32 = None if b is None else b.astype(np.float32)
        if self.layer.is_gemm:
            mat = w32[:, :, 0, 0]
            return [x @ mat.T + (0 if b32 is None else b32) for x in xs]
        conv = Node("Conv", ["x", "w", "b" if b32 is not None else ""], ["y"], dict(attrs))
        return [run_node(conv, [x, w32, b32], self.opset)[0] for x in xs]

    def _err(self, outs) -> float:
        return relative_error(self.ys_o, outs)

    # ----- input side (also "svd" for 1x1 convs and Gemms)
    def _input_bases(self) -> dict[str, np.ndarray]:
        if self._bases is None:
            self._bases = input_bases(self.gram, self.st)
            if not self.trusted_in:
                self._bases = {"weights": self._bases["weights"]}
        return self._bases

    def _predict_in(self, r: int) -> float:
        return min(self.predict_in(q[:, :r]) for q in self._input_bases().values() if q.shape[1] >= r)

    def _input_fit(self, q: np.ndarray, basis: str, structure: str) -> Fit:
        layer, r = self.layer, q.shape[1]
        signs = np.where(q.sum(axis=0) < 0, -1.0, 1.0)  # the refit absorbs signs; a non-negative factor may appear
        reduce_w = (q * signs).T[:, :, None, None]
        zs = self._apply(reduce_w, None, self.xs_a, {})
        relu = "none"
        if self.nonneg_input and np.all(reduce_w >= 0):
            relu = "exact: non-negative input and factor"
        elif self.relu_bottleneck:
            if 2 * r <= self.hi[structure]:
                relu = "crelu: [W; -W] then ReLU, next layer [U, -U] (exact, 2r channels)"
            else:
                relu = "relu: measured deviation"
                zs = [np.maximum(z, 0) for z in zs]
        w_in = self._refit_taps(zs, q * signs)
        w_next = w_in.reshape(layer.cout, layer.w.shape[2], layer.w.shape[3], r).transpose(0, 3, 1, 2)
        attrs = conv_attrs(layer.node)
        outs = self._apply(w_next, layer.bias, zs, attrs)
        if relu.startswith("crelu"):
            reduce_w = np.concatenate([reduce_w, -reduce_w])
            w_next = np.concatenate([w_next, -w_next], axis=1)
        rank = reduce_w.shape[0]
        weights = [("reduce", reduce_w, None, {}), ("main", w_next, layer.bias, attrs)]
        macs = self._macs(structure, rank)
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
            zm = as_matrix(layer, z).astype(np.float64)
            c_zz += zm @ zm.T
            c_oz += x_o @ zm.T
            n += zm.shape[1]
        return solve_psd(c_zz / n, layer.unfold_in() @ (c_oz / n))

    # ----- output side: KxK (Cin->r) + 1x1 (r->Cout), channel decomposition
    def _output_moments(self):
        """The output moments of the layer itself on its actual inputs (cached)."""
        if self._out is None:
            layer = self.layer
            ys_a = self.ys_o if self.same_input else self._apply(layer.w, layer.bias, self.xs_a, conv_attrs(layer.node))
            self._out = self._moments(ys_a)
        return self._out

    def _moments(self, ys_a):
        """Per-sample output matrices of ``ys_a`` (a KxK conv's outputs), their moments against the original
        responses and their PCA basis."""
        layer = self.layer
        ya = [as_matrix(layer, y).astype(np.float64) for y in ys_a]
        yo = [as_matrix(layer, y).astype(np.float64) for y in self.ys_o]
        n = sum(m.shape[1] for m in ya)
        m_a = sum(m.sum(axis=1) for m in ya) / n
        m_o = sum(m.sum(axis=1) for m in yo) / n
        c_aa = sum(m @ m.T for m in ya) / n
        c_oa = sum(o @ a.T for o, a in zip(yo, ya)) / n
        ey2 = sum(float(np.sum(o * o)) for o in yo) / n
        _, vecs = np.linalg.eigh(c_aa - np.outer(m_a, m_a))
        return ya, m_a, m_o, c_aa, c_oa, ey2, vecs[:, ::-1]

    def _solve_out(self, r: int, moments=None):
        """Top-r centred PCA projection P, the least-squares 1x1 expand [W | b], and the predicted error
        (of the layer's own outputs, or of those ``moments`` describe)."""
        _, m_a, m_o, c_aa, c_oa, ey2, p_all = moments or self._output_moments()
        p = p_all[:, :r]
        gram = np.block([[p.T @ c_aa @ p, (p.T @ m_a)[:, None]], [(m_a @ p)[None, :], np.ones((1, 1))]])
        cross = np.hstack([c_oa @ p, m_o[:, None]])
        coef = solve_psd(gram, cross)  # Cout x (r + 1)
        residual = ey2 - float(np.sum(coef * cross))
        return p, coef, math.sqrt(max(residual, 0.0) / ey2) if ey2 > 0 else 0.0

    def _predict_out(self, r: int) -> float:
        return self._solve_out(r)[2]

    def _output_fit(self, r: int) -> Fit:
        layer = self.layer
        p, coef, pred = self._solve_out(r)
        expand_w, expand_b = coef[:, :r], coef[:, r]
        outs = [self._expand(expand_w, expand_b, p.T @ a, y) for a, y in zip(self._output_moments()[0], self.ys_o)]
        core_w = np.einsum("or,oihw->rihw", p, layer.w)
        weights = [("core", core_w, p.T @ layer.bias, conv_attrs(layer.node)),
                   ("expand", expand_w[:, :, None, None], expand_b, {})]
        return Fit("output", r, self._macs("output", r), self._err(outs), pred, weights, outs, "pca", "none")

    # ----- Tucker-2: 1x1 (Cin->r1) + KxK core (r1->r2) + 1x1 (r2->Cout)
    def _tucker_fit(self, r1: int, r2: int) -> Fit | None:
        """The input-side fit at ``r1``, then its KxK conv cut on the output side at ``r2``: PCA of what
        that conv gives on the reduced features, the expand fitted to the original responses."""
        inner = self.fit(self.in_structure, r1)
        if inner is None or inner.relu != "none":  # a ReLU or CReLU bottleneck keeps its two-layer form
            return None
        reduce, (_, main_w, main_b, attrs) = inner.weights
        moments = self._moments(inner.outputs)
        p, coef, pred = self._solve_out(r2, moments)
        expand_w, expand_b = coef[:, :r2], coef[:, r2]
        outs = [self._expand(expand_w, expand_b, p.T @ a, y) for a, y in zip(moments[0], self.ys_o)]
        core_w = np.einsum("or,oihw->rihw", p, main_w)
        weights = [reduce, ("core", core_w, p.T @ main_b, attrs), ("expand", expand_w[:, :, None, None], expand_b, {})]
        rank = (reduce[1].shape[0], r2)
        return Fit("tucker2", rank, self._macs("tucker2", rank), self._err(outs), math.hypot(inner.predicted, pred),
                   weights, outs, inner.basis, "none")

    def _expand(self, w, b, h, like):
        y = (w @ h + b[:, None]).astype(np.float32)
        if self.layer.is_gemm:
            return y.T
        return np.moveaxis(y.reshape((like.shape[1], like.shape[0]) + like.shape[2:]), 0, 1)
