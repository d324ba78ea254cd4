"""fold-constants: nodes with constant inputs (and Shape of static shapes) become initializers."""

import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from optimizer import onnx_io
from optimizer.pipeline import PassManager
from optimizer.registry import get_pass
from support import LIGHT_ZOO_DIR, assert_agrees, make_model, ort_run, random_feeds

PASS = "fold-constants"


def run(graph):
    return PassManager([get_pass(PASS).create()]).run(graph).passes[0]


def _ops(graph):
    return [n.op_type for n in graph.nodes]


def test_light_zoo_constant_of_shape_weights_become_initializers():
    path = os.path.join(LIGHT_ZOO_DIR, "light_squeezenet.onnx")
    graph = onnx_io.load(path)
    weights_before = sum(op == "ConstantOfShape" for op in _ops(graph))
    stats = run(graph)
    assert weights_before == 39 and "ConstantOfShape" not in _ops(graph)
    assert stats.rewrites == weights_before
    convs = [n for n in graph.nodes if n.op_type == "Conv"]
    assert all(graph.is_const(n.inputs[1]) and graph.const(n.inputs[1]).ndim == 4 for n in convs)
    feeds = random_feeds(path)
    for expected, actual in zip(ort_run(path, feeds), ort_run(graph, feeds), strict=True):
        np.testing.assert_array_equal(expected, actual)


def test_shape_of_a_static_tensor_folds_and_feeds_a_reshape():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = make_model([helper.make_node("Shape", ["x"], ["s"]), helper.make_node("Reshape", ["x", "s"], ["y"])],
                       [x], [y], check=False)
    graph = onnx_io.load(model)
    assert run(graph).rewrites == 1
    assert _ops(graph) == ["Reshape"] and list(graph.const(graph.nodes[0].inputs[1])) == [2, 3, 4]
    feeds = random_feeds(model)
    np.testing.assert_array_equal(ort_run(graph, feeds)[0], ort_run(model, feeds)[0])


def test_a_kernel_that_fails_on_constant_inputs_is_refused_not_a_crash():
    """Gather with an out-of-range constant index: the runtime reports it when the node runs; folding leaves it."""
    data = numpy_helper.from_array(np.arange(3, dtype=np.float32), "data")
    index = numpy_helper.from_array(np.array([5], dtype=np.int64), "index")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = make_model([helper.make_node("Gather", ["data", "index"], ["picked"]),
                        helper.make_node("Add", ["x", "picked"], ["y"])], [x], [y], [data, index], check=False)
    graph = onnx_io.load(model)
    stats = run(graph)
    assert stats.rewrites == 0 and _ops(graph) == ["Gather", "Add"]
    assert dict(stats.refusals) == {"the executor's Gather kernel fails on these constant inputs": 1}


def test_refuses_a_huge_constant_before_allocating_it_and_says_why():
    shape = numpy_helper.from_array(np.array([10**6, 10**6], dtype=np.int64), "shape")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    model = make_model([helper.make_node("ConstantOfShape", ["shape"], ["big"]),
                        helper.make_node("ReduceSum", ["big"], ["s"], keepdims=0),
                        helper.make_node("Add", ["x", "s"], ["y"])], [x], [y], [shape], check=False)
    graph = onnx_io.load(model)
    stats = run(graph)
    assert stats.rewrites == 0 and "ConstantOfShape" in _ops(graph)
    assert any("cap" in reason for reason in stats.refusals)


def test_refuses_graph_outputs_and_skips_random_ops():
    c = numpy_helper.from_array(np.ones(3, np.float32), "c")
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [3])
    r = helper.make_tensor_value_info("r", TensorProto.FLOAT, [3])
    model = make_model([helper.make_node("Neg", ["c"], ["y"]),
                        helper.make_node("RandomUniform", [], ["r"], shape=[3], dtype=1)], [], [y, r], [c],
                       check=False)
    graph = onnx_io.load(model)
    stats = run(graph)
    assert stats.rewrites == 0 and stats.refusals == {"its output is a graph output": 1}
    assert sorted(_ops(graph)) == ["Neg", "RandomUniform"]


