"""Quantization: QuantizeLinear / DequantizeLinear, DynamicQuantizeLinear and the integer conv/matmul family.

Integer products run as exact integers held in floats for BLAS speed: float32 when a bound on the weights
proves every partial sum stays within 2**24 (see ``CenteredWeights``; trained layers are far inside it),
else float64 (exact below 2**53, far beyond any int8/uint8 layer); they wrap to int32 like the 32-bit
accumulator the spec allows. Weights centered on their zero point are kept per executor (``ctx.derived``).
Requantization follows onnxruntime: the int32 accumulator as float32 times the float32 multiplier
``x_scale * w_scale / y_scale``, rounded half to even, plus the output zero point, saturated.
Low-precision formats numpy lacks (int4, uint4, int2, uint2, float8, float4) are ml_dtypes arrays,
as ``numpy_helper.to_array`` hands them over.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np

from optimizer.executor.conv import conv
from optimizer.executor.registry import kernel
from optimizer.values import elem_type_to_dtype

_BFLOAT16 = np.dtype(ml_dtypes.bfloat16)


def _integer_range(dtype: np.dtype) -> tuple[int, int] | None:
    """(min, max) of an integer type, including ml_dtypes' int4/uint4/int2/uint2; None for float formats."""
    try:
        info = ml_dtypes.iinfo(dtype)
    except ValueError:
        return None
    return int(info.min), int(info.max)


def _onnx_dtype(elem_type: int, what: str) -> np.dtype:
    dtype = elem_type_to_dtype(elem_type)
    if dtype is None:
        raise ValueError(f"{what} names ONNX element type {elem_type}, which numpy cannot hold")
    return dtype


def _axis(ctx, rank: int) -> int:
    axis = int(ctx.attr("axis", 1))
    if not -rank <= axis < max(rank, 1):
        raise ValueError(f"axis {axis} is out of range for a rank-{rank} input")
    return axis % max(rank, 1)


