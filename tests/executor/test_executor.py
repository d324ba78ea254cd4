"""Planning, lifetimes, refusals and input checks of the executor."""

from __future__ import annotations

import tracemalloc

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from optimizer import onnx_io
from optimizer.errors import NinoptError
from optimizer.executor import (
    Executor, FeedError, KernelError, ResourceLimitError, UnsupportedOpError, bn_is_training, has_kernel, run, run_node,
    unsupported_ops,
)
from optimizer.ir import Node
from support import one_node_model as make_model


def chain_model(n: int = 4, shape=(256, 256)) -> onnx.ModelProto:
    nodes = [helper.make_node("Relu" if i % 2 else "Neg", [f"t{i}"], [f"t{i + 1}"], name=f"n{i}") for i in range(n)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("t0", onnx.TensorProto.FLOAT, list(shape))],
                              [helper.make_tensor_value_info(f"t{n}", onnx.TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_schedule_frees_each_intermediate_after_its_last_reader():
    executor = Executor(onnx_io.load(chain_model(4)))
    assert [(node.name, freed) for node, freed in executor.schedule] == [
        ("n0", ()), ("n1", ("t1",)), ("n2", ("t2",)), ("n3", ("t3",))]


def test_peak_memory_follows_the_live_set():
    n, shape = 8, (512, 512)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    executor = Executor(onnx_io.load(chain_model(n, shape)))
    tracemalloc.start()
    try:
        executor.run({"t0": x})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * x.nbytes  # keeping every intermediate would need n * x.nbytes


def test_outputs_are_graph_outputs_by_name_and_weights_stay_untouched():
    w = np.ones((2, 2), np.float32)
    model = make_model("Identity", {}, initializers={"w": w})
    graph = onnx_io.load(model)
    out = run(graph, {})
    out["y0"][:] = 7  # the caller may write into results ...
    np.testing.assert_array_equal(run(graph, {})["y0"], w)  # ... without corrupting the model's weights


def _model_with_unknown_ops() -> onnx.ModelProto:
    then_branch = helper.make_graph([helper.make_node("FancyOp", ["x"], ["t"], domain="acme.ops", name="inner")],
                                    "then", [], [helper.make_tensor_value_info("t", onnx.TensorProto.FLOAT, None)])
    else_branch = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [],
                                    [helper.make_tensor_value_info("e", onnx.TensorProto.FLOAT, None)])
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="ok"),
             helper.make_node("Frobnicate", ["r"], ["f"], name="first"),
             helper.make_node("Constant", [], ["s"], value_string="text", name="string_constant"),
             helper.make_node("MaxPool", ["f"], ["p"], kernel_shape=[2], name="pool"),
             helper.make_node("If", ["c"], ["y"], then_branch=then_branch, else_branch=else_branch, name="branch")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 4]),
                                           helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("p", onnx.TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("acme.ops", 2)],
                             ir_version=8)


def test_every_unsupported_op_is_reported_at_once():
    graph = onnx_io.load(_model_with_unknown_ops())
    with pytest.raises(UnsupportedOpError) as info:
        Executor(graph)
    error = info.value
    assert isinstance(error, NinoptError)
    assert [(op.op_type, op.domain, op.opset, op.node) for op in error.ops] == [
        ("Frobnicate", "", 13, "first"), ("Constant", "", 13, "string_constant"), ("FancyOp", "acme.ops", 2, "inner")]
    message = str(error)
    assert message.startswith("The executor cannot run 3 ops:") and message.count("\n") == 0
    for needle in ("Frobnicate (domain ai.onnx, opset 13, node 'first')", "Constant with attribute(s) value_string",
                   "FancyOp (domain acme.ops, opset 2, node 'inner')"):
        assert needle in message
    assert unsupported_ops(graph) == error.ops


def test_supported_graph_has_no_unsupported_ops():
    assert unsupported_ops(onnx_io.load(chain_model())) == []


def test_resource_guard_refuses_huge_constant_of_shape_before_allocating():
    model = make_model("ConstantOfShape", {}, initializers={"s": np.array([10**6, 10**6], np.int64)})
    executor = Executor(onnx_io.load(model))
    tracemalloc.start()
    try:
        with pytest.raises(ResourceLimitError) as info:
            executor.run({})
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    assert "1000000x1000000 float32" in str(info.value) and "limit" in str(info.value)


