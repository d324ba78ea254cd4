"""Property-based fuzzing of the default exact pipeline on random valid conv networks.

Hypothesis draws small opset-13 networks: chains, parallel branches summed (Add/Sum) or
concatenated, residual adds, BatchNormalization, per-channel affines (Mul/Add/Sub/Div by
(C,1,1)-like constants, and now and then one that varies spatially and must not fold),
ReLU/Clip, pooling, zero and non-zero Pads, 1x1 and KxK convs with groups (depthwise
too), strides, pads, auto_pad and dilations, weights shared between convs, Identity and
Dropout, op pairs that cancel (Transpose/Reshape/Unsqueeze-Squeeze/Cast round trips, some
with Constant-op or Shape-made operands), the same op twice on one tensor, and a
GlobalAveragePool -> Flatten -> Gemm head. Whatever the draw,
``optimizer.optimize`` must keep the outputs (checked again with onnxruntime on fresh
inputs), never add MACs or nodes, and give a model the onnx checker accepts.
``derandomize=True`` keeps CI reproducible; ``NINOPT_FUZZ_EXAMPLES`` asks for more. Each
failure found here is kept as a named regression test in ``tests/regressions/``.
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest
import onnx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import optimizer
from support import ort_run

EXAMPLES = int(os.environ.get("NINOPT_FUZZ_EXAMPLES", 500))
#: Rewrites per pass over the fuzz run, so a generator (or import path) that exercises nothing is caught.
FIRED: Counter = Counter()
#: Exact rewrites the generated networks must reach at least once per run.
EXERCISED = ("fold-pad", "fold-batchnorm", "fold-affine", "merge-parallel-branches", "canonicalize-conv1x1-gemm",
             "fuse-conv1x1-chain", "eliminate-identity", "eliminate-dropout", "dedupe-initializers",
             "constant-to-initializer", "fold-constants", "eliminate-cancelling-chains", "eliminate-common-subexpressions")
MAX_CHANNELS = 16


class NetBuilder:
    """Builds an opset-13 float32 network node by node, tracking the shape of every tensor."""

    def __init__(self, rng: np.random.Generator, channels: int, height: int, width: int):
        self.rng = rng
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self.shapes: dict[str, tuple[int, ...]] = {"x": (1, channels, height, width)}
        self.weights: dict[tuple[int, ...], str] = {}  # conv weights by shape, for sharing
        self.extra_outputs: list[str] = []
        self._count = 0

    def _name(self, prefix: str) -> str:
        self._count += 1
        return f"{prefix}{self._count}"

    def const(self, value, prefix: str = "c", dtype=np.float32) -> str:
        name = self._name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def node(self, op: str, inputs: list[str], shape: tuple[int, ...], **attrs) -> str:
        out = self._name(op.lower() + "_")
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        self.shapes[out] = shape
        return out

    def conv(self, x: str, cout: int, k: int, group: int, stride: int, dilation: int, pads: list[int],
             auto_pad: str, bias: bool, share: bool) -> str:
        _, cin, h, w = self.shapes[x]
        shape = (cout, cin // group, k, k)
        weight = self.weights.get(shape) if share else None
        if weight is None:
            weight = self.const(self.rng.standard_normal(shape) / np.sqrt(cin // group * k * k), "w")
            self.weights[shape] = weight
        inputs = [x, weight] + ([self.const(self.rng.standard_normal(cout) * 0.5, "b")] if bias else [])
        attrs = dict(kernel_shape=[k, k], group=group, strides=[stride, stride], dilations=[dilation, dilation])
        span = dilation * (k - 1) + 1
        if auto_pad == "NOTSET":
            attrs["pads"] = pads
            size = [(n + pads[i] + pads[i + 2] - span) // stride + 1 for i, n in enumerate((h, w))]
        elif auto_pad == "VALID":
            attrs["auto_pad"] = auto_pad
            size = [(n - span) // stride + 1 for n in (h, w)]
        else:
            attrs["auto_pad"] = auto_pad
            size = [-(-n // stride) for n in (h, w)]
        return self.node("Conv", inputs, (1, cout, *size), **attrs)

    def bn(self, x: str) -> str:
        c, rng = self.shapes[x][1], self.rng
        params = [rng.uniform(0.5, 1.5, c), rng.standard_normal(c) * 0.5, rng.standard_normal(c) * 0.5,
                  rng.uniform(0.5, 2.0, c)]
        return self.node("BatchNormalization", [x] + [self.const(p, "bn") for p in params], self.shapes[x],
                         epsilon=float(rng.choice([1e-5, 1e-3])))

    def affine(self, x: str, op: str, layout: str, const_first: bool) -> str:
        """``x op c`` for a constant ``c`` laid out per channel ((C,1,1), (1,C,1,1), (C,) unsqueezed, scalar)
        or spatially ((H,W): not per channel, must not fold)."""
        _, c, h, w = self.shapes[x]
        shape = {"c11": (c, 1, 1), "1c11": (1, c, 1, 1), "scalar": (), "c": (c,), "hw": (h, w)}[layout]
        value = self.rng.uniform(0.5, 1.5, shape) * self.rng.choice([-1, 1], shape)
        if layout == "c":  # older exporters: a (C,) constant brought to (C,1,1) by an Unsqueeze
            k = self.node("Unsqueeze", [self.const(value, "a"), self.const([1, 2], "axes", np.int64)], (c, 1, 1))
        else:  # now and then a Constant op, as paddle2onnx writes them
            k = self.constant_node(value) if self.rng.integers(0, 3) == 0 else self.const(value, "a")
        first = const_first and op != "Div"  # c / x is not affine
        return self.node(op, [k, x] if first else [x, k], self.shapes[x])

    def roundtrip(self, x: str, kind: str) -> str:
        """Two ops that cancel (exporters emit these around layout changes and dtype changes)."""
        n, c, h, w = shape = self.shapes[x]
        if kind == "transpose":
            y = self.node("Transpose", [x], (n, h, w, c), perm=[0, 2, 3, 1])
            return self.node("Transpose", [y], shape, perm=[0, 3, 1, 2])
        if kind == "cast":
            y = self.node("Cast", [x], shape, to=TensorProto.DOUBLE)
            return self.node("Cast", [y], shape, to=TensorProto.FLOAT)
        if kind == "unsqueeze":
            y = self.node("Unsqueeze", [x, self.constant_node([0], np.int64)], (1, *shape))
            return self.node("Squeeze", [y, self.constant_node([0], np.int64)], shape)
        y = self.node("Reshape", [x, self.const([n, c * h * w], "s", np.int64)], (n, c * h * w))
        target = self.node("Shape", [x], (4,)) if kind == "shape-reshape" else self.const(shape, "s", np.int64)
        return self.node("Reshape", [y, target], shape)

    def constant_node(self, value, dtype=np.float32) -> str:
        """A constant as a Constant op, as paddle2onnx and older exporters write them."""
        out = self._name("k")
        self.nodes.append(helper.make_node("Constant", [], [out], name=out,
                                           value=numpy_helper.from_array(np.asarray(value, dtype))))
        return out

    def unary(self, x: str, op: str) -> str:
        if op == "Clip":
            return self.node("Clip", [x, self.const(-1.0, "lo"), self.const(2.0, "hi")], self.shapes[x])
        return self.node(op, [x], self.shapes[x])

    def pad(self, x: str, pads: list[int], value: float | None, mode: str) -> str:
        """A Pad of the spatial axes; ``value`` None leaves the optional value input out."""
        n, c, h, w = self.shapes[x]
        full = [0, 0, pads[0], pads[1], 0, 0, pads[2], pads[3]]
        inputs = [x, self.const(full, "pads", np.int64)] + ([] if value is None else [self.const(value, "pv")])
        return self.node("Pad", inputs, (n, c, h + pads[0] + pads[2], w + pads[1] + pads[3]), mode=mode)

    def pool(self, x: str, op: str, k: int, stride: int, pads: list[int], count_include_pad: int, ceil: int) -> str:
        n, c, h, w = self.shapes[x]
        spans = [d + pads[i] + pads[i + 2] - k for i, d in enumerate((h, w))]
        if ceil and any(-(-s // stride) * stride >= d + pads[i] for i, (s, d) in enumerate(zip(spans, (h, w)))):
            ceil = 0  # runtimes disagree on a last window that starts in the end padding: stay clear of it
        size = [(-(-s // stride) if ceil else s // stride) + 1 for s in spans]
        attrs = {"kernel_shape": [k, k], "strides": [stride, stride], "pads": pads, "ceil_mode": ceil}
        if op == "AveragePool":
            attrs["count_include_pad"] = count_include_pad
        return self.node(op, [x], (n, c, *size), **attrs)

    def head(self, x: str, classes: int, hidden: int) -> str:
        """GlobalAveragePool [-> 1x1 Conv to ``hidden`` channels] -> Flatten -> Gemm to ``classes``."""
        n, c, _, _ = self.shapes[x]
        y = self.node("GlobalAveragePool", [x], (n, c, 1, 1))
        if hidden:
            y = self.conv(y, hidden, 1, 1, 1, 1, [0] * 4, "NOTSET", bias=True, share=False)
            c = hidden
        y = self.node("Flatten", [y], (n, c), axis=1)
        weight = self.const(self.rng.standard_normal((classes, c)) / np.sqrt(c), "fc")
        return self.node("Gemm", [y, weight, self.const(self.rng.standard_normal(classes), "fcb")], (n, classes),
                         transB=1)

    def model(self, out: str) -> onnx.ModelProto:
        outputs = [out] + [t for t in dict.fromkeys(self.extra_outputs) if t != out]
        graph = helper.make_graph(
            self.nodes, "fuzz", [helper.make_tensor_value_info("x", TensorProto.FLOAT, self.shapes["x"])],
            [helper.make_tensor_value_info(t, TensorProto.FLOAT, self.shapes[t]) for t in outputs], self.inits)
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
        model.ir_version = 8
        return model


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def conv_args(draw, b: NetBuilder, x: str, same: bool = False, cout: int | None = None) -> dict:
    """A valid Conv on ``x``; ``same`` keeps the spatial size (stride 1, symmetric pads) for branch sums."""
    _, cin, h, w = b.shapes[x]
    if cout is None:
        depthwise = cin > 1 and draw(st.booleans())
        cout = cin * draw(st.integers(1, max(1, MAX_CHANNELS // cin))) if depthwise else draw(st.integers(1, 16))
    else:
        depthwise = cin > 1 and cout % cin == 0 and draw(st.booleans())
    group = cin if depthwise else draw(st.sampled_from([g for g in _divisors(cin) if cout % g == 0]))
    k = draw(st.sampled_from([1, 1, 3] if same else [1, 1, 2, 3, 5]))
    dilation = 1 if k == 1 else draw(st.sampled_from([1, 1, 2]))
    span = dilation * (k - 1) + 1
    auto_pad, stride = "NOTSET", 1
    if same:
        p = (span - 1) // 2
        pads = [p] * 4
    else:
        stride = draw(st.sampled_from([1, 1, 2]))
        pads = [draw(st.integers(0, max(span - 1, 1))) for _ in range(4)] if draw(st.booleans()) else [0] * 4
        auto_pad = draw(st.sampled_from(["NOTSET"] * 6 + ["VALID", "SAME_UPPER", "SAME_LOWER"]))
        if auto_pad.startswith("SAME"):  # onnxruntime has no dilated SAME convs
            dilation, span = 1, k
        if min(h, w) < span or (auto_pad == "NOTSET" and min(h + pads[0] + pads[2], w + pads[1] + pads[3]) < span):
            k, dilation, auto_pad = 1, 1, "NOTSET"
    return dict(cout=cout, k=k, group=group, stride=stride, dilation=dilation, pads=pads, auto_pad=auto_pad,
                bias=draw(st.booleans()), share=draw(st.integers(0, 3)) == 0)


AFFINE_LAYOUTS = ["c11", "c11", "1c11", "scalar", "c"]


@st.composite
def affine(draw, b: NetBuilder, x: str, layouts=tuple(AFFINE_LAYOUTS)) -> str:
    return b.affine(x, draw(st.sampled_from(["Mul", "Add", "Mul", "Add", "Sub", "Div"])), draw(st.sampled_from(layouts)),
                    draw(st.booleans()))


@st.composite
def same_layer(draw, b: NetBuilder, x: str, cout: int | None = None) -> str:
    """A layer that keeps the spatial size: Conv (to ``cout`` channels if given), BN, affine, ReLU or avg pool."""
    kind = "conv" if cout is not None else draw(st.sampled_from(["conv", "conv", "bn", "affine", "relu", "avgpool"]))
    if kind == "conv":
        return b.conv(x, **draw(conv_args(b, x, same=True, cout=cout)))
    if kind == "bn":
        return b.bn(x)
    if kind == "affine":
        return draw(affine(b, x))
    if kind == "relu":
        return b.unary(x, "Relu")
    return b.pool(x, "AveragePool", 3, 1, [1, 1, 1, 1], draw(st.sampled_from([0, 1])), 0)


@st.composite
def branch(draw, b: NetBuilder, x: str, cout: int) -> str:
    """1..3 spatial-size-keeping layers on ``x`` ending with ``cout`` channels."""
    y = x
    for _ in range(draw(st.integers(1, 3))):
        y = draw(same_layer(b, y, cout if b.shapes[y][1] != cout and draw(st.booleans()) else None))
    if b.shapes[y][1] != cout:
        y = draw(same_layer(b, y, cout))
    return y


@st.composite
def block(draw, b: NetBuilder, x: str) -> str:
    """One random block on ``x``; returns its output tensor."""
    n, c, h, w = b.shapes[x]
    kind = draw(st.sampled_from(["conv", "conv", "conv", "bn", "affine", "act", "pool", "pad", "pad", "noop", "sum",
                                 "sum", "concat", "residual", "roundtrip", "twins"]))
    if kind == "conv":
        return b.conv(x, **draw(conv_args(b, x)))
    if kind == "bn":
        return b.bn(x)
    if kind == "affine":
        return draw(affine(b, x, tuple(AFFINE_LAYOUTS + ["hw"])))
    if kind == "act":
        return b.unary(x, draw(st.sampled_from(["Relu", "Clip"])))
    if kind == "noop":
        return b.unary(x, draw(st.sampled_from(["Identity", "Dropout"])))
    if kind == "roundtrip":
        return b.roundtrip(x, draw(st.sampled_from(["transpose", "reshape", "shape-reshape", "unsqueeze", "cast"])))
    if kind == "twins":  # the same op twice on one tensor, summed: common-subexpression elimination merges them
        op = draw(st.sampled_from(["Relu", "Sigmoid"]))
        return b.node("Add", [b.unary(x, op), b.unary(x, op)], (n, c, h, w))
    if kind == "pad":  # zero pads fold into a Conv/AveragePool after them; the rest must stay
        pads = [draw(st.integers(0, 2)) for _ in range(4)]
        kind = draw(st.sampled_from(["zero", "zero", "explicit zero", "value", "reflect", "edge"]))
        value = {"explicit zero": 0.0, "value": 0.5}.get(kind)
        y = b.pad(x, pads, value, kind if kind in ("reflect", "edge") and min(h, w) > 2 else "constant")
        reader = draw(st.sampled_from(["conv", "conv", "conv", "avgpool", "avgpool", "maxpool"]))
        if reader == "conv":
            return b.conv(y, **draw(conv_args(b, y)))
        k = draw(st.integers(1, 3))
        return b.pool(y, "AveragePool" if reader == "avgpool" else "MaxPool", k, 1, [draw(st.integers(0, k - 1))] * 4,
                      draw(st.sampled_from([1, 1, 0])), 0)
    if kind == "pool":
        op = draw(st.sampled_from(["MaxPool", "AveragePool"]))
        k = draw(st.sampled_from([2, 3])) if min(h, w) >= 3 else 1
        pads = [draw(st.integers(0, k - 1)) for _ in range(4)] if draw(st.booleans()) else [0] * 4
        return b.pool(x, op, k, draw(st.sampled_from([1, 2])), pads, draw(st.sampled_from([0, 1])),
                      draw(st.sampled_from([0, 0, 1])))
    if kind == "residual":
        y = draw(branch(b, x, cout=c))
        return b.node("Add", [y, x] if draw(st.booleans()) else [x, y], (n, c, h, w))
    count = draw(st.integers(2, 3))
    if kind == "sum":
        cout = draw(st.sampled_from([c, draw(st.integers(1, MAX_CHANNELS))]))
        ys = [x if cout == c and draw(st.integers(0, 4)) == 0 else draw(branch(b, x, cout)) for _ in range(count)]
        if draw(st.booleans()):
            return b.node("Sum", ys, (n, cout, h, w))
        y = ys[0]
        for other in ys[1:]:
            y = b.node("Add", [y, other], (n, cout, h, w))
        return y
    ys = [draw(branch(b, x, draw(st.integers(1, MAX_CHANNELS // count)))) for _ in range(count)]
    return b.node("Concat", ys, (n, sum(b.shapes[y][1] for y in ys), h, w), axis=1)


@st.composite
def networks(draw) -> onnx.ModelProto:
    """A random valid conv network: one input, 1..6 blocks, an optional classifier head, maybe a second output."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    b = NetBuilder(rng, draw(st.integers(1, 8)), draw(st.integers(5, 12)), draw(st.integers(5, 12)))
    y = "x"
    for _ in range(draw(st.integers(1, 6))):
        y = draw(block(b, y))
        if y != "x" and draw(st.integers(0, 7)) == 0:
            b.extra_outputs.append(y)  # an intermediate read by later nodes and by the user
    if draw(st.integers(0, 4)) == 0:
        y = b.head(y, draw(st.integers(1, 10)), draw(st.sampled_from([0, 0, draw(st.integers(1, MAX_CHANNELS))])))
    if y == "x":
        y = b.unary(y, "Relu")
    return b.model(y)


