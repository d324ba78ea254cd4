"""The verification criterion (float64 truth, noise floor, k), the onnxruntime oracle, infinities and NaN."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import optimizer
from optimizer.cli import main
from optimizer.errors import VerificationError
from optimizer.executor import registry
from optimizer.pipeline import GraphPass, register_pass, unregister_pass
from optimizer.verification import NOISE_FACTOR, Criterion
from support import FIXTURES_DIR, make_model, ort_run, to_float16

RNG = np.random.default_rng(7)


def _vi(name, shape, elem=TensorProto.FLOAT):
    return helper.make_tensor_value_info(name, elem, shape)


def _save(model: onnx.ModelProto, path: Path) -> str:
    path.write_bytes(model.SerializeToString())
    return str(path)


def conv_stack() -> onnx.ModelProto:
    """Two 3x3 convolutions, 8 -> 8 -> 4 channels: a float32 noise floor near 1e-7."""
    w1 = (RNG.standard_normal((8, 8, 3, 3)) / 8).astype(np.float32)
    w2 = (RNG.standard_normal((4, 8, 3, 3)) / 8).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("Conv", ["r", "w2"], ["y"], pads=[1, 1, 1, 1])]
    return make_model(nodes, [_vi("x", [1, 8, 16, 16])], [_vi("y", [1, 4, 16, 16])],
                      [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])


def test_criterion_is_the_larger_of_the_floor_and_k_noise_floors():
    assert Criterion(1e-5).allowed(1e-7) == 1e-5
    assert Criterion(1e-5).allowed(1e-5) == pytest.approx(NOISE_FACTOR * 1e-5)
    assert Criterion(0.0, factor=4).allowed(2e-3) == pytest.approx(8e-3)


# ---------------------------------------------------------------------- a wrong rewrite is caught
@pytest.fixture
def nudging_pass():
    @register_pass("test-nudge-weight", exact=True)
    class NudgeWeight(GraphPass):
        """Test only: scales the largest weight of the last conv by (1 + 1e-4), as a subtly wrong rewrite would."""

        def run(self, g, ctx):
            if ctx.stats.rewrites:
                return False
            name = [n for n in g.nodes if n.op_type == "Conv"][-1].inputs[1]
            w = g.const(name).copy()
            at = np.unravel_index(np.abs(w).argmax(), w.shape)
            w[at] *= np.float32(1 + 1e-4)
            g.set_const(name, w)
            ctx.stats.rewrites += 1
            return True

    yield "test-nudge-weight"
    unregister_pass("test-nudge-weight")


def test_one_weight_scaled_by_1e4_relative_is_caught_on_a_quiet_model(nudging_pass):
    model = conv_stack()
    clean = optimizer.optimize(model, passes="eliminate-identity", oracle="executor")
    noise = clean.verification["y"].noise_floor
    assert 1e-8 < noise < 5e-7  # the premise: float32 rounding alone is ~1e-7 here
    result = optimizer.optimize(model, passes=[nudging_pass], oracle="executor", raise_on_failure=False)
    y = result.verification["y"]
    assert not y.passed and y.ratio > NOISE_FACTOR and y.error > y.allowed
    with pytest.raises(VerificationError, match=r"output 'y' is off by relative .* from the float64 truth"):
        optimizer.optimize(model, passes=[nudging_pass])


# ---------------------------------------------------------------------- the onnxruntime oracle
def sqrt_scaled_model() -> onnx.ModelProto:
    """y = x * Sqrt(c): fold-constants computes Sqrt(c) on the executor."""
    c = RNG.uniform(0.5, 2.0, (1, 4, 1, 1)).astype(np.float32)
    nodes = [helper.make_node("Sqrt", ["c"], ["s"], name="root_of_c"), helper.make_node("Mul", ["x", "s"], ["y"])]
    return make_model(nodes, [_vi("x", [1, 4, 3, 3])], [_vi("y", [1, 4, 3, 3])], [numpy_helper.from_array(c, "c")])


@pytest.fixture
def broken_sqrt(monkeypatch):
    """The executor's Sqrt made 1% wrong, as a kernel whose semantics differ from ONNX's would be."""
    key = ("", "Sqrt")
    specs = [dataclasses.replace(s, fn=lambda ctx, x, _fn=s.fn: _fn(ctx, x) * x.dtype.type(1.01))
             for s in registry._KERNELS[key]]
    monkeypatch.setitem(registry._KERNELS, key, specs)


def test_onnxruntime_catches_a_constant_folded_by_a_wrong_kernel(broken_sqrt):
    model = sqrt_scaled_model()
    alone = optimizer.optimize(model, oracle="executor")  # the executor agrees with itself
    assert alone.verification.passed and "Sqrt" not in {n.op_type for n in alone.graph.nodes}
    assert alone.oracle.used == ["executor"]
    with pytest.raises(VerificationError) as refused:
        optimizer.optimize(model)  # default: both oracles
    message = str(refused.value)
    assert "fails verification in onnxruntime" in message
    assert "disagree on the original model, first at Sqrt node 'root_of_c'" in message
    report = optimizer.optimize(model, raise_on_failure=False).oracle
    assert report.used == ["executor", "onnxruntime"] and report.original_agrees is False
    assert report.divergence.node == "root_of_c" and not report.verification.passed


def test_runtimes_disagreeing_on_the_input_name_the_node_and_blame_no_pass(broken_sqrt):
    """A chain with the wrong kernel in the middle and a branch that stays right: bisection finds the node."""
    one = numpy_helper.from_array(np.array(1.0, np.float32), "one")
    nodes = [helper.make_node("Abs", ["x"], ["a"], name="abs"), helper.make_node("Add", ["a", "one"], ["b"], name="add"),
             helper.make_node("Neg", ["x"], ["z"], name="neg"), helper.make_node("Sqrt", ["b"], ["s"], name="the_sqrt"),
             helper.make_node("Relu", ["s"], ["r"], name="relu"), helper.make_node("Mul", ["r", "x"], ["y"], name="mul")]
    model = make_model(nodes, [_vi("x", [2, 5])], [_vi("y", [2, 5]), _vi("z", [2, 5])], [one])
    result = optimizer.optimize(model)  # both runtimes agree with themselves: nothing to refuse
    assert result.verification.passed and result.oracle.verification.passed
    assert result.oracle.original_agrees is False
    assert (result.oracle.divergence.node, result.oracle.divergence.op_type) == ("the_sqrt", "Sqrt")
    assert result.oracle.notes() == [result.oracle.divergence.sentence().rstrip(".") + "."]


def test_oracles_are_recorded_and_a_model_onnxruntime_cannot_load_falls_back(monkeypatch):
    result = optimizer.optimize(sqrt_scaled_model())
    assert result.oracle.used == ["executor", "onnxruntime"] and result.oracle.original_agrees
    assert result.to_dict()["oracle"]["verification"]["oracle"] == "onnxruntime"
    key = ("test.custom", "Twice")
    monkeypatch.setitem(registry._KERNELS, key, [registry.KernelSpec("Twice", "test.custom", 1, None,
                                                                     lambda ctx, x: x + x)])
    custom = make_model([helper.make_node("Twice", ["x"], ["t"], domain="test.custom"),
                         helper.make_node("Relu", ["t"], ["y"])],
                        [_vi("x", [2, 3])], [_vi("y", [2, 3])], opset={"": 13, "test.custom": 1})
    result = optimizer.optimize(custom)
    assert result.verification.passed and result.oracle.used == ["executor"]
    assert result.oracle.fallback.startswith("onnxruntime cannot load it")
    assert any("onnxruntime was not used" in note for note in result.oracle.notes())
    with pytest.raises(optimizer.NinoptError, match="unknown oracle 'ort'"):
        optimizer.optimize(custom, oracle="ort")


# ---------------------------------------------------------------------- infinities and NaN
def log_model(clip_low: float | None) -> onnx.ModelProto:
    """Log(Relu(x)) (-inf wherever x <= 0), or Log(Clip(x, clip_low)) (finite everywhere)."""
    if clip_low is None:
        first, inits = helper.make_node("Relu", ["x"], ["p"]), []
    else:
        first = helper.make_node("Clip", ["x", "low"], ["p"])
        inits = [numpy_helper.from_array(np.array(clip_low, np.float32), "low")]
    nodes = [first, helper.make_node("Log", ["p"], ["y"]),
             helper.make_node("Div", ["one", "p"], ["z"])]  # +inf where p == 0
    inits.append(numpy_helper.from_array(np.array(1.0, np.float32), "one"))
    return make_model(nodes, [_vi("x", [4, 8])], [_vi("y", [4, 8]), _vi("z", [4, 8])], inits)


def test_verify_refuses_models_that_differ_where_one_is_infinite(tmp_path, capsys):
    a, b = _save(log_model(None), tmp_path / "a.onnx"), _save(log_model(1e-30), tmp_path / "b.onnx")
    assert main(["verify", a, b]) == 1
    assert "where a value is inf or NaN at" in capsys.readouterr().err
    report = optimizer.verify(a, b)
    y = report["y"]
    x = optimizer.inputs.random_inputs(optimizer.load(a), seed=0)["x"]
    assert y.nonfinite_mismatches == int((x <= 0).sum()) > 0 and x[y.first_mismatch] <= 0
    assert y.max_abs < 1e-6  # the finite positions agree: the verdict comes from the infinities
    json.dumps(report.to_dict())


def test_equal_infinities_pass_and_self_comparison_is_exact(tmp_path):
    path = _save(log_model(None), tmp_path / "m.onnx")
    report = optimizer.verify(path, path)
    assert report.passed
    for o in report.outputs:
        assert o.nonfinite > 0 and o.nonfinite_mismatches == 0
        assert o.max_abs == 0 and o.max_rel == 0 and o.cosine == 1.0
    out = tmp_path / "out.onnx"
    assert main(["optimize", path, "-o", str(out)]) == 0
    feeds = {"x": RNG.standard_normal((4, 8)).astype(np.float32)}
    for expected, actual in zip(ort_run(path, feeds), ort_run(str(out), feeds), strict=True):
        np.testing.assert_array_equal(expected, actual)


def test_nan_on_one_side_only_fails_and_nan_on_both_passes():
    sqrt = make_model([helper.make_node("Sqrt", ["x"], ["y"])], [_vi("x", [6])], [_vi("y", [6])])
    absolute = make_model([helper.make_node("Abs", ["x"], ["a"]), helper.make_node("Sqrt", ["a"], ["y"])],
                          [_vi("x", [6])], [_vi("y", [6])])
    x = {"x": np.array([-1, 0, 1, 4, -2, 9], np.float32)}
    assert optimizer.verify(sqrt, sqrt, inputs=x).passed
    report = optimizer.verify(sqrt, absolute, inputs=x)
    assert not report.passed and report["y"].nonfinite_mismatches == 2 and report["y"].first_mismatch == (0,)


# ---------------------------------------------------------------------- float16 at its own precision
@pytest.mark.parametrize("stem", ["resnet_bottleneck_bn", "repvgg_stage", "bottleneck_64_8_64"])
def test_float16_models_optimize_at_their_own_noise(stem, tmp_path):
    model = to_float16(onnx.load(f"{FIXTURES_DIR}/{stem}.onnx"))
    source, out = _save(model, tmp_path / "in.onnx"), tmp_path / "out.onnx"
    assert main(["optimize", source, "-o", str(out), "--json", "--quiet"]) == 0
    result = optimizer.optimize(model)
    y = result.verification.outputs[0]
    assert 1e-4 < y.noise_floor < 2e-3 and result.oracle.verification.passed
    x = np.random.default_rng(1).standard_normal([d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim])
    feeds = {model.graph.input[0].name: x.astype(np.float16)}
    expected, actual = ort_run(source, feeds)[0].astype(np.float64), ort_run(str(out), feeds)[0].astype(np.float64)
    assert np.abs(actual - expected).max() <= NOISE_FACTOR * 2e-3 * np.abs(expected).max()


def test_json_reports_show_the_noise_floor_criterion_and_oracles(tmp_path, capsys):
    out = tmp_path / "out.onnx"
    assert main(["optimize", f"{FIXTURES_DIR}/repvgg_stage.onnx", "-o", str(out), "--json", "--oracle", "both"]) == 0
    data = json.loads(capsys.readouterr().out)
    verification = data["verification"]
    assert verification["criterion"] == {"rule": "error vs float64 truth <= max(tolerance, factor * noise floor)",
                                         "tolerance": 1e-5, "factor": NOISE_FACTOR}
    output = verification["outputs"][0]
    assert 0 < output["noise_floor"] < 1e-6 and output["ratio"] == output["error"] / output["noise_floor"]
    assert data["oracle"]["requested"] == "both" and data["oracle"]["used"] == ["executor", "onnxruntime"]
    assert main(["verify", f"{FIXTURES_DIR}/repvgg_stage.onnx", str(out), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["oracle"] == "executor" and data["criterion"]["factor"] == NOISE_FACTOR
    assert data["outputs"][0]["noise_floor"] > 0
