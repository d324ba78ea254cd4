"""Regression: linear Resize on uint8/int8 data was off by one on ~40% of the elements.

The executor rounded interpolated values to the nearest integer; onnxruntime converts them
as C does, truncating toward zero. Truncation also exposes the float sum order: onnxruntime
interpolates the last two axes of NCHW (and rank-2) tensors jointly, as (dx*dy)*x summed over
the four taps, and the executor now does the same, so every element agrees bit for bit (antialiased
resizes too, which onnxruntime filters axis by axis in Pillow's fixed point). The
other integer-output conversions are swept against onnxruntime too: Round (half to even) and
Cast from float to every integer type, out-of-range values and NaN included.
"""

from __future__ import annotations

import itertools

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

import optimizer
from support import make_model, ort_run

INTEGER_TYPES = [np.uint8, np.int8, np.int32]
COORDINATE_MODES = ["half_pixel", "asymmetric", "align_corners", "pytorch_half_pixel", "half_pixel_symmetric",
                    "tf_crop_and_resize"]


def one_node_model(op: str, x: np.ndarray, inits: dict[str, np.ndarray] | None = None, *, opset: int, inputs=None,
                   **attrs) -> onnx.ModelProto:
    inits = inits or {}
    node = helper.make_node(op, inputs or ["x", *inits], ["y"], **attrs)
    return make_model([node], [("x", x.shape, helper.np_dtype_to_tensor_dtype(x.dtype))], ["y"],
                      [numpy_helper.from_array(v, k) for k, v in inits.items()], opset=opset, check=False, name=op)


def ours_and_onnxruntime(model: onnx.ModelProto, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    got = optimizer.run(model, {"x": x})["y"]
    (want,) = ort_run(model, {"x": x})
    assert got.dtype == want.dtype and got.shape == want.shape
    return got, want


def integer_image(dtype, seed: int, shape=(1, 2, 6, 7)) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.random.default_rng(seed).integers(max(info.min, -1000), min(info.max, 1000) + 1, shape).astype(dtype)


@pytest.mark.parametrize("dtype", INTEGER_TYPES, ids=lambda t: np.dtype(t).name)
@pytest.mark.parametrize("coord", COORDINATE_MODES)
def test_linear_resize_of_integers_matches_onnxruntime_exactly(dtype, coord: str) -> None:
    for seed, (sh, sw) in enumerate([(1.7, 2.3), (0.6, 0.5), (3, 3), (2, 2), (1 / 3, 1.5), (1, 2.5)]):
        x = integer_image(dtype, seed)
        # onnxruntime never crops an axis it does not rescale (the spec does: test_opset_semantics covers that)
        crop_h, crop_w = (0.1, 0.8) if sh != 1 else (0, 1), (0.2, 0.9)
        roi = [0, 0, crop_h[0], crop_w[0], 1, 1, crop_h[1], crop_w[1]] if coord == "tf_crop_and_resize" else []
        inits = {"roi": np.array(roi, np.float32), "scales": np.array([1, 1, sh, sw], np.float32)}
        model = one_node_model("Resize", x, inits, opset=19, mode="linear", coordinate_transformation_mode=coord,
                               extrapolation_value=3.0)
        got, want = ours_and_onnxruntime(model, x)
        np.testing.assert_array_equal(got, want, err_msg=f"scales {sh}, {sw}")


@pytest.mark.parametrize("dtype", [np.uint8, np.int8], ids=lambda t: np.dtype(t).name)
def test_legacy_linear_upsample_of_integers_matches_onnxruntime_exactly(dtype) -> None:
    x = integer_image(dtype, 7)
    for op, opset in (("Upsample", 9), ("Resize", 10)):
        model = one_node_model(op, x, {"scales": np.array([1, 1, 2.5, 1.5], np.float32)}, opset=opset, mode="linear")
        np.testing.assert_array_equal(*ours_and_onnxruntime(model, x))


@pytest.mark.parametrize("dtype", INTEGER_TYPES, ids=lambda t: np.dtype(t).name)
def test_antialiased_resize_of_integers_matches_onnxruntime_exactly(dtype) -> None:
    """onnxruntime filters antialiased integer data one axis at a time (last first), rounding in between:
    8-bit types in Pillow's fixed point, clamped to 0..255, int32 in float32 rounded half away from zero."""
    for seed, (mode, (sh, sw), exclude) in enumerate(itertools.product(
            ["linear", "cubic"], [(0.6, 0.5), (0.75, 2.0), (1 / 3, 0.25)], [0, 1])):
        x = integer_image(dtype, seed, (1, 2, 9, 11))
        inits = {"roi": np.array([], np.float32), "scales": np.array([1, 1, sh, sw], np.float32)}
        model = one_node_model("Resize", x, inits, opset=18, mode=mode, antialias=1, exclude_outside=exclude)
        got, want = ours_and_onnxruntime(model, x)
        np.testing.assert_array_equal(got, want, err_msg=f"{mode}, scales {sh}, {sw}, exclude_outside {exclude}")


def test_cubic_resize_of_integers_truncates_and_saturates() -> None:
    """onnxruntime has no integer cubic kernel: ours interpolates in float32, then saturates and truncates."""
    x = np.zeros((1, 1, 4, 8), np.uint8)
    x[..., 4:] = 255  # a step edge: cubic weights overshoot below 0 and above 255
    inits = {"roi": np.array([], np.float32), "scales": np.array([1, 1, 1, 2.5], np.float32)}
    model = one_node_model("Resize", x, inits, opset=19, mode="cubic")
    got = optimizer.run(model, {"x": x})["y"]
    as_float = optimizer.run(one_node_model("Resize", x.astype(np.float32), inits, opset=19, mode="cubic"),
                             {"x": x.astype(np.float32)})["y"]
    assert as_float.min() < 0 and as_float.max() > 255
    np.testing.assert_array_equal(got, np.trunc(np.clip(as_float, 0, 255)).astype(np.uint8))


def test_round_is_half_to_even_as_onnxruntime() -> None:
    for dtype in (np.float32, np.float64, np.float16):
        x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, -2.5, 0.49999997, 2.4999998, np.nan, np.inf, -np.inf, 1e4], dtype)
        got, want = ours_and_onnxruntime(one_node_model("Round", x, opset=11), x)
        np.testing.assert_array_equal(got, want)
        assert list(got[:6]) == [0, 2, 2, -0, -2, -2]


@pytest.mark.parametrize("source, target", list(itertools.product(
    [np.float32, np.float64, np.float16],
    ["INT8", "UINT8", "INT16", "UINT16", "INT32", "UINT32", "INT64", "UINT64", "BOOL"])))
def test_cast_from_float_truncates_like_onnxruntime_out_of_range_too(source, target: str) -> None:
    """Out-of-range conversions are undefined in C; onnxruntime's results on this machine are the reference.
    float16 NaN and infinities are left out: the executor widens float16 to float32 before the kernel, and
    onnxruntime converts float16 NaN to an unsigned type differently from float32 NaN."""
    values = [6e4, -6e4, 300.7, -300.7, 255.9, 128.5, -128.5, -1.5, -0.7, 0.7, 2.5]
    if source != np.float16:
        values += [np.nan, np.inf, -np.inf, 1e10, -1e10, 3e9, -3e9, 70000.5, -70000.5]
    x = np.array(values, source)
    got, want = ours_and_onnxruntime(one_node_model("Cast", x, opset=13, to=getattr(onnx.TensorProto, target)), x)
    np.testing.assert_array_equal(got, want)
