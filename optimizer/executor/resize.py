"""Resize (opsets 10-19+) and Upsample (7, 9) as separable per-axis interpolation.

Coordinates are computed in float32 with onnxruntime's formulas so nearest-neighbour
rounding ties fall the same way; each resized axis is one gather (nearest) or a weighted
sum of 2 (linear), 4 (cubic) or, with ``antialias=1``, as many gathers as onnxruntime's
Pillow-style window covers (downscaling stretches it by 1/scale). Linear resizes of the last
two axes of NCHW tensors sum as onnxruntime does, and integer outputs are truncated toward
zero, as its C conversion does (antialiased ones are rounded, axis by axis, as it does).
"""

from __future__ import annotations

import functools
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
    away = _round_half_away(coords)
    if mode == "round_prefer_floor":
        return np.where(coords == np.trunc(coords) + f32(0.5), np.floor(coords), away)
    if mode == "round_prefer_ceil":
        return away
    if mode == "floor":
        return np.floor(coords)
    if mode == "ceil":
        return np.ceil(coords)
    return np.ceil(coords) if downsampling else np.trunc(coords)  # "simple": Resize-10 and Upsample


@functools.lru_cache(maxsize=256)
def _axis_plan(coord_mode, out_len, in_len, scale, roi, mode, nearest_mode, cubic_a, exclude_outside, antialias):
    """(coords, indices, weights) of one axis, read-only. They depend on sizes and attributes alone, so
    they are computed once, not every run: on small maps they cost more than the gather itself
    (about 50 of PP-OCR det's 100 microseconds per x2 nearest Resize)."""
    coords = _source_coords(coord_mode, out_len, in_len, f32(scale), roi)
    plan = (coords,) + _axis_taps(coords, in_len, mode, nearest_mode, scale, cubic_a, exclude_outside, antialias)
    for array in plan:
        if array is not None:
            array.flags.writeable = False
    return plan


def _axis_taps(coords, in_len, mode, nearest_mode, scale, cubic_a, exclude_outside, antialias):
    """(indices, weights) of shape (out, taps) for one axis."""
    if mode == "nearest":
        idx = np.clip(_nearest(coords, nearest_mode, scale < 1), 0, in_len - 1).astype(np.int64)
        return idx[:, None], None
    if antialias:
        return _antialias_taps(coords, in_len, mode, scale, cubic_a, exclude_outside)
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
    distance = np.abs((coords - base).astype(f32)[:, None] + np.array([1, 0, -1, -2], dtype=f32))
    weights = _filter(distance, "cubic", f32(cubic_a))
    idx = base.astype(np.int64)[:, None] + np.arange(-1, 3)
    if exclude_outside:
        weights = np.where((idx >= 0) & (idx < in_len), weights, f32(0))
        weights = weights / weights.sum(axis=1, keepdims=True)
    return np.clip(idx, 0, in_len - 1), weights.astype(f32)


def _antialias_taps(coords, in_len, mode, scale, cubic_a, exclude_outside):
    """antialias=1: onnxruntime's (after Pillow) window and weights per output, float32 step for step.

    Downscaling stretches the filter by 1/scale, so every input sample under it contributes.
    Weights of samples past the edges are added to the edge sample's (unless exclude_outside
    drops them), then all are normalized by their total (before that folding).
    """
    stretch = f32(1) / f32(scale)  # onnxruntime's "scale": > 1 when downscaling
    support = f32(1 if mode == "linear" else 2) * max(stretch, f32(1))
    inverse = f32(1) / stretch if stretch >= 1 else f32(1)
    window = int(math.ceil(support)) * 2 + 1
    center = coords.astype(f32) + f32(0.5)
    lo_real = np.floor(center - support + f32(0.5)).astype(np.int64)
    hi_real = lo_real + np.clip(np.floor(center + support + f32(0.5)).astype(np.int64) - lo_real, 0, window)
    lo_cut, hi_cut = np.clip(lo_real, 0, in_len), np.clip(hi_real, 0, in_len)
    lo, hi = (lo_cut, hi_cut) if exclude_outside else (lo_real, hi_real)
    taps = np.arange(window)
    distance = np.abs(((taps[None, :] + lo[:, None]).astype(f32) - center[:, None] + f32(0.5)) * inverse)
    weights = np.where(taps[None, :] < (hi - lo)[:, None], _filter(distance, mode, f32(cubic_a)), f32(0))
    total = functools.reduce(np.add, weights.T.astype(f32))  # tap by tap, as onnxruntime sums
    if not exclude_outside:
        for row in np.nonzero((lo_cut < hi_cut) & ((lo < 0) | (hi > in_len)))[0]:
            weights[row] = _fold_outside(weights[row], int(lo[row]), int(hi[row] - lo[row]), in_len)
    scale_to_one = np.where(total == 0, f32(1), f32(1) / total).astype(f32)
    weights = np.where(taps[None, :] < (hi_cut - lo_cut)[:, None], weights * scale_to_one[:, None], f32(0))
    return np.minimum(lo_cut[:, None] + taps, in_len - 1), weights.astype(f32)


