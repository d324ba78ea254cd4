"""verify(): the criterion against the float64 truth, metrics, minimum passing tolerances, per-output
atol/rtol, random inputs."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from optimizer import onnx_io
from optimizer.errors import NinoptError
from optimizer.inputs import random_inputs
from optimizer.verification import verify

RNG = np.random.default_rng(0)
W = RNG.standard_normal((8, 3, 3, 3)).astype(np.float32)


def conv_model(w=W, batch="N") -> onnx.ModelProto:
    """x -> Conv -> (features, logits = Softmax(GlobalAveragePool flattened))."""
    nodes = [helper.make_node("Conv", ["x", "w"], ["features"], pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["features"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"]),
             helper.make_node("Softmax", ["flat"], ["probs"], axis=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [batch, 3, 8, 8])],
                              [helper.make_tensor_value_info("features", onnx.TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("probs", onnx.TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def graphs(perturb: float = 0.0):
    w = W.copy()
    w[0, 0, 0, 0] += perturb
    return onnx_io.load(conv_model()), onnx_io.load(conv_model(w))


SHAPES = {"x": (2, 3, 8, 8)}


def test_identical_models_pass_with_zero_error():
    report = verify(*graphs(), shapes=SHAPES)
    assert report.passed and report.failures() == []
    for o in report.outputs:
        assert o.max_abs == 0 and o.max_rel == 0 and o.min_atol == 0 and o.min_rtol == 0
        assert o.cosine == pytest.approx(1.0)
        assert 0 < o.noise_floor == o.error < 1e-6 and o.ratio == 1 and o.allowed == 1e-5  # float32 rounding
    assert report.criterion.tolerance == 1e-5 and report.oracle == "executor"
    assert report["probs"].argmax_agreement == 1.0
    assert report.inputs == {"x": ((2, 3, 8, 8), "float32")} and report.seed == 0


def test_perturbed_weight_fails_and_names_the_output():
    report = verify(*graphs(perturb=0.5), shapes=SHAPES)
    assert not report.passed
    failing = {o.name for o in report.failures()}
    assert "features" in failing
    message = report["features"].message
    assert message.startswith("Output 'features' is off by relative ") and "from the float64 truth" in message
    assert message.endswith("(allowed 1e-05).") and message.count(". ") == 0  # one sentence
    assert report["features"].cosine < 1 and report["features"].ratio > 1e4
    data = json.loads(json.dumps(report.to_dict()))  # JSON-ready
    assert data["criterion"]["factor"] == 16 and data["outputs"][0]["noise_floor"] > 0


def test_minimum_tolerances_are_tight():
    a, b = graphs(perturb=1e-3)
    base = verify(a, b, shapes=SHAPES, atol=1e-6, rtol=0.0)
    out = base["features"]
    assert not out.passed and out.min_atol > 0 and 0 < out.min_rtol < out.min_rtol_alone
    assert verify(a, b, shapes=SHAPES, atol=out.min_atol, rtol=0.0)["features"].passed
    assert not verify(a, b, shapes=SHAPES, atol=out.min_atol * (1 - 1e-6), rtol=0.0)["features"].passed
    assert verify(a, b, shapes=SHAPES, atol=1e-6, rtol=out.min_rtol)["features"].passed
    assert not verify(a, b, shapes=SHAPES, atol=1e-6, rtol=out.min_rtol * (1 - 1e-6))["features"].passed
    assert verify(a, b, shapes=SHAPES, atol=0.0, rtol=out.min_rtol_alone)["features"].passed
    assert not verify(a, b, shapes=SHAPES, atol=0.0, rtol=out.min_rtol_alone * (1 - 1e-6))["features"].passed


def test_per_output_overrides_apply_to_their_output_only():
    a, b = graphs(perturb=1e-2)
    strict = verify(a, b, shapes=SHAPES)
    assert not strict["features"].passed and strict["features"].atol is None
    loose_atol = strict["features"].min_atol
    report = verify(a, b, shapes=SHAPES, per_output_atol={"features": loose_atol},
                    per_output_rtol={"probs": strict["probs"].min_rtol_alone})
    assert report["features"].passed and (report["features"].atol, report["features"].rtol) == (loose_atol, 0.0)
    assert report["features"].allowed is None  # judged by atol/rtol, not by the criterion
    assert report["probs"].passed and report["probs"].atol == 0.0
    with pytest.raises(NinoptError, match="not an output"):
        verify(a, b, shapes=SHAPES, per_output_atol={"nope": 1.0})


def test_given_inputs_are_used_as_is():
    x = np.ones((1, 3, 8, 8), np.float32)
    report = verify(*graphs(), inputs={"x": x})
    assert report.seed is None and report.inputs == {"x": ((1, 3, 8, 8), "float32")}


def test_dynamic_batch_without_shape_is_verified_at_1():
    """The batch dim is chosen (1), not asked for; tests/test_dynamic_shapes.py covers the other dims."""
    assert verify(*graphs()).inputs["x"][0] == (1, *SHAPES["x"][1:])


def test_random_inputs_respect_dtypes_shapes_and_seed():
    graph = helper.make_graph(
        [helper.make_node("Identity", [n], [f"{n}_out"]) for n in ("f", "i", "b", "h")], "g",
        [helper.make_tensor_value_info("f", onnx.TensorProto.FLOAT, ["batch", 4]),
         helper.make_tensor_value_info("i", onnx.TensorProto.INT64, ["batch"]),
         helper.make_tensor_value_info("b", onnx.TensorProto.BOOL, [3]),
         helper.make_tensor_value_info("h", onnx.TensorProto.FLOAT16, [2, 2])],
        [helper.make_tensor_value_info(f"{n}_out", onnx.TensorProto.FLOAT, None) for n in ("f", "i", "b", "h")])
    g = onnx_io.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    feeds = random_inputs(g, {"f": (5, 4)}, seed=3)
    assert {k: (v.shape, v.dtype) for k, v in feeds.items()} == {
        "f": ((5, 4), np.float32), "i": ((5,), np.int64), "b": ((3,), np.bool_), "h": ((2, 2), np.float16)}
    assert feeds["i"].min() >= 0 and feeds["i"].max() < 10
    again = random_inputs(g, {"f": (5, 4)}, seed=3)
    assert all(np.array_equal(feeds[k], again[k]) for k in feeds)
    assert not np.array_equal(feeds["f"], random_inputs(g, {"f": (5, 4)}, seed=4)["f"])
    with pytest.raises(NinoptError, match="fixes it at 4"):
        random_inputs(g, {"f": (5, 3)})
    with pytest.raises(NinoptError, match="does not take"):
        random_inputs(g, {"zz": (1,)})


def test_outputs_with_nan_in_both_models_match():
    graph = helper.make_graph([helper.make_node("Sqrt", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    g = onnx_io.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))
    report = verify(g, g, inputs={"x": np.array([-1, 0, 1, 4], np.float32)})
    assert report.passed and report["y"].max_abs == 0
