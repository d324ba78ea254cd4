"""constant-to-initializer: Constant ops of every attribute form become initializers of the same name."""

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from optimizer import onnx_io
from optimizer.pipeline import PassManager
from optimizer.registry import get_pass
from support import assert_agrees, make_model


def run(graph):
    return PassManager([get_pass("constant-to-initializer").create()]).run(graph).passes[0]


X = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 5])
Y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 5])


def test_every_attribute_form_becomes_an_initializer_and_the_numbers_agree():
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.array([3.0, -2.0], np.float32), "v"),
                                       numpy_helper.from_array(np.array([1, 4], np.int64), "i"), [5])
    nodes = [helper.make_node("Constant", [], ["t"], value=numpy_helper.from_array(np.arange(5, dtype=np.float32))),
             helper.make_node("Constant", [], ["f"], value_float=0.5),
             helper.make_node("Constant", [], ["fs"], value_floats=[1.0, 2.0, 3.0, 4.0, 5.0]),
             helper.make_node("Constant", [], ["s"], sparse_value=sparse),
             helper.make_node("Constant", [], ["shape"], value_ints=[5, 2]),
             helper.make_node("Constant", [], ["axis"], value_int=0),
             helper.make_node("Mul", ["x", "t"], ["a"]), helper.make_node("Add", ["a", "f"], ["b"]),
             helper.make_node("Sub", ["b", "fs"], ["c"]), helper.make_node("Add", ["c", "s"], ["d"]),
             helper.make_node("Reshape", ["d", "shape"], ["e"]), helper.make_node("Unsqueeze", ["e", "axis"], ["y"])]
    model = make_model(nodes, [X], [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 2])])
    graph = onnx_io.load(model)
    stats = run(graph)
    assert stats.rewrites == 6 and [n.op_type for n in graph.nodes] == ["Mul", "Add", "Sub", "Add", "Reshape", "Unsqueeze"]
    assert graph.const("axis").shape == () and graph.const("axis").dtype == np.int64
    assert list(graph.const("s")) == [0, 3, 0, 0, -2] and graph.const("f").dtype == np.float32
    assert_agrees(model, graph)


def test_a_subgraph_reading_an_outer_constant_keeps_working():
    then_branch = helper.make_graph([helper.make_node("Add", ["x", "k"], ["t_out"])], "then", [],
                                    [helper.make_tensor_value_info("t_out", TensorProto.FLOAT, [2, 5])])
    else_branch = helper.make_graph([helper.make_node("Sub", ["x", "k"], ["e_out"])], "else", [],
                                    [helper.make_tensor_value_info("e_out", TensorProto.FLOAT, [2, 5])])
    nodes = [helper.make_node("Constant", [], ["k"], value=numpy_helper.from_array(np.full(5, 2.0, np.float32))),
             helper.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(np.array(True))),
             helper.make_node("If", ["cond"], ["y"], then_branch=then_branch, else_branch=else_branch)]
    model = make_model(nodes, [X], [Y])
    graph = onnx_io.load(model)
    assert run(graph).rewrites == 2 and [n.op_type for n in graph.nodes] == ["If"]
    assert "k" in graph.initializers
    assert_agrees(model, graph)


def test_refuses_graph_outputs_and_string_constants_with_the_reason():
    strings = helper.make_node("Constant", [], ["names"], value_strings=["a", "b"])
    nodes = [helper.make_node("Constant", [], ["y"], value=numpy_helper.from_array(np.ones((2, 5), np.float32))), strings,
             helper.make_node("Identity", ["names"], ["z"])]
    model = make_model(nodes, [], [Y, helper.make_tensor_value_info("z", TensorProto.STRING, [2])])
    graph = onnx_io.load(model)
    stats = run(graph)
    assert stats.rewrites == 0 and sorted(n.op_type for n in graph.nodes) == ["Constant", "Constant", "Identity"]
    assert stats.refusals == {"its output is a graph output": 1, "a string or large sparse value stays a Constant": 1}


def test_a_second_run_changes_nothing():
    nodes = [helper.make_node("Constant", [], ["t"], value_floats=[1.0] * 5), helper.make_node("Mul", ["x", "t"], ["y"])]
    graph = onnx_io.load(make_model(nodes, [X], [Y]))
    assert run(graph).rewrites == 1
    version = graph.version
    assert run(graph).rewrites == 0 and graph.version == version
    onnx.checker.check_model(onnx_io.to_model_proto(graph), full_check=True)
