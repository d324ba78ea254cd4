"""The bottleneck cost models: onnxruntime latency of a layer before and after factoring, and the MAC fallback."""

from __future__ import annotations

import sys

import numpy as np
import pytest
from onnx import helper

from optimizer import onnx_io
from optimizer.bottleneck import latency
from optimizer.bottleneck.fitting import Fit
from optimizer.bottleneck.latency import LatencyCost, MacCost, cost_model, factored_layer, single_layer
from optimizer.errors import NinoptError
from optimizer.executor import run
from support import FIXTURES_DIR, make_model

pytest.importorskip("onnxruntime")


def conv_layer(cin: int, cout: int, k: int, seed: int = 0, hw: int | None = None):
    """A graph holding one biased KxK 'same' Conv (input hw x hw, default dynamic), and that node."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((cout, cin, k, k)) / np.sqrt(cin * k * k)
    node = helper.make_node("Conv", ["x", "w", "b"], ["y"], kernel_shape=[k, k], pads=[k // 2] * 4, name="conv")
    graph = onnx_io.load(make_model([node], [("x", [1, cin, hw, hw])], [("y", [1, cout, hw, hw])],
                                    {"w": w, "b": rng.standard_normal(cout)}))
    return graph, graph.nodes[0]


def svd_fit(graph, node, rank: int) -> Fit:
    """The 1x1 layer as reduce (rank x Cin) then main (Cout x rank, the bias): truncated SVD of its weights."""
    w = graph.const(node.inputs[1])[:, :, 0, 0].astype(np.float64)
    u, s, vt = np.linalg.svd(w, full_matrices=False)
    weights = [("reduce", vt[:rank, :, None, None], None, {}),
               ("main", (u[:, :rank] * s[:rank])[:, :, None, None], graph.const(node.inputs[2]), {})]
    return Fit("svd", rank, 0, 0.0, 0.0, weights, [])


def tucker_fit(cin: int, cout: int, k: int, rank: int) -> Fit:
    """A three-node Tucker-2 factorization (1x1 reduce, KxK core, 1x1 expand) with seeded weights."""
    rng = np.random.default_rng(1)
    core_attrs = {"kernel_shape": [k, k], "pads": [k // 2] * 4}
    weights = [("reduce", rng.standard_normal((rank, cin, 1, 1)), None, {}),
               ("core", rng.standard_normal((rank, rank, k, k)), rng.standard_normal(rank), core_attrs),
               ("expand", rng.standard_normal((cout, rank, 1, 1)), rng.standard_normal(cout), {})]
    return Fit("tucker2", (rank, rank), 0, 0.0, 0.0, weights, [])


def test_the_timed_factored_layer_computes_the_factorization():
    """What is timed is what the engine writes: at full rank the factored model gives the layer's output."""
    graph, node = conv_layer(12, 10, 1)
    x = np.random.default_rng(2).standard_normal((1, 12, 5, 5)).astype(np.float32)
    before = run(single_layer(graph, node, x.shape), {"x": x})["y"]
    tiny = factored_layer(graph, node, svd_fit(graph, node, 10), x.shape)
    assert [n.op_type for n in tiny.toposort()] == ["Conv", "Conv"]
    np.testing.assert_allclose(run(tiny, {"x": x})["y"], before, rtol=1e-4, atol=1e-5)


def test_a_repeated_signature_is_timed_once():
    cost = LatencyCost()
    graph, node = conv_layer(16, 16, 3)
    fit = tucker_fit(16, 16, 3, 8)
    cost.saving(graph, node, fit, (1, 16, 8, 8))
    assert cost.timings == 2
    twin, twin_node = conv_layer(16, 16, 3, seed=5)  # other weights, same signature
    cost.saving(twin, twin_node, tucker_fit(16, 16, 3, 8), (1, 16, 8, 8))
    assert cost.timings == 2
    cost.layer_cost(graph, node, (1, 16, 9, 9))  # another input shape is another signature
    cost.factored_cost(graph, node, tucker_fit(16, 16, 3, 7), (1, 16, 8, 8))  # and another rank
    assert cost.timings == 4


def test_weights_without_declared_shapes_are_priced_by_their_values():
    """A Conv whose weights were a folded Constant has no shape in the tensor table (PP-OCR's do): the
    timing context and the signature read the weights, so two such layers of other widths differ."""
    graph, node = conv_layer(16, 16, 3)
    wide, wide_node = conv_layer(16, 24, 3)
    for g in (graph, wide):
        g.tensor("w").shape = None
    cost = LatencyCost()
    assert cost.layer_cost(graph, node, (1, 16, 8, 8)) > 0
    cost.layer_cost(wide, wide_node, (1, 16, 8, 8))
    assert cost.timings == 2
    tiny = single_layer(wide, wide_node, (1, 16, 8, 8), context=True)
    assert run(tiny, {"x": np.ones((1, 16, 8, 8), np.float32)})["y"].shape == (1, 24, 8, 8)


