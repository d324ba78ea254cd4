"""Conv, ConvTranspose and com.microsoft FusedConv as BLAS work.

* 1x1, stride 1, no padding: one matmul on the input as it lies.
* depthwise (one input channel per group): on a wide 2-D map, columns of one kernel row's taps
  copied in bands of channels and a matrix-vector product per output row; on a small 2-D map
  with many channels, one einsum over the channel-last input; otherwise im2col in bands of
  channels (at stride 1 over the flattened padded image, so each tap is a contiguous shift)
  and a product per channel.
* everything else: im2col in bands of output rows, one batched matmul per band. The band
  height is chosen per shape so the column buffer stays near ``IM2COL_BYTES`` (cache-sized
  buffers beat one huge buffer, and peak memory stays close to the output's own size).
"""

from __future__ import annotations

import itertools
import math
from typing import Callable

import numpy as np
from numpy.lib.stride_tricks import as_strided

from optimizer.executor.elementwise import ACTIVATIONS
from optimizer.executor.registry import kernel
from optimizer.executor.window import Padding, Window, window

IM2COL_BYTES = 8 << 20
#: a Conv keeps its own padded-input and column buffers up to this size (above it the arithmetic
#: dwarfs making them afresh, and kept buffers would add up to the model's activations again)
SMALL_SCRATCH_BYTES = 256 << 10
#: depthwise columns feed a matrix-vector product that reads each column once, so smaller
#: bands that stay in cache win (measured: 8 MiB bands ran up to 4x slower than 2 MiB ones;
#: 1 MiB, the L2 of the EPYC measured on, ran the same as 2 MiB; 512 KiB and 4 MiB slower)
DEPTHWISE_COLUMN_BYTES = 2 << 20
#: a 2-D depthwise conv goes row by row once the columns one output row saves (the taps below
#: the first kernel row) outweigh the BLAS call it adds: measured break-even between 336 and 560
DEPTHWISE_ROW_CALL_COLUMNS = 480
#: any other 2-D depthwise conv runs channel-last when it has at least this many output channels
#: per output pixel (measured 1.3-1.8x faster on PP-OCR's 7x7 and strided maps, within 7% on 3x3)
DEPTHWISE_CHANNEL_LAST_CHANNELS_PER_PIXEL = 1


def _check_float(ctx, *arrays: np.ndarray) -> None:
    """Conv and ConvTranspose are defined on floating-point tensors only (an int model is malformed)."""
    for array in arrays:
        if array is not None and array.dtype.kind != "f":
            raise TypeError(f"{ctx.node.op_type} is defined on floating-point tensors, not {array.dtype}")


