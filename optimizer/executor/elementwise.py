"""Element-wise ops: math, activations, comparisons, logic and variadic reductions.

Activations are also plain functions (``ACTIVATIONS``) so fused kernels such as
com.microsoft FusedConv reuse exactly the same arithmetic.
"""

from __future__ import annotations

import functools

import numpy as np

from optimizer.executor.registry import kernel

# ---------------------------------------------------------------------- erf
# numpy has no erf and scipy is not a dependency. In float64: the Taylor series for
# |x| <= 2.5 (60 terms reach double round-off there) and Numerical Recipes' Chebyshev fit
# of erfc beyond (relative error < 1.2e-7 on erfc < 4e-4, i.e. ~1e-11 on erf).
def _erf64(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    out = np.empty_like(x)
    small = np.abs(x) <= 2.5
    xs = x[small]
    term, total, x2 = xs.copy(), xs.copy(), xs * xs
    for n in range(1, 60):
        term *= -x2 / n
        total += term / (2 * n + 1)
    out[small] = total * (2.0 / np.sqrt(np.pi))
    xl = x[~small]
    a = np.abs(xl)
    t = 1.0 / (1.0 + 0.5 * a)
    poly = (-a * a - 1.26551223 + t * (1.00002368 + t * (0.37409196 + t * (0.09678418 + t * (
        -0.18628806 + t * (0.27886807 + t * (-1.13520398 + t * (1.48851587 + t * (
            -0.82215223 + t * 0.17087277)))))))))
    out[~small] = np.sign(xl) * (1.0 - t * np.exp(poly))
    return out


def erf(x: np.ndarray) -> np.ndarray:
    return _erf64(x).astype(x.dtype, copy=False)


# ---------------------------------------------------------------------- activations
def relu(x, out=None):
    """max(x, 0) as ``clip`` takes it (2-2.5x faster than numpy's maximum against a scalar); -0.0 stays
    -0.0, as in onnxruntime, and inf stays inf."""
    t = x.dtype.type
    return clip(x, t(0), t(np.inf) if x.dtype.kind == "f" else None, out)


def leaky_relu(x, alpha=0.01):
    return np.where(x < 0, x * x.dtype.type(alpha), x)


def sigmoid(x):
    """1 / (1 + exp(-x)) in four passes, in one buffer (the hottest activation of SiLU networks such as
    YOLOv8; float32 exp alone costs 1.5 ns a value, so every extra pass shows): within 1 ulp of the
    exp's own error on both halves, since 1 + exp(-x) loses nothing that matters when exp(-x) is
    huge. Below -87.3 exp(-x) overflows to inf and the result is 0 where the true one is a denormal
    (under 1.2e-38); NaN stays NaN."""
    e = np.negative(x, out=np.empty_like(x))  # an array even for a 0-d x, which numpy would hand back as a scalar
    np.exp(e, out=e)
    e += 1
    return np.divide(1, e, out=e)


def hard_sigmoid(x, alpha=0.2, beta=0.5, out=None):
    t = x.dtype.type
    y = np.multiply(x, t(alpha), out=out)
    y += t(beta)
    return clip(y, t(0), t(1), out=y)


def clip(x, lo=None, hi=None, out=None):
    """min(max(x, lo), hi), NaN staying NaN (into ``out`` when given, which may be ``x`` itself), in one
    pass of numpy's clip loop: it is vectorized where maximum and minimum against a scalar are not
    (float32: 25 against 176 us on 123K values). A missing bound is the type's lowest or largest
    finite value, as ONNX says (so infinities become finite, as in onnxruntime); min > max gives max
    everywhere."""
    if lo is None or hi is None:
        limits = np.finfo(x.dtype) if x.dtype.kind == "f" else np.iinfo(x.dtype)
        t = x.dtype.type
        lo, hi = t(limits.min) if lo is None else lo, t(limits.max) if hi is None else hi
    return np.clip(x, lo, hi, out=out)


def elu(x, alpha=1.0):
    return np.where(x < 0, x.dtype.type(alpha) * np.expm1(np.minimum(x, 0)), x)


def selu(x, alpha=1.67326319217681884765625, gamma=1.05070102214813232421875):
    t = x.dtype.type
    return t(gamma) * np.where(x <= 0, t(alpha) * np.expm1(np.minimum(x, 0)), x)


def softplus(x):
    return np.logaddexp(x.dtype.type(0), x)


ACTIVATIONS = {
    "Relu": lambda x, params: relu(x),
    "Tanh": lambda x, params: np.tanh(x),
    "Sigmoid": lambda x, params: sigmoid(x),
    "LeakyRelu": lambda x, params: leaky_relu(x, *params[:1]),
    "HardSigmoid": lambda x, params: hard_sigmoid(x, *params[:2]),
    "Clip": lambda x, params: clip(x, *(x.dtype.type(p) for p in params[:2])),
}


@kernel("Relu", reuses_inputs=True)
def _relu(ctx, x, out=None):
    return relu(x, out)


@kernel("LeakyRelu")
def _leaky_relu(ctx, x):
    return leaky_relu(x, ctx.attr("alpha", 0.01))


@kernel("Sigmoid")
def _sigmoid(ctx, x):
    return sigmoid(x)


@kernel("HardSigmoid", reuses_inputs=True)
def _hard_sigmoid(ctx, x, out=None):
    return hard_sigmoid(x, ctx.attr("alpha", 0.2), ctx.attr("beta", 0.5), out)


@kernel("HardSwish", since=14)
def _hard_swish(ctx, x):
    y = hard_sigmoid(x, 1 / 6, 0.5)
    y *= x
    return y


@kernel("Elu")
def _elu(ctx, x):
    return elu(x, ctx.attr("alpha", 1.0))


@kernel("Selu")
def _selu(ctx, x):
    return selu(x, ctx.attr("alpha", 1.67326319217681884765625), ctx.attr("gamma", 1.05070102214813232421875))


@kernel("Celu", since=12)
def _celu(ctx, x):
    alpha = x.dtype.type(ctx.attr("alpha", 1.0))
    return np.maximum(x, 0) + np.minimum(0, alpha * np.expm1(np.minimum(x, 0) / alpha))


@kernel("ThresholdedRelu", since=10)
def _thresholded_relu(ctx, x):
    return np.where(x > x.dtype.type(ctx.attr("alpha", 1.0)), x, x.dtype.type(0))


@kernel("Softplus")
def _softplus(ctx, x):
    return softplus(x)


@kernel("Softsign")
def _softsign(ctx, x):
    return x / (1 + np.abs(x))


@kernel("Mish", since=18)
def _mish(ctx, x):
    return x * np.tanh(softplus(x))


def swish(x, alpha=1.0):
    return x * sigmoid(x * x.dtype.type(alpha))


@kernel("Swish", since=24)
def _swish(ctx, x):
    return swish(x, ctx.attr("alpha", 1.0))


@kernel("SwiGLU", since=28)
def _swiglu(ctx, gate, value):
    return swish(gate, ctx.attr("alpha", 1.0)) * value


@kernel("Shrink", since=9)
def _shrink(ctx, x):
    """x + bias below -lambd, x - bias above lambd, 0 between (in the input's type, integers too)."""
    t = x.dtype.type
    lambd, bias = ctx.attr("lambd", 0.5), ctx.attr("bias", 0.0)
    return np.where(x < -lambd, x + t(bias), np.where(x > lambd, x - t(bias), t(0))).astype(x.dtype, copy=False)


@kernel("Erf", since=9)
def _erf(ctx, x):
    return erf(x)


@kernel("Gelu", since=20)
def _gelu(ctx, x):
    t = x.dtype.type
    if ctx.attr("approximate", "none") == "tanh":
        inner = t(np.sqrt(2 / np.pi)) * (x + t(0.044715) * x * x * x)
        return t(0.5) * x * (1 + np.tanh(inner))
    return t(0.5) * x * (1 + erf(x * t(1 / np.sqrt(2))))


@kernel("PRelu", since=7)
def _prelu(ctx, x, slope):
    return np.where(x < 0, x * slope, x).astype(x.dtype, copy=False)


@kernel("PRelu", until=6)
def _prelu_legacy(ctx, x, slope):
    """Before opset 7 a 1-D slope of C values applies per channel (axis 1)."""
    if slope.ndim == 1 and x.ndim > 2 and slope.size == x.shape[1] and slope.size > 1:
        slope = slope.reshape((-1,) + (1,) * (x.ndim - 2))
    return np.where(x < 0, x * slope, x).astype(x.dtype, copy=False)


@kernel("Clip", until=10, reuses_inputs=True)
def _clip_attrs(ctx, x, out=None):
    """Bounds are attributes before opset 11."""
    t = x.dtype.type
    lo, hi = ctx.attr("min"), ctx.attr("max")
    return clip(x, None if lo is None else t(lo), None if hi is None else t(hi), out=out)


@kernel("Clip", since=11, reuses_inputs=True)
def _clip_inputs(ctx, x, lo=None, hi=None, out=None):
    """Bounds are optional scalar inputs from opset 11 (``out`` is only ever x's own buffer: a bound's
    shape never fits)."""
    return clip(x, lo, hi, out=_fits(out, x, x))


# ---------------------------------------------------------------------- unary math
def _unary(op_type, fn, since=1):
    kernel(op_type, since=since)(lambda ctx, x: fn(x))


for _op, _fn, _since in [
    ("Tanh", np.tanh, 1), ("Exp", np.exp, 1), ("Log", np.log, 1), ("Sqrt", np.sqrt, 1), ("Neg", np.negative, 1),
    ("Abs", np.abs, 1), ("Floor", np.floor, 1), ("Ceil", np.ceil, 1), ("Round", np.round, 11),
    ("Sign", np.sign, 9), ("Sin", np.sin, 7), ("Cos", np.cos, 7), ("Tan", np.tan, 7), ("Asin", np.arcsin, 7),
    ("Acos", np.arccos, 7), ("Atan", np.arctan, 7), ("Sinh", np.sinh, 9), ("Cosh", np.cosh, 9),
    ("Asinh", np.arcsinh, 9), ("Acosh", np.arccosh, 9), ("Atanh", np.arctanh, 9), ("Not", np.logical_not, 1),
    ("IsNaN", np.isnan, 9),
]:
    _unary(_op, _fn, _since)


@kernel("Reciprocal")
def _reciprocal(ctx, x):
    return (1 / x).astype(x.dtype, copy=False)


@kernel("IsInf", since=10)
def _isinf(ctx, x):
    pos, neg = bool(ctx.attr("detect_positive", 1)), bool(ctx.attr("detect_negative", 1))
    return (np.isposinf(x) & pos) | (np.isneginf(x) & neg)


# ---------------------------------------------------------------------- binary
def _int_div(a, b):
    """Integer division truncating toward zero, as C does (numpy floors)."""
    q = np.floor_divide(a, b)
    return np.where((q < 0) & (q * b != a), q + 1, q).astype(np.result_type(a, b), copy=False)


def _div(a, b, out=None):
    if np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer):
        return _int_div(a, b)  # truncates, which no ufunc writing into ``out`` does
    return np.divide(a, b, out=out)


