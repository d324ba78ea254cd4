"""The fast paths of ConvTranspose (strides covering the kernel), MaxPool (one spatial axis at a time)
and nearest Resize (last axis first) give onnxruntime's values exactly.

Every value here is computed exactly in both runtimes, so any summation or reduction order
gives the same bits and the comparison is ``assert_array_equal``: ConvTranspose on small
integers held as floats, MaxPool (a max is exact) and nearest Resize (a copy).
Hypothesis runs derandomized and without an example database.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from support import assert_matches_onnxruntime, one_node_model, run_ours

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None, derandomize=True)


def small_integers(seed, shape, dtype=np.float32, low=-4, high=5) -> np.ndarray:
    return np.random.default_rng(seed).integers(low, high, shape).astype(dtype)


@st.composite
def conv_transpose_without_overlap(draw):
    """ConvTranspose whose every stride is at least the dilated kernel, with gaps between taps (dilation,
    strides past the kernel), output_padding, pads and groups."""
    nd = draw(st.sampled_from([1, 2, 2, 3]))
    kernel = [draw(st.integers(1, 3)) for _ in range(nd)]
    dilations = [draw(st.integers(1, 2)) for _ in range(nd)]
    strides = [(k - 1) * d + 1 + draw(st.sampled_from([0, 0, 1, 2])) for k, d in zip(kernel, dilations)]
    size = [draw(st.integers(1, 5 if nd < 3 else 3)) for _ in range(nd)]
    attrs = dict(kernel_shape=kernel, strides=strides, dilations=dilations, group=draw(st.sampled_from([1, 1, 2])),
                 output_padding=[draw(st.integers(0, s - 1)) for s in strides],  # onnxruntime: < stride
                 pads=[draw(st.integers(0, 2)) for _ in range(2 * nd)])
    cg, mg = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return size, attrs, cg, mg, draw(st.booleans()), draw(st.integers(0, 2**16))


@settings(max_examples=80, **SETTINGS)
@given(conv_transpose_without_overlap())
@example(([4, 5], dict(kernel_shape=[2, 2], strides=[2, 2], dilations=[1, 1], group=1, output_padding=[0, 0],
                       pads=[0, 0, 0, 0]), 3, 2, True, 0))  # stride == kernel, as detectors upsample
@example(([3, 3], dict(kernel_shape=[2, 2], strides=[3, 3], dilations=[2, 2], group=2, output_padding=[2, 1],
                       pads=[1, 0, 0, 2]), 2, 2, True, 1))  # gaps between dilated taps, padding, tail
def test_conv_transpose_without_overlap_is_exact(config):
    size, attrs, cg, mg, bias, seed = config
    nd = len(size)
    full = [s * (i - 1) + (k - 1) * d + 1 + op for s, i, k, d, op in
            zip(attrs["strides"], size, attrs["kernel_shape"], attrs["dilations"], attrs["output_padding"])]
    assume(all(f - attrs["pads"][a] - attrs["pads"][a + nd] >= 1 for a, f in enumerate(full)))
    group = attrs["group"]
    x = small_integers(seed, (2, group * cg, *size))
    weights = {"w": small_integers(seed + 1, (group * cg, mg, *attrs["kernel_shape"]))}
    if bias:
        weights["b"] = small_integers(seed + 2, (group * mg,))
    assert_matches_onnxruntime(one_node_model("ConvTranspose", {"x": x}, initializers=weights, **attrs), {"x": x})


@st.composite
def max_pools(draw):
    """MaxPool up to 3 spatial axes with kernels up to 5 (YOLO's SPPF is 5x5 stride 1 pad 2), in the
    types MaxPool takes: float (with many ties) and 8-bit integers."""
    nd = draw(st.sampled_from([1, 2, 2, 3]))
    kernel = [draw(st.integers(1, 5 if nd < 3 else 3)) for _ in range(nd)]
    attrs = dict(kernel_shape=kernel, strides=[draw(st.integers(1, 3)) for _ in range(nd)],
                 dilations=[draw(st.integers(1, 2)) for _ in range(nd)])
    auto_pad = draw(st.sampled_from(["NOTSET", "NOTSET", "SAME_UPPER", "VALID"]))
    if auto_pad == "NOTSET":
        attrs["pads"] = [draw(st.integers(0, k - 1)) for k in kernel * 2]
        attrs["ceil_mode"] = int(draw(st.booleans()))
    else:
        attrs["auto_pad"] = auto_pad
        if auto_pad == "SAME_UPPER":
            attrs["dilations"] = [1] * nd  # onnxruntime sizes SAME padding from the undilated kernel
    size = [draw(st.integers(1, 9 if nd < 3 else 5)) for _ in range(nd)]
    return size, attrs, draw(st.sampled_from([np.float32, np.float32, np.int8, np.uint8])), draw(st.integers(0, 2**16))


@settings(max_examples=100, **SETTINGS)
@given(max_pools())
@example(([10, 10], dict(kernel_shape=[5, 5], strides=[1, 1], dilations=[1, 1], pads=[2, 2, 2, 2]),
          np.float32, 0))  # SPPF
@example(([111, 111], dict(kernel_shape=[3, 3], strides=[2, 2], dilations=[1, 1], pads=[0, 0, 0, 0], ceil_mode=1),
          np.float32, 1))  # SqueezeNet
def test_max_pool_is_exact(config):
    size, attrs, dtype, seed = config
    nd = len(size)
    extent = [(k - 1) * d + 1 for k, d in zip(attrs["kernel_shape"], attrs["dilations"])]
    pads = attrs.get("pads", [0] * 2 * nd)
    if attrs.get("auto_pad") == "SAME_UPPER":  # onnxruntime fails on negative SAME padding
        assume(all((-(-i // s) - 1) * s + k >= i for i, s, k in zip(size, attrs["strides"], attrs["kernel_shape"])))
    else:
        assume(all(i + pads[a] + pads[a + nd] >= e for a, (i, e) in enumerate(zip(size, extent))))
    low, high = (0, 256) if dtype == np.uint8 else (-128, 128) if dtype == np.int8 else (-6, 7)
    x = small_integers(seed, (2, 3, *size), dtype, low, high)
    assert_matches_onnxruntime(one_node_model("MaxPool", {"x": x}, opset=19, **attrs), {"x": x})


@pytest.mark.parametrize("strides", [[1, 1], [2, 1]])
def test_max_pool_without_a_whole_window_is_empty(strides):
    """A kernel larger than the (padded) input fits nowhere: the output is empty, not an error."""
    x = small_integers(0, (1, 2, 2, 2))
    y, = run_ours(one_node_model("MaxPool", {"x": x}, opset=13, kernel_shape=[5, 5], strides=strides), {"x": x})
    assert y.shape == (1, 2, 0, 0)


@settings(max_examples=60, **SETTINGS)
@given(st.sampled_from([3, 4, 4, 5]), st.lists(st.sampled_from([1, 1, 2, 3, 4]), min_size=5, max_size=5),
       st.sampled_from([("asymmetric", "floor"), ("half_pixel", "round_prefer_floor"),
                        ("half_pixel", "round_prefer_ceil"), ("pytorch_half_pixel", "floor")]),
       st.sampled_from([np.float32, np.uint8]), st.integers(0, 2**16))
@example(4, [1, 1, 2, 2, 1], ("asymmetric", "floor"), np.float32, 0)  # YOLOv8n and PP-OCR's x2
@example(4, [1, 1, 8, 8, 1], ("asymmetric", "floor"), np.float32, 0)  # PP-OCR det's x8
def test_nearest_integer_upscaling_is_exact(rank, factors, modes, dtype, seed):
    """Every axis upscaled by an integer factor (no source coordinate on a rounding boundary in
    these modes), including leading axes, so the axes gathered last-first cover every rank."""
    coordinate_mode, nearest_mode = modes
    x = small_integers(seed, (2, 3, 4, 3, 2)[:rank], dtype, 0, 100)
    scales = np.array(factors[:rank], dtype=np.float32)
    model = one_node_model("Resize", {"x": x}, initializers={"roi": np.array([], np.float32), "scales": scales},
                           opset=19, mode="nearest", coordinate_transformation_mode=coordinate_mode,
                           nearest_mode=nearest_mode)
    assert_matches_onnxruntime(model, {"x": x})
