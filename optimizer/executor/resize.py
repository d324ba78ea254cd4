"""Resize (opsets 10-19+) and Upsample (7, 9) as separable per-axis interpolation.

Coordinates are computed in float32 with onnxruntime's formulas so nearest-neighbour
rounding ties fall the same way; each resized axis is one gather (nearest) or a weighted
sum of 2 (linear) or 4 (cubic) gathers.
"""

from __future__ import annotations

import math

import numpy as np

from optimizer.executor.registry import kernel

f32 = np.float32
COORDINATE_MODES = ("half_pixel", "asymmetric", "pytorch_half_pixel", "tf_half_pixel_for_nn", "align_corners",
                    "tf_crop_and_resize", "half_pixel_symmetric")
NEAREST_MODES = ("round_prefer_floor", "round_prefer_ceil", "floor", "ceil", "simple")


def _source_coords(mode: str, out_len: int, in_len: int, scale: np.float32, roi: tuple[float, float]) -> np.ndarray:
    """Input coordinate of every output index along one axis."""
    i = np.arange(out_len, dtype=f32)
    if mode == "asymmetric":
        return i / scale
    if mode == "half_pixel":
        return (i + f32(0.5)) / scale - f32(0.5)
    if mode == "pytorch_half_pixel":
        return (i + f32(0.5)) / scale - f32(0.5) if out_len > 1 else np.zeros_like(i)
    if mode == "tf_half_pixel_for_nn":
        return (i + f32(0.5)) / scale
    if mode == "align_corners":
        return i * f32(in_len - 1) / f32(out_len - 1) if out_len > 1 else np.zeros_like(i)
    if mode == "half_pixel_symmetric":  # onnxruntime takes the half-pixel part in double precision
        adjustment = f32(out_len) / (scale * f32(in_len))
        offset = f32(in_len) / f32(2) * (f32(1) - adjustment)
        return (np.float64(offset) + (i.astype(np.float64) + 0.5) / np.float64(scale) - 0.5).astype(f32)
    start, end = f32(roi[0]), f32(roi[1])  # tf_crop_and_resize
    if out_len > 1:
        return start * f32(in_len - 1) + i * (end - start) * f32(in_len - 1) / f32(out_len - 1)
    return np.full(out_len, f32(0.5) * (start + end) * f32(in_len - 1), dtype=f32)


def _nearest(coords: np.ndarray, mode: str, downsampling: bool) -> np.ndarray:
    away = np.sign(coords) * np.floor(np.abs(coords) + f32(0.5))  # C's round(): ties away from zero
    if mode == "round_prefer_floor":
        return np.where(coords == np.trunc(coords) + f32(0.5), np.floor(coords), away)
    if mode == "round_prefer_ceil":
        return away
    if mode == "floor":
        return np.floor(coords)
    if mode == "ceil":
        return np.ceil(coords)
    return np.ceil(coords) if downsampling else np.trunc(coords)  # "simple": Resize-10 and Upsample


def _cubic_weights(frac: np.ndarray, a: float) -> np.ndarray:
    a = f32(a)
    s = frac[:, None] + np.array([1, 0, -1, -2], dtype=f32)  # distance to taps floor-1 .. floor+2
    d = np.abs(s)
    near = ((a + 2) * d - (a + 3)) * d * d + 1
    far = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    return np.where(d <= 1, near, far).astype(f32)


def _axis_taps(coords, in_len, mode, nearest_mode, downsampling, cubic_a, exclude_outside):
    """(indices, weights) of shape (out, taps) for one axis."""
    if mode == "nearest":
        idx = np.clip(_nearest(coords, nearest_mode, downsampling), 0, in_len - 1).astype(np.int64)
        return idx[:, None], None
    if mode == "linear":
        c = np.clip(coords, f32(0), f32(in_len - 1))
        lo = np.minimum(c.astype(np.int64), in_len - 1)
        hi = np.minimum(lo + 1, in_len - 1)
        w_hi = np.abs(c - lo.astype(f32))
        w_lo = np.abs(c - hi.astype(f32))
        same = lo == hi
        w_lo, w_hi = np.where(same, f32(0.5), w_lo), np.where(same, f32(0.5), w_hi)
        return np.stack([lo, hi], axis=1), np.stack([w_lo, w_hi], axis=1).astype(f32)
    base = np.floor(coords)
    weights = _cubic_weights((coords - base).astype(f32), cubic_a)
    idx = base.astype(np.int64)[:, None] + np.arange(-1, 3)
    if exclude_outside:
        weights = np.where((idx >= 0) & (idx < in_len), weights, f32(0))
        weights = weights / weights.sum(axis=1, keepdims=True)
    return np.clip(idx, 0, in_len - 1), weights.astype(f32)


