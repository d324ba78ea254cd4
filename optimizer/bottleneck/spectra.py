"""The linear algebra shared by detection and fitting: channel moments, input-side bases, predicted errors.

Everything is Cin x Cin (or Cout x Cout): second moments over pixels, the bases an input
projection is chosen from, a PSD least-squares solve, and the relative RMS error a
projection is predicted to cost, searched over ranks by bisection.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from optimizer.bottleneck.layers import Layer, as_matrix

#: Largest number of pixels (rows) a layer's statistics keep per sample; more only costs time.
MAX_PIXELS_PER_SAMPLE = 1 << 14
_RCOND = 1e-10


@dataclass
class LayerStats:
    """Second moments over pixels of a layer's input (approximated and original) and output."""

    c_aa: np.ndarray  # E[x_a x_a^T]
    c_oa: np.ndarray  # E[x_o x_a^T]
    c_oo: np.ndarray  # E[x_o x_o^T]
    ey2: float  # E||y_o||^2 per pixel (sum over channels)


def layer_moments(layer: Layer, xs_o, xs_a, ys_o, rng) -> LayerStats:
    cin = layer.cin
    c_aa, c_oa, c_oo = (np.zeros((cin, cin)) for _ in range(3))
    n = 0
    for x_o, x_a in zip(xs_o, xs_a):
        a, o = as_matrix(layer, x_a).astype(np.float64), as_matrix(layer, x_o).astype(np.float64)
        if a.shape[1] > MAX_PIXELS_PER_SAMPLE:
            keep = rng.choice(a.shape[1], MAX_PIXELS_PER_SAMPLE, replace=False)
            a, o = a[:, keep], o[:, keep]
        c_aa += a @ a.T
        c_oa += o @ a.T
        c_oo += o @ o.T if x_o is not x_a else 0
        n += a.shape[1]
    if all(x_o is x_a for x_o, x_a in zip(xs_o, xs_a)):
        c_oo = c_oa = c_aa
    ey2 = sum(float(np.sum(np.square(y, dtype=np.float64))) for y in ys_o) / sum(as_matrix(layer, y).shape[1]
                                                                             for y in ys_o)
    return LayerStats(c_aa / n, c_oa / n, c_oo / n, ey2)


def _sqrt_psd(c: np.ndarray) -> np.ndarray:
    vals, vecs = np.linalg.eigh(c)
    return (vecs * np.sqrt(np.clip(vals, 0, None))) @ vecs.T


def input_bases(gram: np.ndarray, st: LayerStats) -> dict[str, np.ndarray]:
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


def solve_psd(gram: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """rhs @ pinv(gram) for a PSD gram: directions the data never excites (dead channels, fewer
    samples than features) get no weight, so the fit and its predicted error stay monotone in rank."""
    vals, vecs = np.linalg.eigh(gram)
    keep = vals > _RCOND * max(float(vals[-1]), 1e-300)
    return ((rhs @ vecs[:, keep]) / vals[keep]) @ vecs[:, keep].T


class InputError:
    """Predicted relative RMS error of the layer output for an input projection q, with the refit."""

    def __init__(self, gram: np.ndarray, st: LayerStats):
        self.st = st
        self.m = st.c_oa.T @ gram @ st.c_oa
        self.total = float(np.sum(gram * st.c_oo))

    def __call__(self, q: np.ndarray) -> float:
        a = q.T @ self.m @ q
        explained = float(np.trace(solve_psd(q.T @ self.st.c_aa @ q, a)))
        return math.sqrt(max(self.total - explained, 0.0) / self.st.ey2) if self.st.ey2 > 0 else 0.0


def smallest_rank(pred, hi: int, tol: float) -> int | None:
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