def test_mac_cost_counts_the_layer_and_its_factors():
    graph, node = conv_layer(16, 16, 3)
    cost = MacCost()
    assert cost.layer_cost(graph, node, (1, 16, 8, 8)) == 16 * 16 * 9 * 64
    assert cost.factored_cost(graph, node, tucker_fit(16, 16, 3, 4), (1, 16, 8, 8)) == (16 * 4 + 4 * 4 * 9 + 4 * 16) * 64


def test_without_onnxruntime_the_cost_is_macs_and_says_so(monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now fails
    for name in (None, "onnxruntime"):
        cost = cost_model(name)
        assert isinstance(cost, MacCost)
        assert "onnxruntime is not importable" in cost.note
    graph, node = conv_layer(16, 16, 3)
    report = cost.end_to_end(graph, graph)
    assert report["cost"] == "macs" and "seconds_before" not in report


def test_cost_model_by_name():
    assert isinstance(cost_model(), LatencyCost)
    assert isinstance(cost_model("onnxruntime"), LatencyCost)
    assert isinstance(cost_model("macs"), MacCost) and cost_model("macs").note == ""
    with pytest.raises(NinoptError, match="unknown cost 'flops'"):
        cost_model("flops")


@pytest.mark.parametrize("importable, default", [(True, "onnxruntime"), (False, "macs")])
def test_the_default_cost_is_onnxruntime_when_importable_else_macs(importable, default, monkeypatch):
    import optimizer

    monkeypatch.setattr(latency, "onnxruntime_available", lambda: importable)
    assert latency.cost_in_use() == latency.cost_in_use("onnxruntime") == default
    assert latency.cost_in_use("macs") == "macs"
    options = optimizer.BottleneckOptions(max_error=1e-4)
    assert options.cost is None
    result = optimizer.optimize(f"{FIXTURES_DIR}/seed_bottleneck.onnx", bottleneck=options, oracle="executor")
    assert result.bottleneck_cost == result.to_dict()["bottleneck_cost"] == default
    (decision,) = [d for s in result.pipeline.passes for d in s.decisions if d.applied]
    assert (decision.seconds_after is not None) == importable  # latency measured only when timed


def test_end_to_end_predicts_from_the_kept_layers():
    graph, node = conv_layer(256, 256, 1, hw=32)
    cost = LatencyCost(budget=1.0)
    cost.saving(graph, node, svd_fit(graph, node, 8), (1, 256, 32, 32))
    before, after = cost.layers["conv"]
    feeds = {"x": np.zeros((1, 256, 32, 32), np.float32)}
    report = cost.end_to_end(graph, graph, applied=["conv"], feeds=feeds)
    assert report["predicted_saving"] == pytest.approx(before - after)
    # the layer alone may take longer than the whole one-layer model: its saving is scaled to fit
    share = min(1.0, report["seconds_before"] / before)
    assert report["seconds_predicted"] == pytest.approx(report["seconds_before"] - (before - after) * share)
    assert 0 < report["seconds_predicted"] < report["seconds_before"]
    assert 0 < report["seconds_after"] and cost.end_to_end(graph, graph, [], feeds)["predicted_saving"] == 0


def test_the_cost_flag_names_the_two_cost_models():
    from optimizer.cli_args import build_parser

    parser = build_parser()
    argv = ["optimize", "in.onnx", "-o", "out.onnx", "--bottleneck"]
    assert parser.parse_args(argv).cost is None  # the default: cost_in_use settles it
    assert parser.parse_args(argv + ["--cost", "macs"]).cost == "macs"
    with pytest.raises(SystemExit):
        parser.parse_args(argv + ["--cost", "flops"])


def test_optimize_priced_by_onnxruntime_keeps_the_seed_bottleneck():
    """The planted 192->16 input side is ~7x faster in onnxruntime: kept by latency as by MACs."""
    import optimizer

    model = f"{FIXTURES_DIR}/seed_bottleneck.onnx"
    result = optimizer.optimize(model, bottleneck=optimizer.BottleneckOptions(max_error=1e-4, cost="onnxruntime"))
    stats = {s.name: s for s in result.pipeline.passes}["insert-bottleneck"]
    assert stats.rewrites == 1 and result.verification.passed
    assert result.after.macs * 9 < result.before.macs
    (decision,) = [d for d in stats.decisions if d.applied]
    assert 0 < decision.seconds_predicted < decision.seconds_before
    assert 0 < decision.seconds_after < decision.seconds_before  # the 10x fewer MACs show in time too
    assert {"seconds_before", "seconds_predicted", "seconds_after"} <= set(decision.to_dict())
