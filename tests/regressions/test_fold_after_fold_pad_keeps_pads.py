"""Regression (fuzzer): Pad -> Conv -> BatchNormalization lost the padding in the written model.

fold-pad moved the Pad into the Conv's ``pads`` attribute; fold-batchnorm then rebuilt the
Conv from its original protobuf (``passes/_affine.py`` ``replace_node``) without carrying
the attributes fold-pad had changed, so the saved model had ``pads=0`` and a smaller output.
The Graph itself was right, so executor verification passed; onnxruntime on the saved model
and the onnx checker did not.
"""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

import optimizer
from support import ort_run


def test_pad_conv_bn_keeps_the_pads_in_the_saved_model() -> None:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array([0, 0, 1, 2, 0, 0, 3, 1], np.int64), "pads"),
             numpy_helper.from_array(rng.standard_normal((3, 2, 1, 1)).astype(np.float32), "w")]
    inits += [numpy_helper.from_array(v.astype(np.float32), n) for n, v in
              (("s", rng.uniform(0.5, 1.5, 3)), ("b", rng.standard_normal(3)), ("m", rng.standard_normal(3)),
               ("v", rng.uniform(0.5, 2.0, 3)))]
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"]), helper.make_node("Conv", ["p", "w"], ["c"], name="conv"),
             helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2, 5, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 9, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    result = optimizer.optimize(model)
    saved = result.model
    assert [n.op_type for n in saved.graph.node] == ["Conv"]
    assert helper.get_attribute_value(next(a for a in saved.graph.node[0].attribute if a.name == "pads")) \
        == [1, 2, 3, 1]
    onnx.checker.check_model(saved, full_check=True)
    feeds = {"x": rng.standard_normal((1, 2, 5, 5)).astype(np.float32)}
    (expected,), (actual,) = ort_run(model, feeds), ort_run(saved, feeds)
    assert actual.shape == expected.shape == (1, 3, 9, 8)
    assert np.abs(actual - expected).max() <= 1e-5 * np.abs(expected).max()
