"""Regression (ch_PP-OCRv4_rec, ddddocr common/common_old): ``ninopt analyze`` and ``optimize``
exited 3 with ``AttributeError: 'NoneType' object has no attribute 'tolist'`` on every Reshape
whose target shape is not a known constant: the cost model's Reshape rule read the target's
value unconditionally. The same held for a target that is a graph input, or an IR >= 4
initializer also listed as a graph input (overridable, as ``keep_initializers_as_inputs=True``
writes). Shape ops with other data-dependent operands must degrade to unknown dims too.
"""

import json

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer import analyze, onnx_io
from optimizer.cli import main
from optimizer.shape_inference import infer_shapes
from support import make_model


def _model(nodes, inputs, inits=(), ir_version=8):
    return make_model(nodes, inputs, ["y"], inits, opset=17, ir_version=ir_version, check=False)


def _conv_then(op_nodes, extra_inputs=(), inits=(), ir_version=8):
    """x -> 1x1 Conv -> ``op_nodes`` (reading "c") -> y: the Conv is priced, the rest may not be."""
    w = numpy_helper.from_array(np.ones((8, 4, 1, 1), np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])
    return _model([helper.make_node("Conv", ["x", "w"], ["c"]), *op_nodes], [x, *extra_inputs],
                  [w, *inits], ir_version)


def _analyze_json(tmp_path, model, capsys) -> dict:
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    assert main(["analyze", str(path), "--json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def test_reshape_target_fed_as_graph_input(tmp_path, capsys):
    shape = helper.make_tensor_value_info("shape", TensorProto.INT64, [2])
    model = _conv_then([helper.make_node("Reshape", ["c", "shape"], ["r"]),
                        helper.make_node("MatMul", ["r", "m"], ["y"])], [shape],
                       [numpy_helper.from_array(np.ones((6, 5), np.float32), "m")])
    data = _analyze_json(tmp_path, model, capsys)
    macs = {n["op_type"]: n["macs"] for n in data["nodes"]}
    assert macs["Conv"] == 8 * 36 * 4
    assert macs["MatMul"] is None  # its input's shape depends on the fed target: unknown, not 0
    assert data["total"]["macs"] == 8 * 36 * 4 and data["total"]["macs_partial"]
    assert data["total"]["unknown_macs_nodes"] == 1
    assert infer_shapes(onnx_io.load(model), use_onnx=False)["r"] == (None, None)  # the target's length is known


def test_overridable_initializer_target_is_not_read_as_a_constant(tmp_path, capsys):
    """IR >= 4: an initializer that is also a graph input is a default a caller may replace."""
    shape = numpy_helper.from_array(np.array([1, -1], np.int64), "shape")
    listed = helper.make_tensor_value_info("shape", TensorProto.INT64, [2])
    model = _conv_then([helper.make_node("Reshape", ["c", "shape"], ["y"])], [listed], [shape], ir_version=8)
    data = _analyze_json(tmp_path, model, capsys)
    assert data["total"]["macs"] == 8 * 36 * 4
    assert [n["macs"] for n in data["nodes"] if n["op_type"] == "Reshape"] == [0]


@pytest.mark.parametrize("op_nodes,extra_inputs", [
    ([helper.make_node("Expand", ["c", "s"], ["y"])], [("s", [4])]),
    ([helper.make_node("Tile", ["c", "s"], ["y"])], [("s", [4])]),
    ([helper.make_node("Slice", ["c", "s", "e"], ["y"])], [("s", [1]), ("e", [1])]),
    ([helper.make_node("ConstantOfShape", ["s"], ["k"]), helper.make_node("Add", ["c", "k"], ["y"])], [("s", [4])]),
    ([helper.make_node("Range", ["a", "b", "d"], ["r"]), helper.make_node("Cast", ["r"], ["f"], to=TensorProto.FLOAT),
      helper.make_node("Add", ["c", "f"], ["y"])], [("a", []), ("b", []), ("d", [])]),
    ([helper.make_node("Resize", ["c", "", "", "s"], ["y"])], [("s", [4])]),
    ([helper.make_node("Pad", ["c", "s"], ["y"])], [("s", [8])]),
    ([helper.make_node("Split", ["c", "s"], ["y", "z"], axis=1)], [("s", [2])]),
], ids=["expand", "tile", "slice", "constant_of_shape", "range", "resize", "pad", "split"])
def test_data_dependent_shape_operands_are_unknown_not_a_crash(op_nodes, extra_inputs, tmp_path, capsys):
    inputs = [helper.make_tensor_value_info(name, TensorProto.INT64, dims) for name, dims in extra_inputs]
    model = _conv_then(op_nodes, inputs)
    data = _analyze_json(tmp_path, model, capsys)
    assert data["total"]["macs"] == 8 * 36 * 4  # the Conv before the data-dependent op is still priced
    assert not data["total"]["macs_partial"]  # none of these ops count MACs
    assert analyze(model).total_macs == 8 * 36 * 4


def test_reshape_target_computed_from_a_symbolic_shape_keeps_the_symbol():
    """Shape -> Gather -> Concat -> Reshape, as exporters write for a dynamic batch."""
    nodes = [helper.make_node("Shape", ["x"], ["s"]),
             helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
             helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
             helper.make_node("Concat", ["n1", "minus_one"], ["target"], axis=0),
             helper.make_node("Reshape", ["x", "target"], ["y"])]
    inits = [numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([0], np.int64), "axes"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus_one")]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, 6, 6])], inits)
    assert infer_shapes(onnx_io.load(model), use_onnx=False)["y"] == ("batch", 144)
