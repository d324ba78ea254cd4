"""Recurrent ops: LSTM, GRU and RNN (ai.onnx), and com.microsoft DynamicQuantizeLSTM.

Each direction projects its whole input sequence with one matmul (all steps, all gates),
then loops over time steps only, vectorized over batch and gates. Per-batch
``sequence_lens`` follow onnxruntime: a reverse pass reverses each sequence within its own
length, outputs past a sequence's length are zero, Y_h / Y_c hold its last valid step
(zeros for an empty sequence).
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from optimizer.executor.elementwise import elu, hard_sigmoid, leaky_relu, relu, sigmoid, softplus
from optimizer.executor.quantize import centered_weights
from optimizer.executor.registry import kernel

# name -> (fn(x, alpha, beta), default alpha, default beta); None: the activation takes no such parameter.
# The spec says defaults are "the same as of corresponding ONNX operators"; onnxruntime instead uses 0 for
# Affine, ThresholdedRelu and ScaledTanh when activation_alpha / activation_beta run out.
_ACTIVATIONS: dict[str, tuple[Callable, float | None, float | None]] = {
    "relu": (lambda x, a, b: relu(x), None, None),
    "tanh": (lambda x, a, b: np.tanh(x), None, None),
    "sigmoid": (lambda x, a, b: sigmoid(x), None, None),
    "affine": (lambda x, a, b: x * a + b, 1.0, 0.0),
    "leakyrelu": (lambda x, a, b: leaky_relu(x, a), 0.01, None),
    "thresholdedrelu": (lambda x, a, b: np.where(x > a, x, x.dtype.type(0)), 1.0, None),
    "scaledtanh": (lambda x, a, b: np.tanh(x * b) * a, 1.0, 1.0),
    "hardsigmoid": (lambda x, a, b: hard_sigmoid(x, a, b), 0.2, 0.5),
    "elu": (lambda x, a, b: elu(x, a), 1.0, None),
    "softsign": (lambda x, a, b: x / (1 + np.abs(x)), None, None),
    "softplus": (lambda x, a, b: softplus(x), None, None),
}

#: Gate count and default activations per direction, by op.
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1, "DynamicQuantizeLSTM": 4}
_DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",),
                        "DynamicQuantizeLSTM": ("Sigmoid", "Tanh", "Tanh")}

Activation = Callable[[np.ndarray], np.ndarray]
Step = Callable[[np.ndarray, np.ndarray, "np.ndarray | None"], "tuple[np.ndarray, np.ndarray | None]"]


def _check_activations(node, opset: int) -> str | None:
    unknown = [a for a in node.attrs.get("activations") or () if a.lower() not in _ACTIVATIONS]
    if unknown:
        return f"activation {unknown[0]!r} is not one of those the recurrent ops define"
    if node.attrs.get("direction", "forward") not in ("forward", "reverse", "bidirectional"):
        return f"direction {node.attrs['direction']!r} is not forward, reverse or bidirectional"
    return None


def _activations(ctx, num_directions: int, dtype) -> list[list[Activation]]:
    """Activation functions per direction. Alphas and betas are consumed in order by the activations that
    take them (as onnxruntime does), defaults once they run out."""
    per_direction = _DEFAULT_ACTIVATIONS[ctx.node.op_type]
    names = list(ctx.attr("activations") or per_direction * num_directions)
    if num_directions == 1 and len(names) == 2 * len(per_direction):
        names = names[:len(per_direction)]  # RNN's schema default lists two even for one direction
    if len(names) != len(per_direction) * num_directions:
        raise ValueError(f"it lists {len(names)} activations, but needs {len(per_direction)} per direction "
                         f"for {num_directions} direction(s)")
    alphas, betas = iter(ctx.attr("activation_alpha") or ()), iter(ctx.attr("activation_beta") or ())
    t = np.dtype(dtype).type
    functions = []
    for name in names:
        fn, alpha, beta = _ACTIVATIONS[name.lower()]
        a = t(next(alphas, alpha)) if alpha is not None else None
        b = t(next(betas, beta)) if beta is not None else None
        functions.append(lambda x, fn=fn, a=a, b=b: fn(x, a, b))
    k = len(per_direction)
    return [functions[d * k:(d + 1) * k] for d in range(num_directions)]


def _clipper(ctx, dtype) -> Activation:
    """The cell clip, applied to every activation's input; identity when the attribute is absent."""
    threshold = ctx.attr("clip")
    if threshold is None:
        return lambda x: x
    bound = np.dtype(dtype).type(threshold)
    return lambda x: np.clip(x, -bound, bound)


def _reversed_time(lens: np.ndarray, seq_len: int) -> np.ndarray:
    """(seq, batch) time index that reverses each sequence within its own length, leaving padding in place.
    It is its own inverse, so it also puts reverse-pass outputs back in input order."""
    t = np.arange(seq_len)[:, None]
    return np.where(t < lens[None, :], lens[None, :] - 1 - t, t)