def _filter(distance: np.ndarray, mode: str, a: np.float32) -> np.ndarray:
    """The triangle or Keys' cubic filter at distance >= 0 (zero from 1 or 2 on), in float32 as
    onnxruntime's antialias filters compute it."""
    if mode == "linear":
        return np.where(distance < 1, f32(1) - distance, f32(0)).astype(f32)
    near = ((a + f32(2)) * distance - (a + f32(3))) * distance * distance + f32(1)
    far = (((distance - f32(5)) * distance + f32(8)) * distance - f32(4)) * a
    return np.where(distance < 1, near, np.where(distance < 2, far, f32(0))).astype(f32)


def _fold_outside(row: np.ndarray, lo: int, count: int, in_len: int) -> np.ndarray:
    """One output's weights with those of samples before 0 (after in_len - 1) added, in order, to the first
    (last) sample's, and shifted to start at sample 0."""
    row = row.copy()
    before = min(max(-lo, 0), count - 1)
    for k in range(before):
        row[before] = f32(row[before] + row[k])
    after = min(max(count + lo - in_len, 0), count - 1)
    for k in range(count - after, count):
        row[count - after - 1] = f32(row[count - after - 1] + row[k])
    shifted = np.zeros_like(row)
    kept = row[before:count - after]
    shifted[:len(kept)] = kept
    return shifted


