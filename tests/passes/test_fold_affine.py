"""fold-affine: per-channel Mul/Add/Sub/Div/Sum constants folded into the Conv/ConvTranspose/Gemm/BN before them.

The four kinds of test from DESIGN.md on the caffe2 and DenseNet fixtures, small hand-built
models (one per op, producer and opset form, one per refusal) and the light zoo's DenseNet-121
and Inception v2 with random weights (their Mul/Add after BN is the caffe2 export of BN).
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import pytest
from onnx import helper

from optimizer import onnx_io
from support import (FIXTURES_DIR, FOLD_PIPELINE, FOLD_ZOO_REWRITES, LIGHT, assert_agrees, assert_random_weights_agree,
                     assert_second_run_changes_nothing, bn_node, bn_params, he_weights, make_model, op_counts,
                     run_passes)

PASS = "fold-affine"
CLEANUP = ["eliminate-dead-nodes", "eliminate-unused-initializers"]
NON_CHANNEL = "the constant varies along a non-channel axis"


# ---------------------------------------------------------------------- fixtures
@pytest.mark.parametrize("names", [[PASS, *CLEANUP], FOLD_PIPELINE], ids=["through-unsqueeze", "after-fold-constants"])
def test_caffe2_decomposed_bn_folds_into_the_convs(names):
    path = os.path.join(FIXTURES_DIR, "caffe2_bn.onnx")
    graph = onnx_io.load(path)
    stats = run_passes(graph, *names)
    assert stats[PASS].rewrites == 4 and not stats[PASS].refusals
    assert op_counts(graph) == Counter({"Conv": 2, "Relu": 2, "Sum": 1})  # the Sum of the two ReLUs is no affine
    assert all(len(n.inputs) == 3 for n in graph.nodes if n.op_type == "Conv")
    assert len(stats[PASS].decisions) == 4 and all(d.applied and d.macs_after == d.macs_before > 0
                                                   for d in stats[PASS].decisions)
    assert_agrees(path, graph, oracle=None)
    assert_second_run_changes_nothing(graph, *names)


def test_densenet_never_folds_across_relu():
    """BN -> ReLU -> Conv: the BN after conv1 folds; bn1 stays where it is, feeding the ReLU."""
    path = os.path.join(FIXTURES_DIR, "densenet_bn_relu_conv.onnx")
    graph = onnx_io.load(path)
    stats = run_passes(graph, *FOLD_PIPELINE)
    assert stats["fold-batchnorm"].rewrites == 1 and stats[PASS].rewrites == 0
    assert op_counts(graph) == Counter({"BatchNormalization": 1, "Relu": 2, "Conv": 2, "Concat": 1})
    [bn] = [n for n in graph.nodes if n.op_type == "BatchNormalization"]
    assert bn.name == "bn1" and graph.consumers(bn.outputs[0])[0].op_type == "Relu"
    assert_agrees(path, graph, oracle=None)


# ---------------------------------------------------------------------- small models
def conv_then(ops_and_consts, *, producer="Conv", opset=13, const_first=(), out_shape=None):
    """x -> producer -> each (op, constant) in turn -> y; ops listed in ``const_first`` take the constant first."""
    rng = np.random.default_rng(7)
    if producer == "Conv":
        inits = {"w": he_weights(rng, 6, 4, 3, 3)}
        nodes = [helper.make_node("Conv", ["x", "w"], ["t0"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])]
        x, shape = [("x", [1, 4, 8, 8])], [1, 6, 8, 8]
    elif producer == "ConvTranspose":
        inits = {"w": he_weights(rng, 4, 3, 2, 2), "b": rng.standard_normal(6)}
        nodes = [helper.make_node("ConvTranspose", ["x", "w", "b"], ["t0"], name="deconv", kernel_shape=[2, 2],
                                  strides=[2, 2], group=2)]
        x, shape = [("x", [1, 4, 4, 4])], [1, 6, 8, 8]
    elif producer == "Gemm":
        inits = {"B": he_weights(rng, 7, 6), "C": rng.standard_normal(6)}
        nodes = [helper.make_node("Gemm", ["x", "B", "C"], ["t0"], name="gemm", beta=0.5)]
        x, shape = [("x", [3, 7])], [3, 6]
    else:  # a BN of the graph input, as DenseNet-121 has after each Concat
        inits = bn_params(rng, "bn", 6)
        nodes = [bn_node("x", "bn", "t0")]
        x, shape = [("x", [1, 6, 8, 8])], [1, 6, 8, 8]
    for i, (op, const) in enumerate(ops_and_consts):
        inits[f"k{i}"] = const
        inputs = [f"k{i}", f"t{i}"] if op in const_first else [f"t{i}", f"k{i}"]
        out = "y" if i == len(ops_and_consts) - 1 else f"t{i + 1}"
        nodes.append(helper.make_node(op, inputs, [out], name=f"{op.lower()}{i}"))
    return make_model(nodes, x, [("y", out_shape or shape)], inits, opset=opset)


C = np.linspace(0.5, 1.5, 6).reshape(6, 1, 1)
FORMS = {
    "mul_add_chain": (conv_then([("Mul", C), ("Add", C - 1), ("Mul", C[::-1]), ("Sub", C), ("Div", C + 1)]), "Conv"),
    "constant_first_sub_and_add": (conv_then([("Sub", C), ("Add", 1 - C)], const_first={"Sub", "Add"}), "Conv"),
    "scalar_and_1C11": (conv_then([("Mul", np.array(2.0)), ("Add", C.reshape(1, 6, 1, 1))]), "Conv"),
    "sum_with_constant": (conv_then([("Sum", C)]), "Conv"),
    "convtranspose": (conv_then([("Mul", C), ("Add", C)], producer="ConvTranspose"), "ConvTranspose"),
    "gemm": (conv_then([("Mul", C.reshape(1, 6)), ("Add", C.reshape(6))], producer="Gemm"), "Gemm"),
    "batchnorm": (conv_then([("Mul", C), ("Add", C)], producer="BN"), "BatchNormalization"),
}


@pytest.mark.parametrize("form", FORMS)
def test_folds_each_form(form):
    model, producer = FORMS[form]
    graph = onnx_io.load(model)
    chain = len(model.graph.node) - 1
    stats = run_passes(graph, PASS, *CLEANUP)
    assert stats[PASS].rewrites == chain and not stats[PASS].refusals
    [node] = graph.nodes
    assert node.op_type == producer and node.outputs == ["y"]
    assert_agrees(model, graph, oracle=None)
    assert_second_run_changes_nothing(graph, PASS)


def test_sum_of_several_branches_keeps_the_sum():
    """Sum(conv_a, conv_b, c): c goes into conv_a's bias, the Sum adds the two convs."""
    rng = np.random.default_rng(8)
    inits = {"wa": he_weights(rng, 6, 4, 1, 1), "wb": he_weights(rng, 6, 4, 3, 3), "c": C}
    nodes = [helper.make_node("Conv", ["x", "wa"], ["a"], name="conv_a", kernel_shape=[1, 1]),
             helper.make_node("Conv", ["x", "wb"], ["b"], name="conv_b", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Sum", ["a", "c", "b"], ["y"], name="sum")]
    model = make_model(nodes, [("x", [1, 4, 8, 8])], [("y", [1, 6, 8, 8])], inits)
    graph = onnx_io.load(model)
    stats = run_passes(graph, PASS)
    assert stats[PASS].rewrites == 1 and op_counts(graph) == Counter({"Conv": 2, "Sum": 1})
    [total] = [n for n in graph.nodes if n.op_type == "Sum"]
    assert total.name == "sum" and total.inputs == ["a", "b"]
    assert len(graph.producer("a").inputs) == 3
    assert_agrees(model, graph, oracle=None)
    assert_second_run_changes_nothing(graph, PASS)


@pytest.mark.parametrize("opset", [9, 13])
def test_unsqueeze_of_a_vector_is_looked_through(opset):
    """(C,) constants reaching (C,1,1) through Unsqueeze: axes attribute before opset 13, an input from 13."""
    rng = np.random.default_rng(9)
    inits = {"w": he_weights(rng, 6, 4, 1, 1), "m": C.reshape(6), "a": C.reshape(6) - 1}
    if opset >= 13:
        inits["axes"] = np.array([1, 2], np.int64)
    unsqueeze = [helper.make_node("Unsqueeze", [v, "axes"] if opset >= 13 else [v], [f"{v}3"], name=f"unsq_{v}",
                                  **({} if opset >= 13 else {"axes": [1, 2]})) for v in ("m", "a")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[1, 1]), *unsqueeze,
             helper.make_node("Mul", ["c", "m3"], ["t"], name="mul"), helper.make_node("Add", ["t", "a3"], ["y"])]
    model = make_model(nodes, [("x", [1, 4, 8, 8])], [("y", [1, 6, 8, 8])], inits, opset=opset)
    graph = onnx_io.load(model)
    stats = run_passes(graph, PASS, *CLEANUP)
    assert stats[PASS].rewrites == 2 and op_counts(graph) == Counter({"Conv": 1})
    assert_agrees(model, graph, oracle=None)


def test_opset6_broadcast_axis_form():
    """Before opset 7, Mul/Add broadcast a (C,) constant along ``axis`` (caffe2's oldest exports)."""
    rng = np.random.default_rng(10)
    inits = {"w": he_weights(rng, 6, 4, 3, 3), "m": C.reshape(6), "a": C.reshape(6) - 1}
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
             helper.make_node("Mul", ["c", "m"], ["t"], broadcast=1, axis=1),
             helper.make_node("Add", ["t", "a"], ["y"], broadcast=1, axis=1)]
    model = make_model(nodes, [("x", [1, 4, 8, 8])], [("y", [1, 6, 8, 8])], inits, opset=6)
    graph = onnx_io.load(model)
    stats = run_passes(graph, PASS)
    assert stats[PASS].rewrites == 2 and op_counts(graph) == Counter({"Conv": 1})
    assert_agrees(model, graph, oracle=None, runners=("executor",))  # onnxruntime runs opset 7 and later