def _along(ctx, param: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """A scale or zero point shaped to broadcast against the quantized tensor: per tensor, per axis or blocked."""
    if param.size == 1:
        return param.reshape(())
    if ctx.opset < 13:
        raise ValueError(f"before opset 13 the scale and zero point must be scalars, not shape {param.shape}")
    axis = _axis(ctx, len(shape))
    block = int(ctx.attr("block_size", 0))
    if block > 0:
        expected = shape[:axis] + (-(-shape[axis] // block),) + shape[axis + 1:]
        if param.shape != expected:
            raise ValueError(f"blocked quantization of shape {shape} along axis {axis} in blocks of {block} "
                             f"needs a scale of shape {expected}, not {param.shape}")
        return np.repeat(param, block, axis=axis)[(slice(None),) * axis + (slice(0, shape[axis]),)]
    if param.ndim != 1 or param.shape[0] != shape[axis]:
        raise ValueError(f"per-axis quantization along axis {axis} of shape {shape} needs a 1-D scale of "
                         f"length {shape[axis]}, not shape {param.shape}")
    return param.reshape((-1,) + (1,) * (len(shape) - axis - 1))


def _to_format(values: np.ndarray, target: np.dtype, saturate: bool = True) -> np.ndarray:
    """Round (half to even) and cast float values to ``target``: integers saturate to their range; float
    formats saturate to +-max when ``saturate``, infinities included (the Cast table says NaN for the fnuz
    formats, but onnxruntime and the ONNX reference both give +-max), else follow the format's own
    overflow (NaN or inf)."""
    bounds = _integer_range(target)
    if bounds is not None:
        return np.clip(np.rint(values), *bounds).astype(target)
    if saturate:
        limit = float(ml_dtypes.finfo(target).max)
        values = np.clip(values, -limit, limit)
    return values.astype(target)


def _quantized_type(ctx, zero_point: np.ndarray | None) -> np.dtype:
    """The zero point's type, else ``output_dtype`` (opset 21+), else uint8."""
    output_dtype = int(ctx.attr("output_dtype", 0))
    declared = _onnx_dtype(output_dtype, "output_dtype") if output_dtype else None
    if zero_point is None:
        return declared or np.dtype(np.uint8)
    if declared is not None and declared != zero_point.dtype:
        raise ValueError(f"output_dtype {declared} contradicts the zero point's type {zero_point.dtype}")
    return zero_point.dtype


def _quantize_linear(ctx, x, scale, zero_point=None):
    """y = saturate(round(x / scale) + zero_point); the division runs in ``precision`` (opset 23+), else
    in the scale's type."""
    target = _quantized_type(ctx, zero_point)
    precision = int(ctx.attr("precision", 0))
    compute = _onnx_dtype(precision, "precision") if precision else scale.dtype
    if compute.kind != "f" and compute != _BFLOAT16:  # an int32 or float8e8m0 scale divides in float32
        compute = np.dtype(np.float32)
    ctx.guard(x.shape, np.float64, "intermediate")
    scaled = x.astype(compute) / _along(ctx, scale, x.shape).astype(compute)
    if _integer_range(target) is not None:
        values = np.rint(scaled).astype(np.float64)  # float64 keeps q + zero point exact for 16-bit targets
        if zero_point is not None:
            values += _along(ctx, zero_point, x.shape).astype(np.float64)
    else:
        values = scaled if zero_point is None else scaled + _along(ctx, zero_point, x.shape).astype(compute)
    return _to_format(values, target, bool(ctx.attr("saturate", 1)))


def _dequantize_linear(ctx, x, scale, zero_point=None):
    """y = (x - zero_point) * scale in float32 (float64 for a float64 scale), cast to ``output_dtype``
    (opset 23+), else to the scale's type."""
    output_dtype = int(ctx.attr("output_dtype", 0))
    out = _onnx_dtype(output_dtype, "output_dtype") if output_dtype else scale.dtype
    compute = np.float64 if scale.dtype == np.float64 else np.float32
    ctx.guard(x.shape, compute)
    if zero_point is None:
        values = x.astype(compute)
    elif _integer_range(x.dtype) is not None:
        values = (x.astype(np.int64) - _along(ctx, zero_point, x.shape).astype(np.int64)).astype(compute)
    else:  # float8/float4: the zero point is zero in practice, but the formula stays the same
        values = x.astype(compute) - _along(ctx, zero_point, x.shape).astype(compute)
    return (values * _along(ctx, scale, x.shape).astype(compute)).astype(out)


kernel("QuantizeLinear", since=10)(_quantize_linear)
kernel("DequantizeLinear", since=10)(_dequantize_linear)


@kernel("DynamicQuantizeLinear", since=11)
def _dynamic_quantize_linear(ctx, x):
    """uint8 quantization with scale = (max(0, max x) - min(0, min x)) / 255 and zero point
    round(saturate(0 - min / scale)), all in float32 as the spec writes it. An all-zero x (where the
    spec divides 0 by 0) gets scale 1, as onnxruntime gives it."""
    x = np.asarray(x, dtype=np.float32)
    x_min = np.minimum(np.float32(0), x.min(initial=np.float32(0)))
    x_max = np.maximum(np.float32(0), x.max(initial=np.float32(0)))
    scale = np.float32((x_max - x_min) / np.float32(255)) if x_max > x_min else np.float32(1)
    zero_point = np.rint(np.clip(np.float32(0) - x_min / scale, 0, 255)).astype(np.uint8)
    y = np.clip(np.rint(x / scale) + np.float32(zero_point), 0, 255).astype(np.uint8)
    return y, np.asarray(scale), np.asarray(zero_point)


# ---------------------------------------------------------------------- integer conv and matmul
def _wrap_int32(exact: np.ndarray) -> np.ndarray:
    """Exact integer results as int32, wrapping like a 32-bit accumulator (float32 ones are within 2**24,
    so they cast directly)."""
    if exact.dtype == np.float32:
        return exact.astype(np.int32)
    return exact.astype(np.int64).astype(np.int32)


#: float32 holds every integer up to 2**24 in magnitude exactly (float64: up to 2**53)
FLOAT32_EXACT_INTEGERS = 2 ** 24


def _span(dtype: np.dtype) -> int | None:
    """The largest |value - zero point| an integer type allows for values and zero points of that type;
    None for float formats, whose products are not integers."""
    bounds = _integer_range(np.dtype(dtype))
    return None if bounds is None else bounds[1] - bounds[0]


def _joint_type(values: np.ndarray, zero_point: np.ndarray | None) -> np.dtype:
    """The type that holds both values and their zero point (one type, as the spec has it, unless a model breaks it)."""
    if zero_point is None or zero_point.dtype == values.dtype:
        return values.dtype
    return np.result_type(values.dtype, zero_point.dtype)


def _centered(values: np.ndarray, zero_point: np.ndarray | None, shape: tuple[int, ...] | None = None,
              dtype=np.float64) -> np.ndarray:
    """``values - zero_point`` as ``dtype`` floats (exact for integers: float64 always, float32 while they span
    at most 2**24); ``shape`` makes a 1-D zero point broadcast along an axis."""
    centered = values.astype(dtype)
    if zero_point is not None:
        zp = zero_point.astype(dtype)
        if shape is not None and zp.ndim == 1 and zp.size > 1:
            zp = zp.reshape(shape)
        centered -= zp
    return centered


@dataclass(frozen=True)
class CenteredWeights:
    """Weights minus their zero point as exact floats, and ``reach``: the largest sum of |w - zero point|
    over the weights that meet in one output. Any partial sum of one output, in whatever order BLAS adds,
    is then at most (activation span) x reach, which decides whether float32 computes it exactly."""

    values: np.ndarray
    zero_point: np.ndarray | None
    reach: float

    def product_dtype(self, activation_dtype, bias_bound: float = 0.0) -> np.dtype:
        """float32 when products with activations of ``activation_dtype`` (centered by any zero point of
        their type), plus a bias of magnitude at most ``bias_bound``, stay exact integers in it; else float64."""
        span = _span(activation_dtype)
        if span is not None and span * self.reach + bias_bound <= FLOAT32_EXACT_INTEGERS:
            return np.dtype(np.float32)
        return np.dtype(np.float64)

    def as_dtype(self, dtype) -> np.ndarray:
        return self.values.astype(dtype, copy=False)


def centered_weights(ctx, key: str, w: np.ndarray, zero_point: np.ndarray | None, summed_axes: tuple[int, ...],
                     activation_dtype, zero_point_shape: tuple[int, ...] | None = None) -> CenteredWeights:
    """``w - zero_point`` held in the float type its products with ``activation_dtype`` activations need,
    computed once per executor when ``w`` is a weight (``ctx.derived``); ``summed_axes`` are those a product
    sums over. The cache is keyed on ``w`` alone, so a zero point that differs from the one cached (one fed
    at run time) centers afresh."""

    def center(weights: np.ndarray) -> CenteredWeights:
        span = _span(_joint_type(weights, zero_point))  # float32 holds differences of integers up to 2**24
        exact = _centered(weights, zero_point, zero_point_shape,
                          np.float32 if span is not None and span <= FLOAT32_EXACT_INTEGERS else np.float64)
        reach = float(np.abs(exact).sum(axis=summed_axes, dtype=np.float64).max(initial=0))
        made = CenteredWeights(exact, None if zero_point is None else np.array(zero_point), reach)
        dtype = made.product_dtype(activation_dtype)
        return made if dtype == exact.dtype else CenteredWeights(exact.astype(dtype), made.zero_point, reach)

    made = ctx.derived(key, w, center)
    same_zero_point = (zero_point is None if made.zero_point is None
                       else zero_point is not None and np.array_equal(made.zero_point, zero_point))
    return made if same_zero_point else center(w)


def _integer_conv(ctx, x, x_zero_point, w, w_zero_point, bias=None) -> np.ndarray:
    """The float convolution on zero-point-centered inputs: padding then stands for real zero, as the spec
    pads with the zero point."""
    if x.ndim < 3:
        raise ValueError(f"{ctx.node.op_type} needs an input of rank 3 or more, not shape {x.shape}")
    if x_zero_point is not None and x_zero_point.size != 1:
        raise ValueError(f"x_zero_point must be a scalar, not shape {x_zero_point.shape}")
    activation_type = _joint_type(x, x_zero_point)
    weights = centered_weights(ctx, "w", w, w_zero_point, tuple(range(1, w.ndim)), activation_type,
                               (-1,) + (1,) * (w.ndim - 1))
    bias_bound = 0.0 if bias is None else float(np.abs(bias.astype(np.float64)).max(initial=0))
    dtype = weights.product_dtype(activation_type, bias_bound)
    bias = None if bias is None else bias.astype(dtype)
    return conv(ctx, _centered(x, x_zero_point, dtype=dtype), weights.as_dtype(dtype), bias)


def _integer_matmul(ctx, a, a_zero_point, b, b_zero_point) -> np.ndarray:
    """matmul of zero-point-centered A (zero point per row) and B (per column)."""
    ctx.guard(np.broadcast_shapes(a.shape[:-2], b.shape[:-2]) + a.shape[-2:-1] + b.shape[-1:], np.float64)
    activation_type = _joint_type(a, a_zero_point)
    weights = centered_weights(ctx, "b", b, b_zero_point, (-min(b.ndim, 2),), activation_type)  # a 1-D b: one column
    dtype = weights.product_dtype(activation_type)
    return np.matmul(_centered(a, a_zero_point, (-1, 1), dtype), weights.as_dtype(dtype))


def _requantize(ctx, accumulator: np.ndarray, multiplier: np.ndarray, y_zero_point: np.ndarray) -> np.ndarray:
    """saturate(round(float32(acc) * multiplier) + y_zero_point) in the output zero point's type."""
    ctx.guard(accumulator.shape, np.float64, "intermediate")
    scaled = accumulator.astype(np.float32) * multiplier
    if _integer_range(y_zero_point.dtype) is not None:
        return _to_format(np.rint(scaled).astype(np.float64) + y_zero_point.astype(np.float64), y_zero_point.dtype)
    return _to_format(scaled + y_zero_point.astype(np.float32), y_zero_point.dtype)


@kernel("ConvInteger", since=10)
def _conv_integer(ctx, x, w, x_zero_point=None, w_zero_point=None):
    return _wrap_int32(_integer_conv(ctx, x, x_zero_point, w, w_zero_point))


@kernel("MatMulInteger", since=10)
def _matmul_integer(ctx, a, b, a_zero_point=None, b_zero_point=None):
    return _wrap_int32(_integer_matmul(ctx, a, a_zero_point, b, b_zero_point))


def _f32(value: np.ndarray) -> np.ndarray:
    return value.astype(np.float32)


@kernel("QLinearConv", since=10)
def _qlinear_conv(ctx, x, x_scale, x_zero_point, w, w_scale, w_zero_point, y_scale, y_zero_point, bias=None):
    """Integer conv (+ int32 bias), requantized with x_scale * w_scale / y_scale (w_scale per output channel)."""
    accumulator = _wrap_int32(_integer_conv(ctx, x, x_zero_point, w, w_zero_point, bias))
    w_scale = _f32(w_scale).reshape((-1,) + (1,) * (x.ndim - 2)) if w_scale.size > 1 else _f32(w_scale).reshape(())
    multiplier = _f32(x_scale).reshape(()) * w_scale / _f32(y_scale).reshape(())
    return _requantize(ctx, accumulator, multiplier, y_zero_point.reshape(()))


@kernel("QLinearMatMul", since=10)
def _qlinear_matmul(ctx, a, a_scale, a_zero_point, b, b_scale, b_zero_point, y_scale, y_zero_point):
    """Integer matmul requantized with a_scale (per row) * b_scale (per column) / y_scale; float8 operands
    (opset 21) accumulate as float64 rather than int32."""
    accumulator = _integer_matmul(ctx, a, a_zero_point, b, b_zero_point)
    if _integer_range(a.dtype) is not None:
        accumulator = _wrap_int32(accumulator)
    a_scale = _f32(a_scale).reshape(-1, 1) if a_scale.ndim == 1 and a_scale.size > 1 else _f32(a_scale)
    multiplier = a_scale * _f32(b_scale) / _f32(y_scale)
    return _requantize(ctx, accumulator, multiplier, y_zero_point)
