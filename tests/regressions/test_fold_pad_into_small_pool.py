"""Regression (fuzzer): a zero Pad folded into a 1x1 AveragePool gave pads >= kernel, which onnxruntime refuses.

Numerically exact (count_include_pad=1 averages the zeros), and ninopt's executor agreed,
but onnxruntime rejects a pool whose pads reach its kernel size ("Pad should be smaller
than kernel"), so the optimized model no longer loaded. fold-pad now refuses that fold.
"""

import numpy as np
from onnx import TensorProto, helper, numpy_helper

import optimizer
from support import ort_run


def test_pad_before_a_1x1_average_pool_stays() -> None:
    pads = numpy_helper.from_array(np.array([0, 0, 1, 0, 0, 0, 2, 1], np.int64), "pads")
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"]),
             helper.make_node("AveragePool", ["p"], ["y"], kernel_shape=[1, 1], count_include_pad=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 7, 5])], [pads])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    result = optimizer.optimize(model)
    stats = {p.name: p for p in result.pipeline.passes}["fold-pad"]
    assert stats.rewrites == 0
    assert any("kernel size" in reason for reason in stats.refusals)
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32)}
    np.testing.assert_array_equal(ort_run(result.model, feeds)[0], ort_run(model, feeds)[0])


def test_pad_before_a_3x3_average_pool_still_folds() -> None:
    pads = numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"]),
             helper.make_node("AveragePool", ["p"], ["y"], kernel_shape=[3, 3], pads=[1, 0, 0, 1], count_include_pad=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 5, 5])], [pads])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    result = optimizer.optimize(model)
    assert [n.op_type for n in result.graph.nodes] == ["AveragePool"]
    assert result.graph.nodes[0].attr("pads") == [2, 1, 1, 2]
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 2, 4, 4)).astype(np.float32)}
    expected, actual = ort_run(model, feeds)[0], ort_run(result.model, feeds)[0]
    assert np.abs(actual - expected).max() <= 1e-5 * np.abs(expected).max()
