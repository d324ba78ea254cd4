"""fold-shape-arithmetic: a Reshape target built from the input's own dims becomes a constant with 0 (copy) entries."""

import numpy as np
from onnx import TensorProto, helper

from optimizer import onnx_io
from optimizer.pipeline import PassManager
from optimizer.registry import get_pass
from support import assert_agrees, make_model, ort_run

N = helper.make_node


def run(graph):
    return PassManager([get_pass("fold-shape-arithmetic").create()]).run(graph).passes[0]


def _model(nodes, inits, y_shape, opset=13):
    return make_model(nodes, [("x", ["N", 3, 4, 5])], [("y", y_shape)],
                      {k: np.asarray(v, np.int64) for k, v in inits.items()}, opset=opset, check=False)


def _batch_reshape(batch_first=True, allowzero=None, opset=13):
    """y = Reshape(x, Concat(Shape(x)[0], int32 round trip of Shape(x)[1:2], [-1])), or the batch last."""
    attrs = {} if allowzero is None else {"allowzero": allowzero}
    parts = ["n1", "c", "minus"] if batch_first else ["minus", "c", "n1"]
    nodes = [N("Shape", ["x"], ["s"]), N("Gather", ["s", "zero"], ["n"]), N("Unsqueeze", ["n", "axes"], ["n1"]),
             N("Cast", ["s"], ["s32"], to=TensorProto.INT32),
             N("Slice", ["s32", "one", "two"], ["c32"]), N("Cast", ["c32"], ["c"], to=TensorProto.INT64),
             N("Concat", parts, ["target"], axis=0), N("Reshape", ["x", "target"], ["y"], **attrs)]
    inits = {"zero": 0, "axes": [0], "one": [1], "two": [2], "minus": [-1]}
    return _model(nodes, inits, ["N", 3, 20] if batch_first else [20, 3, "N"], opset)


def test_own_dims_become_copies_and_the_numbers_agree_at_any_batch():
    model = _batch_reshape()
    graph = onnx_io.load(model)
    assert run(graph).rewrites == 1
    reshape = next(n for n in graph.nodes if n.op_type == "Reshape")
    assert list(graph.const(reshape.inputs[1])) == [0, 0, -1]  # dim 1 is read at its own position too
    assert_agrees(model, graph)
    feeds = {"x": np.random.default_rng(0).standard_normal((4, 3, 4, 5)).astype(np.float32)}
    np.testing.assert_array_equal(ort_run(graph, feeds)[0], ort_run(model, feeds)[0])
    version = graph.version
    assert run(graph).rewrites == 0 and graph.version == version  # a second run changes nothing


def test_refuses_a_symbolic_dim_read_elsewhere_and_allowzero_with_the_reason():
    graph = onnx_io.load(_batch_reshape(batch_first=False))  # [-1, 3, N]: N sits at position 2, not 0
    stats = run(graph)
    assert stats.rewrites == 0
    assert stats.refusals == {"the target reads a symbolic dim at another position or of another tensor": 1}
    graph = onnx_io.load(_batch_reshape(allowzero=1, opset=14))
    stats = run(graph)
    assert stats.rewrites == 0
    assert stats.refusals == {"with allowzero=1 a 0 in the target means an empty dim, not a copy": 1}
