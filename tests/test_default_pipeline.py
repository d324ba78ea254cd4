"""The default exact pipeline end to end: outputs kept, nodes and MACs never grow, the re-parameterizations land."""

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

import optimizer
from optimizer import onnx_io
from optimizer.errors import VerificationError
from optimizer.executor import run
from optimizer.pipeline import GraphPass, PassManager, register_pass, unregister_pass
from optimizer.registry import get_pass
from support import FIXTURES_DIR, LIGHT_MODELS, light_model_id, ort_run, random_feeds

FIXTURES = sorted(Path(FIXTURES_DIR).glob("*.onnx"))


def _ops(graph) -> Counter:
    return Counter(n.op_type for n in graph.nodes)


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_fixture_keeps_outputs_and_never_grows(path: Path) -> None:
    result = optimizer.optimize(path)
    assert result.verification.passed
    assert max(o.max_rel for o in result.verification.outputs) <= 1e-5
    assert result.after.nodes <= result.before.nodes
    assert result.after.macs <= result.before.macs
    feeds = random_feeds(path, seed=3)  # fresh inputs, checked by the oracle too
    expected = ort_run(path, feeds)
    actual = ort_run(result.model, feeds)
    for e, a in zip(expected, actual, strict=True):
        assert np.abs(a - e).max() <= 1e-5 * max(np.abs(e).max(), 1e-30)


def _random_weight_variant(path: str, seed: int = 0):
    """The light model with seeded random weights instead of the constant 0.02 (BN variances kept positive)."""
    graph = onnx_io.load(path)
    PassManager([get_pass("fold-constants").create()]).run(graph)
    rng = np.random.default_rng(seed)
    variances = {n.inputs[4] for n in graph.nodes if n.op_type == "BatchNormalization" and len(n.inputs) > 4}
    for name in list(graph.initializers):
        value = graph.const(name)
        if value is None or value.dtype != np.float32 or value.size < 2:
            continue
        fan_in = max(int(np.prod(value.shape[1:])), 1) if value.ndim > 1 else 1
        noise = rng.standard_normal(value.shape).astype(np.float32) * np.float32(np.sqrt(2.0 / fan_in))
        graph.set_const(name, np.abs(noise) + np.float32(0.5) if name in variances else noise)
    return graph


@pytest.mark.parametrize("path", LIGHT_MODELS, ids=[light_model_id(p) for p in LIGHT_MODELS])
def test_light_zoo_random_weight_variant_keeps_outputs(path: str) -> None:
    graph = _random_weight_variant(path)
    feeds = random_feeds(path, seed=1)
    # compare the logits before the final Softmax too: a saturated Softmax would hide errors
    logits = [n.inputs[0] for n in graph.nodes if n.op_type == "Softmax" and n.outputs[0] in graph.outputs]
    probe = graph.copy()
    probe.outputs = list(graph.outputs) + logits
    expected = run(probe, feeds)
    result = optimizer.optimize(graph, inputs=feeds)
    assert result.after.nodes <= result.before.nodes and result.after.macs <= result.before.macs
    optimized = result.graph.copy()
    optimized.outputs = list(result.graph.outputs) + [t for t in logits if t in optimized.tensors]
    actual = run(optimized, feeds)
    for name, value in actual.items():
        ref = expected[name]
        assert np.abs(value - ref).max() <= 1e-5 * np.abs(ref).max(), name


def test_repvgg_stage_collapses_to_one_conv_per_block() -> None:
    result = optimizer.optimize(Path(FIXTURES_DIR) / "repvgg_stage.onnx")
    ops = _ops(result.graph)
    assert ops["Conv"] == 3 and ops["BatchNormalization"] == 0 and ops["Add"] == 0 and ops["Sum"] == 0
    assert ops["Relu"] == 3


def test_densenet_bn_before_relu_is_not_folded_across_it() -> None:
    result = optimizer.optimize(Path(FIXTURES_DIR) / "densenet_bn_relu_conv.onnx")
    ops = _ops(result.graph)
    assert ops["BatchNormalization"] == 1, "the BN before ReLU -> Conv must stay"
    refusals = {p.name: p.refusals for p in result.pipeline.passes}["fold-batchnorm"]
    assert any("pads" in reason or "no Conv" in reason for reason in refusals)


def test_cheaper_bottleneck_is_kept() -> None:
    result = optimizer.optimize(Path(FIXTURES_DIR) / "bottleneck_64_8_64.onnx")
    assert _ops(result.graph)["Conv"] == 2
    stats = {p.name: p for p in result.pipeline.passes}["fuse-conv1x1-chain"]
    assert stats.rewrites == 0 and any("cheaper" in reason for reason in stats.refusals)
    assert any(not d.applied for d in stats.decisions)


def test_second_run_changes_nothing() -> None:
    first = optimizer.optimize(Path(FIXTURES_DIR) / "mobileone_block.onnx")
    second = optimizer.optimize(first.graph)
    assert sum(p.rewrites for p in second.pipeline.passes) == 0
    assert second.after.nodes == first.after.nodes


@register_pass("test-break-numerics", exact=True)
class BreakNumerics(GraphPass):
    """Test only: scales the first Conv weight, a wrong 'exact' rewrite."""

    done = False

    def run(self, g, ctx):
        conv = next((n for n in g.toposort() if n.op_type == "Conv" and g.is_const(n.inputs[1])), None)
        if conv is None or self.done:
            return False
        g.set_const(conv.inputs[1], g.const(conv.inputs[1]) * np.float32(1.01))
        self.done = True
        ctx.stats.rewrites += 1
        return True


def test_a_wrong_rewrite_is_refused_and_nothing_is_written(tmp_path: Path) -> None:
    from optimizer.cli import main

    out = tmp_path / "out.onnx"
    with pytest.raises(VerificationError, match="output 'output'"):
        optimizer.optimize(Path(FIXTURES_DIR) / "inception_module.onnx", passes="test-break-numerics")
    code = main(["optimize", str(Path(FIXTURES_DIR) / "inception_module.onnx"), "-o", str(out), "--passes",
                 "test-break-numerics"])
    assert code == 1 and not out.exists()




@register_pass("test-invalid-schema", exact=True)
class InvalidSchema(GraphPass):
    """Test only: gives a Conv an attribute ONNX does not define (the executor ignores it)."""

    def run(self, g, ctx):
        conv = next(n for n in g.nodes if n.op_type == "Conv")
        if "bogus" in conv.attrs:
            return False
        g.set_attr(conv, "bogus", 1)
        return True


def test_a_rewrite_onnx_rejects_is_refused_although_the_numbers_agree(tmp_path: Path) -> None:
    with pytest.raises(VerificationError, match="not valid ONNX"):
        optimizer.optimize(Path(FIXTURES_DIR) / "inception_module.onnx", passes="test-invalid-schema")


def teardown_module() -> None:
    unregister_pass("test-break-numerics")
    unregister_pass("test-invalid-schema")
