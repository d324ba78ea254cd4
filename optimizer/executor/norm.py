"""Normalization ops: BatchNormalization (all versions), InstanceNormalization, LRN, LayerNormalization."""

from __future__ import annotations

import numpy as np

from optimizer.executor.registry import kernel


def _channel_shape(param: np.ndarray, x: np.ndarray) -> tuple[int, ...]:
    """Per-channel parameters broadcast over axis 1; pre-opset-9 ``spatial=0`` ones cover all non-batch axes."""
    if param.ndim > 1:
        return (1,) + param.shape
    return (1, -1) + (1,) * (x.ndim - 2)


def bn_is_training(node, opset: int) -> bool:
    """Whether a BatchNormalization node uses batch statistics (its mode moved across opsets)."""
    if opset >= 14:
        return bool(node.attrs.get("training_mode", 0))
    if opset < 7:
        return not node.attrs.get("is_test", 0) and len(node.outputs) > 1
    return len(node.outputs) > 1 and any(node.outputs[1:])


@kernel("BatchNormalization", reuses_inputs=True)
def _batch_norm(ctx, x, scale, bias, mean, var, out=None):
    """Inference folds to y = x * a + b (as onnxruntime does), into x's buffer when the executor frees
    it here; training mode uses batch statistics.

    Outputs beyond Y changed across versions: before 14 they are (running mean, running
    variance, saved mean, saved variance); from 14, (running mean, running variance).
    """
    t = x.dtype.type
    eps = t(ctx.attr("epsilon", 1e-5))
    shape = _channel_shape(scale, x)
    if not bn_is_training(ctx.node, ctx.opset):
        a, b = ctx.derived(f"batch_norm_fold {x.dtype}", (scale, bias, mean, var),
                           lambda params: _inference_fold(*params, eps, x.dtype))
        y = np.multiply(x, a.reshape(shape), out=out if out is x and x.ndim >= 2 else None)
        y += b.reshape(shape)
        return y
    axes = (0,) + tuple(range(2, x.ndim)) if scale.ndim == 1 else (0,)
    batch_mean = x.mean(axis=axes, dtype=x.dtype)
    batch_var = x.var(axis=axes, dtype=x.dtype)
    momentum = t(ctx.attr("momentum", 0.9))
    y = (x - batch_mean.reshape(shape)) / np.sqrt(batch_var.reshape(shape) + eps) * scale.reshape(shape) \
        + bias.reshape(shape)
    running_mean = mean * momentum + batch_mean * (1 - momentum)
    running_var = var * momentum + batch_var * (1 - momentum)
    return y, running_mean, running_var, batch_mean, batch_var


def _inference_fold(scale, bias, mean, var, eps, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(a, b) with inference batch norm = x * a + b."""
    a = (scale / np.sqrt(var + eps)).astype(dtype, copy=False)
    return a, (bias - mean * a).astype(dtype, copy=False)


@kernel("InstanceNormalization", since=6)
def _instance_norm(ctx, x, scale, bias):
    t = x.dtype.type
    axes = tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, keepdims=True, dtype=x.dtype)
    centered = x - mean
    var = np.mean(centered * centered, axis=axes, keepdims=True, dtype=x.dtype)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return centered / np.sqrt(var + t(ctx.attr("epsilon", 1e-5))) * scale.reshape(shape) + bias.reshape(shape)


@kernel("LRN")
def _lrn(ctx, x):
    """y = x / (bias + alpha / size * sum of squares over a window of channels) ** beta."""
    t = x.dtype.type
    size = int(ctx.attr("size"))
    alpha, beta, bias = t(ctx.attr("alpha", 1e-4)), t(ctx.attr("beta", 0.75)), t(ctx.attr("bias", 1.0))
    before, after = (size - 1) // 2, size - 1 - (size - 1) // 2
    squares = x * x
    padded = np.pad(squares, [(0, 0), (before, after)] + [(0, 0)] * (x.ndim - 2))
    channels = x.shape[1]
    total = padded[:, 0:channels].copy()
    for i in range(1, size):
        total += padded[:, i:i + channels]
    return x / (bias + alpha / t(size) * total) ** beta


@kernel("LayerNormalization", since=17)
def _layer_norm(ctx, x, scale, bias=None):
    t = x.dtype.type
    axis = ctx.attr("axis", -1)
    axes = tuple(range(axis % x.ndim, x.ndim))
    mean = x.mean(axis=axes, keepdims=True, dtype=x.dtype)
    centered = x - mean
    var = np.mean(centered * centered, axis=axes, keepdims=True, dtype=x.dtype)
    inv_std = 1 / np.sqrt(var + t(ctx.attr("epsilon", 1e-5)))
    y = centered * inv_std * scale
    if bias is not None:
        y = y + bias
    outputs = [y, mean, inv_std]
    return tuple(outputs[:max(ctx.n_outputs, 1)])
