"""merge-parallel-branches: structural re-parameterization (RepVGG, ACNet, DBB, MobileOne).

The four kinds of test from DESIGN.md: it fires where it should (exact op counts after the
merge), it refuses where it must (the recorded reason), a second run changes nothing, and
the numbers agree (ninopt's executor and onnxruntime on the rewritten model against
onnxruntime on the original, relative error <= 1e-5).
"""

from __future__ import annotations

import os
from collections import Counter

import numpy as np
import onnx
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

import passes.merge_parallel_branches  # noqa: F401  (registers the pass)
from optimizer import onnx_io
from support import (FIXTURES_DIR, LIGHT_MODELS, assert_agrees, assert_second_run_changes_nothing, light_model_id,
                     make_model, op_counts, run_passes)

PASS = "merge-parallel-branches"
PIPELINE = ["fold-constants", PASS, "eliminate-dead-nodes", "eliminate-unused-initializers"]
HAS_FOLD_BN = os.path.exists(os.path.join(os.path.dirname(passes.merge_parallel_branches.__file__),
                                          "fold_batchnorm.py"))
if HAS_FOLD_BN:
    import passes.fold_batchnorm  # noqa: F401
PIPELINES = [PIPELINE] + ([["fold-constants", "fold-batchnorm", *PIPELINE[1:]]] if HAS_FOLD_BN else [])


