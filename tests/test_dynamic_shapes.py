"""Models with dynamic dims load, analyze, optimize and run with no flags, and costs never lie.

Built after the real models in /tmp/wild: paddle2onnx's ``[-1, 3, ?, ?]`` inputs, exporters'
symbolic batch, silero-vad's ``sr`` compared with 16000, unpriceable ops that used to count as 0.
"""

import json

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import optimizer
from optimizer import onnx_checks, onnx_io
from optimizer.cli import main
from optimizer.cost import analyze_costs
from optimizer.inputs import OTHER_SIZES, SPATIAL_SIZES, choose_input_shapes, random_inputs
from optimizer.shape_inference import infer_shapes
from support import make_model, ort_run

RNG = np.random.default_rng(0)


def _model(nodes, inputs, rank=4, inits=(), opset=17, metadata=None):
    """A model with output y of the given rank (onnx's checker wants graph outputs typed and shaped)."""
    model = make_model(nodes, inputs, [("y", [f"y{i}" for i in range(rank)])], inits, opset=opset, check=False)
    for key, value in (metadata or {}).items():
        model.metadata_props.add(key=key, value=value)
    return model


def _weight(name, *shape):
    return numpy_helper.from_array((RNG.standard_normal(shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32), name)


def _conv_model(dims, metadata=None):
    """x -> 3x3 Conv (pad 1) -> Relu -> y over an input declared with ``dims``."""
    return _model([helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]), helper.make_node("Relu", ["c"], ["y"])],
                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)], inits=[_weight("w", 8, 3, 3, 3)],
                  metadata=metadata)


def _save(tmp_path, model, name="m.onnx"):
    path = tmp_path / name
    path.write_bytes(model.SerializeToString())
    return path


