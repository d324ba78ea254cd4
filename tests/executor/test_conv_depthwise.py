"""Depthwise Conv runs one of three ways: columns copied from a strided view of the input in bands
of channels, then multiplied per channel over every tap, or (wide 2-D maps) per output row over
one kernel row's columns; or (small 2-D maps with many channels) one einsum over the channel-last
input. Every way, band split, stride, dilation and padding must still agree with onnxruntime, and
an empty output must come back empty rather than fail."""

from __future__ import annotations

import math

import numpy as np
import pytest

from optimizer.executor import conv
from support import assert_matches_onnxruntime, one_node_model, run_ours


def _rand(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# (attributes, whether the per-row way applies: two spatial axes, kernel rows not dilated)
CASES = {
    "5x5": (dict(kernel_shape=[5, 5], pads=[2, 2, 2, 2]), True),
    "dilated-rows-asymmetric-pads": (dict(kernel_shape=[3, 3], pads=[1, 0, 2, 1], dilations=[2, 1]), False),
    "dilated-columns-asymmetric-pads-stride-2x1": (
        dict(kernel_shape=[3, 5], pads=[1, 2, 0, 3], dilations=[1, 2], strides=[2, 1]), True),
    "stride-2x1": (dict(kernel_shape=[5, 5], pads=[2, 2, 2, 2], strides=[2, 1]), True),
    "stride-1x3": (dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[1, 3]), True),
    "same-upper-stride-2": (dict(kernel_shape=[3, 3], auto_pad="SAME_UPPER", strides=[2, 2]), True),
    "1d": (dict(kernel_shape=[3], pads=[1, 1], dilations=[3]), False),
    "3d": (dict(kernel_shape=[2, 3, 3], pads=[0, 1, 1, 1, 1, 1]), False),
}
# DEPTHWISE_ROW_CALL_COLUMNS and DEPTHWISE_CHANNEL_LAST_CHANNELS_PER_PIXEL that take each way
# wherever it applies (channel-last: any 2-D map)
WAYS = {"by-rows": (0, math.inf), "channel-last": (math.inf, 0), "by-taps": (math.inf, math.inf)}
ROUTES = {"by-rows": "_depthwise_by_rows", "channel-last": "_depthwise_channel_last", "by-taps": "_depthwise_by_taps"}


def _record_routes(monkeypatch) -> list[str]:
    """The ways (keys of ``ROUTES``) depthwise convs take from here on, in order."""
    taken = []
    for way, name in ROUTES.items():
        def recording(*args, way=way, route=getattr(conv, name)):
            taken.append(way)
            return route(*args)

        monkeypatch.setattr(conv, name, recording)
    return taken


def _record_column_buffers(monkeypatch) -> list[tuple[int, ...]]:
    """The band shapes the kernel asks ``_column_buffer`` for, as it runs."""
    shapes = []
    allocate = conv._column_buffer

    def recording(ctx, band_shape, dtype):
        shapes.append(band_shape)
        return allocate(ctx, band_shape, dtype)

    monkeypatch.setattr(conv, "_column_buffer", recording)
    return shapes


def _model(case: str, multiplier: int):
    attrs, _ = CASES[case]
    channels, spatial = 5, [9, 11, 7][:len(attrs["kernel_shape"])]
    x = _rand(0, 2, channels, *spatial)
    w = _rand(1, channels * multiplier, 1, *attrs["kernel_shape"])
    b = _rand(2, channels * multiplier)
    return one_node_model("Conv", {"x": x}, initializers={"w": w, "b": b}, opset=13, group=channels, **attrs), x


@pytest.mark.parametrize("way", WAYS)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_every_way_matches_onnxruntime(monkeypatch, way, case, multiplier):
    attrs, rows_apply = CASES[case]
    row_call_columns, channels_per_pixel = WAYS[way]
    monkeypatch.setattr(conv, "DEPTHWISE_ROW_CALL_COLUMNS", row_call_columns)
    monkeypatch.setattr(conv, "DEPTHWISE_CHANNEL_LAST_CHANNELS_PER_PIXEL", channels_per_pixel)
    monkeypatch.setattr(conv, "DEPTHWISE_COLUMN_BYTES", 1)  # one channel per band: every band boundary is hit
    model, x = _model(case, multiplier)
    taken = _record_routes(monkeypatch)
    assert_matches_onnxruntime(model, {"x": x}, rtol=1e-4, atol=1e-5)
    applies = {"by-rows": rows_apply, "channel-last": len(attrs["kernel_shape"]) == 2, "by-taps": True}[way]
    assert taken == [way if applies else "by-taps"]


@pytest.mark.parametrize("way", ["by-rows", "by-taps"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("multiplier", [1, 2])
def test_depthwise_columns_in_bands_of_two_channels_match_onnxruntime(monkeypatch, way, case, multiplier):
    row_call_columns, channels_per_pixel = WAYS[way]
    monkeypatch.setattr(conv, "DEPTHWISE_ROW_CALL_COLUMNS", row_call_columns)
    monkeypatch.setattr(conv, "DEPTHWISE_CHANNEL_LAST_CHANNELS_PER_PIXEL", channels_per_pixel)
    model, x = _model(case, multiplier)
    band_shapes = _record_column_buffers(monkeypatch)
    monkeypatch.setattr(conv, "DEPTHWISE_COLUMN_BYTES", 1)
    run_ours(model, {"x": x})
    batch, _, *per_channel = band_shapes.pop()
    # bands of 2 of the 5 channels: the last band is narrower than the buffer
    monkeypatch.setattr(conv, "DEPTHWISE_COLUMN_BYTES", 2 * batch * math.prod(per_channel) * x.itemsize)
    assert_matches_onnxruntime(model, {"x": x}, rtol=1e-4, atol=1e-5)
    assert [shape[1] for shape in band_shapes] == [2]


@pytest.mark.parametrize("channels, height, width, strides, way", [
    (16, 7, 112, [1, 1], "by-rows"),  # a PP-OCR text line
    (16, 14, 14, [1, 1], "by-taps"),  # a small map with few channels
    (64, 14, 14, [2, 2], "channel-last"),  # a detector's strided stage: 49 output pixels
])
def test_each_way_is_taken_where_it_measured_fastest(monkeypatch, channels, height, width, strides, way):
    x = _rand(0, 1, channels, height, width)
    model = one_node_model("Conv", {"x": x}, initializers={"w": _rand(1, channels, 1, 5, 5)}, opset=13,
                           group=channels, kernel_shape=[5, 5], pads=[2, 2, 2, 2], strides=strides)
    taken = _record_routes(monkeypatch)
    assert_matches_onnxruntime(model, {"x": x}, rtol=1e-4, atol=1e-5)
    assert taken == [way]


def test_depthwise_with_an_empty_output_axis_returns_an_empty_tensor():
    x = _rand(0, 1, 3, 4, 1)
    w = _rand(1, 3, 1, 1, 3)  # the 3-wide kernel does not fit the 1-wide, unpadded input
    model = one_node_model("Conv", {"x": x}, initializers={"w": w}, opset=13, group=3, strides=[2, 2])
    (y,) = run_ours(model, {"x": x})
    assert y.shape == (1, 3, 2, 0)
