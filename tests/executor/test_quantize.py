"""Quantization kernels: the official ONNX node cases (shared with the conformance suite, generated
once per session), and property tests against onnxruntime.

Integer outputs must match onnxruntime exactly; float outputs of DequantizeLinear too, since both
compute (x - zero_point) * scale in float32.
"""

from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper, numpy_helper

from optimizer import onnx_io
from optimizer.executor import Executor, KernelError, conformance
from optimizer.executor.quantize import centered_weights
from support import assert_matches_onnxruntime, one_node_model as make_model, run_ort, run_ours

SETTINGS = dict(max_examples=50, derandomize=True, deadline=None, database=None,
                suppress_health_check=[HealthCheck.too_slow])
QUANTIZE_OPS = ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear", "ConvInteger", "MatMulInteger",
                "QLinearConv", "QLinearMatMul")
FLOAT8 = (ml_dtypes.float8_e4m3fn, ml_dtypes.float8_e4m3fnuz, ml_dtypes.float8_e5m2, ml_dtypes.float8_e5m2fnuz)


OFFICIAL = [case for case in conformance.node_cases() if case.model.graph.node[0].op_type in QUANTIZE_OPS]


def test_every_quantization_op_has_official_cases():
    assert {case.model.graph.node[0].op_type for case in OFFICIAL} == set(QUANTIZE_OPS)


@pytest.mark.parametrize("case", OFFICIAL, ids=lambda case: case.name)
def test_official_node_case(case):
    """At the case's own tolerances, with dtypes and shapes exact (no case is skipped: ml_dtypes holds
    every type they use, float8, int4, int2 and float4 included)."""
    result = conformance.check_case(case)
    assert result.status == conformance.PASSED, result.detail


# ---------------------------------------------------------------------- helpers
def assert_same(model, feeds):
    """Our outputs equal onnxruntime's exactly (dtype, shape and every value; NaN matches NaN)."""
    assert_matches_onnxruntime(model, feeds)


def integers(rng, dtype, shape, low=None, high=None):
    info = ml_dtypes.iinfo(dtype)
    low = int(info.min) if low is None else low
    high = int(info.max) if high is None else high
    return rng.integers(low, high + 1, size=shape).astype(dtype)


def activations(rng, a_type, b_type, shape):
    """Random activations (or their zero point, which pads them); with uint8 activations and int8 weights
    only 7 bits of them, because onnxruntime's AVX2 u8s8 kernels add product pairs in saturating int16
    (its documented reason for ``reduce_range``), which the spec forbids and ninopt does not copy."""
    high = 127 if (np.dtype(a_type), np.dtype(b_type)) == (np.uint8, np.int8) else None
    return integers(rng, a_type, shape, high=high)


def qdq_model(x: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, opset: int,
              **quantize_attrs) -> onnx.ModelProto:
    """QuantizeLinear then DequantizeLinear: float in and out, so formats onnxruntime's Python API cannot
    hand over (int4, float8) are still compared, through the dequantized values."""
    names = ["x", "scale"] + (["zero_point"] if zero_point is not None else [])
    dq_attrs = {k: v for k, v in quantize_attrs.items() if k in ("axis", "block_size")}
    nodes = [helper.make_node("QuantizeLinear", names, ["q"], **quantize_attrs),
             helper.make_node("DequantizeLinear", ["q"] + names[1:], ["y"], **dq_attrs)]
    inits = [numpy_helper.from_array(scale, "scale")]
    if zero_point is not None:
        inits.append(numpy_helper.from_array(zero_point, "zero_point"))
    graph = helper.make_graph(nodes, "qdq", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x.shape)],
                              [onnx.ValueInfoProto(name="y")], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=10)