class _Recurrence:
    """What every recurrent op shares: attributes, layout, directions, sequence lengths and the time loop."""

    def __init__(self, ctx, x, sequence_lens, hidden_size: int):
        self.ctx = ctx
        self.direction = ctx.attr("direction", "forward")
        self.num_directions = 2 if self.direction == "bidirectional" else 1
        self.layout = int(ctx.attr("layout", 0)) if ctx.opset >= 14 and ctx.node.domain == "" else 0
        self.dtype = x.dtype  # float32 or float64: the executor widens narrower floats around kernels
        if x.ndim != 3:
            raise ValueError(f"X must have rank 3, not {x.ndim}")
        self.x = x.transpose(1, 0, 2) if self.layout else x
        self.seq_len, self.batch = self.x.shape[:2]
        self.hidden = hidden_size
        # every sequence runs every step: nothing to mask (an empty sequence still needs its zeros)
        self.full = sequence_lens is None and self.seq_len > 0
        if sequence_lens is None:
            self.lens = np.full(self.batch, self.seq_len, dtype=np.int64)
        else:
            self.lens = np.asarray(sequence_lens, dtype=np.int64).reshape(-1)
            if self.lens.shape != (self.batch,) or (self.lens < 0).any() or (self.lens > self.seq_len).any():
                raise ValueError(f"sequence_lens must hold {self.batch} lengths between 0 and {self.seq_len}")
        self.steps = self.seq_len if self.full else int(self.lens.max(initial=0))
        self.activations = ctx.by_shape(("recurrent activations", self.dtype),
                                        lambda: _activations(ctx, self.num_directions, self.dtype))
        self.clip = _clipper(ctx, self.dtype)

    def initial(self, state: np.ndarray | None) -> np.ndarray:
        """initial_h / initial_c as (num_directions, batch, hidden); zeros when omitted."""
        if state is None:
            return np.zeros((self.num_directions, self.batch, self.hidden), self.dtype)
        return state.transpose(1, 0, 2) if self.layout else state

    def run(self, cell: Callable[[int], tuple[Callable[[np.ndarray], np.ndarray], Step]],
            h0: np.ndarray, c0: np.ndarray | None = None):
        """Run every direction; ``cell(d)`` gives direction d's input projection (steps, batch, input) ->
        (steps, batch, gates) and its step (projected inputs, H, C) -> (H, C). Returns (Y, Y_h, Y_c)."""
        ctx, batch, hidden = self.ctx, self.batch, self.hidden
        wants_y = ctx.wants_output(0)
        if wants_y:
            ctx.guard((self.seq_len, self.num_directions, batch, hidden), self.dtype)
            y = np.zeros((self.seq_len, self.num_directions, batch, hidden), self.dtype)
        y_h = np.zeros((self.num_directions, batch, hidden), self.dtype)
        y_c = np.zeros_like(y_h) if c0 is not None else None
        empty = (self.lens == 0)[:, None]
        # the step the shortest sequence ends on (past the last one when all run every step)
        first_end = self.seq_len if self.full else int(self.lens.min(initial=0)) - 1
        for d in range(self.num_directions):
            reverse = d == 1 or self.direction == "reverse"
            order = _reversed_time(self.lens, self.seq_len) if reverse else None
            xs = self.x[:self.steps] if order is None else np.take_along_axis(self.x, order[:, :, None], 0)[:self.steps]
            project, step = cell(d)
            ctx.guard((self.steps, batch, _GATES[ctx.node.op_type] * hidden), self.dtype, "input projection")
            gates_x = project(xs)
            h, c = h0[d], None if c0 is None else c0[d]
            last_h = np.zeros((batch, hidden), self.dtype)
            for t in range(self.steps):
                h_new, c_new = step(gates_x[t], h, c)
                if t < first_end:  # every sequence runs on past this step: nothing to mask or record
                    h, c = h_new, c_new
                else:
                    active = (t < self.lens)[:, None]
                    # finished sequences feed zeros to the next step's matmul, as onnxruntime's output rows do
                    h = np.where(active, h_new, self.dtype.type(0))
                    if c is not None:
                        c = np.where(active, c_new, c)
                    last_h = np.where((t == self.lens - 1)[:, None], h, last_h)
                if wants_y:
                    y[t, d] = h
            if wants_y and order is not None:
                y[:, d] = np.take_along_axis(y[:, d], order[:, :, None], 0)
            y_h[d] = h if self.full else last_h
            if c is not None:
                y_c[d] = c if self.full else np.where(empty, self.dtype.type(0), c)
        outputs = [y if wants_y else None, y_h, y_c]
        if self.layout:
            outputs = [None if o is None else o.transpose((2, 0, 1, 3) if o.ndim == 4 else (1, 0, 2)) for o in outputs]
        return tuple(outputs)


