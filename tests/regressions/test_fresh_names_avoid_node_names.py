"""Regression (issue 15): a model already holding node names like the ones a pass invents.

``Graph.fresh_name`` only avoided tensor names, so merge-parallel-branches named a new Add
``Add__4`` next to the exporter's own ``Add__4`` and the pipeline stopped with "node name
'Add__4' is used twice", reported as a failed verification (exit 1). Fresh names now avoid
node names and names inside subgraphs too, and a pass that breaks the graph is ninopt's bug
(exit 3), not the model's.
"""

from pathlib import Path

import onnx
import pytest
from onnx import helper

import optimizer
from optimizer.errors import InvariantError
from support import ort_run

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def _named_like_invented(model: onnx.ModelProto, count: int = 60) -> onnx.ModelProto:
    """The model with unnamed convolutions and a side chain of Neg nodes named ``Conv__k`` and ``Add__k``
    for every small k: the names a pass invents for a merged convolution or an Add that has none."""
    for node in model.graph.node:
        if node.op_type == "Conv":
            node.name = ""
    side = model.graph.output[0].name
    for k in range(count):
        for family in ("Conv", "Add"):
            model.graph.node.append(helper.make_node("Neg", [side], [f"side_{family}_{k}"], name=f"{family}__{k}"))
            side = f"side_{family}_{k}"
    extra = model.graph.output.add()
    extra.CopyFrom(model.graph.output[0])
    extra.name = side
    return model


@pytest.mark.parametrize("fixture", ["repvgg_stage.onnx", "mobileone_block.onnx", "resnet_bottleneck_bn.onnx"])
def test_invented_names_never_collide_with_node_names(fixture: str) -> None:
    model = _named_like_invented(onnx.load(FIXTURES / fixture))
    result = optimizer.optimize(model)
    names = [n.name for n in result.graph.nodes if n.name]
    assert len(names) == len(set(names))
    assert result.to_dict()["verification"]["passed"]
    written = result.model
    onnx.checker.check_model(written, full_check=True)
    feeds = optimizer.inputs.random_inputs(optimizer.load(model))
    for want, got in zip(ort_run(model, feeds), ort_run(written, feeds)):
        assert abs(want - got).max() <= 1e-4 * max(abs(want).max(), 1e-30)


def test_fresh_name_avoids_node_and_subgraph_names() -> None:
    then_body = helper.make_graph([helper.make_node("Neg", ["x"], ["t__1"], name="n__2")], "then", [],
                                  [helper.make_tensor_value_info("t__1", onnx.TensorProto.FLOAT, [1])])
    nodes = [helper.make_node("Relu", ["x"], ["c"], name="t__0"),
             helper.make_node("If", ["cond"], ["y"], name="if", then_branch=then_body, else_branch=then_body)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1]),
                                           helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    g = optimizer.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    fresh = [g.fresh_name("t") for _ in range(3)] + [g.fresh_name("n") for _ in range(3)]
    assert not {"t__0", "t__1", "n__2"} & set(fresh)


def test_model_with_repeated_node_names_loads_and_a_pass_may_not_add_more() -> None:
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="anon"), helper.make_node("Neg", ["a"], ["y"], name="anon")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [2])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [2])])
    g = optimizer.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))  # onnxruntime runs it
    assert g.check_invariants() == []
    g.add_node("Abs", ["y"], ["z"], name="Neg")
    g.add_node("Abs", ["z"], ["w"], name="Neg")
    assert g.check_invariants() == ["node name 'Neg' is used twice"]


def test_invariant_error_is_an_internal_error() -> None:
    assert InvariantError("x").exit_code == 3
