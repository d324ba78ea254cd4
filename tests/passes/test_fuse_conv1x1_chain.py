"""fuse-conv1x1-chain: Conv -> Conv with a 1x1 on either side becomes one Conv when no more MACs.

The four kinds of test (fires, refuses with its reason, second run changes nothing, numbers
agree in ninopt's executor and in onnxruntime) on small chains built here, the
bottleneck and inception fixtures, and a hypothesis sweep over random chain shapes.
"""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import passes.fuse_conv1x1_chain  # noqa: F401  (registers the pass)
from optimizer import onnx_io
from optimizer.cost import analyze_costs
from optimizer.decisions import ChainFusion
from optimizer.ir import Graph
from optimizer.pipeline import PassManager
from optimizer.registry import get_pass
from support import FIXTURES_DIR, INCEPTION, assert_agrees, assert_second_run_changes_nothing, make_model

PASS = "fuse-conv1x1-chain"
BOTTLENECK = os.path.join(FIXTURES_DIR, "bottleneck_64_8_64.onnx")


# ---------------------------------------------------------------------- helpers
def conv_spec(cout, k=1, stride=1, pad=0, dilation=1, group=1, bias=True, auto_pad=None):
    return dict(cout=cout, k=k, stride=stride, pad=pad, dilation=dilation, group=group, bias=bias, auto_pad=auto_pad)


