"""Sampling feature maps at fractional coordinates: GridSample and AffineGrid (spatial transformers,
OCR rectifiers), DeformConv and RoiAlign (detectors).

They follow onnxruntime's arithmetic: the same coordinate transforms, the same taps, padding
applied per tap, and (RoiAlign) the same float32 summation order.
"""

from __future__ import annotations

import itertools

import numpy as np

from optimizer.executor.registry import kernel

# ---------------------------------------------------------------------- GridSample
_GRID_MODES = {"bilinear": "linear", "bicubic": "cubic", "linear": "linear", "cubic": "cubic", "nearest": "nearest"}


def _grid_sample_check(node, opset):
    mode = node.attrs.get("mode", "bilinear" if opset < 20 else "linear")
    padding = node.attrs.get("padding_mode", "zeros")
    names = ("bilinear", "bicubic", "nearest") if opset < 20 else ("linear", "cubic", "nearest")
    if mode not in names:
        return f"mode {mode!r} is not defined at opset {opset}"
    if padding not in ("zeros", "border", "reflection"):
        return f"padding_mode {padding!r} is not supported"
    return None


def _reflect(x: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Fold coordinates outside [lo, hi] back in, bouncing between the borders."""
    span = hi - lo
    if span <= 0:
        return np.full_like(x, lo)
    below, above = x < lo, x > hi
    distance = np.where(below, lo - x, np.where(above, x - hi, 0))
    bounces = np.floor(distance / span)
    rest = distance - bounces * span
    even = bounces % 2 == 0
    folded = np.where(below, np.where(even, lo + rest, hi - rest), np.where(even, hi - rest, lo + rest))
    return np.where(below | above, folded, x)


def _linear_taps(p: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(index, weight) of the two pixels around each fractional position ``p`` along one axis."""
    base = np.floor(p)
    t = p - base
    base = base.astype(np.int64)
    return [(base, 1 - t), (base + 1, t)]


def _zeros_outside(index: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """The index clamped into an axis of ``size``, and whether it was inside (outside reads count as 0)."""
    return np.clip(index, 0, size - 1), (index >= 0) & (index < size)


def _accumulate_taps(out, source, leading, taps_per_axis, read):
    """out += source[*leading, *indices] times the product of the tap weights, over every combination of
    one tap per axis; ``read(axis, index)`` gives the index read and whether it counts (None: always)."""
    for combo in itertools.product(*taps_per_axis):
        index, weight = list(leading), 1
        for axis, (position, axis_weight) in enumerate(combo):
            at, inside = read(axis, position)
            index.append(at)
            weight = weight * (axis_weight if inside is None else np.where(inside, axis_weight, 0))
        out += source[tuple(index)] * weight[..., None]
    return out


def _cubic_weights(t: np.ndarray) -> list[np.ndarray]:
    """Keys' cubic convolution weights (A = -0.75) of the taps at -1, 0, 1, 2 for fraction ``t``."""
    a = t.dtype.type(-0.75)

    def near(d):  # |d| <= 1
        return ((a + 2) * d - (a + 3)) * d * d + 1

    def far(d):  # 1 < |d| < 2
        return ((a * d - 5 * a) * d + 8 * a) * d - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


@kernel("GridSample", since=16, check=_grid_sample_check)
def _grid_sample(ctx, x, grid):
    """Y[n, c, *p] = X[n, c] sampled at grid[n, *p]; grid's last axis lists coordinates fastest axis first."""
    mode = _GRID_MODES[ctx.attr("mode", "bilinear" if ctx.opset < 20 else "linear")]
    padding = ctx.attr("padding_mode", "zeros")
    align = bool(ctx.attr("align_corners", 0))
    dims = x.shape[2:]
    n_batch, channels = x.shape[:2]
    out_points = grid.shape[1:-1]
    ctx.guard((n_batch, channels) + out_points, x.dtype)
    coords = np.moveaxis(grid[..., ::-1].astype(x.dtype, copy=False), -1, 0)  # (rank, N, *points)

    borders = [(0.0, d - 1.0) if align else (-0.5, d - 0.5) for d in dims]
    positions = []
    for g, d, (lo, hi) in zip(coords, dims, borders):
        p = (g + 1) / 2 * (d - 1) if align else ((g + 1) * d - 1) / 2
        if mode == "nearest":
            p = np.rint(p)  # half to even, before the borders apply
        if padding == "border" and mode != "cubic":  # cubic clamps each tap, not the point (as torch does)
            p = np.where((p < lo) | (p > hi), np.clip(p, 0, d - 1), p)
        elif padding == "reflection":
            p = _reflect(p, lo, hi)
        positions.append(p.astype(x.dtype, copy=False))

    def tap(axis, index):
        """The index actually read for integer position ``index`` on ``axis``, and whether it is inside."""
        d = dims[axis]
        if padding == "border":
            return np.clip(index, 0, d - 1), None
        if padding == "reflection":
            return np.trunc(_reflect(index.astype(np.float64), *borders[axis])).astype(np.int64), None
        return _zeros_outside(index, d)

    if mode == "nearest":
        taps_per_axis = [[(np.trunc(p).astype(np.int64), np.ones_like(p))] for p in positions]
    else:
        taps_per_axis = []
        for p in positions:
            if mode == "linear":
                taps_per_axis.append(_linear_taps(p))
            else:
                base = np.floor(p)
                weights = _cubic_weights(p - base)
                taps_per_axis.append([(base.astype(np.int64) + k - 1, w) for k, w in enumerate(weights)])

    batch = np.arange(n_batch).reshape((n_batch,) + (1,) * len(out_points))
    out = np.zeros((n_batch,) + out_points + (channels,), dtype=x.dtype)  # x[batch, :, *indices] puts C last
    return np.moveaxis(_accumulate_taps(out, x, [batch, slice(None)], taps_per_axis, tap), -1, 1)


@kernel("AffineGrid", since=20)
def _affine_grid(ctx, theta, size):
    """GridSample's grid for affine matrices ``theta`` (N, 2, 3) or (N, 3, 4) over an output of ``size``."""
    dims = [int(d) for d in size.reshape(-1)[2:]]
    t = theta.dtype.type
    if ctx.attr("align_corners", 0):
        # a single position sits at 0, as in torch (onnxruntime puts it at 1, Eigen's LinSpaced(1, -1, 1))
        axes = [np.linspace(-1, 1, d, dtype=theta.dtype) if d > 1 else np.zeros(d, theta.dtype) for d in dims]
    else:
        axes = [((np.arange(d, dtype=theta.dtype) * 2 + 1) / t(d) - 1) for d in dims]
    ctx.guard([theta.shape[0]] + dims + [len(dims)], theta.dtype)
    # homogeneous positions (x, y[, z], 1) with x along the last axis, as GridSample reads them
    points = np.stack(list(np.meshgrid(*axes, indexing="ij"))[::-1] + [np.ones(dims, theta.dtype)], axis=-1)
    return np.einsum("...k,njk->n...j", points, theta).astype(theta.dtype, copy=False)


# ---------------------------------------------------------------------- DeformConv
@kernel("DeformConv", since=19)
def _deform_conv(ctx, x, w, offset, bias=None, mask=None):
    """A convolution whose taps read the input at learned fractional offsets (bilinear, zeros outside the
    map), each scaled by ``mask``; offsets and masks are shared by the channels of an offset group."""
    rank = x.ndim - 2
    n_batch, channels = x.shape[:2]
    kernel_shape = tuple(int(k) for k in (ctx.attr("kernel_shape") or w.shape[2:]))
    strides = ctx.attr("strides") or [1] * rank
    dilations = ctx.attr("dilations") or [1] * rank
    pads = ctx.attr("pads") or [0] * (2 * rank)
    group, offset_group = int(ctx.attr("group", 1)), int(ctx.attr("offset_group", 1))
    out_shape = offset.shape[2:]
    taps = int(np.prod(kernel_shape))
    ctx.guard((n_batch, channels, taps) + out_shape, x.dtype, "sampled input")
    offset = offset.reshape((n_batch, offset_group, taps, rank) + out_shape)

    kernel_index = np.indices(kernel_shape).reshape(rank, taps)
    taps_per_axis = []
    for axis in range(rank):
        along = [1] * rank
        along[axis] = out_shape[axis]
        start = (np.arange(out_shape[axis]) * strides[axis] - pads[axis]).reshape(along)
        reach = (kernel_index[axis] * dilations[axis]).reshape((taps,) + (1,) * rank)
        taps_per_axis.append(_linear_taps(offset[:, :, :, axis] + (start + reach).astype(x.dtype)))

    # grouped[n, g, *pixel, c]: channel c of offset group g; one read gives (N, G, taps, *out, C / G)
    grouped = np.moveaxis(x.reshape((n_batch, offset_group, channels // offset_group) + x.shape[2:]), 2, -1)
    batch = np.arange(n_batch).reshape((n_batch,) + (1,) * (rank + 2))
    groups = np.arange(offset_group).reshape((1, offset_group) + (1,) * (rank + 1))
    sampled = np.zeros((n_batch, offset_group, taps) + out_shape + (channels // offset_group,), dtype=x.dtype)
    _accumulate_taps(sampled, grouped, [batch, groups], taps_per_axis,
                     lambda axis, index: _zeros_outside(index, x.shape[2 + axis]))
    if mask is not None:
        sampled *= mask.reshape((n_batch, offset_group, taps) + out_shape)[..., None]

    # columns[n, c, tap, position], then a grouped matrix product with the weights
    columns = np.moveaxis(sampled, -1, 2).reshape(n_batch, group, channels // group, taps, -1)
    kernels = w.reshape(group, w.shape[0] // group, w.shape[1], taps)
    y = np.einsum("ngckp,gock->ngop", columns, kernels, optimize=True).reshape((n_batch, w.shape[0]) + out_shape)
    return y if bias is None else y + bias.reshape((1, -1) + (1,) * rank)


# ---------------------------------------------------------------------- RoiAlign
def _roi_axis_samples(start, size, pooled: int, grid: int, extent: int):
    """Per output bin and sample along one axis: the two pixel indices read and their weights.

    Computed in the input's float type in onnxruntime's order. Samples more than one pixel
    outside the map weigh nothing; the rest clamp to the map.
    """
    t = type(start)
    bin_size = size / t(pooled)
    where = start + np.arange(pooled, dtype=t)[:, None] * bin_size \
        + (np.arange(grid, dtype=t)[None, :] + t(0.5)) * bin_size / t(grid)
    outside = (where < -1.0) | (where > extent)
    where = np.maximum(where, t(0))
    low = where.astype(np.int64)
    at_edge = low >= extent - 1
    low = np.where(at_edge, extent - 1, low)
    high = np.where(at_edge, extent - 1, low + 1)
    frac = np.where(at_edge, t(0), where - low.astype(t))
    weights = np.stack([1 - frac, frac], axis=-1) * ~outside[..., None]
    return np.stack([low, high], axis=-1), weights.astype(t, copy=False)  # both (pooled, grid, 2)


@kernel("RoiAlign", since=10)
def _roi_align(ctx, x, rois, batch_indices):
    """Average (or weighted max) of bilinear samples on a regular grid inside each output bin.

    Before opset 16 boxes map to pixels without the half-pixel shift, and at least one pixel wide.
    """
    t = x.dtype.type
    default_mode = "output_half_pixel" if ctx.opset < 16 else "half_pixel"
    half_pixel = ctx.attr("coordinate_transformation_mode", default_mode) == "half_pixel"
    pooled_h, pooled_w = int(ctx.attr("output_height", 1)), int(ctx.attr("output_width", 1))
    ratio, scale = int(ctx.attr("sampling_ratio", 0)), t(ctx.attr("spatial_scale", 1.0))
    use_max = ctx.attr("mode", "avg") == "max"
    height, width = x.shape[2:]
    channels = x.shape[1]
    ctx.guard((rois.shape[0], channels, pooled_h, pooled_w), x.dtype)
    out = np.zeros((rois.shape[0], channels, pooled_h, pooled_w), dtype=x.dtype)
    for r, (box, image) in enumerate(zip(rois.astype(x.dtype, copy=False), batch_indices)):
        x0, y0, x1, y1 = box * scale - t(0.5 if half_pixel else 0)
        roi_w, roi_h = x1 - x0, y1 - y0
        if not half_pixel:
            roi_w, roi_h = max(roi_w, t(1)), max(roi_h, t(1))
        grid_h = ratio if ratio > 0 else int(np.ceil(roi_h / pooled_h))
        grid_w = ratio if ratio > 0 else int(np.ceil(roi_w / pooled_w))
        if grid_h <= 0 or grid_w <= 0:  # an empty box: no samples, zeros
            continue
        rows, row_w = _roi_axis_samples(y0, roi_h, pooled_h, grid_h, height)
        cols, col_w = _roi_axis_samples(x0, roi_w, pooled_w, grid_w, width)
        # taps[c, ph, iy, a, pw, ix, b]: pixel (rows[ph, iy, a], cols[pw, ix, b]) times its bilinear weight
        taps = x[int(image)][:, rows[:, :, :, None, None, None], cols[None, None, None]]
        taps = (row_w[:, :, :, None, None, None] * col_w[None, None, None]) * taps
        if use_max:
            out[r] = taps.max(axis=(3, 6)).max(axis=(2, 4))
            continue
        samples = taps[:, :, :, 0, :, :, 0] + taps[:, :, :, 0, :, :, 1] + taps[:, :, :, 1, :, :, 0] \
            + taps[:, :, :, 1, :, :, 1]  # (c, ph, iy, pw, ix), the four taps summed in onnxruntime's order
        samples = samples.transpose(0, 1, 3, 2, 4).reshape(channels, pooled_h, pooled_w, -1)
        out[r] = np.add.accumulate(samples, axis=-1)[..., -1] / t(grid_h * grid_w)  # sequential, as onnxruntime
    return out
