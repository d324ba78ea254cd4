"""Matrix products and the softmax family."""

from __future__ import annotations

import numpy as np

from optimizer.executor.registry import kernel


@kernel("Gemm")
def _gemm(ctx, a, b, c=None):
    """Y = alpha * A' B' + beta * C; C broadcasts (the pre-7 ``broadcast`` flag only allowed what numpy allows)."""
    if ctx.attr("transA", 0):
        a = a.T
    if ctx.attr("transB", 0):
        b = b.T
    y = np.matmul(a, b)
    alpha, beta = ctx.attr("alpha", 1.0), ctx.attr("beta", 1.0)
    if alpha != 1.0:
        y *= y.dtype.type(alpha)
    if c is not None and beta != 0.0:
        y += c if beta == 1.0 else c * c.dtype.type(beta)
    return y


@kernel("MatMul")
def _matmul(ctx, a, b):
    ctx.guard(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + a.shape[-2:-1] + b.shape[-1:], a.dtype)
    return np.matmul(a, b)


@kernel("Einsum", since=12)
def _einsum(ctx, *xs):
    return np.einsum(ctx.attr("equation"), *xs, optimize=True)


# ---------------------------------------------------------------------- softmax family
def _softmax(x, axis):
    shifted = x - x.max(axis=axis, keepdims=True)
    e = np.exp(shifted)
    return e / e.sum(axis=axis, keepdims=True)


def _log_softmax(x, axis):
    shifted = x - x.max(axis=axis, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=axis, keepdims=True))


def _hardmax(x, axis):
    idx = np.expand_dims(np.argmax(x, axis=axis), axis)
    y = np.zeros_like(x)
    np.put_along_axis(y, idx, 1, axis=axis)
    return y


def _flattened(fn):
    """Before opset 13: flatten to 2-D at ``axis`` (default 1) and normalise each row."""
    def run(ctx, x):
        axis = ctx.attr("axis", 1) % max(x.ndim, 1)
        rows = int(np.prod(x.shape[:axis], dtype=np.int64))
        return fn(x.reshape(rows, -1), 1).reshape(x.shape)
    return run


def _along_axis(fn):
    """From opset 13: normalise along ``axis`` (default -1) only."""
    return lambda ctx, x: fn(x, ctx.attr("axis", -1))


for _op, _fn in (("Softmax", _softmax), ("LogSoftmax", _log_softmax), ("Hardmax", _hardmax)):
    kernel(_op, until=12)(_flattened(_fn))
    kernel(_op, since=13)(_along_axis(_fn))
