"""Bottleneck detection and the insert-bottleneck pass (approximate, budgeted).

Each insertion is approximate, so the numbers are checked against the budget on FRESH
random inputs (a different seed from the calibration ones), with the executor and with
onnxruntime on the exported model.
"""

from __future__ import annotations

import json
import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import passes.insert_bottleneck  # noqa: F401  (registers the pass)
from optimizer import onnx_io
import optimizer
from optimizer.bottleneck import analyze_bottlenecks, insert_bottlenecks, metric_error, random_feeds, relative_error
from optimizer.bottleneck.allocation import Rung, Sensitivity, allocate
from optimizer.cost import analyze_costs
from optimizer.executor import run
from optimizer.pipeline import PassManager
from optimizer.registry import get_pass
from support import FIXTURES_DIR, ort_run

SEED = os.path.join(FIXTURES_DIR, "seed_bottleneck.onnx")
NOISY = os.path.join(FIXTURES_DIR, "seed_bottleneck_noisy.onnx")
INCEPTION = os.path.join(FIXTURES_DIR, "inception_module.onnx")
SAMPLES = 4  # calibration samples: enough pixels (4 x 784) for 192-channel moments, and fast


def macs(graph) -> int:
    return analyze_costs(graph).total_macs


def fresh_error(original, graph, seed: int = 1234, samples: int = 3) -> float:
    """max|d|/max|y| on inputs the calibration never saw, worst over outputs."""
    feeds = random_feeds(original, samples, seed)
    ref, got = [run(original, f) for f in feeds], [run(graph, f) for f in feeds]
    return max(relative_error([r[o] for r in ref], [g[o] for g in got]) for o in original.outputs)


def run_pass(graph, **config):
    config = {"cost": "macs", **config}  # MAC-priced decisions do not depend on the machine's load
    report = PassManager([get_pass("insert-bottleneck").cls(samples=SAMPLES, **config)]).run(graph)
    return report.passes[0]


def convs(graph):
    return [n for n in graph.toposort() if n.op_type == "Conv"]


