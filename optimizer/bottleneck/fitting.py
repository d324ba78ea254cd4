"""Fitting one layer: the input, output, Tucker-2 and SVD structures at the smallest rank within budget.

Each fit runs on the inputs the already-approximated network gives the layer and is measured
against the original network's response (asymmetric reconstruction); ranks start at the
prediction and step up until the measured layer error meets the budget or break-even is hit.
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

#: Step of the rank search once the prediction turns out optimistic: r <- r + max(1, r * STEP).
RANK_STEP = 0.25
#: Pixels (rows) per channel the moments need before the data may shape a fit.
TRUST_ROWS = 4


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

    def __init__(self, layer: Layer, xs_o, xs_a, ys_o, opset: int, tol: float, relu_bottleneck: bool,
                 nonneg_input: bool, rng):
        self.layer, self.xs_a, self.ys_o, self.opset = layer, xs_a, ys_o, opset
        self.tol, self.relu_bottleneck, self.nonneg_input = tol, relu_bottleneck, nonneg_input
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
        self._input_fits: dict[tuple[str, int], Fit | None] = {}

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

        r = smallest_rank(pred, hi, tol)
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
        attrs = conv_attrs(layer.node)
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
            zm = as_matrix(layer, z).astype(np.float64)
            c_zz += zm @ zm.T
            c_oz += x_o @ zm.T
            n += zm.shape[1]
        return solve_psd(c_zz / n, layer.unfold_in() @ (c_oz / n))

    # ----- output side
    def output_side(self, tol: float, base: Fit | None = None) -> Fit | None:
        """KxK (Cin->r) + 1x1 (r->Cout); on top of ``base`` (an input-side fit) it makes a Tucker-2."""
        layer = self.layer
        structure = "output" if base is None else "tucker2"
        if base is None:
            ys_a = self.ys_o if self.same_input else self._apply(layer.w, layer.bias, self.xs_a,
                                                                    conv_attrs(layer.node))
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
        ya = [as_matrix(layer, y).astype(np.float64) for y in ys_a]
        yo = [as_matrix(layer, y).astype(np.float64) for y in self.ys_o]
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
            coef = solve_psd(gram, cross)  # Cout x (r + 1)
            residual = ey2 - float(np.sum(coef * cross))
            return p, coef, math.sqrt(max(residual, 0.0) / ey2) if ey2 > 0 else 0.0

        r = smallest_rank(lambda r: solve(r)[2], hi, tol)
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
            weights = [("core", core_w, core_b, conv_attrs(layer.node))]
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
        yo = [as_matrix(self.layer, y).astype(np.float64) for y in self.ys_o]
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