@pytest.mark.parametrize("op,inputs,inits,attrs", [
    ("Expand", {"x": np.ones((1, 4), np.float32)}, {"s": np.array([4096, 4], np.int64)}, {}),
    ("Tile", {"x": np.ones((64, 4), np.float32)}, {"r": np.array([64, 1], np.int64)}, {}),
    ("Pad", {"x": np.ones((4, 4), np.float32)}, {"p": np.array([0, 0, 4096, 0], np.int64)}, {}),
    ("Range", {}, {"a": np.array(0, np.int64), "b": np.array(10**5, np.int64), "d": np.array(1, np.int64)}, {}),
    ("Conv", {"x": np.ones((1, 1, 128, 128), np.float32)}, {"w": np.ones((8, 1, 1, 1), np.float32)}, {}),
    ("Resize", {"x": np.ones((1, 1, 8, 8), np.float32)},
     {"roi": np.array([], np.float32), "s": np.array([1, 1, 64, 64], np.float32)}, {}),
])
def test_resource_guard_is_settable_and_covers_growing_ops(op, inputs, inits, attrs):
    executor = Executor(onnx_io.load(make_model(op, inputs, initializers=inits, **attrs)))
    executor.run(inputs)  # fine under the default limit
    executor.max_tensor_bytes = 32 * 1024
    with pytest.raises(ResourceLimitError, match=f"^{op} node"):
        executor.run(inputs)


def test_resource_guard_reaches_into_loop_bodies():
    body = helper.make_graph(
        [helper.make_node("ConstantOfShape", ["shape"], ["big"]), helper.make_node("Identity", ["cond"], ["cond_out"])],
        "body", [helper.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
                 helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("cond_out", onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info("big", onnx.TensorProto.FLOAT, None)])
    graph = helper.make_graph([helper.make_node("Loop", ["M", ""], ["stack"], body=body)], "g", [],
                              [helper.make_tensor_value_info("stack", onnx.TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.array(2, np.int64), "M"),
                               numpy_helper.from_array(np.array([1000, 1000], np.int64), "shape")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    executor = Executor(onnx_io.load(model), max_tensor_bytes=1 << 20)
    with pytest.raises(ResourceLimitError, match="ConstantOfShape"):
        executor.run({})


FEED = np.zeros((1, 3, 4), np.float32)


@pytest.mark.parametrize("feeds,pattern", [
    ({}, r"^Missing input\(s\) 'x'"),
    ({"x": FEED, "z": FEED}, r"^Unknown input\(s\) 'z'; the model's inputs are 'x'\.$"),
    ({"x": FEED.astype(np.float64)}, r"^Input 'x' has dtype float64, but the model expects float32\.$"),
    ({"x": FEED[0]}, r"^Input 'x' has rank 2 .* expects rank 3"),
    ({"x": np.zeros((1, 3, 5), np.float32)}, r"^Input 'x' has size 5 on axis 2, but the model expects 4"),
    ([FEED], r"^Inputs must be a mapping"),
])
def test_bad_feeds_are_refused_with_a_sentence(feeds, pattern):
    executor = Executor(onnx_io.load(make_model("Relu", {"x": FEED})))
    with pytest.raises(FeedError, match=pattern):
        executor.run(feeds)


def test_symbolic_dims_must_agree_across_inputs():
    graph = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g",
                              [helper.make_tensor_value_info("a", onnx.TensorProto.FLOAT, ["n", 2]),
                               helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, ["n", 2])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    executor = Executor(onnx_io.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])))
    assert executor.run({"a": np.ones((3, 2), np.float32), "b": np.ones((3, 2), np.float32)})["y"].shape == (3, 2)
    with pytest.raises(FeedError, match="Dimension 'n' is 3 in input 'a' but 4 in input 'b'"):
        executor.run({"a": np.ones((3, 2), np.float32), "b": np.ones((4, 2), np.float32)})


def test_a_kernel_failure_names_the_node():
    model = make_model("Reshape", {"x": FEED}, initializers={"s": np.array([5, 5], np.int64)})
    with pytest.raises(KernelError, match=r"^Reshape node '' failed: cannot reshape"):
        run(onnx_io.load(model), {"x": FEED})


def test_ir3_initializer_inputs_may_be_overridden():
    model = make_model("Add", {"x": FEED}, initializers={"b": np.ones(4, np.float32)})
    model.graph.input.append(helper.make_tensor_value_info("b", onnx.TensorProto.FLOAT, [4]))
    graph = onnx_io.load(model)
    assert graph.feed_inputs() == ["x"]
    np.testing.assert_array_equal(run(graph, {"x": FEED})["y0"], FEED + 1)
    np.testing.assert_array_equal(run(graph, {"x": FEED, "b": np.full(4, 2, np.float32)})["y0"], FEED + 2)


# ---------------------------------------------------------------------- public API for one node / captures
def test_run_node_gives_every_output_in_order_as_the_executor_does():
    x = np.random.default_rng(3).standard_normal((2, 7)).astype(np.float32)
    model = make_model("TopK", {"x": x}, n_outputs=2, initializers={"k": np.array([3], np.int64)}, axis=1)
    graph = onnx_io.load(model)
    node = graph.nodes[0]
    values, indices = run_node(node, [x, np.array([3], np.int64)], graph.opset())
    expected = run(graph, {"x": x})
    np.testing.assert_array_equal(values, expected["y0"])
    np.testing.assert_array_equal(indices, expected["y1"])
    assert indices.dtype == np.int64 and values.shape == (2, 3)


