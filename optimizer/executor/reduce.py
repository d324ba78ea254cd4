"""Reductions and arg-reductions; ``axes`` moved from attribute to input (ReduceSum at 13, the rest at 18)."""

from __future__ import annotations

import numpy as np

from optimizer.executor.registry import kernel


def _sum_square(x, axis, keepdims):
    return np.sum(x * x, axis=axis, keepdims=keepdims)


def _log_sum_exp(x, axis, keepdims):
    m = np.max(x, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0)
    y = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return y if keepdims else np.squeeze(y, axis=axis)


_REDUCERS = {
    "ReduceSum": lambda x, axis, keepdims: np.sum(x, axis=axis, keepdims=keepdims),
    "ReduceMean": lambda x, axis, keepdims: np.mean(x, axis=axis, keepdims=keepdims, dtype=x.dtype),
    "ReduceMax": lambda x, axis, keepdims: np.max(x, axis=axis, keepdims=keepdims),
    "ReduceMin": lambda x, axis, keepdims: np.min(x, axis=axis, keepdims=keepdims),
    "ReduceProd": lambda x, axis, keepdims: np.prod(x, axis=axis, keepdims=keepdims),
    "ReduceL1": lambda x, axis, keepdims: np.sum(np.abs(x), axis=axis, keepdims=keepdims),
    "ReduceL2": lambda x, axis, keepdims: np.sqrt(_sum_square(x, axis, keepdims)),
    "ReduceSumSquare": _sum_square,
    "ReduceLogSum": lambda x, axis, keepdims: np.log(np.sum(x, axis=axis, keepdims=keepdims)),
    "ReduceLogSumExp": _log_sum_exp,
}


def _reduce(fn, x, axes, ctx):
    keepdims = bool(ctx.attr("keepdims", 1))
    if axes is None or len(axes) == 0:
        if ctx.attr("noop_with_empty_axes", 0):
            return x
        axes = range(x.ndim)
    axis = tuple(sorted(int(a) % x.ndim for a in axes)) if x.ndim else None
    return np.asarray(fn(x, axis, keepdims)).astype(x.dtype, copy=False)


def _register(op_type, fn, moved_at):
    kernel(op_type, until=moved_at - 1)(lambda ctx, x: _reduce(fn, x, ctx.attr("axes"), ctx))
    kernel(op_type, since=moved_at)(lambda ctx, x, axes=None: _reduce(fn, x, None if axes is None else axes.tolist(), ctx))


for _op, _fn in _REDUCERS.items():
    _register(_op, _fn, 13 if _op == "ReduceSum" else 18)


def _arg(fn):
    def run(ctx, x):
        axis = int(ctx.attr("axis", 0)) % x.ndim
        if ctx.attr("select_last_index", 0):
            idx = x.shape[axis] - 1 - fn(np.flip(x, axis=axis), axis=axis)
        else:
            idx = fn(x, axis=axis)
        idx = idx.astype(np.int64)
        return np.expand_dims(idx, axis) if ctx.attr("keepdims", 1) else idx
    return run


kernel("ArgMax")(_arg(np.argmax))
kernel("ArgMin")(_arg(np.argmin))