def _pow(a, b):
    """The result has the base's type; a float exponent of an int base is applied in float64."""
    if np.issubdtype(a.dtype, np.floating):
        return np.power(a, b.astype(a.dtype, copy=False))
    if np.issubdtype(b.dtype, np.floating):
        return np.power(a.astype(np.float64), b).astype(a.dtype)
    return np.power(a, b.astype(a.dtype, copy=False))


_BINARY = {
    "Add": np.add, "Sub": np.subtract, "Mul": np.multiply, "Div": _div, "Pow": _pow,
    "And": np.logical_and, "Or": np.logical_or, "Xor": np.logical_xor,
    "Equal": np.equal, "Less": np.less, "Greater": np.greater,
}


def _legacy_broadcast(ctx, a, b):
    """Before opset 7, ``broadcast=1`` aligns B with A at ``axis`` (default: trailing axes)."""
    axis = ctx.attr("axis")
    if ctx.attr("broadcast", 0) and axis is not None and b.ndim:
        axis = axis % a.ndim if axis < 0 else axis
        b = b.reshape((1,) * axis + b.shape + (1,) * (a.ndim - axis - b.ndim))
    return a, b


def _fits(out, a, b):
    """``out`` (one of the inputs' buffers, or None) if it can hold ``a op b``: the type of both and
    the shape they broadcast to, which is ``out``'s own when the other input broadcasts onto it; and
    the other is C-contiguous too, so a fresh result would have had ``out``'s (C) layout as well."""
    if out is None or out.dtype != a.dtype or out.dtype != b.dtype:
        return None
    other = b if out is a else a
    if not other.flags.c_contiguous or other.ndim > out.ndim \
            or any(o != 1 and o != d for o, d in zip(other.shape[::-1], out.shape[::-1])):
        return None
    return out