@st.composite
def quantization_configs(draw, opsets=(10, 13, 19, 21, 23)):
    """x (with exact .5 ties and values past the saturation range), scale and zero point, granularity."""
    opset = draw(st.sampled_from(opsets))
    rank = draw(st.integers(1, 4))
    shape = tuple(draw(st.integers(1, 4)) for _ in range(rank))
    granularity = draw(st.sampled_from(["tensor"] + (["axis"] if opset >= 13 else [])
                                       + (["block"] if opset >= 21 else [])))
    axis = draw(st.integers(-rank, rank - 1))
    types = [np.uint8, np.int8] + ([np.uint16, np.int16, ml_dtypes.uint4, ml_dtypes.int4] if opset >= 21 else [])
    qtype = np.dtype(draw(st.sampled_from(types)))
    seed = draw(st.integers(0, 2**16))
    rng = np.random.default_rng(seed)
    if granularity == "tensor":
        param_shape: tuple[int, ...] = ()
    elif granularity == "axis":
        param_shape = (shape[axis],)
    else:
        block = draw(st.integers(1, 3))
        param_shape = tuple(-(-d // block) if i == axis % rank else d for i, d in enumerate(shape))
    scale = (2.0 ** rng.integers(-3, 3, size=param_shape) * rng.choice([1, 1, 0.3], size=param_shape))
    scale = scale.astype(np.float32)
    omit_zero_point = qtype == np.uint8 and draw(st.booleans())  # uint8 is the default type
    zero_point = None if omit_zero_point else integers(rng, qtype, param_shape)
    if granularity == "axis":
        scale_of_x = scale.reshape((-1,) + (1,) * (rank - axis % rank - 1))
    elif granularity == "block":
        scale_of_x = np.repeat(scale, block, axis=axis)[(slice(None),) * (axis % rank) + (slice(0, shape[axis]),)]
    else:
        scale_of_x = scale
    spread = int(ml_dtypes.iinfo(qtype).max * 2.6)  # half-steps reaching 30% past the range
    x = rng.integers(-2 * spread, 2 * spread, size=shape) / 2.0 * scale_of_x * rng.choice([1, 1, 1.01], size=shape)
    attrs = {}
    if granularity != "tensor":
        attrs["axis"] = axis
    if granularity == "block":
        attrs["block_size"] = block
    return opset, x.astype(np.float32), scale, zero_point, attrs


# ---------------------------------------------------------------------- QuantizeLinear / DequantizeLinear
@settings(**SETTINGS)
@given(quantization_configs())
def test_quantize_dequantize_match_onnxruntime(config):
    opset, x, scale, zero_point, attrs = config
    assert_same(qdq_model(x, scale, zero_point, opset, **attrs), {"x": x})
    q_type = zero_point.dtype if zero_point is not None else np.dtype(np.uint8)
    if q_type.itemsize > 1 or q_type in (np.uint8, np.int8):  # onnxruntime's Python API holds these
        inits = {"scale": scale} | ({"zero_point": zero_point} if zero_point is not None else {})
        assert_same(make_model("QuantizeLinear", {"x": x}, initializers=inits, opset=opset, **attrs), {"x": x})


@settings(**SETTINGS)
@given(st.sampled_from(FLOAT8), st.sampled_from([0, 1]), st.integers(0, 2**16))
def test_float8_quantize_saturates_like_onnxruntime(float8, saturate, seed):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((3, 5)) * 10.0 ** rng.integers(-3, 6, size=(3, 5))).astype(np.float32)
    x[0, :3] = [np.inf, -np.inf, np.nan]
    scale = np.float32(2.0 ** rng.integers(-4, 4))
    assert_same(qdq_model(x, scale, np.zeros((), float8), 19, saturate=saturate), {"x": x})


def test_quantize_rounds_half_to_even_and_saturates():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 1000.0, -1000.0], np.float32)
    model = make_model("QuantizeLinear", {"x": x}, initializers={"scale": np.float32(1), "zp": np.int8(0)})
    np.testing.assert_array_equal(run_ours(model, {"x": x})[0], [0, 2, 2, 0, -2, 127, -128])


def test_quantize_without_zero_point_takes_output_dtype():
    x = np.array([-3.0, 40.0], np.float32)
    model = make_model("QuantizeLinear", {"x": x}, initializers={"scale": np.float32(2)}, opset=21,
                       output_dtype=onnx.TensorProto.INT4)
    y = run_ours(model, {"x": x})[0]
    assert y.dtype == ml_dtypes.int4 and y.astype(int).tolist() == [-2, 7]


