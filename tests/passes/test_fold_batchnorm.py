"""fold-batchnorm: BN after Conv/ConvTranspose/Gemm, or before an unpadded Conv, folded into its weights.

The four kinds of test from DESIGN.md on the fixtures, small hand-built models (one per
op and opset form, one per refusal) and the light zoo, both with its constant 0.02 weights
and with seeded random ones (on constant weights a wrong channel mapping would go unseen).
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest
from onnx import helper

import passes.fold_affine  # noqa: F401  (registers the passes; the lead adds them to the default pipeline)
import passes.fold_batchnorm  # noqa: F401
from optimizer import onnx_io
from optimizer.cost import analyze_costs
from support import (FIXTURES_DIR, FOLD_PIPELINE, FOLD_ZOO_REWRITES, LIGHT, LIGHT_MODELS, assert_agrees,
                     assert_random_weights_agree, assert_second_run_changes_nothing, bn_node, bn_params, he_weights,
                     light_model_id, make_model, op_counts, run_passes)

PASS = "fold-batchnorm"


# ---------------------------------------------------------------------- fixtures
def test_resnet_bottleneck_folds_every_bn():
    path = os.path.join(FIXTURES_DIR, "resnet_bottleneck_bn.onnx")
    graph = onnx_io.load(path)
    stats = run_passes(graph, *FOLD_PIPELINE)
    assert stats[PASS].rewrites == 3 and not stats[PASS].refusals
    assert op_counts(graph) == Counter({"Conv": 3, "Relu": 3, "Add": 1})
    assert all(len(n.inputs) == 3 for n in graph.nodes if n.op_type == "Conv")  # each conv gained a bias
    decisions = stats[PASS].decisions
    assert len(decisions) == 3 and all(d.applied and d.macs_after == d.macs_before > 0
                                       and d.nodes_after == d.nodes_before - 1 for d in decisions)
    assert_agrees(path, graph, oracle=None)
    assert_second_run_changes_nothing(graph, *FOLD_PIPELINE)


def test_densenet_bn_before_relu_conv_stays():
    path = os.path.join(FIXTURES_DIR, "densenet_bn_relu_conv.onnx")
    graph = onnx_io.load(path)
    stats = run_passes(graph, PASS)
    assert stats[PASS].rewrites == 1  # bn2, after conv1
    [bn] = [n for n in graph.nodes if n.op_type == "BatchNormalization"]
    assert bn.name == "bn1" and [c.op_type for c in graph.consumers(bn.outputs[0])] == ["Relu"]
    assert stats[PASS].refusals == {"no Conv, ConvTranspose or Gemm before it and its readers are not all Convs": 2}
    assert_agrees(path, graph, oracle=None)
    assert_second_run_changes_nothing(graph, PASS)


# ---------------------------------------------------------------------- small models, one per form
def conv_bn(opset=13, group=2, bias=True, bn_attrs=None):
    rng = np.random.default_rng(1)
    inits = {"w": he_weights(rng, 6, 4 // group, 3, 3), **bn_params(rng, "bn", 6)}
    if bias:
        inits["b"] = rng.standard_normal(6)
    nodes = [helper.make_node("Conv", ["x", "w", "b"] if bias else ["x", "w"], ["c"], name="conv",
                              kernel_shape=[3, 3], pads=[1, 1, 1, 1], group=group),
             bn_node("c", "bn", "y", **(bn_attrs or {}))]
    return make_model(nodes, [("x", [1, 4, 8, 8])], [("y", [1, 6, 8, 8])], inits, opset=opset), {"Conv": 1}


def convtranspose_bn():
    rng = np.random.default_rng(2)
    inits = {"w": he_weights(rng, 4, 3, 3, 3), "b": rng.standard_normal(6), **bn_params(rng, "bn", 6)}
    nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["c"], name="deconv", kernel_shape=[3, 3],
                              strides=[2, 2], group=2),
             bn_node("c", "bn", "y")]
    return make_model(nodes, [("x", [1, 4, 5, 5])], [("y", [1, 6, 11, 11])], inits), {"ConvTranspose": 1}


def gemm_bn(trans_b=1, with_c=True):
    rng = np.random.default_rng(3)
    inits = {"B": he_weights(rng, 5, 7) if trans_b else he_weights(rng, 7, 5), **bn_params(rng, "bn", 5)}
    if with_c:
        inits["C"] = rng.standard_normal((1, 5))
    nodes = [helper.make_node("Gemm", ["x", "B", "C"] if with_c else ["x", "B"], ["g"], name="gemm",
                              transB=trans_b, alpha=0.5, beta=2.0),
             bn_node("g", "bn", "y")]
    return make_model(nodes, [("x", [3, 7])], [("y", [3, 5])], inits), {"Gemm": 1}


def bn_conv(auto_pad=None, group=2, kernel=3):
    """BN of the graph input read only by an unpadded (strided, grouped) Conv: folds into the conv's input side."""
    rng = np.random.default_rng(4)
    inits = {"w": he_weights(rng, 6, 4 // group, kernel, kernel), "b": rng.standard_normal(6),
             **bn_params(rng, "bn", 4)}
    attrs = {"auto_pad": auto_pad} if auto_pad else {"pads": [0, 0, 0, 0]}
    nodes = [bn_node("x", "bn", "t"),
             helper.make_node("Conv", ["t", "w", "b"], ["y"], name="conv", kernel_shape=[kernel, kernel],
                              strides=[2, 2], group=group, **attrs)]
    size = 5 if auto_pad in ("SAME_UPPER", "SAME_LOWER") else (9 - kernel) // 2 + 1
    return make_model(nodes, [("x", [1, 4, 9, 9])], [("y", [1, 6, size, size])], inits), {"Conv": 1}


FORMS = {
    "conv_grouped": lambda: conv_bn(),
    "conv_no_bias_opset9": lambda: conv_bn(opset=9, group=1, bias=False),
    "conv_opset6_is_test": lambda: conv_bn(opset=6, bn_attrs={"is_test": 1, "spatial": 1}),
    "conv_opset7_spatial": lambda: conv_bn(opset=7, bn_attrs={"spatial": 1}),
    "conv_opset15_inference": lambda: conv_bn(opset=15, bn_attrs={"training_mode": 0}),
    "convtranspose_grouped": convtranspose_bn,
    "gemm_transB": lambda: gemm_bn(trans_b=1),
    "gemm_no_C": lambda: gemm_bn(trans_b=0, with_c=False),
    "bn_before_conv_grouped": lambda: bn_conv(),
    "bn_before_conv_valid": lambda: bn_conv(auto_pad="VALID", group=1),
    "bn_before_conv1x1_same": lambda: bn_conv(auto_pad="SAME_UPPER", kernel=1),  # SAME pads a 1x1 with nothing
}


@pytest.mark.parametrize("form", FORMS)
def test_folds_each_form(form):
    model, expected_ops = FORMS[form]()
    graph = onnx_io.load(model)
    stats = run_passes(graph, PASS, "eliminate-unused-initializers")
    assert stats[PASS].rewrites == 1 and not stats[PASS].refusals
    assert op_counts(graph) == Counter(expected_ops)
    [node] = graph.nodes
    assert node.outputs == ["y"] and len(node.inputs) == 3  # same output name, a bias (or C) added
    assert_agrees(model, graph, oracle=None,  # onnxruntime runs opset 7 and later
                  runners=("onnxruntime", "executor") if graph.opset() >= 7 else ("executor",))
    assert_second_run_changes_nothing(graph, PASS)


# ---------------------------------------------------------------------- refusals
def refusal_models():
    rng = np.random.default_rng(5)
    bn = bn_params(rng, "bn", 4)
    conv = {"w": he_weights(rng, 4, 4, 3, 3)}

    def conv_node(x, out, **attrs):
        return helper.make_node("Conv", [x, "w"], [out], name=f"conv_{out}", kernel_shape=[3, 3], **attrs)

    x, y = [("x", [1, 4, 8, 8])], [("y", [1, 4, 8, 8])]
    yield "Conv output feeds other nodes too", make_model(
        [conv_node("x", "c", pads=[1] * 4), bn_node("c", "bn", "y"), helper.make_node("Relu", ["c"], ["r"])],
        x, y + [("r", [1, 4, 8, 8])], {**conv, **bn})
    yield "BN parameters are not constant", make_model(
        [conv_node("x", "c", pads=[1] * 4), bn_node("c", "bn", "y")],
        x + [("bn_scale", [4])], y, {**conv, **{k: v for k, v in bn.items() if k != "bn_scale"}})
    yield "Conv parameters are not constant", make_model(
        [helper.make_node("Conv", ["x", "wx"], ["c"], kernel_shape=[3, 3], pads=[1] * 4), bn_node("c", "bn", "y")],
        x + [("wx", [4, 4, 3, 3])], y, bn)
    training_mode = bn_node("c", "bn", "y", training_mode=1)
    training_mode.output.extend(["running_mean", "running_var"])  # required with training_mode=1, here unread
    yield "BN runs in training mode (training_mode=1 or mean/var outputs)", make_model(
        [conv_node("x", "c", pads=[1] * 4), training_mode], x, y, {**conv, **bn}, opset=15)
    training_outputs = bn_node("c", "bn", "y")
    training_outputs.output.extend(["mean_out", "var_out", "saved_mean", "saved_var"])
    yield "BN runs in training mode (training_mode=1 or mean/var outputs)", make_model(
        [conv_node("x", "c", pads=[1] * 4), training_outputs], x, y + [("mean_out", [4])], {**conv, **bn}, opset=9)
    test_mode_outputs = bn_node("c", "bn", "y", is_test=1)
    test_mode_outputs.output.extend(["mean_out", "var_out", "saved_mean", "saved_var"])
    yield "BN's mean/var outputs are used", make_model(
        [conv_node("x", "c", pads=[1] * 4), test_mode_outputs], x, y + [("mean_out", [4])], {**conv, **bn}, opset=6)
    per_activation = {k: np.broadcast_to(v[:, None, None], (4, 8, 8)) for k, v in bn.items()}
    yield "BN statistics are per activation (spatial=0), not per channel", make_model(
        [conv_node("x", "c", pads=[1] * 4), bn_node("c", "bn", "y", spatial=0)], x, y, {**conv, **per_activation},
        opset=7)
    yield "the Conv pads its input, so the shift is not exact at the border", make_model(
        [bn_node("x", "bn", "t"), conv_node("t", "y", pads=[1] * 4)], x, y, {**conv, **bn})
    yield "the Conv pads its input, so the shift is not exact at the border", make_model(
        [bn_node("x", "bn", "t"), conv_node("t", "y", auto_pad="SAME_UPPER")], x, y, {**conv, **bn})
    yield "no Conv, ConvTranspose or Gemm before it and its readers are not all Convs", make_model(
        [bn_node("x", "bn", "t"), helper.make_node("Relu", ["t"], ["r"]), conv_node("r", "y", pads=[1] * 4)],
        x, y, {**conv, **bn})


REFUSALS = list(refusal_models())


@pytest.mark.parametrize("reason, model", REFUSALS, ids=[f"{i}-{r[:24]}" for i, (r, _) in enumerate(REFUSALS)])
def test_refuses_with_reason(reason, model):
    graph = onnx_io.load(model)
    version = graph.version
    stats = run_passes(graph, PASS)
    assert stats[PASS].rewrites == 0 and stats[PASS].refusals == {reason: 1}
    assert graph.version == version and "BatchNormalization" in op_counts(graph)


# ---------------------------------------------------------------------- the light zoo


@pytest.mark.parametrize("path", LIGHT_MODELS, ids=list(LIGHT))
def test_light_zoo_keeps_outputs_and_never_costs_more(path):
    """Constant 0.02 weights: onnxruntime agrees; nodes and MACs never increase; BN stays only away from convs."""
    graph = onnx_io.load(path)
    run_passes(graph, "fold-constants")
    before = analyze_costs(graph)
    stats = run_passes(graph, *FOLD_PIPELINE)
    after = analyze_costs(graph)
    assert (stats[PASS].rewrites, stats["fold-affine"].rewrites) == FOLD_ZOO_REWRITES.get(light_model_id(path), (0, 0))
    assert after.total_macs <= before.total_macs and len(after.nodes) <= len(before.nodes)
    assert op_counts(graph)["BatchNormalization"] == (62 if light_model_id(path) == "densenet121" else 0)
    if light_model_id(path) not in FOLD_ZOO_REWRITES:
        return  # nothing folded: no numbers to compare (and onnxruntime on VGG-19 alone takes seconds)
    assert_agrees(path, graph, runners=("onnxruntime",))


@pytest.mark.parametrize("model", ["resnet50", "shufflenet"])
def test_light_zoo_random_weights(model):
    """Random weights make every channel distinct: grouped (ShuffleNet) and strided (ResNet) folds stay exact."""
    assert_random_weights_agree(LIGHT[model], {PASS: FOLD_ZOO_REWRITES[model][0]})
