"""canonicalize-conv1x1-gemm: Transpose-MatMul-Transpose always, Gemm on a 1x1 map only where it unlocks something.

The four kinds of test on models built here with onnx.helper, plus the light zoo, where
every classifier Gemm is refused (nothing to unlock, or not on a 1x1 map).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import passes.canonicalize_conv1x1_gemm  # noqa: F401  (registers the pass and fuse-conv1x1-chain)
from optimizer import onnx_io
from optimizer.cost import analyze_costs
from optimizer.ir import Graph
from support import (LIGHT_MODELS, assert_agrees, assert_second_run_changes_nothing, light_model_id, make_model,
                     ort_run, random_feeds, run_passes)

PASS = "canonicalize-conv1x1-gemm"
F = TensorProto.FLOAT


def const(name, array) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def rand(*shape, seed=0):
    return np.random.default_rng(seed + sum(shape)).standard_normal(shape).astype(np.float32)


def ops(g: Graph) -> list[str]:
    return [n.op_type for n in g.toposort()]


# ====================================================================== (b) Transpose-MatMul-Transpose
def nhwc_model(*, bias="right", c=6, cout=5, x_shape=None, back_perm=None, bias_shape=None, extra_nhwc=False,
               runtime_matrix=False):
    x_shape = x_shape or (2, c, 4, 3)
    rank = len(x_shape)
    to_nhwc, to_nchw = [0, *range(2, rank), 1], back_perm or [0, rank - 1, *range(1, rank - 1)]
    nodes = [helper.make_node("Transpose", ["x"], ["nhwc"], name="to_nhwc", perm=to_nhwc),
             helper.make_node("MatMul", ["nhwc", "m"], ["product"], name="matmul")]
    inits, extra_inputs = [], []
    if runtime_matrix:
        extra_inputs.append(helper.make_tensor_value_info("m", F, [c, cout]))
    else:
        inits.append(const("m", rand(c, cout)))
    last = "product"
    if bias:
        inits.append(const("bias", rand(*(bias_shape or (cout,)), seed=1)))
        pair = ["product", "bias"] if bias == "right" else ["bias", "product"]
        nodes.append(helper.make_node("Add", pair, ["sum"], name="add"))
        last = "sum"
    nodes.append(helper.make_node("Transpose", [last], ["y"], name="to_nchw", perm=to_nchw))
    if extra_nhwc:
        nodes.append(helper.make_node("Relu", ["nhwc"], ["side"], name="side"))
    model = make_model(nodes, [("x", x_shape), *extra_inputs], [("y", [None] * rank)], inits, name="canon")
    if extra_nhwc:
        model.graph.output.append(helper.make_tensor_value_info("side", F, [None] * rank))
    return model


@pytest.mark.parametrize("bias", ["right", "left", None])
def test_transpose_matmul_transpose_becomes_one_1x1_conv(bias):
    model = nhwc_model(bias=bias)
    g = onnx_io.load(model)
    macs = analyze_costs(g).total_macs
    stats = run_passes(g, PASS)[PASS]
    assert (stats.rewrites, dict(stats.refusals)) == (1, {})
    assert ops(g) == ["Conv"]
    (conv,) = g.nodes
    assert conv.inputs[0] == "x" and conv.outputs == ["y"] and conv.name == "matmul"
    assert g.const(conv.inputs[1]).shape == (5, 6, 1, 1)
    assert len(conv.inputs) == (3 if bias else 2)
    (decision,) = stats.decisions
    assert decision.applied and decision.macs_after == decision.macs_before == macs
    assert decision.nodes_before == (4 if bias else 3) and decision.nodes_after == 1
    assert analyze_costs(g).total_macs == macs
    assert_agrees(model, g, seed=3)
    assert_second_run_changes_nothing(g, PASS)


def test_channels_last_1d_and_broadcast_bias():
    model = nhwc_model(x_shape=(1, 6, 7), bias_shape=(1, 1, 5))
    g = onnx_io.load(model)
    assert run_passes(g, PASS)[PASS].rewrites == 1 and ops(g) == ["Conv"]
    assert_agrees(model, g, seed=3)


def test_nhwc_tensor_read_elsewhere_keeps_its_transpose():
    model = nhwc_model(extra_nhwc=True)
    g = onnx_io.load(model)
    stats = run_passes(g, PASS)[PASS]
    assert stats.rewrites == 1 and sorted(ops(g)) == ["Conv", "Relu", "Transpose"]
    assert stats.decisions[0].nodes_before == 3 and stats.decisions[0].nodes_after == 1
    feeds = random_feeds(model, seed=0)
    for e, a in zip(ort_run(model, feeds), ort_run(onnx_io.to_model_proto(g), feeds)):
        assert np.max(np.abs(a - e)) <= 1e-5 * np.max(np.abs(e))


@pytest.mark.parametrize("kwargs,reason", [
    (dict(back_perm=[0, 3, 2, 1]), "the transposes are not channels-last and back"),
    (dict(bias_shape=(3, 5)), "the bias does not run along the channel axis alone"),
    (dict(runtime_matrix=True), "the MatMul matrix or the bias is not constant"),
])
def test_transpose_refusals(kwargs, reason):
    g = onnx_io.load(nhwc_model(**kwargs))
    version = g.version
    stats = run_passes(g, PASS)[PASS]
    assert dict(stats.refusals) == {reason: 1}
    assert g.version == version and "Conv" not in ops(g)


def test_matmul_output_read_elsewhere_is_refused():
    model = nhwc_model(bias=None)
    model.graph.output.append(helper.make_tensor_value_info("product", F, [None] * 4))
    g = onnx_io.load(model)
    assert dict(run_passes(g, PASS)[PASS].refusals) == {"the MatMul or Add output has other readers": 1}


# ====================================================================== (a) Gemm on a 1x1 map
def gemm_model(*, c=8, cout=6, n=1, after=None, pool="GlobalAveragePool", flatten="Flatten", gemm_attrs=None,
               bias_shape=None, producer_conv=None, spatial=(5, 4)):
    """x -> pool (or a VALID conv covering the map) -> Flatten/Reshape -> Gemm [-> Reshape/Unsqueeze back] -> y."""
    gemm_attrs = dict({"transB": 1} if gemm_attrs is None else gemm_attrs)
    nodes, inits = [], []
    x_shape = (n, c, *spatial)
    if producer_conv is not None:  # (cin, c): a conv whose kernel covers the whole map
        cin, c = producer_conv
        x_shape = (n, cin, *spatial)
        scale = np.float32(np.sqrt(cin * np.prod(spatial)))
        inits += [const("cw", rand(c, cin, *spatial) / scale), const("cb", rand(c, seed=2))]
        nodes.append(helper.make_node("Conv", ["x", "cw", "cb"], ["pooled"], name="conv"))
    else:
        nodes.append(helper.make_node(pool, ["x"], ["pooled"], name="pool"))
        if not pool.startswith("Global"):  # the map keeps its size: the Gemm reads every pixel
            c *= int(np.prod(spatial))
    if flatten == "Flatten":
        nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], name="flatten", axis=1))
    else:
        inits.append(const("flat_shape", np.array([n, -1], np.int64)))
        nodes.append(helper.make_node("Reshape", ["pooled", "flat_shape"], ["flat"], name="flatten"))
    w = rand(cout, c, seed=4) if gemm_attrs.get("transB") else rand(c, cout, seed=4)
    inits += [const("gw", w), const("gb", rand(*(bias_shape or (cout,)), seed=5))]
    gemm_out = "y" if after is None else "fc"
    nodes.append(helper.make_node("Gemm", ["flat", "gw", "gb"], [gemm_out], name="gemm", **gemm_attrs))
    if after == "Reshape":
        inits.append(const("back", np.array([n, cout, 1, 1], np.int64)))
        nodes.append(helper.make_node("Reshape", ["fc", "back"], ["y"], name="back"))
    elif after == "Unsqueeze":
        inits.append(const("axes", np.array([2, 3], np.int64)))
        nodes.append(helper.make_node("Unsqueeze", ["fc", "axes"], ["y"], name="back"))
    return make_model(nodes, [("x", x_shape)], [("y", [None] * (2 if after is None else 4))], inits, name="canon")


@pytest.mark.parametrize("after", ["Reshape", "Unsqueeze"])
@pytest.mark.parametrize("pool,flatten", [("GlobalAveragePool", "Flatten"), ("GlobalMaxPool", "Reshape")])
def test_gemm_reshaped_back_to_a_map_becomes_a_1x1_conv(after, pool, flatten):
    model = gemm_model(after=after, pool=pool, flatten=flatten)
    g = onnx_io.load(model)
    stats = run_passes(g, PASS)[PASS]
    assert (stats.rewrites, dict(stats.refusals)) == (1, {})
    assert ops(g) == [pool, "Conv"]
    conv = g.producer("y")
    assert conv.op_type == "Conv" and conv.name == "gemm" and g.const(conv.inputs[1]).shape == (6, 8, 1, 1)
    (decision,) = stats.decisions
    assert decision.applied and decision.macs_before == decision.macs_after == 48
    assert (decision.nodes_before, decision.nodes_after) == (3, 1)
    assert_agrees(model, g, seed=3)
    assert_second_run_changes_nothing(g, PASS)


def test_gemm_alpha_beta_untransposed_weights_and_row_bias():
    model = gemm_model(after="Reshape", n=2, gemm_attrs={"alpha": 0.5, "beta": -2.0}, bias_shape=(1, 6))
    g = onnx_io.load(model)
    assert run_passes(g, PASS)[PASS].rewrites == 1 and ops(g) == ["GlobalAveragePool", "Conv"]
    assert_agrees(model, g, seed=3)


def test_plain_classifier_gemm_has_nothing_to_unlock():
    g = onnx_io.load(gemm_model())
    version = g.version
    stats = run_passes(g, PASS)[PASS]
    assert dict(stats.refusals) == {"nothing to unlock": 1}
    assert g.version == version and ops(g) == ["GlobalAveragePool", "Flatten", "Gemm"]


def test_gemm_after_a_conv_becomes_a_1x1_that_the_chain_pass_fuses():
    """Conv(4 -> 16, kernel = whole 3x3 map) -> Flatten -> Gemm(16 -> 6): one 3x3 conv 4 -> 6 afterwards."""
    model = gemm_model(producer_conv=(4, 16), spatial=(3, 3))
    g = onnx_io.load(model)
    macs = analyze_costs(g).total_macs
    stats = run_passes(g, PASS, "fuse-conv1x1-chain")
    assert stats[PASS].rewrites == 1 and stats["fuse-conv1x1-chain"].rewrites == 1
    assert ops(g) == ["Conv", "Flatten"]
    assert g.const(g.producer(g.producer("y").inputs[0]).inputs[1]).shape == (6, 4, 3, 3)
    decision = stats[PASS].decisions[0]
    assert decision.unlocks == "fuse-conv1x1-chain with conv" and decision.nodes_after == 2
    assert analyze_costs(g).total_macs < macs
    assert_agrees(model, g, seed=3)
    assert_second_run_changes_nothing(g, PASS, "fuse-conv1x1-chain")


def test_gemm_after_a_conv_that_should_stay_a_bottleneck_has_nothing_to_unlock():
    g = onnx_io.load(gemm_model(producer_conv=(32, 2), cout=32, spatial=(3, 3)))
    stats = run_passes(g, PASS, "fuse-conv1x1-chain")
    assert dict(stats[PASS].refusals) == {"nothing to unlock": 1}
    assert ops(g) == ["Conv", "Flatten", "Gemm"]


@pytest.mark.parametrize("kwargs,reason", [
    (dict(pool="Relu", after="Reshape"), "the Gemm does not read a flattened 1x1 map"),
    (dict(n=2, bias_shape=(2, 6), after="Reshape"), "the Gemm's bias varies over the batch"),
])
def test_gemm_refusals(kwargs, reason):
    model = gemm_model(**kwargs)
    g = onnx_io.load(model)
    stats = run_passes(g, PASS)[PASS]
    assert dict(stats.refusals) == {reason: 1} and "Conv" not in ops(g)


def test_gemm_with_runtime_weights_is_refused():
    model = gemm_model(after="Reshape")
    gw = next(t for t in model.graph.initializer if t.name == "gw")
    model.graph.input.append(helper.make_tensor_value_info("gw", F, list(gw.dims)))
    model.graph.initializer.remove(gw)
    g = onnx_io.load(model)
    assert dict(run_passes(g, PASS)[PASS].refusals) == {"the Gemm's weights or bias are not constant": 1}


# ====================================================================== the light zoo
ZOO_REFUSALS = {"bvlc_alexnet": "the Gemm does not read a flattened 1x1 map", "densenet121": None,
                "inception_v1": "nothing to unlock", "inception_v2": "nothing to unlock",
                "resnet50": "nothing to unlock", "shufflenet": "nothing to unlock", "squeezenet": None,
                "vgg19": "the Gemm does not read a flattened 1x1 map",
                "zfnet512": "the Gemm does not read a flattened 1x1 map"}


@pytest.mark.parametrize("path", LIGHT_MODELS, ids=[light_model_id(p) for p in LIGHT_MODELS])
def test_light_zoo_classifier_gemms_are_left_alone(path):
    """Their Gemms read a flattened 7x7/6x6 map or feed a Softmax: converting would unlock nothing."""
    g = onnx_io.load(path)
    run_passes(g, "fold-constants")
    version = g.version
    stats = run_passes(g, PASS)[PASS]
    expected = ZOO_REFUSALS[light_model_id(path)]
    assert dict(stats.refusals) == ({expected: 1} if expected else {})
    assert stats.rewrites == 0 and g.version == version


@pytest.mark.parametrize("build", [lambda: nhwc_model(), lambda: gemm_model(after="Unsqueeze")], ids=["nhwc", "gemm"])
def test_symbolic_batch_still_converts_since_the_multiplications_are_the_same(build):
    model = build()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_param = "N"
    g = onnx_io.load(model)
    stats = run_passes(g, PASS)[PASS]
    assert stats.rewrites == 1 and stats.decisions[0].macs_before is None is stats.decisions[0].macs_after
    assert ops(g)[-1] == "Conv"
    assert_agrees(model, g, seed=3)
