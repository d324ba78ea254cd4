"""Index ops: selecting (TopK, GatherND, Compress, Unique), scattering (ScatterND, ScatterElements),
running sums (CumSum, CumProd), masks (Trilu, OneHot, EyeLike) and ReverseSequence.

Index inputs may be negative (counted from the end) wherever the op allows it; the
scatter reductions grew across opsets (add/mul at 16, max/min at 18), which the
planning check enforces.
"""

from __future__ import annotations

import numpy as np

from optimizer.executor.registry import kernel
from optimizer.values import elem_type_to_dtype


def scalar_int(value) -> int:
    """The integer in a scalar or one-element tensor input (ONNX allows either for k, depth, axis, ...)."""
    return int(np.asarray(value).reshape(-1)[0])


# ---------------------------------------------------------------------- TopK
def top_k(x: np.ndarray, k: int, axis: int, largest: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The k largest (or smallest) entries along ``axis``, sorted, ties broken by the lower index.

    NaN counts as larger than every number, as onnxruntime orders it.
    """
    axis %= x.ndim
    if largest:
        # a stable ascending sort of the reversed axis, read backwards, is descending with ties in index order
        flipped = np.argsort(np.flip(x, axis=axis), axis=axis, kind="stable")
        order = x.shape[axis] - 1 - np.flip(flipped, axis=axis)
    else:
        order = np.argsort(x, axis=axis, kind="stable")
    indices = np.take(order, np.arange(k), axis=axis)
    return np.take_along_axis(x, indices, axis=axis), indices.astype(np.int64, copy=False)


def _top_k(ctx, x, k, largest=True):
    length = x.shape[ctx.attr("axis", -1) % x.ndim]
    if not 0 <= k <= length:
        raise ValueError(f"k = {k} is outside the axis of length {length}")
    return top_k(x, k, ctx.attr("axis", -1), largest)


kernel("TopK", until=9)(lambda ctx, x: _top_k(ctx, x, int(ctx.attr("k"))))
kernel("TopK", since=10, until=10)(lambda ctx, x, k: _top_k(ctx, x, scalar_int(k)))
kernel("TopK", since=11)(lambda ctx, x, k: _top_k(ctx, x, scalar_int(k), bool(ctx.attr("largest", 1))))


# ---------------------------------------------------------------------- running sums and masks
def _cumulative(ufunc):
    def run(ctx, x, axis):
        axis = scalar_int(axis) % x.ndim
        reverse, exclusive = ctx.attr("reverse", 0), ctx.attr("exclusive", 0)
        if reverse:
            x = np.flip(x, axis=axis)
        if exclusive:  # the input shifted one step along the axis, the identity first
            head = np.full(x.shape[:axis] + (1,) + x.shape[axis + 1:], ufunc.identity, dtype=x.dtype)
            x = np.delete(np.concatenate([head, x], axis=axis), -1, axis=axis)
        y = ufunc.accumulate(x, axis=axis, dtype=x.dtype)
        return np.flip(y, axis=axis) if reverse else y
    return run


kernel("CumSum", since=11)(_cumulative(np.add))
kernel("CumProd", since=26)(_cumulative(np.multiply))


@kernel("Trilu", since=14)
def _trilu(ctx, x, k=None):
    k = 0 if k is None else scalar_int(k)
    return np.triu(x, k) if ctx.attr("upper", 1) else np.tril(x, k)


@kernel("OneHot", since=9)
def _one_hot(ctx, indices, depth, values):
    """Indices outside the range give all-off rows; negative ones count back from depth (from opset 11)."""
    depth = scalar_int(depth)
    indices = indices.astype(np.int64)
    if ctx.opset >= 11:
        indices = np.where(indices < 0, indices + depth, indices)
    axis = ctx.attr("axis", -1) % (indices.ndim + 1)
    ctx.guard(indices.shape + (depth,), values.dtype)
    hot = np.moveaxis(indices[..., None] == np.arange(depth), -1, axis)
    off, on = values.reshape(-1)[:2]
    return np.where(hot, on, off)


@kernel("EyeLike", since=9)
def _eye_like(ctx, x):
    dtype = x.dtype if ctx.attr("dtype") is None else elem_type_to_dtype(ctx.attr("dtype"))
    return np.eye(x.shape[0], x.shape[1], k=int(ctx.attr("k", 0)), dtype=dtype)


# ---------------------------------------------------------------------- gathering and selecting
@kernel("GatherND", since=11)
def _gather_nd(ctx, data, indices):
    """Each index tuple over the last axis of ``indices`` picks a slice of ``data`` after the batch axes."""
    batch_dims = int(ctx.attr("batch_dims", 0))
    depth = indices.shape[-1]
    batch = int(np.prod(data.shape[:batch_dims], dtype=np.int64))
    flat_data = data.reshape((batch,) + data.shape[batch_dims:])
    flat_indices = indices.reshape(batch, -1, depth).astype(np.int64, copy=False)
    picked = flat_data[(np.arange(batch)[:, None],) + tuple(flat_indices[..., i] for i in range(depth))]
    return picked.reshape(indices.shape[:-1] + data.shape[batch_dims + depth:])


def _compress(ctx, x, condition):
    axis = ctx.attr("axis")
    if axis is None:
        return np.compress(condition.reshape(-1), x.reshape(-1))
    return np.compress(condition.reshape(-1), x, axis=int(axis) % x.ndim)


kernel("Compress", since=9)(_compress)


@kernel("Unique", since=11)
def _unique(ctx, x):
    """Outputs (Y, first indices, inverse indices, counts); unsorted Y keeps the order of first occurrence."""
    axis = ctx.attr("axis")
    axis = None if axis is None else int(axis) % x.ndim
    values, first, inverse, counts = np.unique(x if axis is not None else x.reshape(-1), axis=axis,
                                               return_index=True, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    if not ctx.attr("sorted", 1):
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(order.size)
        values = np.take(values, order, axis=0 if axis is None else axis)
        first, counts, inverse = first[order], counts[order], rank[inverse]
    return values, first.astype(np.int64), inverse.astype(np.int64), counts.astype(np.int64)


@kernel("ReverseSequence", since=10)
def _reverse_sequence(ctx, x, sequence_lens):
    """The first ``sequence_lens[b]`` steps along the time axis of every batch entry ``b`` reversed."""
    batch_axis, time_axis = int(ctx.attr("batch_axis", 1)), int(ctx.attr("time_axis", 0))
    steps = np.arange(x.shape[time_axis])
    lens = sequence_lens.astype(np.int64)
    source = np.where(steps[None, :] < lens[:, None], lens[:, None] - 1 - steps[None, :], steps[None, :])
    # source is (batch, time): lay it out along the input's axes and broadcast over the rest
    shape = [1] * x.ndim
    shape[batch_axis], shape[time_axis] = source.shape[0], source.shape[1]
    source = source.T if time_axis < batch_axis else source
    return np.take_along_axis(x, np.broadcast_to(source.reshape(shape), x.shape), axis=time_axis)


# ---------------------------------------------------------------------- scattering
_REDUCTIONS = {"none": None, "add": np.add, "mul": np.multiply, "max": np.maximum, "min": np.minimum}


def _reduction_check(node, opset):
    reduction = node.attrs.get("reduction", "none")
    allowed = ("none",) if opset < 16 else ("none", "add", "mul") if opset < 18 else tuple(_REDUCTIONS)
    if reduction not in allowed:
        return f"reduction {reduction!r} is not defined at opset {opset}"
    return None


def _scatter(ctx, data, where, updates):
    """A copy of ``data`` with ``updates`` written (or reduced, in order) at the index tuple ``where``."""
    out = data.copy()
    reduce = _REDUCTIONS[ctx.attr("reduction", "none")]
    if reduce is None:
        out[where] = updates
    else:
        reduce.at(out, where, updates)
    return out


def _scatter_elements(ctx, data, indices, updates):
    axis = int(ctx.attr("axis", 0)) % data.ndim
    where = list(np.indices(indices.shape, sparse=True))
    where[axis] = indices.astype(np.int64, copy=False)
    return _scatter(ctx, data, tuple(where), updates)


kernel("Scatter", since=9)(_scatter_elements)
kernel("ScatterElements", since=11, check=_reduction_check)(_scatter_elements)


@kernel("ScatterND", since=11, check=_reduction_check)
def _scatter_nd(ctx, data, indices, updates):
    indices = indices.astype(np.int64, copy=False)
    return _scatter(ctx, data, tuple(np.moveaxis(indices, -1, 0)), updates)

