"""MaxPool's Indices on a window that covers padding only.

Such a window has no element; onnxruntime and onnx's reference both write the flat index that
position -1 on every spatial axis gives (here -3, -2, -1 for channels 0, 1, 2), while the
executor wrote 0, which is a real element. Found by the kernel property tests.
"""

import numpy as np
from onnx import TensorProto, helper
from onnx.reference import ReferenceEvaluator

import optimizer
from support import make_model, run_ort


def test_a_window_of_padding_only_gets_the_index_runtimes_give():
    node = helper.make_node("MaxPool", ["x"], ["y", "i"], kernel_shape=[1, 2, 1], dilations=[1, 2, 1],
                            pads=[0, 1, 0, 0, 1, 0])
    model = make_model([node], [("x", [1, 3, 1, 1, 1])], [("y", None), ("i", None, TensorProto.INT64)], check=False)
    x = np.arange(3, dtype=np.float32).reshape(1, 3, 1, 1, 1)
    ours = optimizer.run(model, {"x": x})
    _, ort_indices = run_ort(model, {"x": x})
    _, reference_indices = ReferenceEvaluator(model).run(None, {"x": x})
    np.testing.assert_array_equal(ours["i"], ort_indices)
    np.testing.assert_array_equal(ours["i"], reference_indices)
    assert ours["i"].ravel().tolist() == [-3, -2, -1]
