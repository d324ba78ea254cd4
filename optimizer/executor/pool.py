"""Pooling: a reduction over kernel taps of strided views (no loops over pixels or channels)."""

from __future__ import annotations

import itertools

import numpy as np

from optimizer.executor.registry import kernel
from optimizer.executor.window import Window, pad_for, window


def _windows(ctx, x):
    win = window(ctx, x.shape[2:], tuple(ctx.attr("kernel_shape")), ceil_mode=bool(ctx.attr("ceil_mode", 0)))
    ctx.guard(x.shape[:2] + win.out, x.dtype)
    return win


def _taps(win: Window):
    return itertools.product(*(range(k) for k in win.kernel))


def _max_pool_check(node, opset):
    if len(node.outputs) > 1 and node.outputs[1]:
        return "the Indices output is not supported"
    return None


@kernel("MaxPool", check=_max_pool_check)
def _max_pool(ctx, x):
    win = _windows(ctx, x)
    # the type's lowest finite value (not -inf), as onnxruntime: a window of padding only yields it
    lowest = np.finfo(x.dtype).min if np.issubdtype(x.dtype, np.floating) else np.iinfo(x.dtype).min
    xp = pad_for(x, win, lowest)
    y = None
    for tap in _taps(win):
        view = xp[(Ellipsis,) + win.tap_slices(tap)]
        y = view.copy() if y is None else np.maximum(y, view, out=y)
    return y


@kernel("AveragePool")
def _average_pool(ctx, x):
    win = _windows(ctx, x)
    xp = pad_for(x, win, 0)
    y = None
    for tap in _taps(win):
        view = xp[(Ellipsis,) + win.tap_slices(tap)]
        y = view.copy() if y is None else np.add(y, view, out=y)
    y /= _counts(win, x.shape[2:], bool(ctx.attr("count_include_pad", 0))).astype(x.dtype)
    return y


def _counts(win: Window, spatial, include_pad: bool) -> np.ndarray:
    """Divisor per output position: taps inside the input (or inside input + explicit pads).

    Separable per axis; windows hanging past the explicit end padding (ceil_mode) never
    count the overhang, as onnxruntime and PyTorch do.
    """
    total = np.ones((), dtype=np.float64)
    for k, s, d, b, e, o, size in zip(win.kernel, win.strides, win.dilations, win.pad_begin, win.pad_end,
                                      win.out, spatial):
        pos = np.arange(o)[:, None] * s + np.arange(k)[None, :] * d - b  # input coordinate of each tap
        lo, hi = (-b, size + e) if include_pad else (0, size)
        count = ((pos >= lo) & (pos < hi)).sum(axis=1)
        total = np.multiply.outer(total, count)
    return total


@kernel("GlobalAveragePool")
def _global_average_pool(ctx, x):
    return x.mean(axis=tuple(range(2, x.ndim)), keepdims=True, dtype=x.dtype)


@kernel("GlobalMaxPool")
def _global_max_pool(ctx, x):
    return x.max(axis=tuple(range(2, x.ndim)), keepdims=True)