def _register_binary(op_type, fn):
    @kernel(op_type, until=6)
    def legacy(ctx, a, b):
        return np.asarray(fn(*_legacy_broadcast(ctx, a, b)))

    @kernel(op_type, since=7, reuses_inputs=op_type in REUSES_INPUTS)
    def modern(ctx, a, b, out=None):  # ``out`` only ever comes to the ops in REUSES_INPUTS
        return np.asarray(fn(a, b) if out is None else fn(a, b, out=_fits(out, a, b)))


#: arithmetic that may write into a freed input's buffer (``_fits`` says when it may)
REUSES_INPUTS = frozenset({"Add", "Sub", "Mul", "Div"})
for _op, _fn in _BINARY.items():
    _register_binary(_op, _fn)

kernel("LessOrEqual", since=12)(lambda ctx, a, b: np.less_equal(a, b))
kernel("GreaterOrEqual", since=12)(lambda ctx, a, b: np.greater_equal(a, b))
kernel("BitwiseAnd", since=18)(lambda ctx, a, b: np.bitwise_and(a, b))
kernel("BitwiseOr", since=18)(lambda ctx, a, b: np.bitwise_or(a, b))
kernel("BitwiseXor", since=18)(lambda ctx, a, b: np.bitwise_xor(a, b))
kernel("BitwiseNot", since=18)(lambda ctx, x: np.invert(x))


@kernel("BitShift", since=11)
def _bit_shift(ctx, x, shift):
    shift = shift.astype(x.dtype, copy=False)
    return np.left_shift(x, shift) if ctx.attr("direction") == "LEFT" else np.right_shift(x, shift)


@kernel("Mod", since=10)
def _mod(ctx, a, b):
    if ctx.attr("fmod", 0):
        return np.fmod(a, b)
    return np.mod(a, b)


@kernel("Where", since=9)
def _where(ctx, cond, x, y):
    return np.where(cond, x, y)


# ---------------------------------------------------------------------- variadic
def _variadic(fn):
    return lambda ctx, *xs: functools.reduce(fn, xs)


kernel("Sum")(_variadic(np.add))
kernel("Max")(_variadic(np.maximum))
kernel("Min")(_variadic(np.minimum))


@kernel("Mean")
def _mean(ctx, *xs):
    total = functools.reduce(np.add, xs)
    return (total / total.dtype.type(len(xs))).astype(total.dtype, copy=False)