def planted_inception(seed: int = 5, noise: float = 1e-3):
    """The inception module with each conv's weights cut to rank Cin/8 over input channels, plus noise."""
    g = onnx_io.load(INCEPTION)
    rng = np.random.default_rng(seed)
    for n in convs(g):
        w = g.const(n.inputs[1]).astype(np.float64)
        co, ci, kh, kw = w.shape
        r = max(2, ci // 8)
        u, s, vt = np.linalg.svd(w.transpose(0, 2, 3, 1).reshape(-1, ci), full_matrices=False)
        low = ((u[:, :r] * s[:r]) @ vt[:r]).reshape(co, kh, kw, ci).transpose(0, 3, 1, 2)
        low += noise * np.linalg.norm(low) * rng.standard_normal(low.shape) / np.sqrt(low.size)
        g.set_const(n.inputs[1], low.astype(np.float32))
    return g


# ---------------------------------------------------------------------- detection
def test_detection_ranks_the_seed_conv_first_as_input_side_rank_16():
    report = analyze_bottlenecks(onnx_io.load(SEED), samples=SAMPLES)
    top = report.rows()[0]
    assert (top["layer"], top["structure"], top["rank"]) == ("output", "input", 16)
    assert top["macs"] == 120_422_400 and top["macs_after"] == 12_443_648
    data = report.to_dict()
    assert data["evidence"] == "random"
    layer = data["layers"][0]
    # the weights mix only 16 input-channel directions: the 17th singular value is float32 noise
    assert layer["weight_spectrum_in"][15] > 1e3 * layer["weight_spectrum_in"][16]
    assert len(layer["input_spectrum"]) == 192 and len(layer["output_spectrum"]) == 32


def test_detection_flags_calibration_evidence_and_refuses_grouped_convs():
    g = onnx_io.load(grouped_model())
    report = analyze_bottlenecks(g, {"x": np.random.default_rng(0).standard_normal((3, 8, 6, 6)).astype(np.float32)})
    assert report.evidence == "calibration"
    assert [r["reason"] for r in report.rows()] == ["depthwise and grouped convolutions are left alone"]


# ---------------------------------------------------------------------- insertion: the seed example
def test_seed_exact_inserts_192_to_16_reduce_and_cuts_macs_ninefold():
    g = onnx_io.load(SEED)
    original = g.copy()
    stats = run_pass(g, max_error=1e-4)
    reduce, main = convs(g)
    assert g.const(reduce.inputs[1]).shape == (16, 192, 1, 1) and len(reduce.inputs) == 2  # bias-free
    assert g.const(main.inputs[1]).shape == (32, 16, 5, 5) and main.outputs == ["output"]
    assert macs(original) >= 9 * macs(g)
    assert fresh_error(original, g) <= 1e-5
    decision = stats.decisions[0]
    assert (decision.structure, decision.rank, decision.applied) == ("input", 16, True)
    assert decision.macs_before == 120_422_400 and decision.macs_after == 12_443_648
    assert "conv5x5_w" not in g.initializers  # the replaced weights went with the conv
    # onnxruntime agrees on the exported model
    feeds = random_feeds(original, 1, 77)[0]
    y_ref, y = ort_run(original, feeds)[0], ort_run(g, feeds)[0]
    assert np.abs(y - y_ref).max() <= 1e-5 * np.abs(y_ref).max()


def test_seed_second_run_changes_nothing():
    g = onnx_io.load(SEED)
    run_pass(g, max_error=1e-4)
    version = g.version
    stats = run_pass(g, max_error=1e-4)
    assert stats.rewrites == 0 and g.version == version
    assert set(stats.refusals) == {"already one side of a linear bottleneck"}


def test_noisy_seed_within_budget_at_1e2_and_untouched_at_1e7():
    g = onnx_io.load(NOISY)
    original = g.copy()
    stats = run_pass(g, max_error=1e-2)
    assert macs(original) >= 5 * macs(g)
    assert stats.decisions[0].model_error <= 1e-2  # measured on the calibration inputs
    assert fresh_error(original, g) <= 2e-2  # unseen inputs: 2x allowance
    version = g.version
    assert run_pass(g, max_error=1e-2).rewrites == 0 and g.version == version

    g = onnx_io.load(NOISY)
    stats = run_pass(g, max_error=1e-7)
    assert macs(g) == macs(original) and stats.rewrites == 0
    assert stats.refusals["no rank below break-even meets the error budget"] == 1


# ---------------------------------------------------------------------- insertion: inception module
def test_planted_inception_cuts_40_percent_at_cosine_0999_and_is_idempotent():
    g = planted_inception()
    original = g.copy()
    stats = run_pass(g, max_error=1e-2)
    assert macs(g) <= 0.6 * macs(original)
    feeds = random_feeds(original, 2, 4321)
    y0 = np.concatenate([run(original, f)["output"].ravel() for f in feeds])
    y1 = np.concatenate([run(g, f)["output"].ravel() for f in feeds])
    assert float(y0 @ y1 / np.linalg.norm(y0) / np.linalg.norm(y1)) >= 0.999
    assert fresh_error(original, g) <= 2e-2
    for d in stats.decisions:  # MACs never increase, per layer
        assert d.macs_after <= d.macs_before
    assert any(d.structure == "input" and d.node == "b2_3x3" for d in stats.decisions if d.applied)
    version = g.version
    again = run_pass(g, max_error=1e-2)
    assert again.rewrites == 0 and g.version == version


def test_budget_too_tight_for_any_layer_leaves_inception_unchanged():
    g = onnx_io.load(INCEPTION)  # seeded random weights: full rank, nothing to gain at 1e-6
    version = g.version
    stats = run_pass(g, max_error=1e-6)
    assert stats.rewrites == 0 and g.version == version


# ---------------------------------------------------------------------- structures and ReLU
def gemm_model(rank: int = 4) -> onnx.ModelProto:
    rng = np.random.default_rng(3)
    w = (rng.standard_normal((64, rank)) @ rng.standard_normal((rank, 48))).astype(np.float32)  # (K, N)
    b = rng.standard_normal(48).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="fc")], "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 48])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def grouped_model() -> onnx.ModelProto:
    w = np.random.default_rng(4).standard_normal((8, 4, 3, 3)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], name="grouped", group=2, pads=[1, 1, 1, 1])], "grouped",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8, 6, 6])], [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def tucker_model(channels: int = 64, rank: int = 8) -> onnx.ModelProto:
    """One 3x3 conv whose weights are rank ``rank`` along both channel modes (a Tucker-2 core), plus noise."""
    rng = np.random.default_rng(3)
    w = np.einsum("or,rshw,si->oihw", rng.standard_normal((channels, rank)), rng.standard_normal((rank, rank, 3, 3)),
                  rng.standard_normal((rank, channels)))
    w += 1e-3 * np.abs(w).mean() * rng.standard_normal(w.shape)
    graph = helper.make_graph([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1], name="conv")], "tucker",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 16, 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, channels, 16, 16])],
                              [numpy_helper.from_array(w.astype(np.float32), "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_tucker2_cuts_both_channel_modes_where_either_side_alone_costs_more():
    model = tucker_model()
    result = optimizer.optimize(model, bottleneck=optimizer.BottleneckOptions(max_error=1e-2, cost="macs"),
                                oracle="both")
    decision = next(d for p in result.pipeline.passes for d in p.decisions if d.kind == "bottleneck")
    assert (decision.structure, tuple(decision.rank)) == ("tucker2", (8, 8))
    kernels = [tuple(result.graph.const(n.inputs[1]).shape) for n in convs(result.graph)]
    assert kernels == [(8, 64, 1, 1), (8, 8, 3, 3), (64, 8, 1, 1)]
    # 64*8 + 8*8*9 + 8*64 MACs per pixel against 64*64*9; one side alone would keep 64*8*9 + 64*8
    assert macs(result.graph) * 23 <= macs(onnx_io.load(model))
    assert fresh_error(onnx_io.load(model), result.graph) <= 1e-2


def test_gemm_truncated_svd_into_two_gemms():
    g = onnx_io.load(gemm_model())
    original = g.copy()
    stats = run_pass(g, max_error=1e-4)
    assert [n.op_type for n in g.toposort()] == ["Gemm", "Gemm"]
    assert g.const(g.toposort()[0].inputs[1]).shape == (64, 4)
    assert stats.decisions[0].structure == "svd" and macs(g) < macs(original)
    assert fresh_error(original, g) <= 1e-5


def test_grouped_conv_is_refused_with_reason():
    g = onnx_io.load(grouped_model())
    stats = run_pass(g, max_error=0.5)
    assert stats.refusals["depthwise and grouped convolutions are left alone"] == 1 and stats.rewrites == 0


def test_relu_bottleneck_uses_exact_crelu_when_below_break_even():
    g = onnx_io.load(SEED)
    original = g.copy()
    stats = run_pass(g, max_error=1e-4, relu_bottleneck=True)
    assert [n.op_type for n in g.toposort()] == ["Conv", "Relu", "Conv"]
    assert g.const(convs(g)[0].inputs[1]).shape == (32, 192, 1, 1)  # [W; -W]: 2r channels
    assert stats.decisions[0].relu.startswith("crelu")
    assert macs(g) < macs(original)
    assert fresh_error(original, g) <= 1e-5


def test_engine_api_reports_rows_and_end_to_end_error():
    g = onnx_io.load(SEED)
    calibration = {"data": np.random.default_rng(5).standard_normal((3, 192, 28, 28)).astype(np.float32)}
    result = insert_bottlenecks(g, max_error=1e-4, calibration=calibration)
    assert result.evidence == "calibration" and result.changed
    assert result.error <= 1e-4 and result.macs_after * 9 <= result.macs_before
    assert result.to_dict()["layers"][0]["rank"] == 16


def test_held_apart_inputs_veto_a_layer_fitted_to_channels_the_calibration_never_drove():
    """Calibration driving 8 of 192 channels lets a rank-8 reduce fit exactly; on inputs driving all of them
    it is far off, so those inputs (never fitted to) veto it, which the calibration alone cannot."""
    rng = np.random.default_rng(5)
    narrow = rng.standard_normal((3, 192, 28, 28)).astype(np.float32)
    narrow[:, 8:] = 0
    wide = {"data": rng.standard_normal((1, 192, 28, 28)).astype(np.float32)}
    original = onnx_io.load(SEED)
    blind = onnx_io.load(SEED)
    result = insert_bottlenecks(blind, max_error=1e-4, calibration={"data": narrow})
    assert result.changed and result.error <= 1e-4 and result.held_apart_error is None
    assert relative_error([run(original, wide)["output"]], [run(blind, wide)["output"]]) > 0.1
    vetoed = onnx_io.load(SEED)
    result = insert_bottlenecks(vetoed, max_error=1e-4, calibration={"data": narrow}, held_apart=[wide])
    row = result.rows[0]
    assert not result.changed and result.held_apart_error == 0.0 and result.rolled_back == [row["node"]]
    assert row["reason"].startswith("rolled back: ") and "alone on the held-apart inputs" in row["reason"]
    assert row["macs_after"] == row["macs_before"] and macs(vetoed) == macs(original)


def sigmoid_tail_model() -> onnx.ModelProto:
    """The seed layer, then Sigmoid(y - 18): probabilities near 1e-8, a few of onnxruntime's Sigmoid steps
    (it rounds to 2^-24 absolute), so onnxruntime's own rounding is large in any relative measure."""
    model = onnx.load(SEED)
    model.graph.node.extend([helper.make_node("Add", ["output", "shift"], ["logit"]),
                             helper.make_node("Sigmoid", ["logit"], ["prob"])])
    model.graph.initializer.append(numpy_helper.from_array(np.array(-18.0, np.float32), "shift"))
    model.graph.output[0].name = "prob"
    return model


def test_onnxruntime_rounding_in_the_budget_metric_is_modelled_not_a_false_alarm():
    from optimizer.bottleneck.metrics import noise_factor

    model = sigmoid_tail_model()
    options = optimizer.BottleneckOptions(max_error=1e-3, metric="cosine", cost="macs")
    result = optimizer.optimize(model, bottleneck=options, oracle="both")
    assert macs(result.graph) * 9 <= macs(onnx_io.load(model))  # the planted rank: exact
    executor = result.verification.outputs[0]
    assert executor.allowed == 2e-3 and executor.error < 1e-9  # the executor's own noise is tiny: the budget holds
    runtime = result.oracle.verification.outputs[0]
    assert runtime.error > 2e-3  # onnxruntime's rounding alone, over the budget
    assert runtime.passed and runtime.allowed == noise_factor("cosine") * runtime.noise_floor > runtime.error
    assert "noise floor" in runtime.message


@pytest.mark.parametrize("max_error", [3e-2, 1e-3])
def test_no_model_over_budget_and_macs_never_increase(max_error):
    g = planted_inception(seed=7, noise=2e-2)
    before = macs(g)
    stats = run_pass(g, max_error=max_error)
    assert macs(g) <= before
    assert max(d.model_error for d in stats.decisions) <= max_error


def test_control_flow_graph_is_refused_whole():
    g = onnx_io.load(os.path.join(FIXTURES_DIR, "control_flow.onnx"))
    version = g.version
    stats = run_pass(g, max_error=0.5)
    assert stats.rewrites == 0 and g.version == version
    assert any("control flow" in reason for reason in stats.refusals)


# ---------------------------------------------------------------------- metrics (random inputs: calibration_data
# loads real images, but these models are synthetic, so their own random inputs are the honest data)
def test_max_rel_metric_is_largest_difference_over_largest_value_across_samples():
    y = [np.array([1.0, -4.0]), np.array([2.0, 0.5])]
    assert metric_error("max-rel", y, [np.array([1.0, -4.0]), np.array([2.0, 1.5])]) == pytest.approx(1.0 / 4.0)


def test_rms_metric_is_norm_ratio_over_all_samples():
    y = [np.array([3.0, 0.0]), np.array([0.0, 4.0])]  # ||y|| = 5
    assert metric_error("rms", y, [np.array([3.0, 1.0]), np.array([0.0, 4.0])]) == pytest.approx(0.2)


def test_cosine_metric_ignores_scale_and_measures_angle():
    y = [np.array([1.0, 0.0]), np.array([0.0, 0.0])]
    assert metric_error("cosine", y, [2 * v for v in y]) == pytest.approx(0.0, abs=1e-15)
    assert metric_error("cosine", y, [np.array([1.0, 1.0]), np.array([0.0, 0.0])]) == pytest.approx(1 - 2 ** -0.5)


def test_top1_metric_counts_disagreeing_rows_of_the_last_axis():
    y = [np.array([[0.1, 0.9], [0.8, 0.2]]), np.array([[0.3, 0.7], [0.6, 0.4]])]
    a = [np.array([[0.1, 0.9], [0.2, 0.8]]), np.array([[0.3, 0.7], [0.6, 0.4]])]  # one row of four flips
    assert metric_error("top1", y, a) == 0.25


def test_unknown_metric_is_a_user_error():
    with pytest.raises(optimizer.NinoptError, match="unknown error metric"):
        insert_bottlenecks(onnx_io.load(SEED), max_error=1e-2, metric="psnr")


# ---------------------------------------------------------------------- global allocation
def test_allocation_trades_the_big_saving_of_one_layer_for_two_cheaper_ones():
    def layer(name, rungs):
        node = onnx_io.load(SEED).toposort()[0]
        node.outputs[0] = name
        return Sensitivity(node, 1000, [Rung("input", r, saved, 0.0, cost) for r, saved, cost in rungs])

    a = layer("a", [(4, 100, 0.6), (8, 60, 0.1)])
    b = layer("b", [(4, 80, 0.5), (8, 30, 0.05)])
    plan, total = allocate([a, b], 0.7)  # a alone at 100 + b at 30 saves 130; a at 60 + b at 80 saves 140
    assert {k: r.saved for k, r in plan.items()} == {"a": 60, "b": 80} and total == pytest.approx(0.6)
    plan, total = allocate([a, b], 0.04)
    assert plan == {} and total == 0.0


def test_sensitivity_stops_down_a_structure_once_a_rung_is_hopelessly_over_budget():
    from optimizer.bottleneck.allocation import HOPELESS_BUDGETS, SensitivityProbe
    from optimizer.bottleneck.engine import _candidates

    graph = planted_inception(seed=7, noise=2e-2)
    order, candidates = _candidates(graph)
    probe = SensitivityProbe(graph, order, random_feeds(graph, 2, 0), "max-rel")
    args = {"opset": graph.opset(), "relu_bottleneck": False, "rng": np.random.default_rng(0), "nonneg_input": False}
    layer = next(layer for layer in candidates.values() if layer.kk > 1)
    every = probe.measure(layer, args)
    tight = 1e-12  # additive: nothing is within it
    stopped = probe.measure(layer, args, tight)
    structures = {r.structure for r in every.rungs}
    assert len(every.rungs) > len(structures) == len(stopped.rungs)  # one rung per structure, the least aggressive
    for rung in stopped.rungs:
        ranks = [r.rank for r in every.rungs if r.structure == rung.structure]
        assert rung.rank == max(ranks) and rung.cost > HOPELESS_BUDGETS * tight
    generous = probe.measure(layer, args, 1.0)
    assert [(r.structure, r.rank, r.error) for r in generous.rungs] == [(r.structure, r.rank, r.error) for r in every.rungs]


def test_planted_inception_rms_budget_spent_globally_with_additive_model_close_to_measured():
    g = planted_inception(seed=7, noise=2e-2)
    before = macs(g)
    result = insert_bottlenecks(g, max_error=2e-2, samples=SAMPLES, metric="rms")
    applied = [r for r in result.rows if r["applied"]]
    assert len(applied) >= 3 and macs(g) < 0.8 * before
    assert result.error <= 2e-2
    # squared errors of separately factored layers add up: the prediction from solo runs is near the truth
    assert result.predicted_error / 2 <= result.error <= 2 * result.predicted_error
    assert sum(r["error_share"] for r in applied) == pytest.approx(1.0)
    assert all(r["macs_saved"] == r["macs_before"] - r["macs_after"] > 0 for r in applied)


# ---------------------------------------------------------------------- budgets in the user's terms, end to end
def classifier_model() -> onnx.ModelProto:
    """Conv 32->32 3x3 (rank-4 weights plus noise) -> ReLU -> global pool -> Gemm to 10 logits; batch of 8 rows."""
    rng = np.random.default_rng(11)
    low = np.einsum("or,rihw->oihw", rng.standard_normal((32, 4)), rng.standard_normal((4, 32, 3, 3)))
    w = (low + 0.05 * rng.standard_normal(low.shape)).astype(np.float32)
    fc = rng.standard_normal((32, 10)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["r"]), helper.make_node("GlobalAveragePool", ["r"], ["p"]),
         helper.make_node("Flatten", ["p"], ["f"]), helper.make_node("Gemm", ["f", "fc"], ["logits"], name="fc")],
        "classifier", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 32, 12, 12])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [8, 10])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(fc, "fc")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def test_top1_budget_on_a_classifier_keeps_predictions_and_is_judged_in_top1():
    model = classifier_model()
    options = optimizer.BottleneckOptions(max_error=0.05, metric="top1", cost="macs")
    result = optimizer.optimize(model, bottleneck=options, oracle="executor")
    assert macs(result.graph) < macs(onnx_io.load(model))
    out = result.verification.outputs[0]
    assert "top1" in out.message and out.allowed == 0.1 and out.error <= 0.1  # held-apart inputs: 2x
    original, feeds = onnx_io.load(model), random_feeds(onnx_io.load(model), 4, 999)
    ref = [run(original, f)["logits"] for f in feeds]
    assert metric_error("top1", ref, [run(result.graph, f)["logits"] for f in feeds]) <= 0.1


