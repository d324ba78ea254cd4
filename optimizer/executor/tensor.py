"""Ops that make or retype tensors: Identity, Constant, ConstantOfShape, Cast, Range, Dropout."""

from __future__ import annotations

import math

import ml_dtypes
import numpy as np
import onnx

from optimizer.executor.registry import kernel
from optimizer.values import dtype_to_elem_type, elem_type_to_dtype


@kernel("Identity")
def _identity(ctx, x):
    return x


_CONSTANT_ATTRS = {"value": None, "value_float": np.float32, "value_floats": np.float32,
                   "value_int": np.int64, "value_ints": np.int64}


def _constant_check(node, opset):
    if not any(key in node.attrs for key in _CONSTANT_ATTRS):
        return f"Constant with attribute(s) {', '.join(sorted(node.attrs)) or 'none'} is not supported"
    return None


@kernel("Constant", check=_constant_check)
def _constant(ctx):
    for key, dtype in _CONSTANT_ATTRS.items():
        if key in ctx.attrs:
            return np.asarray(ctx.attrs[key], dtype=dtype)
    raise AssertionError("unreachable: rejected at planning")


@kernel("ConstantOfShape", since=9)
def _constant_of_shape(ctx, shape):
    value = ctx.attr("value")
    value = np.zeros(1, dtype=np.float32) if value is None else np.asarray(value).reshape(-1)
    dims = [int(d) for d in shape.reshape(-1)]
    ctx.guard(dims, value.dtype)
    return np.full(dims, value[0], dtype=value.dtype)


def _cast_check(node, opset):
    to = node.attrs.get("to")
    if to is not None and elem_type_to_dtype(to) is None:
        return f"casting to ONNX element type {to} is not supported"
    return None


def cast(ctx, x: np.ndarray, to: int) -> np.ndarray:
    """``x`` as ONNX element type ``to``; float8 targets saturate (from opset 19, unless ``saturate=0``).

    Saturating clamps to the type's largest finite value before rounding to nearest even, so
    out-of-range values and infinities become that value rather than NaN; float8 e8m0 (a
    power of two) rounds as ``round_mode`` says, with onnx's own converter.
    """
    saturate = ctx.opset >= 19 and bool(ctx.attr("saturate", 1))
    if to == onnx.TensorProto.FLOAT8E8M0:
        return onnx.numpy_helper.to_float8e8m0(x, saturate, ctx.attr("round_mode", "up"))
    dtype = elem_type_to_dtype(to)
    if saturate and dtype.name.startswith("float8") and x.dtype.kind in "fV":
        largest = float(ml_dtypes.finfo(dtype).max)
        x = np.clip(x.astype(np.float32), -largest, largest)
    return x.astype(dtype, copy=False)


@kernel("Cast", check=_cast_check)
def _cast(ctx, x):
    return cast(ctx, x, ctx.attr("to"))


@kernel("BitCast", since=26, check=_cast_check)
def _bit_cast(ctx, x):
    """The same bytes read as another type of the same width."""
    return (x if x.flags.c_contiguous else x.copy()).view(elem_type_to_dtype(ctx.attr("to")))


@kernel("CastLike", since=15)
def _cast_like(ctx, x, like):
    return cast(ctx, x, dtype_to_elem_type(like.dtype))


@kernel("Range", since=11)
def _range(ctx, start, limit, delta):
    start, limit, delta = start.reshape(()), limit.reshape(()), delta.reshape(())
    count = max(math.ceil((float(limit) - float(start)) / float(delta)), 0)
    ctx.guard((count,), start.dtype)
    return (start + delta * np.arange(count, dtype=start.dtype)).astype(start.dtype, copy=False)


def _dropout_mask(ctx, x, mask_dtype):
    return np.ones(x.shape, dtype=mask_dtype) if ctx.wants_output(1) else None


@kernel("Dropout", until=11)
def _dropout_inference(ctx, x):
    """Inference: the input, and an all-keep mask (type T before opset 10, bool from 10).

    Before opset 7 ``is_test=0`` asked for training; onnxruntime (and every inference
    engine) runs these graphs as inference, and so do we.
    """
    return x, _dropout_mask(ctx, x, np.bool_ if ctx.opset >= 10 else x.dtype)


@kernel("Dropout", since=12)
def _dropout(ctx, x, ratio=None, training_mode=None):
    """From opset 12, training mode is an input; in training, drop with the node's seed and rescale."""
    rate = 0.5 if ratio is None else float(ratio)
    if training_mode is None or not bool(training_mode) or rate == 0.0:
        return x, _dropout_mask(ctx, x, np.bool_)
    keep = np.random.default_rng(ctx.attr("seed")).random(x.shape) >= rate
    return (x * keep / x.dtype.type(1 - rate)).astype(x.dtype, copy=False), keep


@kernel("NonZero", since=9)
def _nonzero(ctx, x):
    return np.array(np.nonzero(x), dtype=np.int64).reshape(x.ndim, -1)
