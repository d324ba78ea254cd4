"""eliminate-cancelling-chains: chains that cancel and ops that change nothing go; inexact ones stay, with the reason."""

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer import onnx_io
from optimizer.pipeline import PassManager
from optimizer.registry import get_pass
from passes.eliminate_cancelling_chains import widens_exactly
from support import assert_agrees, make_model

F, D, I32, I64 = TensorProto.FLOAT, TensorProto.DOUBLE, TensorProto.INT32, TensorProto.INT64


def run(graph):
    return PassManager([get_pass("eliminate-cancelling-chains").create()]).run(graph).passes[0]


def _i64(name, values):
    return numpy_helper.from_array(np.asarray(values, np.int64), name)


def _f32(name, values):
    return numpy_helper.from_array(np.asarray(values, np.float32), name)


def _model(nodes, x_shape, y_shape, inits=()):
    return make_model(nodes, [("x", x_shape)], [("y", y_shape)], inits, check=False)


N = helper.make_node
#: name -> (nodes, initializers, x shape, y shape, ops left)
CASES = {
    "float-double-float": ([N("Cast", ["x"], ["d"], to=D), N("Cast", ["d"], ["r"], to=F), N("Relu", ["r"], ["y"])],
                           [], [2, 3], [2, 3], ["Relu"]),
    "cast-to-own-type": ([N("Cast", ["x"], ["c"], to=F), N("Relu", ["c"], ["y"])], [], [2, 3], [2, 3], ["Relu"]),
    "reshape-reshape": ([N("Reshape", ["x", "s1"], ["r"]), N("Reshape", ["r", "s2"], ["y"])],
                        [_i64("s1", [6, 4]), _i64("s2", [3, -1])], [2, 3, 4], [3, 8], ["Reshape"]),
    "transpose-transpose": ([N("Transpose", ["x"], ["t"], perm=[0, 2, 3, 1]), N("Transpose", ["t"], ["u"], perm=[0, 3, 1, 2]),
                             N("Relu", ["u"], ["y"])], [], [1, 2, 3, 4], [1, 2, 3, 4], ["Relu"]),
    "transpose-compose": ([N("Transpose", ["x"], ["t"], perm=[1, 0, 2]), N("Transpose", ["t"], ["y"], perm=[2, 0, 1])],
                          [], [2, 3, 4], [4, 3, 2], ["Transpose"]),
    "slice-slice-disjoint-axes": ([N("Slice", ["x", "b1", "e1", "a1", "st"], ["s"]), N("Slice", ["s", "b2", "e2", "a2", "st"], ["y"])],
                                  [_i64("b1", [1]), _i64("e1", [6]), _i64("a1", [1]), _i64("st", [2]), _i64("b2", [0]),
                                   _i64("e2", [2**62]), _i64("a2", [-1])], [2, 6, 8], [2, 3, 4], ["Slice"]),
    "unsqueeze-squeeze": ([N("Unsqueeze", ["x", "ax"], ["u"]), N("Squeeze", ["u", "ax"], ["s"]), N("Relu", ["s"], ["y"])],
                          [_i64("ax", [0, 3])], [2, 3], [2, 3], ["Relu"]),
    "noop-reshape-flatten-squeeze-expand-slice": (
        [N("Reshape", ["x", "same"], ["a"]), N("Flatten", ["a"], ["b"], axis=1), N("Squeeze", ["b"], ["c"]),
         N("Expand", ["c", "same"], ["d"]), N("Slice", ["d", "starts", "ends"], ["e"]), N("Concat", ["e"], ["f"], axis=0),
         N("Relu", ["f"], ["y"])], [_i64("same", [2, 3]), _i64("starts", [0]), _i64("ends", [2**62])], [2, 3], [2, 3], ["Relu"]),
    "mul-one-div-one-sub-zero": ([N("Mul", ["one", "x"], ["a"]), N("Div", ["a", "one"], ["b"]), N("Sub", ["b", "zero"], ["c"]),
                                  N("Relu", ["c"], ["y"])], [_f32("one", [1.0, 1.0, 1.0]), _f32("zero", 0.0)], [2, 3], [2, 3], ["Relu"]),
    "add-negative-zero": ([N("Add", ["x", "nz"], ["a"]), N("Relu", ["a"], ["y"])], [_f32("nz", -0.0)], [2, 3], [2, 3],
                          ["Relu"]),
}


@pytest.mark.parametrize("case", CASES)
def test_fires_and_the_numbers_agree(case):
    nodes, inits, x_shape, y_shape, left = CASES[case]
    model = _model(nodes, x_shape, y_shape, inits)
    graph = onnx_io.load(model)
    assert run(graph).rewrites >= 1
    PassManager([get_pass("eliminate-dead-nodes").create()]).run(graph)
    assert sorted(n.op_type for n in graph.nodes) == left
    assert_agrees(model, graph)
    version = graph.version
    assert run(graph).rewrites == 0 and graph.version == version  # a second run changes nothing


REFUSED = {
    "int64 through float64 rounds": ([N("Cast", ["x"], ["i"], to=I64), N("Cast", ["i"], ["d"], to=D),
                                      N("Cast", ["d"], ["y"], to=F)], [], "a cast from int64 to float64 is not exact"),
    "narrowing first cast": ([N("Cast", ["x"], ["i"], to=I32), N("Cast", ["i"], ["y"], to=F)], [],
                             "a cast from float32 to int32 is not exact"),
    "reshape copying a dim": ([N("Reshape", ["x", "s1"], ["r"]), N("Reshape", ["r", "s2"], ["y"])],
                              [_i64("s1", [3, 2]), _i64("s2", [0, -1])], "the outer Reshape's target copies a dim (0) from its input"),
    "broadening one": ([N("Mul", ["x", "ones"], ["y"])], [_f32("ones", np.ones((4, 2, 3)))],
                       "the constant's broadcast may change the shape"),
    "x + 0.0": ([N("Add", ["x", "zero"], ["y"])], [_f32("zero", 0.0)], "x + 0.0 turns -0.0 into +0.0"),
    "slices of one axis": ([N("Slice", ["x", "b", "e"], ["s"]), N("Slice", ["s", "b", "e"], ["y"])],
                           [_i64("b", [1]), _i64("e", [2])], "both Slices cut the same axis"),
    "reversing slice": ([N("Slice", ["x", "e", "s", "a", "st"], ["y"])],
                        [_i64("e", [-1]), _i64("s", [-(2**62)]), _i64("a", [1]), _i64("st", [-1])],
                        "a Slice with a step other than 1 may reverse or skip elements"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_refuses_what_is_not_exact_and_says_why(case):
    nodes, inits, reason = REFUSED[case]
    graph = onnx_io.load(_model(nodes, [2, 3], None, inits))
    ops = sorted(n.op_type for n in graph.nodes)
    stats = run(graph)
    assert stats.rewrites == 0 and reason in stats.refusals
    assert sorted(n.op_type for n in graph.nodes) == ops


def test_widening_table():
    assert widens_exactly(np.dtype(np.int32), np.dtype(np.float64))
    assert widens_exactly(np.dtype(np.uint8), np.dtype(np.float16))
    assert not widens_exactly(np.dtype(np.int32), np.dtype(np.float32))
    assert not widens_exactly(np.dtype(np.float64), np.dtype(np.float32))
    assert widens_exactly(np.dtype(np.bool_), np.dtype(np.int8))