class Net:
    """A tiny onnx.helper model builder: convs, BNs, pools and sums over 'x' (1, C, 8, 8)."""

    def __init__(self, c: int = 4, size: int = 8, seed: int = 0):
        self.c, self.size, self.rng = c, size, np.random.default_rng(seed)
        self.nodes, self.inits, self.inputs = [], [], [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                       [1, c, size, size])]

    def _init(self, name: str, value) -> str:
        self.inits.append(numpy_helper.from_array(np.asarray(value, np.float32), name))
        return name

    def conv(self, x: str, name: str, k=(3, 3), pads=None, cout=None, cin=None, group=1, bias=False, **attrs) -> str:
        cout, cin = cout or self.c, cin or self.c
        pads = [kk // 2 for kk in k] * 2 if pads is None else pads
        inputs = [x, self._init(f"{name}_w", self.rng.standard_normal((cout, cin // group, *k)) * 0.3)]
        if bias:
            inputs.append(self._init(f"{name}_b", self.rng.standard_normal(cout)))
        self.nodes.append(helper.make_node("Conv", inputs, [name], name=name, kernel_shape=list(k), pads=list(pads),
                                           group=group, **attrs))
        return name

    def bn(self, x: str, name: str, c=None) -> str:
        c = c or self.c
        params = [self.rng.uniform(0.5, 1.5, c), self.rng.standard_normal(c) * 0.1,
                  self.rng.standard_normal(c) * 0.1, self.rng.uniform(0.5, 1.5, c)]
        inputs = [x] + [self._init(f"{name}_{p}", v) for p, v in zip(("scale", "bias", "mean", "var"), params)]
        self.nodes.append(helper.make_node("BatchNormalization", inputs, [name], name=name))
        return name

    def op(self, op_type: str, inputs, name: str, **attrs) -> str:
        self.nodes.append(helper.make_node(op_type, list(inputs), [name], name=name, **attrs))
        return name

    def add_all(self, terms, name: str = "sum") -> str:
        acc = terms[0]
        for i, t in enumerate(terms[1:]):
            acc = self.op("Add", [acc, t], name if i == len(terms) - 2 else f"{name}_{i}")
        return acc

    def model(self, outputs=("y",), extra_inputs=()) -> onnx.ModelProto:
        return make_model(self.nodes, [*self.inputs, *extra_inputs], [(o, [None] * 4) for o in outputs], self.inits)


def merge(model: onnx.ModelProto, names=PIPELINE):
    graph = onnx_io.load(model)
    return graph, run_passes(graph, *names)


# ---------------------------------------------------------------------- acceptance: the fixtures
@pytest.mark.parametrize("names", PIPELINES, ids=lambda n: "+".join(p for p in n if p.startswith("fold-b")) or "plain")
def test_repvgg_stage_collapses_to_one_conv_per_block(names):
    path = os.path.join(FIXTURES_DIR, "repvgg_stage.onnx")
    graph = onnx_io.load(path)
    stats = run_passes(graph, *names)
    assert op_counts(graph) == Counter({"Conv": 3, "Relu": 3})
    assert all(n.attr("kernel_shape") == [3, 3] for n in graph.nodes if n.op_type == "Conv")
    assert stats[PASS].rewrites == 3 and not stats[PASS].refusals
    assert all(d.applied and d.macs_after < d.macs_before for d in stats[PASS].decisions)
    assert_agrees(path, graph)
    assert_second_run_changes_nothing(graph, *names)


@pytest.mark.parametrize("names", PIPELINES, ids=lambda n: "+".join(p for p in n if p.startswith("fold-b")) or "plain")
def test_mobileone_block_collapses_to_two_convs(names):
    path = os.path.join(FIXTURES_DIR, "mobileone_block.onnx")
    graph = onnx_io.load(path)
    stats = run_passes(graph, *names)
    assert op_counts(graph) == Counter({"Conv": 2, "Relu": 2})
    convs = sorted((n for n in graph.nodes if n.op_type == "Conv"), key=lambda n: n.attr("group"))
    assert [(c.attr("kernel_shape"), c.attr("group")) for c in convs] == [([1, 1], 1), ([3, 3], 32)]
    assert stats[PASS].rewrites == 2
    assert_agrees(path, graph)
    assert_second_run_changes_nothing(graph, *names)


# ---------------------------------------------------------------------- other forms
def test_acnet_square_and_asymmetric_kernels_merge_into_the_square():
    net = Net()
    terms = [net.bn(net.conv("x", "c33"), "bn33"),
             net.bn(net.conv("x", "c13", k=(1, 3), pads=[0, 1, 0, 1]), "bn13"),
             net.bn(net.conv("x", "c31", k=(3, 1), pads=[1, 0, 1, 0]), "bn31")]
    net.op("Relu", [net.add_all(terms)], "y")
    model = net.model()
    graph, stats = merge(model)
    assert op_counts(graph) == Counter({"Conv": 1, "Relu": 1})
    conv = next(n for n in graph.nodes if n.op_type == "Conv")
    assert conv.name == "c33" and conv.attr("kernel_shape") == [3, 3] and conv.attr("pads") == [1, 1, 1, 1]
    assert stats[PASS].decisions[0].macs_after < stats[PASS].decisions[0].macs_before
    assert_agrees(model, graph)
    assert_second_run_changes_nothing(graph, PASS)


def test_dbb_sequence_and_average_pool_branches_merge():
    """DBB: 3x3 + 1x1 + (bias-free 1x1 -> padded 3x3) + avg-pool 3x3, each with a BN -> one 3x3."""
    net = Net()
    seq = net.bn(net.conv(net.conv("x", "seq1x1", k=(1, 1)), "seq3x3"), "seq_bn")  # 1x1 has no bias
    pool = net.bn(net.op("AveragePool", ["x"], "pool", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                         count_include_pad=1), "pool_bn")
    terms = [net.bn(net.conv("x", "kxk"), "kxk_bn"), net.bn(net.conv("x", "one", k=(1, 1)), "one_bn"), seq, pool]
    net.op("Relu", [net.add_all(terms)], "y")
    model = net.model()
    graph, stats = merge(model)
    assert op_counts(graph) == Counter({"Conv": 1, "Relu": 1})
    assert stats[PASS].decisions[0].branches == 4
    assert_agrees(model, graph)
    assert_second_run_changes_nothing(graph, PASS)


def test_dbb_biased_1x1_composes_through_an_unpadded_kxk():
    """A biased 1x1 with pads 1, then an unpadded 3x3: the border sees the bias in both forms, so it is exact."""
    net = Net()
    seq = net.conv(net.bn(net.conv("x", "seq1x1", k=(1, 1), pads=[1, 1, 1, 1], bias=True), "mid_bn"), "seq3x3",
                   pads=[0, 0, 0, 0], bias=True)
    net.add_all([net.conv("x", "kxk", bias=True), seq], "y")
    model = net.model()
    graph, stats = merge(model)
    assert op_counts(graph) == Counter({"Conv": 1}) and stats[PASS].rewrites == 1
    assert_agrees(model, graph)


def test_conv_plus_plain_identity_and_a_sum_of_many():
    """x + conv1x1(x) + conv3x3(x) as one Sum: a plain identity branch (no BN) joins the merge."""
    net = Net()
    net.op("Sum", ["x", net.conv("x", "one", k=(1, 1), bias=True), net.conv("x", "three", bias=True)], "y")
    model = net.model()
    graph, stats = merge(model)
    assert op_counts(graph) == Counter({"Conv": 1})
    assert_agrees(model, graph)


def test_partial_merge_keeps_the_other_summands():
    """conv3x3(x) + conv1x1(x) + z: the two convs of x merge; z stays a summand of the rebuilt Add."""
    net = Net()
    net.add_all([net.conv("x", "a"), "z", net.conv("x", "b", k=(1, 1))], "y")
    model = net.model(extra_inputs=[("z", [1, 4, 8, 8])])
    graph, stats = merge(model)
    assert op_counts(graph) == Counter({"Conv": 1, "Add": 1})
    add = next(n for n in graph.nodes if n.op_type == "Add")
    assert add.outputs == ["y"] and add.name == "y" and "z" in add.inputs
    assert_agrees(model, graph)
    assert_second_run_changes_nothing(graph, PASS)


def test_two_groups_of_one_sum_merge_in_one_rewrite_with_one_decision():
    """conv3x3(x) + conv3x3(z) + conv1x1(x) + conv1x1(z): each source's pair merges; the decision adds both up."""
    net = Net()
    net.add_all([net.conv("x", "xa"), net.conv("z", "za"), net.conv("x", "xb", k=(1, 1)),
                 net.conv("z", "zb", k=(1, 1))], "y")
    model = net.model(extra_inputs=[("z", [1, 4, 8, 8])])
    graph, stats = merge(model)
    assert op_counts(graph) == Counter({"Conv": 2, "Add": 1})
    assert sorted(n.name for n in graph.nodes if n.op_type == "Conv") == ["xa", "za"]
    (decision,) = stats[PASS].decisions
    per_group = 64 * 4 * 4 * (9 + 1), 64 * 4 * 4 * 9  # (before, after) MACs of each pair on 8x8
    assert (decision.branches, decision.macs_before, decision.macs_after) == (4, 2 * per_group[0], 2 * per_group[1])
    assert (decision.nodes_before, decision.nodes_after, decision.applied) == (6, 2, True)
    # the fixpoint's second sweep sees conv(x) + conv(z), which have nothing to merge
    assert stats[PASS].rewrites == 1 and dict(stats[PASS].refusals) == {"branches read different tensors": 1}
    assert_agrees(model, graph)
    assert_second_run_changes_nothing(graph, PASS)


@settings(max_examples=25, deadline=None)
@given(st.data())
def test_merging_is_exact_for_any_consistent_padding(data):
    """Random kernels, strides, dilations, groups and (not necessarily centered) offsets that line up."""
    group = data.draw(st.sampled_from([1, 2, 4]))
    stride = data.draw(st.sampled_from([1, 2]))
    dil = data.draw(st.sampled_from([1, 2]))
    big = [data.draw(st.sampled_from([1, 3, 5])) for _ in range(2)]
    pads = [data.draw(st.integers(0, dil * (k - 1))) for k in big for _ in range(2)]  # (top, bottom, left, right)
    net = Net(size=9, seed=data.draw(st.integers(0, 1000)))
    terms = []
    for i in range(data.draw(st.integers(1, 3))):
        k, p = [], [0, 0, 0, 0]
        for axis in range(2):
            k.append(data.draw(st.integers(1, big[axis])))
            lo = data.draw(st.integers(0, big[axis] - k[axis]))
            p[axis] = pads[2 * axis] - dil * lo
            p[axis + 2] = pads[2 * axis + 1] - dil * (big[axis] - k[axis] - lo)
        if min(p) < 0:
            continue
        terms.append(net.bn(net.conv("x", f"c{i}", k=k, pads=p, group=group, strides=[stride] * 2,
                                     dilations=[dil] * 2), f"bn{i}"))
    onnx_pads = [pads[0], pads[2], pads[1], pads[3]]
    terms.append(net.conv("x", "main", k=big, pads=onnx_pads, group=group, strides=[stride] * 2,
                          dilations=[dil] * 2, bias=True))
    if stride == 1 and all(2 * p == dil * (k - 1) for p, k in zip(pads[::2], big)) and pads[::2] == pads[1::2]:
        terms.append(net.bn("x", "identity"))
    assume(len(terms) > 1)
    net.add_all(terms, "y")
    model = net.model()
    graph, stats = merge(model)
    assert op_counts(graph) == Counter({"Conv": 1}), stats[PASS].refusals
    assert_agrees(model, graph)


# ---------------------------------------------------------------------- refusals
def _refused(model: onnx.ModelProto, reason: str) -> None:
    graph, stats = merge(model, [PASS])
    assert stats[PASS].rewrites == 0
    assert stats[PASS].refusals[reason] >= 1, dict(stats[PASS].refusals)
    assert graph.version == onnx_io.load(model).version


def test_refuses_branches_of_different_tensors():
    net = Net()
    net.add_all([net.conv("x", "a"), net.conv("z", "b")], "y")
    _refused(net.model(extra_inputs=[("z", [1, 4, 8, 8])]), "branches read different tensors")


def test_refuses_stride_mismatch():
    """On 4x4, a 3x3 with stride 2 and pads 1 and a 3x3 with stride 1 and no pads both give 2x2."""
    net = Net(size=4)
    net.add_all([net.conv("x", "a", strides=[2, 2]), net.conv("x", "b", pads=[0, 0, 0, 0])], "y")
    _refused(net.model(), "branches differ in stride")


def test_refuses_identity_with_stride():
    net = Net(size=1)
    net.add_all([net.conv("x", "a", k=(1, 1), strides=[2, 2]), "x"], "y")
    _refused(net.model(), "branches differ in stride")


def test_refuses_branch_read_elsewhere():
    net = Net()
    b = net.conv("x", "b", k=(1, 1))
    net.op("Relu", [net.add_all([net.bn(net.conv("x", "a"), "a_bn"), net.bn(b, "b_bn")])], "y")
    net.op("Sigmoid", [b], "other")
    _refused(net.model(outputs=("y", "other")), "a branch output has another reader")


def test_refuses_inconsistent_padding():
    """Same output sizes, windows that cannot line up: 3x3s padded 1/1 vs 0/2; a 1x1 left of a 3x3's window."""
    net = Net()
    net.add_all([net.conv("x", "a"), net.conv("x", "b", pads=[0, 0, 2, 2])], "y")
    _refused(net.model(), "branch padding is inconsistent")
    net = Net()  # 3x3 pads 0/3 and 1x1 pads 1/0 both give 9x9, but the 1x1 would sit at offset -1
    net.add_all([net.conv("x", "a", pads=[0, 0, 3, 3]), net.conv("x", "b", k=(1, 1), pads=[1, 1, 0, 0])], "y")
    _refused(net.model(), "branch padding is inconsistent")


def test_refuses_group_mismatch_and_non_constant_weights():
    net = Net()
    net.add_all([net.conv("x", "a", group=2), net.conv("x", "b", k=(1, 1))], "y")
    _refused(net.model(), "branches differ in group")
    net = Net()
    a = net.op("Conv", ["x", "w"], "a", kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    net.add_all([a, net.conv("x", "b", k=(1, 1))], "y")
    _refused(net.model(extra_inputs=[("w", [4, 4, 3, 3])]), "branch weights are not constant")


def test_refuses_dbb_bias_through_padding():
    net = Net()
    seq = net.conv(net.conv("x", "seq1x1", k=(1, 1), bias=True), "seq3x3")
    net.add_all([net.conv("x", "kxk"), seq], "y")
    _refused(net.model(), "the 1x1 bias would cross the KxK's zero padding")


def test_refuses_when_the_merged_kernel_costs_more():
    """avg-pool 3x3 (0 MACs) + conv 1x1 would become a 3x3 conv: 9x the MACs."""
    net = Net()
    net.add_all([net.op("AveragePool", ["x"], "pool", kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1),
                 net.conv("x", "one", k=(1, 1))], "y")
    model = net.model()
    _refused(model, "the merged convolution would cost more MACs")
    graph, stats = merge(model, [PASS])
    decision = stats[PASS].decisions[0]
    assert not decision.applied and decision.macs_after == 9 * decision.macs_before


def test_refuses_average_pool_that_excludes_padding():
    net = Net()
    net.add_all([net.op("AveragePool", ["x"], "pool", kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                 net.conv("x", "kxk")], "y")
    _refused(net.model(), "average pool excludes padding from its count")


# ---------------------------------------------------------------------- the light zoo
@pytest.mark.parametrize("path", LIGHT_MODELS, ids=[light_model_id(p) for p in LIGHT_MODELS])
def test_light_zoo_has_no_parallel_branches_to_merge(path):
    """No zoo model sums convolutions of one tensor; residual Adds are refused with the reason."""
    graph = onnx_io.load(path)
    run_passes(graph, "fold-constants")  # the zoo's weights are ConstantOfShape until folded
    version = graph.version
    stats = run_passes(graph, PASS)[PASS]
    assert stats.rewrites == 0 and graph.version == version
    assert set(stats.refusals) <= {"branches read different tensors"}
    expected = {"resnet50": 16, "shufflenet": 13}.get(light_model_id(path), 0)
    assert sum(stats.refusals.values()) == expected * stats.runs
