"""merge-sibling-conv1x1: sibling 1x1 convs (+ their ReLUs) -> one wider 1x1 (+ one ReLU) and a Split.

The four kinds of test from DESIGN.md on the inception fixture, small hand-built models
(one per opset form of Split, and one per refusal) and the light zoo's Inception v1/v2.
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

import passes.merge_sibling_conv1x1  # noqa: F401  (registers the pass; not in the default pipeline)
from optimizer import onnx_io
from support import (FIXTURES_DIR, INCEPTION, assert_agrees, assert_second_run_changes_nothing, light_model, make_model,
                     op_counts, random_initializer, randomize_conv_weights, run_passes)

PASS = "merge-sibling-conv1x1"
F = TensorProto.FLOAT


# ---------------------------------------------------------------------- models
def siblings_model(*, opset: int = 13, strides=(None, None, None), relu: bool = True, bias=(True, True, True),
                   extra_reader: bool = False) -> onnx.ModelProto:
    """Three 1x1 convs (8 -> 4, 6, 2 channels) reading x, each with its ReLU producing a graph output.

    ``strides[i]`` sets conv i's strides; ``extra_reader`` makes conv 0's output a graph output too.
    """
    nodes, inits, outputs = [], [], []
    for i, (cout, stride, has_bias) in enumerate(zip((4, 6, 2), strides, bias)):
        attrs = {"kernel_shape": [1, 1]} | ({"strides": list(stride)} if stride else {})
        inits.append(random_initializer(f"w{i}", (cout, 8, 1, 1), seed=i))
        if has_bias:
            inits.append(random_initializer(f"b{i}", (cout,), seed=10 + i))
        nodes.append(helper.make_node("Conv", ["x", f"w{i}"] + ([f"b{i}"] if has_bias else []), [f"c{i}"],
                                      name=f"conv{i}", **attrs))
        size = 5 if not stride else 3
        if relu:
            nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
            outputs.append((f"r{i}", [1, cout, size, size]))
        else:
            outputs.append((f"c{i}", [1, cout, size, size]))
    if extra_reader:
        outputs.append(("c0", [1, 4, 5, 5]))
    return make_model(nodes, [("x", [1, 8, 5, 5])], outputs, inits, opset=opset)


# ---------------------------------------------------------------------- fires
def test_fires_on_inception_module():
    graph = onnx_io.load(INCEPTION)
    stats = run_passes(graph, PASS)[PASS]
    assert stats.rewrites == 1
    counts = op_counts(graph)
    assert (counts["Conv"], counts["Relu"], counts["Split"], len(graph)) == (4, 4, 1, 11)
    merged = graph.producer(graph.producer("b1_relu").inputs[0]).inputs[0]  # Split <- Relu <- Conv
    conv = graph.producer(merged)
    assert conv.op_type == "Conv" and conv.inputs[0] == "data"
    assert graph.const(conv.inputs[1]).shape == (64 + 96 + 16, 192, 1, 1)
    split = graph.producer("b1_relu")
    assert split.outputs == ["b1_relu", "b2_relu_reduce", "b3_relu_reduce"]
    assert graph.const(split.inputs[1]).tolist() == [64, 96, 16]
    (decision,) = stats.decisions
    assert decision.applied and decision.macs_before == decision.macs_after == 28 * 28 * 176 * 192
    assert (decision.nodes_before, decision.nodes_after) == (6, 3)
    assert_agrees(INCEPTION, graph, feeds=dict(np.load(os.path.join(FIXTURES_DIR, "inception_module_inputs.npz"))))


@pytest.mark.parametrize("opset", [9, 11, 13, 18])
def test_split_form_follows_the_opset(opset):
    """Split sizes are an attribute before opset 13 and an input from 13 (no num_outputs at 18)."""
    model = siblings_model(opset=opset, bias=(True, False, True))
    graph = onnx_io.load(model)
    assert run_passes(graph, PASS)[PASS].rewrites == 1
    (split,) = [n for n in graph.nodes if n.op_type == "Split"]
    assert split.outputs == ["r0", "r1", "r2"]
    if opset < 13:
        assert split.attrs == {"axis": 1, "split": [4, 6, 2]} and len(split.inputs) == 1
    else:
        assert split.attrs == {"axis": 1} and graph.const(split.inputs[1]).tolist() == [4, 6, 2]
    conv = graph.producer(graph.producer(split.inputs[0]).inputs[0])
    np.testing.assert_array_equal(graph.const(conv.inputs[2])[4:10], 0)  # conv1 had no bias
    assert_agrees(model, graph, seed=1)


def test_without_relus_merges_the_convs_only():
    model = siblings_model(relu=False)
    graph = onnx_io.load(model)
    assert run_passes(graph, PASS)[PASS].rewrites == 1
    assert op_counts(graph) == Counter({"Conv": 1, "Split": 1})
    assert_agrees(model, graph, seed=1)


# ---------------------------------------------------------------------- refuses
def test_refuses_a_sibling_with_another_stride():
    model = siblings_model(strides=(None, None, (2, 2)))
    graph = onnx_io.load(model)
    stats = run_passes(graph, PASS)[PASS]
    assert stats.refusals["sibling 1x1 conv has strides [2, 2], not 1"] >= 1
    assert stats.rewrites == 1  # the two stride-1 siblings still merge
    assert graph.producer("c2").op_type == "Conv" and graph.producer("c2").attrs["strides"] == [2, 2]
    assert op_counts(graph) == Counter({"Conv": 2, "Relu": 2, "Split": 1})
    assert_agrees(model, graph, seed=1)


def test_relus_stay_per_branch_when_a_conv_output_has_two_readers():
    model = siblings_model(extra_reader=True)
    graph = onnx_io.load(model)
    stats = run_passes(graph, PASS)[PASS]
    assert stats.refusals["ReLUs stay per branch: not every sibling conv output has its own ReLU as only reader"] == 1
    assert op_counts(graph) == Counter({"Conv": 1, "Split": 1, "Relu": 3})
    assert graph.producer("c0").op_type == "Split" and graph.outputs[-1] == "c0"
    assert_agrees(model, graph, seed=1)


def test_refuses_two_siblings_when_nothing_is_saved():
    model = siblings_model(relu=False)
    del model.graph.node[2], model.graph.output[2]  # two siblings, no ReLU: Conv+Conv -> Conv+Split
    graph = onnx_io.load(model)
    version = graph.version
    stats = run_passes(graph, PASS)[PASS]
    assert stats.refusals["the merge saves no nodes"] == 1 and stats.rewrites == 0
    assert stats.decisions[0].applied is False
    assert graph.version == version


def test_refuses_non_constant_weights():
    model = siblings_model()
    weight = model.graph.initializer[0]
    model.graph.input.append(helper.make_tensor_value_info(weight.name, F, list(weight.dims)))
    del model.graph.initializer[0]
    graph = onnx_io.load(model)
    stats = run_passes(graph, PASS)[PASS]
    assert stats.refusals["sibling 1x1 conv has non-constant weights or bias"] >= 1
    assert graph.producer("c0").op_type == "Conv" and graph.producer("c0").inputs[1] == "w0"


# ---------------------------------------------------------------------- idempotent
@pytest.mark.parametrize("make", [lambda: onnx_io.load(INCEPTION),
                                  lambda: onnx_io.load(siblings_model(strides=(None, None, (2, 2))))],
                         ids=["inception_module", "stride_sibling"])
def test_second_run_changes_nothing(make):
    graph = make()
    assert run_passes(graph, PASS)[PASS].rewrites == 1
    assert_second_run_changes_nothing(graph, PASS)


# ---------------------------------------------------------------------- light zoo
@pytest.mark.parametrize("name, merges", [("inception_v1", 9), ("inception_v2", 8)])
def test_light_inception(name, merges):
    """Every Inception module merges its reduce convs; numbers hold with random (not constant) weights."""
    path = light_model(name)
    graph = onnx_io.load(path)
    run_passes(graph, "fold-constants")
    randomize_conv_weights(graph)
    reference = onnx_io.to_model_proto(graph)
    before = op_counts(graph)
    stats = run_passes(graph, PASS)[PASS]
    assert stats.rewrites == merges
    after = op_counts(graph)
    assert after["Split"] == merges and after["Conv"] < before["Conv"]
    assert all(d.macs_before == d.macs_after for d in stats.decisions)
    assert_agrees(reference, graph, seed=1)
    assert_second_run_changes_nothing(graph, PASS)