def _split_bias(b: np.ndarray | None, num_directions: int, width: int, dtype) -> tuple[np.ndarray, np.ndarray]:
    """(Wb, Rb), each (num_directions, width); zeros when B is omitted."""
    if b is None:
        zeros = np.zeros((num_directions, width), dtype)
        return zeros, zeros
    return b[:, :width], b[:, width:]


# ---------------------------------------------------------------------- LSTM
def _lstm_step(recur: Callable[[np.ndarray], np.ndarray], peepholes: np.ndarray | None,
               activations: list[Activation], clip: Activation, input_forget: bool) -> Step:
    """One LSTM step, gates in ONNX order i, o, f, c; ``recur(H)`` is H @ R^T for all four gates."""
    f, g, h = activations

    def step(gates_x, h_prev, c_prev):
        gates = gates_x + recur(h_prev)
        hidden = gates.shape[1] // 4
        if peepholes is None:  # i, o and f lie side by side and take the same activation: one call for all three
            io_f = f(clip(gates[:, :3 * hidden]))
            i, o, forget = io_f[:, :hidden], io_f[:, hidden:2 * hidden], io_f[:, 2 * hidden:]
            c_new = (1 - i if input_forget else forget) * c_prev + i * g(clip(gates[:, 3 * hidden:]))
            return o * h(c_new), c_new
        i_in, o_in, f_in, c_in = (gates[:, k * hidden:(k + 1) * hidden] for k in range(4))
        p_i, p_o, p_f = peepholes
        i = f(clip(i_in + p_i * c_prev))
        forget = 1 - i if input_forget else f(clip(f_in + p_f * c_prev))
        c_new = forget * c_prev + i * g(clip(c_in))
        return f(clip(o_in + p_o * c_new)) * h(c_new), c_new

    return step


def _lstm(ctx, x, sequence_lens, initial_h, initial_c, p, b, hidden: int, project_w, recur_r):
    """The LSTM recurrence around the given input projection ``project_w(d, xs)`` and recurrent matmul
    ``recur_r(d, H)``: shared by ai.onnx LSTM and DynamicQuantizeLSTM, which differ only in those."""
    rec = _Recurrence(ctx, x, sequence_lens, hidden)
    wb, rb = _split_bias(b, rec.num_directions, 4 * hidden, rec.dtype)
    bias = wb + rb
    peepholes = None if p is None else p.reshape(rec.num_directions, 3, 1, hidden)
    input_forget = bool(ctx.attr("input_forget", 0))

    def cell(d):
        def project(xs):
            return project_w(d, xs) + bias[d]
        return project, _lstm_step(lambda h: recur_r(d, h), None if peepholes is None else peepholes[d],
                                   rec.activations[d], rec.clip, input_forget)

    return rec.run(cell, rec.initial(initial_h), rec.initial(initial_c))


@kernel("LSTM", check=_check_activations)
def _lstm_kernel(ctx, x, w, r, b=None, sequence_lens=None, initial_h=None, initial_c=None, p=None):
    w_t, r_t = w.transpose(0, 2, 1), r.transpose(0, 2, 1)
    hidden = int(ctx.attr("hidden_size", r.shape[-1]))
    return _lstm(ctx, x, sequence_lens, initial_h, initial_c, p, b, hidden,
                 lambda d, xs: xs @ w_t[d], lambda d, h: h @ r_t[d])


# ---------------------------------------------------------------------- GRU
@kernel("GRU", check=_check_activations)
def _gru(ctx, x, w, r, b=None, sequence_lens=None, initial_h=None):
    """Gates z, r, h. ``linear_before_reset`` (opset 3 on) applies Rh before multiplying by the reset gate."""
    hidden = int(ctx.attr("hidden_size", r.shape[-1]))
    rec = _Recurrence(ctx, x, sequence_lens, hidden)
    w_t, r_t = w.transpose(0, 2, 1), r.transpose(0, 2, 1)
    wb, rb = _split_bias(b, rec.num_directions, 3 * hidden, rec.dtype)
    linear_before_reset = ctx.opset >= 3 and bool(ctx.attr("linear_before_reset", 0))
    # Rb of the hidden gate sits inside the reset product when linear_before_reset is set
    bias_x = wb + rb * np.repeat([1, 1, 0 if linear_before_reset else 1], hidden).astype(rec.dtype)
    clip = rec.clip

    def cell(d):
        f, g = rec.activations[d]
        r_zr, r_h, rb_h = r_t[d][:, :2 * hidden], r_t[d][:, 2 * hidden:], rb[d][2 * hidden:]

        def step(gates_x, h_prev, _):
            if linear_before_reset:
                zr_h, hh_h = np.split(h_prev @ r_t[d], [2 * hidden], axis=1)
            else:
                zr_h = h_prev @ r_zr
            z, reset = np.split(f(clip(gates_x[:, :2 * hidden] + zr_h)), 2, axis=1)
            if linear_before_reset:
                candidate = gates_x[:, 2 * hidden:] + reset * (hh_h + rb_h)
            else:
                candidate = gates_x[:, 2 * hidden:] + (reset * h_prev) @ r_h
            return (1 - z) * g(clip(candidate)) + z * h_prev, None

        return (lambda xs: xs @ w_t[d] + bias_x[d]), step

    return rec.run(cell, rec.initial(initial_h))[:2]


