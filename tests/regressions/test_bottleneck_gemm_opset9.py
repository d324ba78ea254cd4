"""Regression (benchmark on light ResNet-50): a Gemm split by insert-bottleneck lacked input C, which
Gemm requires before opset 11, so onnxruntime rejected the model while ninopt's executor ran it."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from optimizer import onnx_io
from optimizer.bottleneck import insert_bottlenecks
from support import ort_run


def test_split_gemm_at_opset_9_is_valid_for_onnxruntime():
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((64, 4)) @ rng.standard_normal((4, 96))).astype(np.float32)  # rank 4
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=0)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [16, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [16, 96])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.zeros(96, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 9)])
    model.ir_version = 4
    g = onnx_io.load(model)
    result = insert_bottlenecks(g, max_error=1e-4)
    gemms = [n for n in g.nodes if n.op_type == "Gemm"]
    assert result.changed and len(gemms) == 2
    assert all(len(n.inputs) == 3 for n in gemms)
    rewritten = onnx_io.to_model_proto(g)
    onnx.checker.check_model(rewritten, full_check=True)
    x = rng.standard_normal((16, 64)).astype(np.float32)
    expected, actual = ort_run(model, {"x": x})[0], ort_run(rewritten, {"x": x})[0]
    assert np.abs(actual - expected).max() <= 1e-4 * np.abs(expected).max()