def test_precision_attribute_sets_the_division_type():
    """opset 23: precision=FLOAT16 rounds x / scale to float16 first (3.4998 -> 3.5 -> 4, not 3)."""
    x = np.array([3.4998, 100.3, -7.77, 1e5], np.float32)
    model = make_model("QuantizeLinear", {"x": x}, initializers={"scale": np.float32(1), "zp": np.int16(0)},
                       opset=23, precision=onnx.TensorProto.FLOAT16)
    assert run_ours(model, {"x": x})[0].tolist() == [4, 100, -8, 32767]
    assert_same(model, {"x": x})


@pytest.mark.parametrize("opset", [10, 13, 21])
def test_dequantize_int32_matches_onnxruntime(opset):
    q = np.array([-100000, 5, 2**30, -(2**31)], np.int32)
    assert_same(make_model("DequantizeLinear", {"q": q}, initializers={"scale": np.float32(0.37)}, opset=opset),
                {"q": q})


def test_int4_weights_reach_the_kernel_through_load_and_external_data(tmp_path):
    """onnx_io hands int4 initializers over as ml_dtypes arrays, packed two per byte on disk."""
    weights = np.resize(np.arange(-8, 8), (64, 65)).astype(ml_dtypes.int4)
    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["w", "scale"], ["y"])], "int4", [], [onnx.ValueInfoProto(name="y")],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(np.float32(0.5), "scale")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)], ir_version=10)
    path = tmp_path / "int4.onnx"
    onnx_io.save(onnx_io.load(model), path, external_data=True)
    assert (tmp_path / "int4.onnx.data").stat().st_size == weights.size // 2
    y = Executor(onnx_io.load(path)).run({})["y"]
    np.testing.assert_array_equal(y, weights.astype(np.float32) * 0.5)


def test_per_axis_scale_before_opset_13_is_refused():
    x = np.ones((2, 3), np.float32)
    model = make_model("QuantizeLinear", {"x": x}, initializers={"scale": np.ones(3, np.float32)}, opset=10)
    with pytest.raises(KernelError, match="before opset 13"):
        run_ours(model, {"x": x})


# ---------------------------------------------------------------------- DynamicQuantizeLinear
@settings(**SETTINGS)
@given(st.integers(1, 40), st.floats(-50, 50), st.floats(0, 100), st.integers(0, 2**16))
def test_dynamic_quantize_linear_matches_onnxruntime(size, center, spread, seed):
    x = (center + spread * np.random.default_rng(seed).standard_normal(size)).astype(np.float32)
    assert_same(make_model("DynamicQuantizeLinear", {"x": x}, 3, opset=11), {"x": x})


def test_dynamic_quantize_linear_of_zeros_uses_unit_scale():
    x = np.zeros(4, np.float32)
    assert_same(make_model("DynamicQuantizeLinear", {"x": x}, 3, opset=11), {"x": x})