# ---------------------------------------------------------------------- refusals
def refusal_models():
    rng = np.random.default_rng(11)
    hw = rng.uniform(0.5, 1.5, (1, 1, 8, 8))
    yield NON_CHANNEL, conv_then([("Mul", hw)])
    yield NON_CHANNEL, conv_then([("Add", rng.standard_normal(8))])  # (W,) aligns with the last axis
    yield NON_CHANNEL, conv_then([("Add", rng.standard_normal((2, 6, 1, 1)))], out_shape=[2, 6, 8, 8])  # batch
    with_zero = np.where(np.arange(6) == 2, 0.0, C.ravel())[:, None, None]
    yield "it divides by a zero constant", conv_then([("Div", with_zero)])
    inits = {"w": he_weights(rng, 6, 4, 3, 3), "m": C}
    conv = helper.make_node("Conv", ["x", "w"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    x, y = [("x", [1, 4, 8, 8])], [("y", [1, 6, 8, 8])]
    yield "Conv output feeds other nodes too", make_model(
        [conv, helper.make_node("Mul", ["c", "m"], ["y"]), helper.make_node("Relu", ["c"], ["r"])],
        x, y + [("r", [1, 6, 8, 8])], inits)
    yield "no Conv, ConvTranspose, Gemm or BatchNormalization produces its input", make_model(
        [conv, helper.make_node("Relu", ["c"], ["r"]), helper.make_node("Mul", ["r", "m"], ["y"])], x, y, inits)
    yield "Conv parameters are not constant", make_model(
        [helper.make_node("Conv", ["x", "wx"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         helper.make_node("Mul", ["c", "m"], ["y"])], x + [("wx", [6, 4, 3, 3])], y, {"m": C})


REFUSALS = list(refusal_models())


@pytest.mark.parametrize("reason, model", REFUSALS, ids=[f"{i}-{r[:24]}" for i, (r, _) in enumerate(REFUSALS)])
def test_refuses_with_reason(reason, model):
    graph = onnx_io.load(model)
    version = graph.version
    stats = run_passes(graph, PASS)
    assert stats[PASS].rewrites == 0 and stats[PASS].refusals == {reason: 1}
    assert graph.version == version


def test_adds_without_a_constant_are_not_candidates():
    """The residual Add of two activations is no affine: not matched, not refused."""
    graph = onnx_io.load(os.path.join(FIXTURES_DIR, "resnet_bottleneck_bn.onnx"))
    stats = run_passes(graph, PASS)
    assert stats[PASS].matches == 0 and not stats[PASS].refusals


# ---------------------------------------------------------------------- the light zoo
@pytest.mark.parametrize("model", ["densenet121", "inception_v2"])
def test_light_zoo_random_weights(model):
    """Caffe2's BN -> Mul -> Add: folded into the conv before (or, after a Concat, into the BN itself)."""
    bn, affine = FOLD_ZOO_REWRITES[model]
    assert_random_weights_agree(LIGHT[model], {"fold-batchnorm": bn, PASS: affine})
