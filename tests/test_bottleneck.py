"""Bottleneck detection and the insert-bottleneck pass (approximate, budgeted).

Each insertion is approximate, so the numbers are checked against the budget on FRESH
random inputs (a different seed from the calibration ones), with the executor and with
onnxruntime on the exported model.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import passes.insert_bottleneck  # noqa: F401  (registers the pass)
from optimizer import onnx_io
from optimizer.bottleneck import analyze_bottlenecks, insert_bottlenecks, random_feeds, relative_error
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
