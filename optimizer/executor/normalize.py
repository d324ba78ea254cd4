"""Normalizations without learned parameters: LpNormalization and MeanVarianceNormalization."""

from __future__ import annotations

import numpy as np

from optimizer.executor.registry import kernel


def _lp_check(node, opset):
    p = node.attrs.get("p", 2)
    return None if p in (1, 2) else f"p = {p} is not supported (only 1 and 2 are defined)"


@kernel("LpNormalization", check=_lp_check)
def _lp_normalization(ctx, x):
    """x / ||x||_p along ``axis`` (p is 1 or 2); a zero norm gives zeros, not NaN."""
    axis, p = int(ctx.attr("axis", -1)), int(ctx.attr("p", 2))
    if p == 1:
        norm = np.sum(np.abs(x), axis=axis, keepdims=True)
    else:
        norm = np.sqrt(np.sum(x * x, axis=axis, keepdims=True))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(norm == 0, x.dtype.type(0), x / norm).astype(x.dtype, copy=False)


@kernel("MeanVarianceNormalization", since=9)
def _mean_variance_normalization(ctx, x):
    """(x - mean) / (std + 1e-9) over ``axes`` (default N, H, W), as the op's function body defines it.

    The variance is the mean square of the centred values, not the body's E[x^2] - E[x]^2, which
    cancels catastrophically in float32. onnxruntime leaves out the 1e-9 and returns NaN on a
    constant slice; the spec gives 0 there.
    """
    axes = tuple(int(a) % x.ndim for a in ctx.attr("axes", (0, 2, 3)))
    mean = np.mean(x, axis=axes, keepdims=True, dtype=x.dtype)
    centered = x - mean
    std = np.sqrt(np.mean(centered * centered, axis=axes, keepdims=True, dtype=x.dtype))
    return centered / (std + x.dtype.type(1e-9))