# ---------------------------------------------------------------------- RNN
@kernel("RNN", check=_check_activations)
def _rnn(ctx, x, w, r, b=None, sequence_lens=None, initial_h=None):
    hidden = int(ctx.attr("hidden_size", r.shape[-1]))
    rec = _Recurrence(ctx, x, sequence_lens, hidden)
    w_t, r_t = w.transpose(0, 2, 1), r.transpose(0, 2, 1)
    wb, rb = _split_bias(b, rec.num_directions, hidden, rec.dtype)
    bias = wb + rb

    def cell(d):
        f, = rec.activations[d]

        def step(gates_x, h_prev, _):
            return f(rec.clip(gates_x + h_prev @ r_t[d])), None

        return (lambda xs: xs @ w_t[d] + bias[d]), step

    return rec.run(cell, rec.initial(initial_h))[:2]


# ---------------------------------------------------------------------- com.microsoft DynamicQuantizeLSTM
def dynamic_quantized_matmul(a: np.ndarray, centered_b: np.ndarray, b_scale: np.ndarray) -> np.ndarray:
    """a @ dequantized b the way onnxruntime's quantized RNN gemm computes it: a quantized to uint8 with one
    scale and zero point over the whole matrix (range widened to include 0, zero point rounded half to even),
    an exact integer product against b (int8 / uint8, shape (K, N), minus its first zero point), then scaled
    by a_scale * b_scale (per tensor or per column). Arithmetic is in a's type: float32 is onnxruntime's."""
    t = a.dtype.type
    lo, hi = a.min(initial=0), a.max(initial=0)
    scale = t(1) if hi == lo else (hi - lo) / t(255)
    zero_point = np.rint(np.clip(-lo / scale, 0, 255))
    centered_a = np.divide(a, scale)  # then rounded, shifted, saturated and centered in place
    np.rint(centered_a, out=centered_a)
    centered_a += zero_point
    np.clip(centered_a, 0, 255, out=centered_a)
    centered_a -= zero_point
    # exact: centered_b comes in the float type its products with uint8 activations need (CenteredWeights)
    acc = centered_a.astype(centered_b.dtype, copy=False) @ centered_b
    return acc.astype(a.dtype, copy=False) * (scale * b_scale.astype(a.dtype))


def _quantized_weights(ctx, key: str, w: np.ndarray, zero_point: np.ndarray) -> np.ndarray:
    """W or R, (num_directions, K, 4*hidden), each direction minus its first zero point (the only one
    onnxruntime's quantized gemm reads), as exact floats: computed once per executor for weights."""
    first = zero_point.reshape(w.shape[0], -1)[:, :1, None]
    return centered_weights(ctx, key, w, first, (1,), np.uint8).values


@kernel("DynamicQuantizeLSTM", domain="com.microsoft", check=_check_activations)
def _dynamic_quantize_lstm(ctx, x, w, r, b=None, sequence_lens=None, initial_h=None, initial_c=None, p=None,
                           w_scale=None, w_zero_point=None, r_scale=None, r_zero_point=None):
    """LSTM whose W and R are quantized and laid out (num_directions, K, 4*hidden), i.e. transposed
    against ai.onnx LSTM; X and H are quantized dynamically before each matmul."""
    hidden = int(ctx.attr("hidden_size", r.shape[1]))
    num_directions = w.shape[0]
    w_scale, r_scale = (s.reshape(num_directions, -1) for s in (w_scale, r_scale))
    w_centered = _quantized_weights(ctx, "W", w, w_zero_point)
    r_centered = _quantized_weights(ctx, "R", r, r_zero_point)

    def project_w(d, xs):
        flat = xs.reshape(-1, xs.shape[-1])
        return dynamic_quantized_matmul(flat, w_centered[d], w_scale[d]).reshape(xs.shape[:2] + (-1,))

    return _lstm(ctx, x, sequence_lens, initial_h, initial_c, p, b, hidden, project_w,
                 lambda d, h: dynamic_quantized_matmul(h, r_centered[d], r_scale[d]))
