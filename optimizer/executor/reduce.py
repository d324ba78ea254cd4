"""Reductions and arg-reductions; ``axes`` moved from attribute to input (ReduceSum at 13, the rest at 18).

Each reduction is an element-wise map, a sum/max/min/product over the axes, and an
element-wise finish (ReduceL2 = sqrt of the sum of squares). With ``noop_with_empty_axes=1``
and no axes nothing is reduced but both maps still apply, as onnx's reference and
onnxruntime do: ReduceSumSquare gives x², ReduceL1 and ReduceL2 |x|, ReduceLogSum log(x).
Over an empty set the result is the reduction's identity (ReduceMax: -inf or the type's
lowest value, ReduceMin: +inf or its highest, ReduceLogSumExp: -inf, ReduceMean: 0 as in
onnxruntime).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from optimizer.executor.registry import kernel


def _lowest(dtype: np.dtype):
    if dtype == np.bool_:
        return False
    return -np.inf if np.issubdtype(dtype, np.floating) else np.iinfo(dtype).min


def _highest(dtype: np.dtype):
    if dtype == np.bool_:
        return True
    return np.inf if np.issubdtype(dtype, np.floating) else np.iinfo(dtype).max


def _extreme(fn, identity):
    """np.max or np.min, with ``identity`` as the result over an empty set (numpy raises there)."""
    def reduce(x, axis, keepdims):
        empty = {} if x.size else {"initial": identity(x.dtype)}
        return fn(x, axis=axis, keepdims=keepdims, **empty)
    return reduce


def _sum(x, axis, keepdims):
    return np.sum(x, axis=axis, keepdims=keepdims)


def _mean(x, axis, keepdims):
    if x.size == 0:  # onnxruntime: 0 over an empty set (numpy: nan)
        return _sum(x, axis, keepdims)
    return np.mean(x, axis=axis, keepdims=keepdims, dtype=x.dtype)


def _log_sum_exp(x, axis, keepdims):
    m = _extreme(np.max, _lowest)(x, axis, True)
    m = np.where(np.isfinite(m), m, 0)
    y = np.log(np.sum(np.exp(x - m), axis=axis, keepdims=True)) + m
    return y if keepdims else np.squeeze(y, axis=axis)


@dataclass(frozen=True)
class Reduction:
    reduce: Callable  # (x, axis, keepdims) -> array
    before: Callable | None = None  # element-wise, applied to the input
    after: Callable | None = None  # element-wise, applied to the reduced values


_REDUCTIONS = {
    "ReduceSum": Reduction(_sum),
    "ReduceMean": Reduction(_mean),
    "ReduceMax": Reduction(_extreme(np.max, _lowest)),
    "ReduceMin": Reduction(_extreme(np.min, _highest)),
    "ReduceProd": Reduction(lambda x, axis, keepdims: np.prod(x, axis=axis, keepdims=keepdims)),
    "ReduceL1": Reduction(_sum, before=np.abs),
    "ReduceL2": Reduction(_sum, before=np.square, after=np.sqrt),
    "ReduceSumSquare": Reduction(_sum, before=np.square),
    "ReduceLogSum": Reduction(_sum, after=np.log),
    "ReduceLogSumExp": Reduction(_log_sum_exp),
}


def _reduce(r: Reduction, x, axes, ctx):
    y = x if r.before is None else r.before(x)
    if axes is None or len(axes) == 0:
        axes = () if ctx.attr("noop_with_empty_axes", 0) else range(x.ndim)
    if len(axes):
        y = r.reduce(y, tuple(sorted(int(a) % x.ndim for a in axes)), bool(ctx.attr("keepdims", 1)))
    if r.after is not None:
        y = r.after(y)
    return np.asarray(y).astype(x.dtype, copy=False)


def _register(op_type, reduction, moved_at):
    kernel(op_type, until=moved_at - 1)(lambda ctx, x: _reduce(reduction, x, ctx.attr("axes"), ctx))
    kernel(op_type, since=moved_at)(
        lambda ctx, x, axes=None: _reduce(reduction, x, None if axes is None else axes.tolist(), ctx))


for _op, _reduction in _REDUCTIONS.items():
    _register(_op, _reduction, 13 if _op == "ReduceSum" else 18)


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