def test_a_second_run_changes_nothing():
    graph = onnx_io.load(os.path.join(LIGHT_ZOO_DIR, "light_bvlc_alexnet.onnx"))
    run(graph)
    version = graph.version
    assert run(graph).rewrites == 0 and graph.version == version


def test_light_model_stays_checker_valid_after_folding(tmp_path):
    graph = onnx_io.load(os.path.join(LIGHT_ZOO_DIR, "light_inception_v1.onnx"))
    run(graph)
    onnx_io.save(graph, tmp_path / "folded.onnx")
    onnx.checker.check_model(str(tmp_path / "folded.onnx"), full_check=True)


def _dynamic_batch_reshape(opset):
    """y = Reshape(x, [N, C*H*W]) with the batch N symbolic: Shape(x)[0] stays, Shape(x)[1:] folds."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4, 5])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 60])
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"), numpy_helper.from_array(np.array(2, np.int64), "two"),
             numpy_helper.from_array(np.array([1], np.int64), "one"), numpy_helper.from_array(np.array([4], np.int64), "four"),
             numpy_helper.from_array(np.array([0], np.int64), "axes")]
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"]),           # symbolic: must stay
             helper.make_node("Gather", ["s", "two"], ["h"]),            # static 4, scalar
             helper.make_node("Slice", ["s", "one", "four"], ["chw"]),   # static [3, 4, 5]
             helper.make_node("ReduceProd", ["chw"], ["prod"], keepdims=1),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
             helper.make_node("Unsqueeze", ["h", "axes"], ["h1"]),
             helper.make_node("Div", ["prod", "h1"], ["cw"]), helper.make_node("Mul", ["cw", "h1"], ["flat"]),
             helper.make_node("Concat", ["n1", "flat"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["y"])]
    return make_model(nodes, [x], [y], inits, opset=opset, check=False)


def test_static_dims_fold_out_of_a_partly_symbolic_shape():
    model = _dynamic_batch_reshape(13)
    graph = onnx_io.load(model)
    stats = run(graph)
    assert sorted(_ops(graph)) == ["Concat", "Gather", "Reshape", "Shape", "Unsqueeze"]
    assert graph.const("h").shape == () and int(graph.const("h")) == 4  # a scalar stays 0-d
    assert list(graph.const("flat")) == [60]
    assert set(stats.refusals) == {"it reads a dimension that is not static"}
    assert_agrees(model, graph)
    feeds = {"x": np.random.default_rng(0).standard_normal((3, 3, 4, 5)).astype(np.float32)}  # batch 3 too
    np.testing.assert_array_equal(ort_run(graph, feeds)[0], ort_run(model, feeds)[0])
    version = graph.version
    assert run(graph).rewrites == 0 and graph.version == version


def test_a_shape_window_of_static_dims_folds_at_opset_15():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 12])
    minus = numpy_helper.from_array(np.array([-1], np.int64), "minus")
    nodes = [helper.make_node("Shape", ["x"], ["all"], start=0), helper.make_node("Shape", ["x"], ["hw"], start=1),
             helper.make_node("ReduceProd", ["hw"], ["p"], keepdims=1),
             helper.make_node("Concat", ["minus", "p"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["r"]),
             helper.make_node("Gather", ["all", "minus"], ["last"]),  # static 4
             helper.make_node("Cast", ["last"], ["lastf"], to=TensorProto.FLOAT),
             helper.make_node("Div", ["r", "lastf"], ["y"])]
    model = make_model(nodes, [x], [y], [minus], opset=15, check=False)
    graph = onnx_io.load(model)
    run(graph)
    assert sorted(_ops(graph)) == ["Div", "Reshape", "Shape"]  # the unread Shape is eliminate-dead-nodes' job
    assert not graph.consumers("all") and list(graph.const("target")) == [-1, 12]
    feeds = {"x": np.random.default_rng(1).standard_normal((2, 3, 4)).astype(np.float32)}
    np.testing.assert_array_equal(ort_run(graph, feeds)[0], ort_run(model, feeds)[0])