def test_cosine_budget_is_what_the_final_check_applies():
    g = planted_inception(seed=7, noise=2e-2)
    result = optimizer.optimize(g, bottleneck=optimizer.BottleneckOptions(max_error=1e-3, metric="cosine", cost="macs"),
                                oracle="both")
    assert macs(result.graph) < macs(g)
    for check in result.verification.outputs:
        assert "cosine" in check.message and check.passed and check.error <= 2e-3
    feeds = random_feeds(g, 2, 4321)
    y0 = [run(g, f)["output"] for f in feeds]
    assert metric_error("cosine", y0, [run(result.graph, f)["output"] for f in feeds]) <= 2e-3


def test_cli_metric_flag_sets_the_budget_measure(tmp_path, capsys):
    from optimizer.cli import main

    out = tmp_path / "seed.onnx"
    assert main(["optimize", SEED, "-o", str(out), "--bottleneck", "--metric", "rms", "--max-error", "1e-4",
                 "--oracle", "executor", "--cost", "macs", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["after"]["macs"] * 9 <= report["before"]["macs"]
    assert "in the rms metric" in report["verification"]["outputs"][0]["message"]
    decision = next(d for p in report["pipeline"]["passes"] for d in p["decisions"] if d["kind"] == "bottleneck")
    assert (decision["metric"], decision["rank"], decision["error_share"]) == ("rms", 16, 1.0)