def resize(ctx, x: np.ndarray, out_shape: list[int], scales: list[np.float32], *, mode: str, coord_mode: str,
           nearest_mode: str, roi: list[float] | None = None) -> np.ndarray:
    ctx.guard(out_shape, x.dtype)
    cubic_a = ctx.attr("cubic_coeff_a", -0.75)
    exclude_outside = bool(ctx.attr("exclude_outside", 0))
    extrapolation = ctx.attr("extrapolation_value", 0.0)
    work_dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else f32
    y = x
    for axis, (in_len, out_len, scale) in enumerate(zip(x.shape, out_shape, scales)):
        if in_len == out_len and scale == 1 and coord_mode != "tf_crop_and_resize":
            continue
        axis_roi = (roi[axis], roi[axis + x.ndim]) if roi is not None else (0.0, 1.0)
        coords = _source_coords(coord_mode, out_len, in_len, f32(scale), axis_roi)
        idx, weights = _axis_taps(coords, in_len, mode, nearest_mode, scale < 1, cubic_a, exclude_outside)
        shape = [1] * y.ndim
        shape[axis] = out_len
        if weights is None:
            z = np.take(y, idx[:, 0], axis=axis)
        else:
            z = None
            for t in range(idx.shape[1]):
                term = np.take(y, idx[:, t], axis=axis).astype(work_dtype, copy=False) * \
                    weights[:, t].astype(work_dtype).reshape(shape)
                z = term if z is None else np.add(z, term, out=z)
        if coord_mode == "tf_crop_and_resize":
            outside = ((coords < 0) | (coords > in_len - 1)).reshape(shape)
            z = np.where(outside, np.asarray(extrapolation, dtype=z.dtype), z)
        y = z
    if y.dtype != x.dtype:
        y = np.round(y).astype(x.dtype) if not np.issubdtype(x.dtype, np.floating) else y.astype(x.dtype)
    return y if y is not x else x.copy()


def _scaled_shape(x, scales) -> list[int]:
    return [int(f32(s) * f32(d)) for s, d in zip(scales, x.shape)]


def _mode(ctx) -> str:
    mode = ctx.attr("mode", "nearest")
    return "linear" if mode in ("bilinear", "trilinear") else mode


# ---------------------------------------------------------------------- Upsample / Resize-10
def _legacy(ctx, x, scales):
    scales = [f32(s) for s in np.asarray(scales).reshape(-1)]
    return resize(ctx, x, _scaled_shape(x, scales), scales, mode=_mode(ctx), coord_mode="asymmetric",
                  nearest_mode="simple")


def _legacy_check(node, opset):
    mode = node.attrs.get("mode", "nearest")
    return None if mode in ("nearest", "linear", "bilinear") else f"mode {mode!r} is not supported"


kernel("Upsample", since=7, until=8, check=_legacy_check)(lambda ctx, x: _legacy(ctx, x, ctx.attr("scales")))
kernel("Upsample", since=9, until=9, check=_legacy_check)(lambda ctx, x, scales: _legacy(ctx, x, scales))
kernel("Resize", since=10, until=10, check=_legacy_check)(lambda ctx, x, scales: _legacy(ctx, x, scales))


# ---------------------------------------------------------------------- Resize 11+
def _resize_check(node, opset):
    mode = node.attrs.get("mode", "nearest")
    coord = node.attrs.get("coordinate_transformation_mode", "half_pixel")
    nearest = node.attrs.get("nearest_mode", "round_prefer_floor")
    if mode not in ("nearest", "linear", "cubic"):
        return f"mode {mode!r} is not supported"
    if coord not in COORDINATE_MODES:
        return f"coordinate_transformation_mode {coord!r} is not supported"
    if nearest not in NEAREST_MODES[:-1]:
        return f"nearest_mode {nearest!r} is not supported"
    if node.attrs.get("antialias", 0) and mode != "nearest":
        return "antialias=1 is not supported"
    return None


@kernel("Resize", since=11, check=_resize_check)
def _resize(ctx, x, roi=None, scales=None, sizes=None):
    rank = x.ndim
    axes = [int(a) % rank for a in (ctx.attr("axes") or range(rank))]
    full_scales = [f32(1)] * rank
    out_shape = list(x.shape)
    if sizes is not None and sizes.size:
        sizes = [int(s) for s in sizes.reshape(-1)]
        policy = ctx.attr("keep_aspect_ratio_policy", "stretch")
        if policy == "stretch":
            for a, s in zip(axes, sizes):
                out_shape[a] = s
                full_scales[a] = f32(s) / f32(x.shape[a])
        else:
            ratios = [f32(s) / f32(x.shape[a]) for a, s in zip(axes, sizes)]
            scale = min(ratios) if policy == "not_larger" else max(ratios)
            for a in axes:
                out_shape[a] = int(math.floor(float(scale) * x.shape[a] + 0.5))
                full_scales[a] = scale
    else:
        given = [f32(s) for s in scales.reshape(-1)]
        for a, s in zip(axes, given):
            full_scales[a] = s
        out_shape = _scaled_shape(x, full_scales)
    full_roi = None
    if roi is not None and roi.size:
        roi = [float(r) for r in roi.reshape(-1)]
        full_roi = [0.0] * rank + [1.0] * rank
        for i, a in enumerate(axes):
            full_roi[a], full_roi[a + rank] = roi[i], roi[i + len(axes)]
    return resize(ctx, x, out_shape, full_scales, mode=ctx.attr("mode", "nearest"),
                  coord_mode=ctx.attr("coordinate_transformation_mode", "half_pixel"),
                  nearest_mode=ctx.attr("nearest_mode", "round_prefer_floor"), roi=full_roi)