def resize(ctx, x: np.ndarray, out_shape: list[int], scales: list[np.float32], *, mode: str, coord_mode: str,
           nearest_mode: str, roi: list[float] | None = None) -> np.ndarray:
    ctx.guard(out_shape, x.dtype)
    cubic_a = ctx.attr("cubic_coeff_a", -0.75)
    exclude_outside = bool(ctx.attr("exclude_outside", 0))
    work_dtype = x.dtype if np.issubdtype(x.dtype, np.floating) else f32
    antialias = bool(ctx.attr("antialias", 0))
    # onnxruntime interpolates the last two axes of a rank-2 or NCHW tensor jointly; doing the same
    # sums the same products in the same order, so integer outputs truncate alike
    joint = mode == "linear" and not antialias and (x.ndim == 2 or (x.ndim == 4 and scales[0] == 1 and scales[1] == 1))
    joint_taps = []
    integer_axes = []  # antialiased integer data: filtered after the loop, last axis first
    outside = []  # tf_crop_and_resize: per axis, the outputs sampled outside the input
    y = x
    axes = list(enumerate(zip(x.shape, out_shape, scales)))
    if mode == "nearest":
        # gathers commute, so the last axis goes first, while the tensor is smallest: along it each
        # output is one element copied, along the others one whole row (1.7x faster at x2 in NCHW)
        axes.reverse()
    for axis, (in_len, out_len, scale) in axes:
        in_joint = joint and axis >= x.ndim - 2
        if in_len == out_len and scale == 1 and coord_mode != "tf_crop_and_resize" and not in_joint:
            continue
        axis_roi = (roi[axis], roi[axis + x.ndim]) if roi is not None else (0.0, 1.0)
        coords, idx, weights = _axis_plan(coord_mode, out_len, in_len, scale, axis_roi, mode, nearest_mode, cubic_a,
                                          exclude_outside, antialias)
        shape = [1] * y.ndim
        shape[axis] = out_len
        if coord_mode == "tf_crop_and_resize":
            # onnxruntime's antialias path tests its window centre minus 0.5, rounded in float32
            sampled = (coords + f32(0.5)) - f32(0.5) if antialias else coords
            outside.append(((sampled < 0) | (sampled > in_len - 1)).reshape(shape))
        if in_joint:
            joint_taps.append((idx, weights))
            if len(joint_taps) == 2:
                y = _bilinear(y, joint_taps, work_dtype)
        elif antialias and np.issubdtype(x.dtype, np.integer) and weights is not None:
            integer_axes.append((axis, idx, weights))
        elif weights is None:
            y = np.take(y, idx[:, 0], axis=axis)
        else:
            z = None
            for t in range(idx.shape[1]):
                term = np.take(y, idx[:, t], axis=axis).astype(work_dtype, copy=False) * \
                    weights[:, t].astype(work_dtype).reshape(shape)
                z = term if z is None else np.add(z, term, out=z)
            y = z
    for axis, idx, weights in reversed(integer_axes):
        y = _antialias_integer(y, axis, idx, weights)
    if outside:
        y = np.where(functools.reduce(np.logical_or, outside), np.asarray(ctx.attr("extrapolation_value", 0.0),
                                                                           dtype=y.dtype), y)
    if y.dtype != x.dtype:
        y = _to_integer(y, x.dtype) if np.issubdtype(x.dtype, np.integer) else y.astype(x.dtype)
    return y if y is not x else x.copy()


def _bilinear(x: np.ndarray, taps, work_dtype) -> np.ndarray:
    """The last two axes at once, as onnxruntime's UpsampleBilinear sums them: (dx * dy) * x over the
    taps (y1, x1), (y1, x2), (y2, x1), (y2, x2), in that order."""
    (iy, wy), (ix, wx) = taps
    z = None
    for ty in range(2):
        rows = np.take(x, iy[:, ty], axis=-2)
        for tx in range(2):
            weight = (wx[None, :, tx] * wy[:, None, ty]).astype(work_dtype, copy=False)
            term = np.take(rows, ix[:, tx], axis=-1).astype(work_dtype, copy=False) * weight
            z = term if z is None else np.add(z, term, out=z)
    return z


def _antialias_integer(x: np.ndarray, axis: int, idx: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """One antialiased axis of integer data as onnxruntime filters it, stored in the input's type before the
    next axis: 8-bit data in Pillow's 22-bit fixed point (weights rounded half away from zero, the sum
    rounded half up, clamped to 0..255), wider types summed in float32 and rounded half away from zero."""
    shape = [1] * x.ndim
    shape[axis] = idx.shape[0]
    eight_bit = x.dtype.itemsize == 1
    if eight_bit:
        weights = _round_half_away(weights * f32(1 << 22)).astype(np.int64)
    total = None
    for t in range(idx.shape[1]):
        term = np.take(x, idx[:, t], axis=axis).astype(np.int64 if eight_bit else f32) * weights[:, t].reshape(shape)
        total = term if total is None else total + term
    if eight_bit:
        return np.clip((total + (1 << 21)) >> 22, 0, 255).astype(x.dtype)
    return _to_integer(_round_half_away(total), x.dtype)


def _round_half_away(v: np.ndarray) -> np.ndarray:
    """C's round(): halves away from zero (numpy rounds them to even)."""
    return np.sign(v) * np.floor(np.abs(v) + 0.5)


def _to_integer(y: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Interpolated values back to an integer type as onnxruntime does: truncated toward zero (C's
    float-to-int conversion), saturated to the type's range (cubic weights overshoot)."""
    info = np.iinfo(dtype)
    return np.trunc(np.clip(y.astype(np.float64), info.min, info.max)).astype(dtype)


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