def _cli_json(capsys, *args) -> dict:
    code = main([*args, "--json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return json.loads(captured.out)


# ---------------------------------------------------------------------- -1 dims
def test_negative_declared_dims_load_as_dynamic_and_optimize_without_flags(tmp_path, capsys):
    """paddle2onnx writes -1 for a dynamic dim; onnxruntime runs such models."""
    model = _conv_model([-1, 3, -1, -1])
    assert onnx_io.load(model).shape("x") == (None, 3, None, None)
    data = _cli_json(capsys, "optimize", str(_save(tmp_path, model)), "-o", str(tmp_path / "out.onnx"))
    assert data["input_shapes"] == {"x": [1, 3, SPATIAL_SIZES[0], SPATIAL_SIZES[0]]}
    assert data["chosen_by_default"] == {"x": [0, 2, 3]}
    assert data["verification"]["inputs"]["x"]["shape"] == [1, 3, SPATIAL_SIZES[0], SPATIAL_SIZES[0]]
    assert data["before"]["macs"] == 8 * 27 * SPATIAL_SIZES[0] ** 2 and not data["before"]["macs_partial"]


def test_question_mark_dims_are_placeholders_not_one_symbol(tmp_path, capsys):
    """paddle2onnx names H and W both ``?``: a --shape giving them different sizes must be taken."""
    model = _conv_model(["?", 3, "?", "?"])
    assert onnx_io.load(model).shape("x") == (None, 3, None, None)
    data = _cli_json(capsys, "optimize", str(_save(tmp_path, model)), "-o", str(tmp_path / "out.onnx"),
                     "--shape", "x:1x3x48x192")
    assert data["input_shapes"] == {"x": [1, 3, 48, 192]}


def test_a_declared_minus_one_output_dim_does_not_veto_every_size():
    """paddle2onnx also writes -1 into output shapes: strict shape inference read it as a size 1 contradicts."""
    model = _conv_model([-1, 3, -1, -1])
    for dim in model.graph.output[0].type.tensor_type.shape.dim:
        dim.dim_value = -1
    graph = onnx_io.load(model)
    assert onnx_checks.shape_inference_accepts(graph, {"x": (1, 3, 32, 32)})
    assert choose_input_shapes(graph).shapes == {"x": (1, 3, SPATIAL_SIZES[0], SPATIAL_SIZES[0])}


def test_bottleneck_analysis_runs_dynamic_models_at_the_chosen_shapes():
    """It drew its own random inputs with every dynamic dim 1, which two unpadded 3x3 convs cannot take."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"]), helper.make_node("Relu", ["a"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                   inits=[_weight("w1", 16, 3, 3, 3), _weight("w2", 8, 16, 3, 3)])
    report = optimizer.analyze_bottlenecks(model)
    assert report.rows() and all(row["macs"] > 0 for row in report.rows())
    result = optimizer.optimize(model, bottleneck=optimizer.api.BottleneckOptions(max_error=1e-2))
    assert result.verification.passed


# ---------------------------------------------------------------------- symbolic batch
def test_symbolic_batch_is_verified_at_1_and_reported(tmp_path, capsys):
    source = _save(tmp_path, _conv_model(["batch", 3, 10, 12]))
    data = _cli_json(capsys, "optimize", str(source), "-o", str(tmp_path / "out.onnx"))
    assert data["input_shapes"] == {"x": [1, 3, 10, 12]} and data["chosen_by_default"] == {"x": [0]}
    assert data["before"]["macs"] == 8 * 27 * 120
    assert main(["optimize", str(source), "-o", str(tmp_path / "out2.onnx")]) == 0
    assert "x 1x3x10x12 (axis 0 chosen by default)" in capsys.readouterr().out
    given = _cli_json(capsys, "optimize", str(source), "-o", str(tmp_path / "out3.onnx"), "--shape", "x:2x3x10x12")
    assert given["input_shapes"] == {"x": [2, 3, 10, 12]} and given["chosen_by_default"] == {}
    assert given["before"]["macs"] == 2 * 8 * 27 * 120


def test_run_without_inputs_uses_the_same_choice(tmp_path, capsys):
    source = _save(tmp_path, _conv_model(["batch", 3, "h", "w"]))
    data = _cli_json(capsys, "run", str(source))
    assert data["inputs"] == {"x": [1, 3, SPATIAL_SIZES[0], SPATIAL_SIZES[0]]}
    assert data["outputs"][0]["shape"] == [1, 8, SPATIAL_SIZES[0], SPATIAL_SIZES[0]]


def test_symbols_propagate_through_conv_elementwise_and_reshape():
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["s"], strides=[2, 2]),
             helper.make_node("Flatten", ["r"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, "h", "w"])],
                   rank=2, inits=[_weight("w", 8, 3, 3, 3), _weight("w2", 8, 8, 1, 1)])
    shapes = infer_shapes(onnx_io.load(model), use_onnx=False)
    assert shapes["r"] == ("batch", 8, "h", "w")  # stride 1, padded to keep the size: the symbols stay
    assert shapes["s"] == ("batch", 8, None, None)  # stride 2 of an unknown size: unknown
    costs = analyze_costs(onnx_io.load(model), {"x": (1, 3, 16, 16)})
    assert costs.total_macs == 8 * 27 * 256 + 8 * 8 * 64


# ---------------------------------------------------------------------- the search
def test_spatial_size_search_takes_the_first_size_the_model_runs_with():
    """A Reshape to a constant 3x320x320 only runs at 320x320: 224x224 is tried and rejected."""
    assert SPATIAL_SIZES[:2] == (224, 320)
    nodes = [helper.make_node("Reshape", ["x", "target"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"])],
                   rank=2, inits=[numpy_helper.from_array(np.array([1, 3 * 320 * 320], np.int64), "target")])
    choice = choose_input_shapes(onnx_io.load(model))
    assert choice.shapes == {"x": (1, 3, 320, 320)} and choice.chosen_axes == {"x": [0, 2, 3]}


def test_metadata_image_size_is_tried_first():
    model = _conv_model(["batch", 3, "height", "width"], metadata={"imgsz": "[96, 128]"})
    assert choose_input_shapes(onnx_io.load(model)).shapes == {"x": (1, 3, 96, 128)}


def test_no_default_size_asks_for_shape_in_one_sentence(tmp_path, capsys):
    nodes = [helper.make_node("Reshape", ["x", "target"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, "t"])],
                   rank=2, inits=[numpy_helper.from_array(np.array([7, 11], np.int64), "target")])
    assert 77 not in OTHER_SIZES
    source = _save(tmp_path, model)
    assert main(["optimize", str(source), "-o", str(tmp_path / "out.onnx")]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and "--shape x:" in lines[0]
    assert main(["optimize", str(source), "-o", str(tmp_path / "out.onnx"), "--shape", "x:1x77"]) == 0
    capsys.readouterr()
    data = _cli_json(capsys, "analyze", str(source))  # analyze still answers, with symbolic dims
    assert data["input_shapes"] == {}


def test_integer_input_compared_with_a_constant_gets_that_constant():
    """silero-vad: ``Equal(sr, 16000)`` selects the branch; a random sr would take the wrong one."""
    nodes = [helper.make_node("Reshape", ["sr", "one"], ["sr1"]),
             helper.make_node("Equal", ["sr1", "rate"], ["is_16k"]),
             helper.make_node("Where", ["is_16k", "x", "minus_x"], ["y"]),
             helper.make_node("Neg", ["x"], ["minus_x"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "sequence"]),
                           helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
                   rank=2, inits=[numpy_helper.from_array(np.array([16000], np.int64), "rate"),
                          numpy_helper.from_array(np.array([1], np.int64), "one")])
    graph = onnx_io.load(model)
    feeds = random_inputs(graph)
    assert feeds["sr"] == 16000 and feeds["x"].shape == (1, OTHER_SIZES[0])
    np.testing.assert_array_equal(optimizer.run(graph, feeds)["y"], ort_run(model, feeds)[0])


def test_batch_of_a_recurrent_state_is_the_batch():
    """silero-vad declares ``input [?, ?]`` and ``state [2, ?, 128]``: the state's unnamed dim is the batch."""
    nodes = [helper.make_node("ReduceSum", ["state", "axes"], ["s"], keepdims=0),
             helper.make_node("MatMul", ["s", "m"], ["p"]),
             helper.make_node("ReduceMean", ["x"], ["xm"], axes=[1]),
             helper.make_node("Add", ["p", "xm"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, None]),
                           helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, None, 4])],
                   rank=2, inits=[numpy_helper.from_array(np.array([0], np.int64), "axes"), _weight("m", 4, 1)])
    choice = choose_input_shapes(onnx_io.load(model))
    assert choice.shapes == {"x": (1, OTHER_SIZES[0]), "state": (2, 1, 4)}


