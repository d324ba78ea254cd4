"""Regression (fuzzer): an Identity/Dropout whose output is a graph output that later nodes also read.

eliminate-identity and eliminate-dropout passed ``Graph.bypass_blocker`` and then crashed in
``Graph.bypass``: it removes the node and renames the input to the output's name, but the
output's other readers still held that name, so ``rename_tensor`` raised "tensor name ... is
already in use" (the CLI's exit 3, "internal error"). PyTorch exports write such Identities.
"""

import numpy as np
import pytest
from onnx import TensorProto, helper

import optimizer
from conftest import ort_run


def _model(op: str):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])
    outs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1, 3, 4, 4]) for n in ("y", "z")]
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node(op, ["r"], ["y"], name="pass"),
             helper.make_node("Neg", ["y"], ["z"], name="neg")]
    return helper.make_model(helper.make_graph(nodes, "g", [x], outs), opset_imports=[helper.make_opsetid("", 13)])


@pytest.mark.parametrize("op", ["Identity", "Dropout"])
def test_pass_through_node_feeding_a_graph_output_and_a_reader(op: str) -> None:
    model = _model(op)
    result = optimizer.optimize(model)
    assert [n.op_type for n in result.graph.toposort()] == ["Relu", "Neg"]
    assert result.graph.outputs == ["y", "z"]
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 3, 4, 4)).astype(np.float32)}
    for expected, actual in zip(ort_run(model, feeds), ort_run(result.model, feeds), strict=True):
        np.testing.assert_array_equal(actual, expected)