def test_run_node_raises_the_executor_errors():
    reshape = Node("Reshape", ["x", "s"], ["y"], name="r")
    with pytest.raises(KernelError, match=r"^Reshape node 'r' failed: cannot reshape"):
        run_node(reshape, [FEED, np.array([5, 5], np.int64)], 13)
    grow = Node("ConstantOfShape", ["s"], ["y"], name="c")
    assert run_node(grow, [np.array([64, 64], np.int64)], 13)[0].shape == (64, 64)
    with pytest.raises(ResourceLimitError, match="^ConstantOfShape node 'c'"):
        run_node(grow, [np.array([64, 64], np.int64)], 13, max_tensor_bytes=1024)
    with pytest.raises(UnsupportedOpError, match="NoSuchOp"):
        run_node(Node("NoSuchOp", ["x"], ["y"]), [FEED], 13)
    with pytest.raises(UnsupportedOpError, match="subgraphs"):
        run_node(Node("If", ["c"], ["y"]), [np.array(True)], 13)


def test_has_kernel_honours_the_kernels_own_check():
    assert has_kernel(Node("LpNormalization", ["x"], ["y"], {"p": 2}), 13)
    assert not has_kernel(Node("LpNormalization", ["x"], ["y"], {"p": 3}), 13)
    assert not has_kernel(Node("NoSuchOp", ["x"], ["y"]), 13)
    assert not has_kernel(Node("Relu", ["x"], ["y"]), 0)  # before the op existed


def test_outputs_returns_intermediates_in_place_of_the_graph_outputs():
    graph = onnx_io.load(chain_model(4, (2, 3)))
    x = np.arange(-3, 3, dtype=np.float32).reshape(2, 3)
    got = Executor(graph, outputs=["t1", "t2"]).run({"t0": x})
    assert sorted(got) == ["t1", "t2"]
    np.testing.assert_array_equal(got["t1"], -x)
    np.testing.assert_array_equal(got["t2"], np.maximum(-x, 0))
    assert graph.outputs == ["t4"]  # the caller's graph is left alone
    with pytest.raises(NinoptError, match="'nope'"):
        Executor(graph, outputs=["t1", "nope"])


def test_bn_is_training_follows_the_opset():
    assert bn_is_training(Node("BatchNormalization", list("xsbmv"), ["y"], {"training_mode": 1}), 14)
    assert not bn_is_training(Node("BatchNormalization", list("xsbmv"), ["y"]), 14)
    assert bn_is_training(Node("BatchNormalization", list("xsbmv"), ["y", "m", "v"]), 9)
    assert not bn_is_training(Node("BatchNormalization", list("xsbmv"), ["y", "", ""]), 9)


SPECIAL = np.array([-0.0, 0.0, np.nan, -np.inf, np.inf, -1.5, 0.25, 7.0], np.float32)


@pytest.mark.parametrize("op, bounds, names", [
    ("Relu", {}, ["x"]),
    ("Clip", {"lo": np.array(0, np.float32), "hi": np.array(6, np.float32)}, ["x", "lo", "hi"]),
    ("Clip", {"lo": np.array(0, np.float32)}, ["x", "lo"]),
    ("Clip", {"hi": np.array(1, np.float32)}, ["x", "", "hi"]),
    ("Clip", {"lo": np.array(3, np.float32), "hi": np.array(1, np.float32)}, ["x", "lo", "hi"]),  # min > max: max
])
def test_relu_and_clip_match_onnxruntime_bit_for_bit_on_signed_zeros_nan_and_infinities(op, bounds, names):
    from support import ort_run

    model = make_model(op, {"x": SPECIAL}, initializers=bounds, input_names=names)
    ours = run(onnx_io.load(model), {"x": SPECIAL})["y0"]
    theirs = ort_run(model, {"x": SPECIAL})[0]
    assert ours.dtype == theirs.dtype and np.array_equal(ours.view(np.uint32), theirs.view(np.uint32))


def test_clip_with_one_bound_keeps_integers_integers():
    x = np.array([-128, -5, 0, 9, 127], np.int8)
    model = make_model("Clip", {"x": x}, initializers={"hi": np.array(4, np.int8)}, input_names=["x", "", "hi"])
    got = run(onnx_io.load(model), {"x": x})["y0"]
    assert got.dtype == np.int8 and got.tolist() == [-128, -5, 0, 4, 4]


def test_sigmoid_is_within_a_few_ulps_everywhere_and_keeps_its_limits():
    from optimizer.executor.elementwise import sigmoid

    x = np.linspace(-87, 87, 200_001, dtype=np.float32)
    with np.errstate(over="ignore"):
        got = sigmoid(x).astype(np.float64)
        limits = sigmoid(np.array([np.nan, -np.inf, np.inf, -0.0, -200.0, 200.0], np.float32))
    truth = 1 / (1 + np.exp(-x.astype(np.float64)))
    ulps = np.abs(got - truth) / np.spacing(truth.astype(np.float32)).astype(np.float64)
    assert ulps.max() <= 4
    assert np.isnan(limits[0]) and limits[1:].tolist() == [0.0, 1.0, 0.5, 0.0, 1.0]
    assert sigmoid(np.array(0.0, np.float32)).shape == ()