def chain_model(x_shape, specs, *, relu_between=False, seed=0, extra_reader=False) -> onnx.ModelProto:
    """x -> conv -> [Relu] -> conv -> ... -> y, seeded weights; ``extra_reader`` also outputs the first conv."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x, cin, rank = "x", x_shape[1], len(x_shape) - 2
    for i, s in enumerate(specs):
        y = "y" if i == len(specs) - 1 else f"h{i}"
        w = (rng.standard_normal((s["cout"], cin // s["group"]) + (s["k"],) * rank)
             / np.sqrt(cin // s["group"] * s["k"] ** rank)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        inputs = [x, f"w{i}"]
        if s["bias"]:
            inits.append(numpy_helper.from_array(rng.standard_normal(s["cout"]).astype(np.float32), f"b{i}"))
            inputs.append(f"b{i}")
        attrs = dict(kernel_shape=[s["k"]] * rank, strides=[s["stride"]] * rank, dilations=[s["dilation"]] * rank,
                     group=s["group"])
        if s["auto_pad"]:
            attrs["auto_pad"] = s["auto_pad"]
        else:
            attrs["pads"] = [s["pad"]] * (2 * rank)
        nodes.append(helper.make_node("Conv", inputs, [y], name=f"conv{i}", **attrs))
        x, cin = y, s["cout"]
        if relu_between and i < len(specs) - 1:
            nodes.append(helper.make_node("Relu", [y], [f"r{i}"], name=f"relu{i}"))
            x = f"r{i}"
    outputs = ["y", "h0"] if extra_reader else ["y"]
    return make_model(nodes, [("x", x_shape)], [(o, [None] * len(x_shape)) for o in outputs], inits, name="chain")


def run_pass(g: Graph):
    report = PassManager([get_pass(PASS).create()]).run(g)
    return report.passes[0]


def convs(g: Graph):
    return [n for n in g.nodes if n.op_type == "Conv"]


# ---------------------------------------------------------------------- 1x1 -> 1x1
def test_bottleneck_fixture_is_refused_by_the_cost_model():
    g = onnx_io.load(BOTTLENECK)
    version = g.version
    stats = run_pass(g)
    assert stats.rewrites == 0 and g.version == version
    assert dict(stats.refusals) == {"the 64->8->64 bottleneck is cheaper than one fused 1x1": 1}
    (decision,) = stats.decisions
    # 16x16 pixels: 64*8 + 8*64 MACs per pixel kept, 64*64 fused
    assert decision == ChainFusion(node="output", chain="64->8->64 fused 1x1", macs_before=256 * 1024,
                                   macs_after=256 * 4096, nodes_before=2, nodes_after=1, applied=False)
    assert len(convs(g)) == 2


@pytest.mark.parametrize("cin,r,cout", [(16, 64, 16), (32, 48, 32)])
def test_wide_1x1_chain_fuses_into_one_1x1(cin, r, cout):
    model = chain_model((1, cin, 6, 5), [conv_spec(r), conv_spec(cout)], seed=cin)
    g = onnx_io.load(model)
    stats = run_pass(g)
    assert (stats.rewrites, dict(stats.refusals)) == (1, {})
    (conv,) = convs(g)
    assert len(g) == 1 and conv.name == "conv1" and conv.outputs == ["y"]
    assert g.const(conv.inputs[1]).shape == (cout, cin, 1, 1) and g.const(conv.inputs[2]).shape == (cout,)
    (decision,) = stats.decisions
    assert decision.applied and decision.macs_after < decision.macs_before
    assert decision.macs_after == 30 * cin * cout and decision.macs_before == 30 * r * (cin + cout)
    assert_agrees(model, g)
    assert_second_run_changes_nothing(g, PASS)


@pytest.mark.parametrize("r", [7, 8, 9])
def test_1x1_chain_fuses_exactly_when_r_exceeds_the_threshold(r):
    """16->r->16: threshold 16*16/32 = 8; at r = 8 the MACs tie and the single node wins."""
    g = onnx_io.load(chain_model((1, 16, 4, 4), [conv_spec(r), conv_spec(16)]))
    stats = run_pass(g)
    assert stats.rewrites == (1 if r >= 8 else 0)
    if r < 8:
        assert dict(stats.refusals) == {f"the 16->{r}->16 bottleneck is cheaper than one fused 1x1": 1}
    assert stats.decisions[0].applied == (r >= 8)


def test_three_1x1_chain_fuses_to_one_over_the_fixpoint():
    model = chain_model((1, 8, 5, 5), [conv_spec(32), conv_spec(32, bias=False), conv_spec(8)])
    g = onnx_io.load(model)
    stats = run_pass(g)
    assert stats.rewrites == 2 and len(convs(g)) == 1 and len(g) == 1
    assert_agrees(model, g)


def test_grouped_1x1_is_composed_as_its_block_diagonal():
    model = chain_model((1, 16, 5, 5), [conv_spec(32, group=2), conv_spec(16, group=4)])
    g = onnx_io.load(model)
    stats = run_pass(g)
    assert stats.rewrites == 1
    (conv,) = convs(g)
    assert conv.attr("group", 1) == 1 and g.const(conv.inputs[1]).shape == (16, 16, 1, 1)
    assert_agrees(model, g)


# ---------------------------------------------------------------------- KxK -> 1x1
@pytest.mark.parametrize("first", [
    conv_spec(16, k=3, pad=1),
    conv_spec(16, k=3, stride=2, pad=1, dilation=2),
    conv_spec(16, k=5, stride=3, pad=2, bias=False),
    conv_spec(16, k=3, auto_pad="SAME_UPPER"),
], ids=["3x3", "3x3-s2-p1-d2", "5x5-s3-nobias", "3x3-same"])
def test_kxk_then_1x1_fuses_into_one_kxk(first):
    model = chain_model((1, 8, 11, 9), [first, conv_spec(4)])
    g = onnx_io.load(model)
    stats = run_pass(g)
    assert (stats.rewrites, dict(stats.refusals)) == (1, {})
    (conv,) = convs(g)
    assert g.const(conv.inputs[1]).shape == (4, 8, first["k"], first["k"])
    assert conv.attr("strides") == [first["stride"]] * 2
    assert_agrees(model, g)
    assert_second_run_changes_nothing(g, PASS)


def test_strided_1x1_after_kxk_multiplies_the_strides():
    model = chain_model((1, 8, 13, 10), [conv_spec(16, k=3, stride=2, pad=1), conv_spec(4, stride=2)])
    g = onnx_io.load(model)
    stats = run_pass(g)
    assert stats.rewrites == 1
    (conv,) = convs(g)
    assert conv.attr("strides") == [4, 4] and conv.attr("pads") == [1, 1, 1, 1]
    assert_agrees(model, g)


def test_strided_1x1_after_a_same_padded_kxk_is_refused():
    g = onnx_io.load(chain_model((1, 8, 9, 9), [conv_spec(16, k=3, auto_pad="SAME_UPPER"), conv_spec(4, stride=2)]))
    stats = run_pass(g)
    assert dict(stats.refusals) == {
        "the 1x1 is strided and the first conv uses auto_pad SAME: the pads would change": 1}


def test_depthwise_kxk_then_1x1_is_refused_when_the_dense_conv_costs_more():
    g = onnx_io.load(chain_model((1, 16, 8, 8), [conv_spec(16, k=3, pad=1, group=16), conv_spec(32)]))
    stats = run_pass(g)
    assert stats.rewrites == 0
    assert dict(stats.refusals) == {"the 16->16->32 bottleneck is cheaper than one fused 3x3": 1}
    assert stats.decisions[0].macs_after > stats.decisions[0].macs_before


# ---------------------------------------------------------------------- 1x1 -> KxK
@pytest.mark.parametrize("first,second", [
    (conv_spec(16, bias=False), conv_spec(4, k=3, pad=1)),
    (conv_spec(16, bias=False), conv_spec(4, k=3, stride=2, pad=2, dilation=2)),
    (conv_spec(16), conv_spec(4, k=3, stride=2)),  # bias is exact when the KxK does not pad
    (conv_spec(16), conv_spec(4, k=3, auto_pad="VALID")),
    (conv_spec(16, bias=False), conv_spec(4, k=3, auto_pad="SAME_LOWER")),
], ids=["pads", "s2-p2-d2", "bias-no-pads", "bias-valid", "same-lower"])
def test_1x1_then_kxk_fuses_into_one_kxk(first, second):
    model = chain_model((1, 8, 10, 11), [first, second])
    g = onnx_io.load(model)
    stats = run_pass(g)
    assert (stats.rewrites, dict(stats.refusals)) == (1, {})
    (conv,) = convs(g)
    assert g.const(conv.inputs[1]).shape == (4, 8, 3, 3)
    assert_agrees(model, g)
    assert_second_run_changes_nothing(g, PASS)


def test_1x1_with_bias_before_a_padding_kxk_is_refused():
    g = onnx_io.load(chain_model((1, 8, 6, 6), [conv_spec(16), conv_spec(4, k=3, pad=1)]))
    stats = run_pass(g)
    assert dict(stats.refusals) == {"the 1x1 has a bias and the KxK pads: the border would not be exact": 1}
    assert len(convs(g)) == 2


def test_googlenet_5x5_bottleneck_is_kept():
    """192 -> 16 -> 5x5 32 (inception 3a): keeping the reduce costs ~10x fewer MACs."""
    g = onnx_io.load(chain_model((1, 192, 8, 8), [conv_spec(16, bias=False), conv_spec(32, k=5, pad=2)]))
    stats = run_pass(g)
    assert stats.rewrites == 0
    assert dict(stats.refusals) == {"the 192->16->32 bottleneck is cheaper than one fused 5x5": 1}
    (decision,) = stats.decisions
    assert not decision.applied and decision.macs_after > 9 * decision.macs_before


def test_inception_fixture_has_relus_between_so_nothing_matches():
    g = onnx_io.load(INCEPTION)
    stats = run_pass(g)
    assert (stats.matches, stats.rewrites, stats.decisions) == (0, 0, [])


# ---------------------------------------------------------------------- structural refusals
def test_relu_between_is_never_fused():
    g = onnx_io.load(chain_model((1, 8, 4, 4), [conv_spec(32), conv_spec(8)], relu_between=True))
    stats = run_pass(g)
    assert (stats.matches, stats.rewrites) == (0, 0)


def test_first_output_read_elsewhere_is_refused():
    g = onnx_io.load(chain_model((1, 8, 4, 4), [conv_spec(32), conv_spec(8)], extra_reader=True))
    stats = run_pass(g)
    assert dict(stats.refusals) == {"the Conv's output 'h0' is a graph output": 1}


@pytest.mark.parametrize("specs,reason", [
    ([conv_spec(8, k=3), conv_spec(8, k=3)], "neither conv is a 1x1"),
    ([conv_spec(8, stride=2, bias=False), conv_spec(8, k=3)],
     "the 1x1 is strided: folding it into the following KxK is not implemented"),
    ([conv_spec(8, pad=1, bias=False), conv_spec(8, k=3)],
     "the first 1x1 pads its input: its border cannot move into the following conv"),
    ([conv_spec(8, k=3), conv_spec(8, pad=1)], "the second 1x1 pads its input: its border would not be exact"),
])
def test_shapes_it_cannot_compose_are_refused(specs, reason):
    g = onnx_io.load(chain_model((1, 4, 7, 7), specs))
    stats = run_pass(g)
    assert dict(stats.refusals) == {reason: 1}


def test_weights_fed_at_runtime_are_refused():
    model = chain_model((1, 4, 4, 4), [conv_spec(16), conv_spec(4)])
    w1 = model.graph.initializer[0]
    model.graph.input.append(helper.make_tensor_value_info(w1.name, TensorProto.FLOAT, list(w1.dims)))
    del model.graph.initializer[0]
    g = onnx_io.load(model)
    stats = run_pass(g)
    assert dict(stats.refusals) == {"conv weights or biases are not constant": 1}


def test_unknown_dims_are_refused_not_guessed():
    """A strided second conv shrinks the grid: with H, W unknown the two sides' sizes do not cancel.

    (Chains whose second conv keeps the grid are decided per position: tests/test_dynamic_shapes.py.)
    """
    model = chain_model((1, 4, 8, 8), [conv_spec(16, bias=False), conv_spec(4, k=3, stride=2, pad=1)])
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "H", "W"
    g = onnx_io.load(model)
    stats = run_pass(g)
    assert dict(stats.refusals) == {"the cost model cannot price it: a dimension is unknown and the convs' grids differ": 1}


# ---------------------------------------------------------------------- property
@st.composite
def chains(draw):
    cin, r, cout = (draw(st.integers(1, 12)) for _ in range(3))
    k1, k2 = draw(st.sampled_from([1, 3])), draw(st.sampled_from([1, 2, 3]))
    first = conv_spec(r, k=k1, stride=draw(st.sampled_from([1, 2])), pad=draw(st.integers(0, 1)),
                      bias=draw(st.booleans()))
    second = conv_spec(cout, k=k2, stride=draw(st.sampled_from([1, 2])), pad=draw(st.integers(0, 1)),
                       dilation=draw(st.sampled_from([1, 2])), bias=draw(st.booleans()))
    size = draw(st.integers(7, 10))
    return (1, cin, size, size + 1), [first, second], draw(st.integers(0, 2 ** 16))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(chains())
def test_any_chain_is_fused_exactly_or_refused_with_a_reason(case):
    x_shape, specs, seed = case
    model = chain_model(x_shape, specs, seed=seed)
    g = onnx_io.load(model)
    macs_before = analyze_costs(g).total_macs
    stats = run_pass(g)
    assert stats.matches == 1
    if stats.rewrites:
        assert len(convs(g)) == 1 and not stats.refusals
        assert_agrees(model, g, seed=seed)
    else:
        assert len(convs(g)) == 2 and sum(stats.refusals.values()) == 1
    assert analyze_costs(g).total_macs <= macs_before
    for decision in stats.decisions:
        assert decision.applied == (decision.macs_after <= decision.macs_before)
