"""eliminate-common-subexpressions: identical nodes merge into the first; random and subgraph nodes never do."""

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from optimizer import onnx_io
from optimizer.pipeline import PassManager
from optimizer.registry import get_pass
from support import assert_agrees, make_model

N = helper.make_node


def run(graph):
    return PassManager([get_pass("eliminate-common-subexpressions").create()]).run(graph).passes[0]


def _model(nodes, outputs=("y",), inits=()):
    return make_model(nodes, [("x", [1, 2, 5, 5])], [(o, [1, 2, 5, 5]) for o in outputs], inits, check=False)


def test_duplicated_chains_merge_into_the_first_copy_and_the_numbers_agree():
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((2, 2, 3, 3)).astype(np.float32), "w")
    nodes = [N("Conv", ["x", "w"], ["c1"], pads=[1, 1, 1, 1]), N("Conv", ["x", "w"], ["c2"], pads=[1, 1, 1, 1]),
             N("Conv", ["x", "w"], ["c3"], pads=[0, 0, 0, 0]),  # other attributes: a different value
             N("Relu", ["c1"], ["r1"]), N("Relu", ["c2"], ["r2"]),
             N("Add", ["r1", "r2"], ["s"]), N("ReduceMean", ["c3"], ["m"], axes=[2, 3], keepdims=1),
             N("Add", ["s", "m"], ["y"])]
    model = _model(nodes, inits=[w])
    graph = onnx_io.load(model)
    stats = run(graph)
    assert stats.rewrites == 2  # the Conv, then its Relu reader in the same run
    assert sorted(n.op_type for n in graph.nodes) == ["Add", "Add", "Conv", "Conv", "ReduceMean", "Relu"]
    add = next(n for n in graph.nodes if n.outputs == ["s"])
    assert add.inputs == ["r1", "r1"]
    assert_agrees(model, graph)
    version = graph.version
    assert run(graph).rewrites == 0 and graph.version == version


def test_never_merges_random_ops_and_refuses_a_duplicate_graph_output():
    nodes = [N("RandomNormalLike", ["x"], ["n1"]), N("RandomNormalLike", ["x"], ["n2"]), N("Sub", ["n1", "n2"], ["y"]),
             N("Relu", ["x"], ["r1"]), N("Relu", ["x"], ["z"]), N("Add", ["r1", "z"], ["w"])]
    graph = onnx_io.load(_model(nodes, outputs=("y", "z", "w")))
    stats = run(graph)
    assert stats.rewrites == 0 and stats.refusals == {"the duplicate's output is a graph output": 1}
    assert sorted(n.op_type for n in graph.nodes).count("RandomNormalLike") == 2


def test_subgraph_nodes_are_never_merged():
    branch = helper.make_graph([N("Neg", ["x"], ["o"])], "b", [], [helper.make_tensor_value_info("o", TensorProto.FLOAT, None)])
    cond = numpy_helper.from_array(np.array(True), "cond")
    nodes = [N("If", ["cond"], ["i1"], then_branch=branch, else_branch=branch),
             N("If", ["cond"], ["i2"], then_branch=branch, else_branch=branch), N("Add", ["i1", "i2"], ["y"])]
    graph = onnx_io.load(_model(nodes, inits=[cond]))
    assert run(graph).rewrites == 0 and len(graph) == 3
