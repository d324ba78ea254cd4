"""A Conv node works out its window, padding and bands once per input shape, and on small inputs
keeps its padded-input and column buffers between runs. One executor fed one shape after another
must still agree with onnxruntime on each; an output must never be one of the kept buffers; and
runs of one executor in several threads at once must not write into each other's buffers."""

from __future__ import annotations

import sys
import threading

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer import onnx_io
from optimizer.executor import Executor
from optimizer.executor.registry import NodeContext
from support import run_ort


def _rand(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _conv_model(channels: int, spatial_axes: int, **attrs):
    """One Conv (weights and bias as initializers) whose input's batch and spatial sizes are symbolic."""
    kernel = attrs["kernel_shape"]
    weights = _rand(1, 8, channels, *kernel)
    bias = _rand(2, 8)
    dims = ["n", channels] + [f"s{axis}" for axis in range(spatial_axes)]
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], **attrs)
    graph = helper.make_graph([node], "conv", [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


# more shapes than a node keeps plans for, then the first again
SHAPES_2D = [(1, 3, 9, 7), (1, 3, 12, 5), (2, 3, 9, 7), (1, 3, 4, 4), (1, 3, 30, 31), (1, 3, 6, 9), (1, 3, 9, 7)]
CASES = {
    "2d-stride-2-asymmetric-pads": (2, dict(kernel_shape=[3, 3], pads=[1, 0, 2, 1], strides=[2, 2]), SHAPES_2D),
    "2d-same-lower-stride-2": (2, dict(kernel_shape=[3, 2], auto_pad="SAME_LOWER", strides=[2, 2]), SHAPES_2D),
    "2d-dilated": (2, dict(kernel_shape=[3, 2], pads=[2, 1, 2, 0], dilations=[2, 1]), SHAPES_2D),
    "2d-unpadded-1x1-stride-2": (2, dict(kernel_shape=[1, 1], strides=[2, 2]), SHAPES_2D),
    "1d-long-kernel-stride": (1, dict(kernel_shape=[16], strides=[8]), [(1, 3, 64), (1, 3, 200), (3, 3, 64), (1, 3, 16), (1, 3, 40), (1, 3, 64)]),
}


@pytest.mark.parametrize("case", CASES)
def test_one_executor_follows_changing_input_shapes(case):
    spatial_axes, attrs, shapes = CASES[case]
    model = _conv_model(3, spatial_axes, **attrs)
    executor = Executor(onnx_io.load(model))
    first = {}
    for shape in shapes:
        x = _rand(10 + shapes.index(shape), *shape)  # a repeated shape gets its first input again
        got = executor.run({"x": x})["y"]
        (want,) = run_ort(model, {"x": x})
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
        if shape in first:  # the same shape and input give the same bits, whatever ran in between
            assert np.array_equal(got, first[shape])
        first.setdefault(shape, got)
    assert len(shapes) > NodeContext.SHAPE_PLANS  # the node's plans were dropped and made again on the way


def test_outputs_are_never_a_kept_buffer():
    model = _conv_model(3, 2, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    executor = Executor(onnx_io.load(model))
    first = executor.run({"x": _rand(5, 1, 3, 6, 6)})["y"]
    kept = first.copy()
    second = executor.run({"x": _rand(6, 1, 3, 6, 6)})["y"]
    assert not np.shares_memory(first, second)
    assert np.array_equal(first, kept)


def test_runs_in_several_threads_at_once_keep_their_own_buffers():
    model = _conv_model(3, 2, kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 1])
    executor = Executor(onnx_io.load(model))
    inputs = [_rand(20 + i, 1, 3, 10, 8) for i in range(4)]
    expected = [executor.run({"x": x})["y"] for x in inputs]
    failures = []

    def worker(index: int) -> None:
        for _ in range(200):
            if not np.array_equal(executor.run({"x": inputs[index]})["y"], expected[index]):
                failures.append(index)
                return

    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads between nearly every pair of numpy calls
    try:
        threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(inputs))]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        sys.setswitchinterval(interval)
    assert failures == []