# ---------------------------------------------------------------------- costs never lie
def _unpriced_model():
    """A Conv, then an Einsum (linear algebra this model does not count), then a custom-domain op."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]),
             helper.make_node("Einsum", ["c", "c"], ["e"], equation="nchw,nchw->nc"),
             helper.make_node("Frob", ["e"], ["y"], domain="com.acme")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 4, 4])],
                              [helper.make_empty_tensor_value_info("y")], [_weight("w", 8, 3, 1, 1)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.acme", 1)])


def test_unknown_costs_are_null_and_totals_say_they_are_partial(tmp_path, capsys):
    source = _save(tmp_path, _unpriced_model())
    data = _cli_json(capsys, "analyze", str(source))
    macs = {n["op_type"]: n["macs"] for n in data["nodes"]}
    assert macs == {"Conv": 8 * 3 * 16, "Einsum": None, "Frob": None}
    assert data["total"]["macs"] == 8 * 3 * 16
    assert data["total"]["macs_partial"] and data["total"]["unknown_macs_nodes"] == 2
    report = optimizer.analyze(source)
    assert report.total_macs == 8 * 3 * 16 and report.unknown_nodes("macs") == ["e", "y"]  # unnamed: output names
    assert main(["analyze", str(source)]) == 0
    table = capsys.readouterr().out
    assert "partial: 2 node(s) unknown" in table and " ? " in table


def test_recurrent_and_quantized_ops_are_priced_not_zero():
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [5, 2, 6])  # seq 5, batch 2, input 6
    lstm = helper.make_node("LSTM", ["x", "w", "r"], ["y"], hidden_size=3, direction="bidirectional")
    model = _model([lstm], [x], inits=[_weight("w", 2, 12, 6), _weight("r", 2, 12, 3)])
    (node,) = analyze_costs(onnx_io.load(model)).nodes
    assert node.macs == 5 * 2 * 2 * 4 * 3 * (6 + 3)
    assert node.output_shapes[0] == (5, 2, 2, 3)
    mm = helper.make_node("MatMulInteger", ["a", "b"], ["y"])
    model = helper.make_model(helper.make_graph(
        [mm], "g", [helper.make_tensor_value_info("a", TensorProto.UINT8, [4, 6])],
        [helper.make_empty_tensor_value_info("y")],
        [numpy_helper.from_array(np.ones((6, 5), np.uint8), "b")]), opset_imports=[helper.make_opsetid("", 17)])
    assert analyze_costs(onnx_io.load(model)).total_macs == 4 * 5 * 6


# ---------------------------------------------------------------------- fuse-conv1x1-chain with dynamic H x W
def test_fuse_conv1x1_chain_fires_with_dynamic_spatial_dims():
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"]), helper.make_node("Conv", ["h", "w2"], ["y"])]
    model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4, "H", "W"])],
                   inits=[_weight("w1", 16, 4, 1, 1), _weight("w2", 4, 16, 1, 1)])
    result = optimizer.optimize(model, passes="fuse-conv1x1-chain")
    assert [n.op_type for n in result.graph.nodes] == ["Conv"]
    (decision,) = result.pipeline.passes[0].decisions
    assert decision.applied and (decision.macs_before, decision.macs_after) == (4 * 16 + 16 * 4, 4 * 4)
    assert "output position" in decision.macs_per
    assert result.verification.passed and result.shapes.shapes["x"][2:] == (SPATIAL_SIZES[0],) * 2
    fused = result.model
    x = RNG.standard_normal((2, 4, 7, 9)).astype(np.float32)  # any size: the fusion does not depend on it
    np.testing.assert_allclose(ort_run(fused, {"x": x})[0], ort_run(model, {"x": x})[0], rtol=1e-5, atol=1e-5)
    onnx.checker.check_model(fused)


@pytest.mark.parametrize("r,applied", [(1, False), (2, True), (3, True)])
def test_dynamic_chain_decision_is_the_static_decision(r, applied):
    """4->r->4: fuses iff r >= 4*4/(4+4) = 2 (a tie goes to the single node), with or without known H x W."""
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"]), helper.make_node("Conv", ["h", "w2"], ["y"])]
    for dims in (["batch", 4, "H", "W"], [1, 4, 5, 5]):
        model = _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, dims)],
                       inits=[_weight("w1", r, 4, 1, 1), _weight("w2", 4, r, 1, 1)])
        result = optimizer.optimize(model, passes="fuse-conv1x1-chain", verify=False)
        assert result.pipeline.passes[0].decisions[0].applied is applied