def conv(ctx, x: np.ndarray, w: np.ndarray, b: np.ndarray | None = None) -> np.ndarray:
    """ONNX Conv for any number of spatial axes."""
    plan = ctx.by_shape(("Conv", x.shape, x.dtype, w.shape, w.dtype, None if b is None else b.dtype),
                        lambda: _ConvPlan(ctx, x, w, b))
    if plan.out_bytes > ctx.limits.max_tensor_bytes:
        ctx.guard(plan.out_shape, x.dtype)  # raises, naming the node and the size
    w = w.astype(x.dtype, copy=False)
    if plan.route == "im2col":
        y = _im2col_conv(ctx, plan, x, w)
    else:
        xp = plan.padding.apply(x)
        if plan.route == "empty":  # nothing to compute (and an empty band's columns cannot be reshaped)
            y = np.zeros(plan.out_shape, dtype=x.dtype)
        elif plan.route == "depthwise":
            y = _depthwise(ctx, xp, w, plan.win)
        else:  # pointwise
            n, c = x.shape[:2]
            cols = np.ascontiguousarray(xp[plan.pointwise_taps])
            y = np.matmul(w.reshape(plan.group, -1, c // plan.group), cols.reshape(n, plan.group, c // plan.group, -1))
    y = y.reshape(plan.out_shape)
    if b is not None:
        y += b.astype(x.dtype, copy=False).reshape(plan.bias_shape)
    return y


class _ConvPlan:
    """What a Conv node works out from its attributes and input shapes, once per shape: its window,
    padding, route and, on the im2col route, the bands; on small inputs (up to ``SMALL_SCRATCH_BYTES``
    of padded input and columns) also the buffers themselves, with every strided view into them
    made once (silero-vad's convolutions spent most of their time working these out, not
    computing). A buffer in use is off the plan's list, so two runs at once never share one."""

    def __init__(self, ctx, x: np.ndarray, w: np.ndarray, b: np.ndarray | None) -> None:
        _check_float(ctx, x, w, b)
        self.group = group = int(ctx.attr("group", 1))
        self.win = win = window(ctx, x.shape[2:], tuple(ctx.attr("kernel_shape") or w.shape[2:]))
        n, c = x.shape[:2]
        m = w.shape[0]
        if c != w.shape[1] * group or m % group:
            raise ValueError(f"input has {c} channels but the weights expect {w.shape[1]} x {group} groups")
        self.out_shape = (n, m) + win.out
        ctx.guard(self.out_shape, x.dtype)
        self.out_bytes = math.prod(self.out_shape) * x.dtype.itemsize
        self.bias_shape = (m,) + (1,) * len(win.out)
        self.padding = Padding.of(x.shape, win)
        if 0 in self.out_shape:
            self.route = "empty"
        elif group == c and group > 1:
            self.route = "depthwise"
        elif all(k == 1 for k in win.kernel) and all(s == 1 for s in win.strides):
            self.route = "pointwise"
            self.pointwise_taps = (Ellipsis,) + win.tap_slices((0,) * len(win.out))
        else:
            self.route = "im2col"
            self._plan_bands(ctx, x, c, m)

    def _plan_bands(self, ctx, x: np.ndarray, c: int, m: int) -> None:
        win, group = self.win, self.group
        n = x.shape[0]
        self.dtype = x.dtype
        self.padded_shape = self.padding.shape or tuple(s.stop - s.start for s in self.padding.interior)
        self.taps = taps = math.prod(win.kernel)
        row_bytes = n * c * taps * math.prod(win.out[1:]) * x.dtype.itemsize
        self.band = band = max(1, min(win.out[0], IM2COL_BYTES // max(row_bytes, 1)))
        self.buffer_shape = (n, c, taps, band) + win.out[1:]
        ctx.guard(self.buffer_shape, x.dtype, "column buffer")
        self.weight_shape = (group, m // group, c // group * taps)
        self.operand_shape = (n, group, c // group * taps, -1)  # a band's columns, as the product takes them
        self.product_shape = (n, group, m // group, -1)
        scratch_bytes = (math.prod(self.padded_shape) + math.prod(self.buffer_shape)) * x.dtype.itemsize
        self.small = band == win.out[0] and scratch_bytes <= SMALL_SCRATCH_BYTES
        self._scratch: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def columns(self, xp: np.ndarray) -> np.ndarray:
        """Every tap of every output pixel of the padded input ``xp``, as one strided view."""
        n, c = xp.shape[:2]
        win, cg = self.win, c // self.group
        axis_strides = xp.strides[2:]
        return as_strided(xp, shape=(n, self.group, cg) + win.kernel + win.out,
                          strides=(xp.strides[0], cg * xp.strides[1], xp.strides[1])
                          + tuple(d * a for d, a in zip(win.dilations, axis_strides))
                          + tuple(s * a for s, a in zip(win.strides, axis_strides)), writeable=False)

    def take_scratch(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(padded input buffer, its columns view, the column buffer), from the list or made anew
        (the padded buffer's border is zero once and for all: runs only write its interior)."""
        try:
            return self._scratch.pop()
        except IndexError:
            padded = np.zeros(self.padded_shape, dtype=self.dtype)
            columns = self.columns(padded)
            return padded, columns, np.empty(columns.shape, dtype=self.dtype)

    def give_back(self, scratch: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        self._scratch.append(scratch)


def _column_buffer(ctx, band_shape: tuple[int, ...], dtype) -> np.ndarray:
    """One flat buffer for the columns of every band: allocating per band costs a fresh round of
    page faults each time (large blocks come straight from the OS), which measured slower than
    the copy into them."""
    ctx.guard(band_shape, dtype, "column buffer")
    return np.empty(math.prod(band_shape), dtype=dtype)


def _depthwise(ctx, xp: np.ndarray, w: np.ndarray, win: Window) -> np.ndarray:
    """Depthwise conv, whichever of three ways measured fastest for its shape.

    Copying every tap of every pixel costs more than the products on a wide map, so a 2-D map
    wide enough to pay for a BLAS call per output row copies only one kernel row's taps
    (``_depthwise_by_rows``, a third to a fifth of the copy); a small 2-D map with many channels
    copies nothing (``_depthwise_channel_last``); any other copies them all.
    """
    if len(win.out) == 2:
        kernel_rows, kernel_cols = win.kernel
        if win.dilations[0] == 1 and (kernel_rows - 1) * kernel_cols * win.out[1] >= DEPTHWISE_ROW_CALL_COLUMNS:
            return _depthwise_by_rows(ctx, xp, w, win)
        if w.shape[0] >= DEPTHWISE_CHANNEL_LAST_CHANNELS_PER_PIXEL * math.prod(win.out):
            return _depthwise_channel_last(ctx, xp, w, win)
    return _depthwise_by_taps(ctx, xp, w, win)


def _depthwise_by_taps(ctx, xp: np.ndarray, w: np.ndarray, win: Window) -> np.ndarray:
    """Every tap of every output pixel in the columns, one matrix-vector product per channel.

    At stride 1 the columns are taken on the flattened padded image: output pixel ``o`` (in the
    padded image's row-major layout) reads input pixel ``o + offset(tap)``, so each column row
    is one long contiguous run instead of one short output row; outputs are computed on the
    padded grid and the columns past the output width (which mix in neighbouring rows) are
    cropped at the end. At other strides the view spans the output grid itself.
    """
    n, c = xp.shape[:2]
    mult = w.shape[0] // c
    padded = xp.shape[2:]
    flat = np.ascontiguousarray(xp).reshape(n, c, -1)
    item = flat.itemsize
    row_strides = [math.prod(padded[axis + 1:]) * item for axis in range(len(padded))]
    tap_strides = tuple(d * r for d, r in zip(win.dilations, row_strides))
    if all(s == 1 for s in win.strides):
        # one past the last valid output pixel's flat index on the padded grid
        grid = (sum((o - 1) * r for o, r in zip(win.out, row_strides)) // item + 1,)
        grid_strides: tuple[int, ...] = (item,)
        wide = (win.out[0],) + padded[1:]
    else:
        grid, grid_strides, wide = win.out, tuple(s * r for s, r in zip(win.strides, row_strides)), win.out
    columns = as_strided(flat, shape=(n, c) + win.kernel + grid, strides=flat.strides[:2] + tap_strides + grid_strides,
                         writeable=False)
    taps, pixels = math.prod(win.kernel), math.prod(grid)
    y = np.empty((n, c, mult) + wide, dtype=xp.dtype)
    _banded_products(ctx, columns, w.reshape(c, mult, taps), y.reshape(n, c, mult, -1)[..., :pixels],
                     lambda cols: cols.reshape(cols.shape[:2] + (taps, pixels)))
    return np.ascontiguousarray(y[(Ellipsis,) + tuple(slice(0, o) for o in win.out[1:])])


def _depthwise_by_rows(ctx, xp: np.ndarray, w: np.ndarray, win: Window) -> np.ndarray:
    """2-D depthwise conv (kernel rows not dilated) from columns of one kernel row's taps.

    ``cols[r, j, x] = xp[r, x * column stride + j * column dilation]`` (kernel column ``j``), so
    output row ``h`` needs, for all its taps at once, the ``kernel rows * kernel columns`` rows of
    ``cols`` that start at input row ``h * row stride``: consecutive, one output width apart, a
    matrix as BLAS takes it. The copy expands the input by the kernel's width only, not its
    area, and the output needs no crop; the price is a BLAS call per output row, not per channel.
    """
    n, c = xp.shape[:2]
    mult = w.shape[0] // c
    (kernel_rows, kernel_cols), (out_rows, width) = win.kernel, win.out
    x_strides = xp.strides
    columns = as_strided(xp, shape=(n, c, xp.shape[2], kernel_cols, width),
                         strides=x_strides[:3] + (win.dilations[1] * x_strides[3], win.strides[1] * x_strides[3]),
                         writeable=False)
    item = xp.itemsize
    y = np.empty((n, c, mult) + win.out, dtype=xp.dtype)

    def row_matrices(cols: np.ndarray) -> np.ndarray:
        return as_strided(cols, shape=cols.shape[:2] + (out_rows, kernel_rows * kernel_cols, width),
                          strides=cols.strides[:2] + (win.strides[0] * kernel_cols * width * item, width * item, item),
                          writeable=False)

    # each channel's weights (one row per output channel) serve all its output rows
    _banded_products(ctx, columns, w.reshape(c, 1, mult, kernel_rows * kernel_cols), np.moveaxis(y, 2, 3),
                     row_matrices)
    return y


def _depthwise_channel_last(ctx, xp: np.ndarray, w: np.ndarray, win: Window) -> np.ndarray:
    """2-D depthwise conv as one einsum over windows of the channel-last padded input.

    einsum's inner loop runs along the output channels, once per output pixel and tap; the
    column ways make one BLAS call per channel (or output row) along the pixels, after copying
    runs an output row long or, when strided, gathering them. With more channels than output
    pixels einsum's loops are the longer ones (measured on 2-D maps only: 1-D columns are one
    contiguous run per tap, and einsum lost there).
    """
    n, c = xp.shape[:2]
    outputs = w.shape[0]
    # output channel o reads input channel o // multiplier: each input channel, repeated that often
    repeated = np.broadcast_to(np.moveaxis(xp, 1, -1)[..., None], (n,) + xp.shape[2:] + (c, outputs // c))
    channel_last = np.ascontiguousarray(repeated.reshape((n,) + xp.shape[2:] + (outputs,)))
    batch_stride, *axis_strides, channel_stride = channel_last.strides
    windows = as_strided(channel_last, shape=(n,) + win.out + win.kernel + (outputs,),
                         strides=(batch_stride,) + tuple(s * a for s, a in zip(win.strides, axis_strides))
                         + tuple(d * a for d, a in zip(win.dilations, axis_strides)) + (channel_stride,),
                         writeable=False)
    weights = ctx.derived("depthwise_channel_last_weights", w, lambda weight: np.ascontiguousarray(
        np.moveaxis(weight.reshape((outputs,) + win.kernel), 0, -1)))
    # batch n, output row a and column b, kernel row i and column j, output channel c
    y = np.einsum("nabijc,ijc->nabc", windows, weights)
    return np.ascontiguousarray(np.moveaxis(y, -1, 1))


def _banded_products(ctx, columns: np.ndarray, weights: np.ndarray, target: np.ndarray,
                     matrices: Callable[[np.ndarray], np.ndarray]) -> None:
    """``target = weights @ matrices(columns)`` with channels (axis 1) in bands: each band of the
    strided ``columns`` view is copied into one reused buffer of about ``DEPTHWISE_COLUMN_BYTES``
    and multiplied while it is still in cache. ``matrices`` views that buffer as the product's
    operand once; a narrower last band uses its leading channels."""
    n, c = columns.shape[:2]
    per_channel = columns.shape[2:]
    band = max(1, min(c, DEPTHWISE_COLUMN_BYTES // max(n * math.prod(per_channel) * columns.itemsize, 1)))
    buffer = _column_buffer(ctx, (n, band) + per_channel, columns.dtype).reshape((n, band) + per_channel)
    operands = matrices(buffer)
    for c0 in range(0, c, band):
        channels = slice(c0, min(c0 + band, c))
        count = channels.stop - c0
        np.copyto(buffer[:, :count], columns[:, channels])
        np.matmul(weights[channels], operands[:, :count], out=target[:, channels])


def _im2col_conv(ctx, plan: _ConvPlan, x: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Columns from one strided view of the padded input (every tap of every output pixel), copied
    band by band of output rows with one call each, then one batched matmul per band: a Python
    loop over taps would cost more than the copy itself for long 1-D kernels (256 taps) or tiny maps.
    A small input is padded into the plan's own buffer, whose columns view is made once."""
    win, band = plan.win, plan.band
    weights = w.reshape(plan.weight_shape)
    y = np.empty(plan.out_shape, dtype=x.dtype)
    if plan.small:  # one band
        scratch = plan.take_scratch()
        padded, columns, cols = scratch
        plan.padding.apply(x, out=padded)
        np.copyto(cols, columns)
        np.matmul(weights, cols.reshape(plan.operand_shape), out=y.reshape(plan.product_shape))
        plan.give_back(scratch)
        return y
    columns = plan.columns(plan.padding.apply(x))
    buffer = _column_buffer(ctx, plan.buffer_shape, x.dtype)
    n, group, cg = columns.shape[:3]
    rows_axis = 3 + len(win.kernel)
    y_groups = y.reshape((n, group, -1) + win.out)
    for r0 in range(0, win.out[0], band):
        rows = slice(r0, min(r0 + band, win.out[0]))
        shape = (n, group, cg) + win.kernel + (rows.stop - r0,) + win.out[1:]
        cols = buffer[:math.prod(shape)].reshape(shape)
        np.copyto(cols, columns[(slice(None),) * rows_axis + (rows,)])
        if band == win.out[0]:  # one band: the product lands in the output directly
            np.matmul(weights, cols.reshape(plan.operand_shape), out=y.reshape(plan.product_shape))
        else:
            band_out = np.matmul(weights, cols.reshape(plan.operand_shape))
            y_groups[:, :, :, rows] = band_out.reshape((n, group, -1, rows.stop - r0) + win.out[1:])
    return y


@kernel("Conv")
def _conv(ctx, x, w, b=None):
    return conv(ctx, x, w, b)


def _fused_check(node, opset):
    activation = node.attrs.get("activation", "")
    if activation not in ACTIVATIONS:
        return f"activation {activation!r} is not one of {', '.join(sorted(ACTIVATIONS))}"
    return None


@kernel("FusedConv", domain="com.microsoft", check=_fused_check)
def _fused_conv(ctx, x, w, b=None, z=None):
    """Conv (+ optional sum input Z) followed by the activation named in the attributes."""
    y = conv(ctx, x, w, b)
    if z is not None:
        y += z
    return ACTIVATIONS[ctx.attr("activation")](y, list(ctx.attr("activation_params") or ()))


@kernel("ConvTranspose")
def _conv_transpose(ctx, x, w, b=None):
    """One matmul to columns (every kernel tap of every input pixel), then col2im: each tap's
    columns go to the output positions a Conv with this geometry would read for that tap.

    Where the strides cover the dilated kernel on every axis (stride == kernel, as detectors
    upsample) no two taps meet and each tap is copied into place; otherwise the taps are summed
    phase by phase (the output positions that share a remainder modulo the stride).
    """
    _check_float(ctx, x, w, b)
    group = int(ctx.attr("group", 1))
    n, c = x.shape[:2]
    mg = w.shape[1]
    m = mg * group
    spatial = x.shape[2:]
    nd = len(spatial)
    kernel_shape = tuple(ctx.attr("kernel_shape") or w.shape[2:])
    strides = tuple(ctx.attr("strides") or (1,) * nd)
    dilations = tuple(ctx.attr("dilations") or (1,) * nd)
    out_pad = tuple(ctx.attr("output_padding") or (0,) * nd)
    extent = [(k - 1) * d + 1 for k, d in zip(kernel_shape, dilations)]
    full = [s * (i - 1) + e + op for s, i, e, op in zip(strides, spatial, extent, out_pad)]
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    output_shape = ctx.attr("output_shape")
    if output_shape or auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        target = list(output_shape)[-nd:] if output_shape else [i * s for i, s in zip(spatial, strides)]
        total = [f - t for f, t in zip(full, target)]
        if auto_pad == "SAME_UPPER":
            begin = [t // 2 for t in total]
        else:
            begin = [t - t // 2 for t in total]
        out = target
    else:
        pads = list(ctx.attr("pads") or (0,) * (2 * nd)) if auto_pad != "VALID" else [0] * (2 * nd)
        begin = pads[:nd]
        out = [f - pb - pe for f, pb, pe in zip(full, pads[:nd], pads[nd:])]
    ctx.guard((n, m) + tuple(out), x.dtype)
    cg = c // group
    taps = math.prod(kernel_shape)
    weights = ctx.derived("conv_transpose_weights", w, lambda weight: np.ascontiguousarray(
        weight.astype(x.dtype, copy=False).reshape(group, cg, mg * taps).transpose(0, 2, 1)))
    cols = np.matmul(weights, x.reshape(n, group, cg, -1)).reshape((n, group, mg) + kernel_shape + spatial)
    size = [max(f, b_ + o) for f, b_, o in zip(full, begin, out)]
    crop = (slice(None), slice(None)) + tuple(slice(b_, b_ + o) for b_, o in zip(begin, out))
    # the input pixels are the outputs of the Conv this op transposes: its window, read backwards
    win = Window(kernel_shape, strides, dilations, (0,) * nd, (0,) * nd, spatial)
    if all(s >= e for s, e in zip(strides, extent)):
        y = _interleave_taps(ctx, cols, b, win, size)
        return np.ascontiguousarray(y[crop]) if any(begin) or y.shape[2:] != tuple(out) else y
    y = _add_taps_by_phase(ctx, cols, win, size)
    y = np.ascontiguousarray(y.reshape((n, m) + tuple(size))[crop])
    if b is not None:
        y += b.astype(x.dtype, copy=False).reshape((m,) + (1,) * nd)
    return y


def _interleave_taps(ctx, cols: np.ndarray, b: np.ndarray | None, win: Window, size) -> np.ndarray:
    """col2im where no two taps meet (every stride at least the dilated kernel), uncropped.

    Each tap's columns are copied into their strided place, one call per tap: no zeroed buffer
    to add into (only positions no tap reaches, between dilated taps, past the kernel within a
    stride or in output_padding, are zeroed), and a strided copy runs about twice as fast as a
    strided add. (One transposed copy of all taps, its innermost axis the kernel's, ran 3x
    slower.) The bias follows in one contiguous pass. The matmul's sums are never -0.0 (they
    accumulate from +0.0), so ``v + b`` has the same bits as the scatter's ``(0 + v) + b``.
    """
    n, group, mg = cols.shape[:3]
    tiled = tuple(i * s for i, s in zip(win.out, win.strides))
    shape = (n, group, mg) + tuple(max(t, z) for t, z in zip(tiled, size))
    ctx.guard(shape, cols.dtype, "output before cropping")
    gaps = shape[3:] != tiled or any(d != 1 or k != s for k, d, s in zip(win.kernel, win.dilations, win.strides))
    y = np.zeros(shape, dtype=cols.dtype) if gaps else np.empty(shape, dtype=cols.dtype)
    for tap in win.taps():
        np.copyto(y[(slice(None),) * 3 + win.tap_slices(tap)], cols[(slice(None),) * 3 + tap])
    if b is not None:
        y += b.astype(cols.dtype, copy=False).reshape((group, mg) + (1,) * len(win.out))
    return y.reshape((n, group * mg) + shape[3:])


def _add_taps_by_phase(ctx, cols: np.ndarray, win: Window, size) -> np.ndarray:
    """col2im where taps meet, uncropped, without bias.

    Output position ``p`` receives the taps whose offset ``k * dilation`` equals ``p`` modulo the
    stride (its phase). Per phase, those taps are added into a dense buffer, each at a whole
    offset (contiguous adds, not strided ones), then the buffer is copied into its strided
    positions once. Every position still sums ``0 + v`` over its taps in row-major order, as
    adding every tap into the strided output did; at stride 2 this col2im measured 1.2-2x faster.
    """
    n, group, mg = cols.shape[:3]
    ctx.guard((n, group * mg) + tuple(size), cols.dtype, "scatter buffer")
    phases = list(itertools.product(*(range(s) for s in win.strides)))
    y = None if len(phases) == 1 else np.empty((n, group, mg) + tuple(size), dtype=cols.dtype)
    for phase in phases:
        positions = (slice(None),) * 3 + tuple(slice(r, None, s) for r, s in zip(phase, win.strides))
        dense = np.zeros((n, group, mg) + tuple(len(range(r, z, s)) for r, z, s in zip(phase, size, win.strides)),
                         dtype=cols.dtype)
        in_phase = ([k for k in range(kernel) if k * d % s == r]
                    for kernel, d, s, r in zip(win.kernel, win.dilations, win.strides, phase))
        for tap in itertools.product(*in_phase):
            offsets = (k * d // s for k, d, s in zip(tap, win.dilations, win.strides))
            dense[(slice(None),) * 3 + tuple(slice(q, q + i) for q, i in zip(offsets, win.out))] += \
                cols[(slice(None),) * 3 + tap]
        if y is None:  # stride 1: one phase, the output itself
            return dense
        y[positions] = dense
    return y