# ---------------------------------------------------------------------- integer conv and matmul
@st.composite
def integer_conv_configs(draw):
    nd = draw(st.sampled_from([1, 2, 2]))
    group = draw(st.sampled_from([1, 1, 2, 3]))
    cg, mg = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    k = [draw(st.integers(1, 3)) for _ in range(nd)]
    size = [draw(st.integers(k_, 6)) for k_ in k]
    attrs = dict(kernel_shape=k, group=group, strides=[draw(st.integers(1, 2)) for _ in range(nd)],
                 pads=[draw(st.integers(0, 1)) for _ in range(2 * nd)])
    x_type, w_type = draw(st.sampled_from([(np.uint8, np.uint8), (np.uint8, np.int8), (np.int8, np.int8)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = activations(rng, x_type, w_type, (draw(st.integers(1, 2)), group * cg, *size))
    w = integers(rng, w_type, (group * mg, cg, *k))
    return x, w, attrs, rng


@settings(**SETTINGS)
@given(integer_conv_configs(), st.booleans())
def test_conv_integer_matches_onnxruntime(config, with_zero_points):
    x, w, attrs, rng = config
    inits = {"w": w}
    if with_zero_points:
        inits |= {"x_zero_point": activations(rng, x.dtype, w.dtype, ()), "w_zero_point": integers(rng, w.dtype, ())}
    assert_same(make_model("ConvInteger", {"x": x}, initializers=inits, opset=10, **attrs), {"x": x})


def test_conv_integer_per_channel_weight_zero_point_equals_each_channel_alone():
    """onnxruntime takes only a scalar weight zero point: compare channel by channel."""
    rng = np.random.default_rng(0)
    x, w = integers(rng, np.uint8, (1, 2, 5, 5)), integers(rng, np.uint8, (3, 2, 3, 3))
    x_zp, w_zp = np.uint8(7), np.array([0, 100, 255], np.uint8)
    both = make_model("ConvInteger", {"x": x}, initializers={"w": w, "xz": x_zp, "wz": w_zp}, opset=10, pads=[1] * 4)
    got = run_ours(both, {"x": x})[0]
    for m in range(3):
        one = make_model("ConvInteger", {"x": x}, initializers={"w": w[m:m + 1], "xz": x_zp, "wz": w_zp[m]},
                         opset=10, pads=[1] * 4)
        np.testing.assert_array_equal(got[:, m:m + 1], run_ort(one, {"x": x})[0])


@st.composite
def integer_matmul_configs(draw):
    batch = tuple(draw(st.integers(1, 3)) for _ in range(draw(st.integers(0, 2))))
    m, k, n = draw(st.integers(1, 5)), draw(st.integers(1, 40)), draw(st.integers(1, 5))
    a_type, b_type = draw(st.sampled_from([(np.uint8, np.uint8), (np.uint8, np.int8), (np.int8, np.int8)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    return activations(rng, a_type, b_type, batch + (m, k)), integers(rng, b_type, (k, n)), rng


def matmul_integer_weights(config, zero_points: str) -> dict[str, np.ndarray]:
    """MatMulInteger's B and, unless ``zero_points`` is "none", both zero points (B's scalar or per column)."""
    a, b, rng = config
    weights = {"b": b}
    if zero_points != "none":
        weights |= {"a_zero_point": activations(rng, a.dtype, b.dtype, ()),
                    "b_zero_point": integers(rng, b.dtype, () if zero_points == "scalar" else (b.shape[-1],))}
    return weights


@settings(**SETTINGS)
@given(integer_matmul_configs(), st.sampled_from(["none", "scalar", "per-column"]))
def test_matmul_integer_matches_onnxruntime(config, zero_points):
    a = config[0]
    inits = matmul_integer_weights(config, zero_points)
    assert_same(make_model("MatMulInteger", {"a": a}, initializers=inits, opset=10), {"a": a})


def test_matmul_integer_per_row_a_zero_point_subtracts_row_by_row():
    a = np.array([[10, 20], [30, 40], [50, 60]], np.uint8)
    b = np.array([[1, 2], [3, 4]], np.uint8)
    a_zp = np.array([1, 2, 3], np.uint8)
    model = make_model("MatMulInteger", {"a": a}, initializers={"b": b, "a_zero_point": a_zp}, opset=10)
    want = (a.astype(np.int32) - a_zp[:, None]) @ b.astype(np.int32)
    np.testing.assert_array_equal(run_ours(model, {"a": a})[0], want)


def scales(rng, shape=()):
    return (rng.uniform(0.5, 2.0, size=shape) * 10.0 ** rng.integers(-3, 0, size=shape)).astype(np.float32)


def output_scale(rng, input_scale, weight_scale):
    """y_scale 1-1000 times input_scale * weight_scale: outputs both inside and past the saturation range."""
    return np.float32(input_scale * weight_scale.max() * rng.uniform(1, 1000))


@settings(**SETTINGS)
@given(integer_conv_configs(), st.booleans(), st.booleans())
def test_qlinear_conv_matches_onnxruntime(config, per_channel, bias):
    x, w, attrs, rng = config
    m = w.shape[0]
    inits = {"x_scale": scales(rng), "x_zero_point": activations(rng, x.dtype, w.dtype, ()), "w": w,
             "w_scale": scales(rng, (m,) if per_channel else ()),
             "w_zero_point": integers(rng, w.dtype, (m,) if per_channel else ()) if w.dtype == np.uint8
             else np.zeros((m,) if per_channel else (), np.int8),
             "y_scale": None, "y_zero_point": integers(rng, x.dtype, ())}
    inits["y_scale"] = output_scale(rng, inits["x_scale"], inits["w_scale"])
    if bias:
        inits["B"] = rng.integers(-5000, 5000, size=m).astype(np.int32)
    assert_same(make_model("QLinearConv", {"x": x}, initializers=inits, opset=10, **attrs), {"x": x})


@settings(**SETTINGS)
@given(integer_matmul_configs(), st.booleans(), st.sampled_from([10, 21]))
def test_qlinear_matmul_matches_onnxruntime(config, per_column, opset):
    a, b, rng = config
    n = b.shape[-1]
    inits = {"a_scale": scales(rng), "a_zero_point": activations(rng, a.dtype, b.dtype, ()), "b": b,
             "b_scale": scales(rng, (n,) if per_column else ()),
             "b_zero_point": integers(rng, b.dtype, (n,) if per_column else ()),
             "y_scale": None, "y_zero_point": integers(rng, a.dtype, ())}
    inits["y_scale"] = output_scale(rng, inits["a_scale"], inits["b_scale"])
    names = ["a", "a_scale", "a_zero_point", "b", "b_scale", "b_zero_point", "y_scale", "y_zero_point"]
    assert_same(make_model("QLinearMatMul", {"a": a}, initializers=inits, opset=opset, input_names=names),
                {"a": a})


@pytest.mark.parametrize("op", ["QLinearMatMul", "QLinearConv"])
def test_requantization_rounds_ties_to_even(op):
    """Accumulators 1, 3, 5, -3, -5 times a multiplier of 0.5 are exact ties: 0, 2, 2, -2, -2 (+ zero point 10)."""
    values = np.array([1, 3, 5, -3, -5], np.int8)
    one, half = np.float32(1), np.float32(2)
    if op == "QLinearMatMul":
        feeds = {"a": values.reshape(5, 1)}
        inits = {"a_scale": one, "a_zero_point": np.int8(0), "b": np.ones((1, 1), np.int8), "b_scale": one,
                 "b_zero_point": np.int8(0), "y_scale": half, "y_zero_point": np.int8(10)}
    else:
        feeds = {"x": values.reshape(1, 1, 5)}
        inits = {"x_scale": one, "x_zero_point": np.int8(0), "w": np.ones((1, 1, 1), np.int8), "w_scale": one,
                 "w_zero_point": np.int8(0), "y_scale": half, "y_zero_point": np.int8(10)}
    model = make_model(op, feeds, initializers=inits, opset=10)
    assert run_ours(model, feeds)[0].ravel().tolist() == [10, 12, 12, 8, 8]
    assert_same(model, feeds)


def test_float8_qlinear_matmul_requantizes_and_saturates():
    """opset 21 float8 operands (onnxruntime has no CPU kernel for them): y = saturate(a @ b * 1 * 1 / 0.5)."""
    e4m3 = ml_dtypes.float8_e4m3fn
    a = np.array([[1, 2], [3, 448]], e4m3)
    zero = np.zeros((), e4m3)
    inits = {"a_scale": np.float32(1), "a_zero_point": zero, "b": (2 * np.eye(2)).astype(e4m3),
             "b_scale": np.float32(1), "b_zero_point": zero, "y_scale": np.float32(0.5), "y_zero_point": zero}
    y = run_ours(make_model("QLinearMatMul", {"a": a}, initializers=inits, opset=21), {"a": a})[0]
    assert y.dtype == e4m3 and y.astype(np.float32).tolist() == [[4, 8], [12, 448]]


# ---------------------------------------------------------------------- weights kept per executor, exact float32
class NoCache:
    """A kernel context that remembers nothing: every call centers the weights afresh."""

    def derived(self, key, source, make):
        return make(source)


def run_twice(model, feeds) -> list[np.ndarray]:
    """Two runs of one executor (the second reads what the first kept): they must agree; the second's outputs."""
    executor = Executor(onnx_io.load(model))
    first, second = executor.run(feeds), executor.run(feeds)
    for name in first:
        assert first[name].dtype == second[name].dtype
        np.testing.assert_array_equal(first[name], second[name])
    return [second[name] for name in executor.graph.outputs]


def assert_weights_fed_or_kept_agree(op, feeds, weights, **attrs):
    """The op gives bit-identical outputs whether its weights are initializers (centered once, kept) or fed."""
    kept = run_twice(make_model(op, feeds, initializers=weights, opset=10, **attrs), feeds)
    everything = feeds | weights
    fed = run_twice(make_model(op, everything, opset=10, **attrs), everything)
    for k, f in zip(kept, fed):
        assert k.dtype == f.dtype
        np.testing.assert_array_equal(k, f)


@settings(**SETTINGS)
@given(integer_matmul_configs(), st.sampled_from(["none", "scalar", "per-column"]))
def test_matmul_integer_weights_kept_or_fed_agree(config, zero_points):
    assert_weights_fed_or_kept_agree("MatMulInteger", {"a": config[0]}, matmul_integer_weights(config, zero_points))


@settings(**SETTINGS)
@given(integer_conv_configs(), st.booleans())
def test_conv_integer_weights_kept_or_fed_agree(config, per_channel):
    x, w, attrs, rng = config
    m = w.shape[0]
    weights = {"w": w, "x_zero_point": activations(rng, x.dtype, w.dtype, ()),
               "w_zero_point": integers(rng, w.dtype, (m,) if per_channel else ())}
    assert_weights_fed_or_kept_agree("ConvInteger", {"x": x}, weights, **attrs)


def test_weight_zero_point_fed_at_run_time_is_applied_on_every_run():
    """Kept weights are centered on the zero point they first met; a fed one that changes centers afresh."""
    rng = np.random.default_rng(3)
    a, b = integers(rng, np.uint8, (3, 6)), integers(rng, np.uint8, (6, 4))
    model = make_model("MatMulInteger", {"a": a, "b_zero_point": np.uint8(0)}, initializers={"b": b}, opset=10,
                       input_names=["a", "b", "", "b_zero_point"])
    executor = Executor(onnx_io.load(model))
    for zero_point in (0, 200, 0):
        feeds = {"a": a, "b_zero_point": np.uint8(zero_point)}
        want = a.astype(np.int32) @ (b.astype(np.int32) - zero_point)
        np.testing.assert_array_equal(executor.run(feeds)["y0"], want)


@pytest.mark.parametrize("last, product_dtype", [(3, np.float32), (5, np.float64)])
def test_integer_product_runs_in_float32_only_while_exact(last, product_dtype):
    """uint8 activations centered by any zero point span 255, so float32 is exact while 255 x the largest
    column sum of |b - zero point| is at most 2**24. Weights 258 x 255 + 3 reach 65793 (255 x 65793 =
    2**24 - 1: float32, just inside); + 5 reach 65795, whose product 2**24 + 509 is odd, which float32
    cannot hold: float64."""
    a = np.full((2, 259), 255, np.uint8)
    a[1, -1] = 0
    b = np.array([255] * 258 + [last], np.uint8).reshape(-1, 1)
    weights = centered_weights(NoCache(), "b", b, np.uint8(0), (-2,), np.uint8)
    assert weights.reach == 258 * 255 + last and weights.values.dtype == product_dtype
    model = make_model("MatMulInteger", {"a": a}, initializers={"b": b, "b_zero_point": np.uint8(0)}, opset=10,
                       input_names=["a", "b", "", "b_zero_point"])
    got = run_ours(model, {"a": a})[0]
    np.testing.assert_array_equal(got, a.astype(np.int64) @ b.astype(np.int64))
    assert_same(model, {"a": a})


def test_qlinear_conv_bias_counts_in_the_float32_bound():
    """An int32 bias of 2**31 - 2 plus one product of 1 is the largest int32: exact, it saturates y high; a
    float32 sum would round it to 2**31, which wraps to the smallest int32 and saturates y low."""
    x = np.ones((1, 1, 1, 1), np.uint8)
    one = np.float32(1)
    inits = {"x_scale": one, "x_zero_point": np.uint8(0), "w": np.ones((1, 1, 1, 1), np.uint8), "w_scale": one,
             "w_zero_point": np.uint8(0), "y_scale": one, "y_zero_point": np.uint8(0),
             "B": np.array([2**31 - 2], np.int32)}
    model = make_model("QLinearConv", {"x": x}, initializers=inits, opset=10)
    assert run_ours(model, {"x": x})[0].ravel().tolist() == [255]
    assert_same(model, {"x": x})
