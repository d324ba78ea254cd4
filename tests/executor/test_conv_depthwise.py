"""Depthwise Conv runs as im2col over a strided view of the input, in bands of channels: every band
split, stride, dilation and padding must still agree with onnxruntime, and an empty output must
come back empty rather than fail."""

from __future__ import annotations

import numpy as np
import pytest

from optimizer.executor import conv
from support import assert_matches_onnxruntime, one_node_model, run_ours


def _rand(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


@pytest.mark.parametrize("attrs", [
    dict(kernel_shape=[5, 5], pads=[2, 2, 2, 2]),
    dict(kernel_shape=[3, 3], pads=[1, 0, 2, 1], dilations=[2, 1]),
    dict(kernel_shape=[5, 5], pads=[2, 2, 2, 2], strides=[2, 1]),
    dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER", strides=[2, 2]),
    dict(kernel_shape=[3], pads=[1, 1], dilations=[3]),
    dict(kernel_shape=[2, 3, 3], pads=[0, 1, 1, 1, 1, 1]),
], ids=["5x5", "dilated-asymmetric-pads", "stride-2x1", "same-upper-stride-2", "1d", "3d"])
@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_split_into_channel_bands_matches_onnxruntime(monkeypatch, attrs, multiplier):
    monkeypatch.setattr(conv, "DEPTHWISE_COLUMN_BYTES", 1)  # one channel per band: every band boundary is hit
    channels, spatial = 5, [9, 11, 7][:len(attrs["kernel_shape"])]
    x = _rand(0, 2, channels, *spatial)
    w = _rand(1, channels * multiplier, 1, *attrs["kernel_shape"])
    b = _rand(2, channels * multiplier)
    model = one_node_model("Conv", {"x": x}, initializers={"w": w, "b": b}, opset=13, group=channels, **attrs)
    assert_matches_onnxruntime(model, {"x": x}, rtol=1e-4, atol=1e-5)


def test_depthwise_with_an_empty_output_axis_returns_an_empty_tensor():
    x = _rand(0, 1, 3, 4, 1)
    w = _rand(1, 3, 1, 1, 3)  # the 3-wide kernel does not fit the 1-wide, unpadded input
    model = one_node_model("Conv", {"x": x}, initializers={"w": w}, opset=13, group=3, strides=[2, 2])
    (y,) = run_ours(model, {"x": x})
    assert y.shape == (1, 3, 2, 0)