def _max_rel(expected: np.ndarray, actual: np.ndarray) -> float:
    scale = float(np.abs(expected).max(initial=0.0))
    diff = float(np.abs(actual.astype(np.float64) - expected).max(initial=0.0))
    return diff / scale if scale > 0 else diff


def check_pipeline_keeps_model(model: onnx.ModelProto, seed: int = 0) -> None:
    """The property: verified outputs, no growth, a valid model, and onnxruntime agrees on fresh inputs."""
    onnx.checker.check_model(model, full_check=True)  # the generator itself must only make valid models
    result = optimizer.optimize(model)  # verifies with the executor; raises VerificationError on drift
    FIRED.update({p.name: p.rewrites for p in result.pipeline.passes} | {"(examples)": 1})
    assert result.after.macs <= result.before.macs
    assert result.after.nodes <= result.before.nodes
    optimized = result.model
    onnx.checker.check_model(optimized, full_check=True)
    assert [o.name for o in optimized.graph.output] == [o.name for o in model.graph.output]
    shape = [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim]
    feeds = {"x": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}
    for e, a in zip(ort_run(model, feeds), ort_run(optimized, feeds), strict=True):
        assert a.shape == e.shape
        assert _max_rel(e, a) <= 1e-5


@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(model=networks(), seed=st.integers(0, 2**16))
def test_default_pipeline_keeps_outputs_and_never_grows(model: onnx.ModelProto, seed: int) -> None:
    check_pipeline_keeps_model(model, seed)


def test_fuzz_run_exercised_every_exact_rewrite() -> None:
    """Runs after the fuzz test: a pipeline that never fired (say, an empty pass registry) would pass vacuously."""
    if not FIRED["(examples)"]:
        pytest.skip("the fuzz test did not run in this session")
    assert [name for name in EXERCISED if not FIRED[name]] == []
