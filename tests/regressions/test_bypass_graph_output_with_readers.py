"""Regression (fuzzer): an Identity/Dropout whose output is a graph output that later nodes also read.

eliminate-identity and eliminate-dropout passed ``Graph.bypass_blocker`` and then crashed in
``Graph.bypass``: it removes the node and renames the input to the output's name, but the
output's other readers still held that name, so ``rename_tensor`` raised "tensor name ... is
already in use" (the CLI's exit 3, "internal error"). PyTorch exports write such Identities.
"""

import numpy as np
import pytest
from onnx import helper

import optimizer
from support import assert_agrees, make_model


def _model(op: str):
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), helper.make_node(op, ["r"], ["y"], name="pass"),
             helper.make_node("Neg", ["y"], ["z"], name="neg")]
    return make_model(nodes, [("x", [1, 3, 4, 4])], [("y", [1, 3, 4, 4]), ("z", [1, 3, 4, 4])], check=False)


@pytest.mark.parametrize("op", ["Identity", "Dropout"])
def test_pass_through_node_feeding_a_graph_output_and_a_reader(op: str) -> None:
    model = _model(op)
    result = optimizer.optimize(model)
    assert [n.op_type for n in result.graph.toposort()] == ["Relu", "Neg"]
    assert result.graph.outputs == ["y", "z"]
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 3, 4, 4)).astype(np.float32)}
    assert_agrees(model, result.model, rtol=0, runners=("onnxruntime",), feeds=feeds)
