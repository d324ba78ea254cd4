"""The cleanup passes: eliminate-identity, eliminate-dropout, eliminate-dead-nodes,
eliminate-unused-initializers and dedupe-initializers.

For each, the four kinds of test from DESIGN.md: it fires where it should (which nodes or
initializers went), it refuses where it must (with the recorded reason), a second run
changes nothing (no rewrites, ``graph.version`` unchanged) and the numbers agree
(onnxruntime on the original and the rewritten model, bit for bit: these passes only
remove copies).
"""

from __future__ import annotations

import os
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer import onnx_io
from optimizer.ir import Graph
from support import (FIXTURES_DIR, assert_agrees, assert_second_run_changes_nothing, light_model_id, make_model,
                     run_pipeline)

CLEANUP = ["eliminate-identity", "eliminate-dropout", "eliminate-dead-nodes", "eliminate-unused-initializers",
           "dedupe-initializers"]
IDENTITY_DROPOUT = os.path.join(FIXTURES_DIR, "identity_dropout.onnx")
F = TensorProto.FLOAT


# ---------------------------------------------------------------------- helpers
def vi(name: str, shape=(1, 4), elem_type: int = F) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem_type, list(shape))


def op_names(graph: Graph) -> list[str]:
    return sorted(n.name for n in graph.nodes)


def fixture_graph() -> Graph:
    return onnx_io.load(IDENTITY_DROPOUT)


def ops(graph: Graph, op_type: str) -> list[str]:
    return sorted(n.name for n in graph.nodes if n.op_type == op_type)


# ---------------------------------------------------------------------- the fixture itself
def test_identity_dropout_fixture_has_what_the_tests_rely_on(fixtures_dir):
    assert os.path.samefile(os.path.join(fixtures_dir, "identity_dropout.onnx"), IDENTITY_DROPOUT)
    g = fixture_graph()
    assert ops(g, "Identity") == ["input_copy", "output_copy", "relu_copy"]
    assert ops(g, "Dropout") == ["dropout_inference", "dropout_with_mask"]
    assert g.outputs == ["output"] and g.producer("output").name == "output_copy"
    assert list(g.initializers) == ["conv_a_w", "conv_b_w", "unused_w"]
    assert g.const("conv_a_w").tobytes() == g.const("conv_b_w").tobytes()


# ====================================================================== eliminate-identity
def test_identity_fires_on_every_identity_in_the_fixture():
    g = fixture_graph()
    before = len(g)
    _, stats = run_pipeline(g, "eliminate-identity")
    s = stats["eliminate-identity"]
    assert (s.matches, s.rewrites, dict(s.refusals)) == (3, 3, {})
    assert ops(g, "Identity") == []
    assert len(g) == before - 3
    # readers were rewired to the originals
    relu = next(n for n in g.nodes if n.name == "relu")
    assert relu.inputs == ["data"]
    dropout = next(n for n in g.nodes if n.name == "dropout_inference")
    assert dropout.inputs == relu.outputs
    assert not g.check_invariants()


def test_identity_producing_a_graph_output_keeps_the_output_name_and_interface():
    g = fixture_graph()
    original = onnx.load(IDENTITY_DROPOUT)
    run_pipeline(g, "eliminate-identity")
    assert g.outputs == ["output"]
    assert g.producer("output").name == "apply_mask"  # the Mul now writes the output directly
    proto = onnx_io.to_model_proto(g)
    assert [o.SerializeToString() for o in proto.graph.output] == \
           [o.SerializeToString() for o in original.graph.output]
    assert [i.SerializeToString() for i in proto.graph.input] == [i.SerializeToString() for i in original.graph.input]
    assert_agrees(IDENTITY_DROPOUT, g, rtol=0, runners=("onnxruntime",))


def test_identity_bypass_keeps_the_graph_outputs_declared_type_in_the_tensor_table():
    g = fixture_graph()
    declared = (g.tensors["output"].elem_type, g.shape("output"))
    run_pipeline(g, "eliminate-identity")
    assert (g.tensors["output"].elem_type, g.shape("output")) == declared


def test_identity_chain_goes_in_one_run_whatever_the_node_order():
    # listed out of topological order on purpose: the last Identity comes first
    nodes = [helper.make_node("Identity", ["b"], ["y"], name="id_last"),
             helper.make_node("Relu", ["x"], ["a"], name="relu"),
             helper.make_node("Identity", ["a"], ["b"], name="id_first")]
    model = make_model(nodes, [vi("x")], [vi("y")], check=False)
    g = onnx_io.load(model)
    _, stats = run_pipeline(g, "eliminate-identity")
    assert stats["eliminate-identity"].rewrites == 2
    assert op_names(g) == ["relu"] and g.producer("y").name == "relu" and g.outputs == ["y"]


@pytest.mark.parametrize("case, reason", [
    ("input_to_output", "its output is a graph output and its input is a graph input, output or initializer"),
    ("initializer_to_output", "its output is a graph output and its input is a graph input, output or initializer"),
    ("output_to_output", "its output is a graph output and its input is a graph input, output or initializer"),
    ("shared_input_to_output", "its output is a graph output and its input has other readers"),
])
def test_identity_refuses_when_removing_it_would_change_the_interface(case, reason):
    w = numpy_helper.from_array(np.arange(4, dtype=np.float32).reshape(1, 4), "w")
    if case == "input_to_output":
        nodes, outputs, inits = [helper.make_node("Identity", ["x"], ["y"], name="id")], [vi("y")], []
    elif case == "initializer_to_output":
        nodes = [helper.make_node("Identity", ["w"], ["y"], name="id"), helper.make_node("Relu", ["x"], ["r"], name="r")]
        outputs, inits = [vi("y"), vi("r")], [w]
    elif case == "output_to_output":
        nodes = [helper.make_node("Relu", ["x"], ["r"], name="r"), helper.make_node("Identity", ["r"], ["y"], name="id")]
        outputs, inits = [vi("r"), vi("y")], []
    else:
        nodes = [helper.make_node("Relu", ["x"], ["r"], name="r"), helper.make_node("Identity", ["r"], ["y"], name="id"),
                 helper.make_node("Neg", ["r"], ["n"], name="n")]
        outputs, inits = [vi("y"), vi("n")], []
    model = make_model(nodes, [vi("x")], outputs, inits)
    g = onnx_io.load(model)
    version = g.version
    _, stats = run_pipeline(g, "eliminate-identity")
    s = stats["eliminate-identity"]
    assert s.rewrites == 0 and s.matches == 1
    assert dict(s.refusals) == {reason: 1}
    assert ops(g, "Identity") == ["id"] and g.version == version
    assert_agrees(model, g, rtol=0, runners=("onnxruntime",))


def test_identity_second_run_changes_nothing():
    g = fixture_graph()
    run_pipeline(g, "eliminate-identity")
    assert_second_run_changes_nothing(g, "eliminate-identity")


def test_identity_numbers_agree_bit_for_bit():
    g = fixture_graph()
    run_pipeline(g, "eliminate-identity")
    proto = assert_agrees(IDENTITY_DROPOUT, g, rtol=0, runners=("onnxruntime",), seed=1)
    assert not any(n.op_type == "Identity" for n in proto.graph.node)


# ====================================================================== eliminate-dropout
def test_dropout_fires_on_inference_dropout_and_refuses_the_one_whose_mask_is_read():
    g = fixture_graph()
    before = len(g)
    _, stats = run_pipeline(g, "eliminate-dropout")
    s = stats["eliminate-dropout"]
    assert s.rewrites == 1
    assert ops(g, "Dropout") == ["dropout_with_mask"]
    assert len(g) == before - 1
    assert set(s.refusals) == {"its mask output is used"}
    conv_a = next(n for n in g.nodes if n.name == "conv_a")
    assert conv_a.inputs[0] == "relu_copy"  # reads the Dropout's input now


def _dropout_model(*, opset: int = 13, extra_inputs=(), extra_inits=(), extra_nodes=(), attrs=None,
                   outputs=("y",), graph_outputs=None, feed_mode: bool = False, check: bool = True):
    inputs = [vi("x")] + ([vi("mode", (), TensorProto.BOOL)] if feed_mode else [])
    node = helper.make_node("Dropout", ["r", *extra_inputs], list(outputs), name="drop", **(attrs or {}))
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"), *extra_nodes, node,
             helper.make_node("Neg", [outputs[0]], ["out"], name="neg")]
    graph_outputs = [vi("out")] + [vi(o, (1, 4), TensorProto.BOOL) for o in (graph_outputs or [])]
    return make_model(nodes, inputs, graph_outputs, extra_inits, opset=opset, ir_version=8, check=check)


def _const_bool(name: str, value: bool) -> onnx.TensorProto:
    return numpy_helper.from_array(np.array(value), name)


def test_dropout_with_training_mode_false_constant_is_removed():
    model = _dropout_model(extra_inputs=["ratio", "mode"],
                           extra_inits=[numpy_helper.from_array(np.array(0.5, np.float32), "ratio"),
                                        _const_bool("mode", False)])
    g = onnx_io.load(model)
    _, stats = run_pipeline(g, "eliminate-dropout")
    assert stats["eliminate-dropout"].rewrites == 1 and ops(g, "Dropout") == []
    assert_agrees(model, g, rtol=0, runners=("onnxruntime",))


def test_dropout_with_training_mode_from_a_constant_node_is_removed():
    const = helper.make_node("Constant", [], ["mode"], name="mode_const",
                             value=numpy_helper.from_array(np.array(False), "mode"))
    model = _dropout_model(extra_inputs=["", "mode"], extra_nodes=[const], opset=12)
    g = onnx_io.load(model)
    _, stats = run_pipeline(g, "eliminate-dropout")
    assert stats["eliminate-dropout"].rewrites == 1 and ops(g, "Dropout") == []
    assert_agrees(model, g, rtol=0, runners=("onnxruntime",))


def test_dropout_whose_mask_is_declared_but_unread_is_removed():
    model = _dropout_model(outputs=("y", "mask"))
    g = onnx_io.load(model)
    _, stats = run_pipeline(g, "eliminate-dropout")
    assert stats["eliminate-dropout"].rewrites == 1 and ops(g, "Dropout") == []
    assert "mask" not in g.tensors
    assert_agrees(model, g, rtol=0, runners=("onnxruntime",))


@pytest.mark.parametrize("opset", [7, 10])
def test_dropout_of_older_opsets_is_removed(opset):
    model = _dropout_model(opset=opset, attrs={"ratio": 0.3})
    g = onnx_io.load(model)
    _, stats = run_pipeline(g, "eliminate-dropout")
    assert stats["eliminate-dropout"].rewrites == 1 and ops(g, "Dropout") == []
    assert_agrees(model, g, rtol=0, runners=("onnxruntime",))


@pytest.mark.parametrize("case, reason", [
    ("training_true", "it is in training mode (training_mode=true)"),
    ("training_fed", "its training_mode input is not constant"),
    ("mask_is_graph_output", "its mask output is used"),
    ("is_test_0", "it is in training mode (is_test=0)"),
])
def test_dropout_refuses_where_it_must(case, reason):
    if case == "training_true":
        model = _dropout_model(extra_inputs=["", "mode"], extra_inits=[_const_bool("mode", True)])
    elif case == "training_fed":
        model = _dropout_model(extra_inputs=["", "mode"], feed_mode=True)
    elif case == "mask_is_graph_output":
        model = _dropout_model(outputs=("y", "mask"), graph_outputs=["mask"])
    else:  # opset 6: Dropout-6 has is_test, default 0 = training
        model = _dropout_model(opset=6, attrs={"is_test": 0})
    g = onnx_io.load(model)
    version = g.version
    _, stats = run_pipeline(g, "eliminate-dropout")
    s = stats["eliminate-dropout"]
    assert (s.matches, s.rewrites) == (1, 0)
    assert dict(s.refusals) == {reason: 1}
    assert ops(g, "Dropout") == ["drop"] and g.version == version


def test_dropout_is_test_1_in_opset_6_is_removed():
    model = _dropout_model(opset=6, attrs={"is_test": 1})
    g = onnx_io.load(model)
    _, stats = run_pipeline(g, "eliminate-dropout")
    assert stats["eliminate-dropout"].rewrites == 1 and ops(g, "Dropout") == []


def test_dropout_from_graph_input_to_graph_output_is_refused():
    model = make_model([helper.make_node("Dropout", ["x"], ["y"], name="drop")], [vi("x")], [vi("y")])
    g = onnx_io.load(model)
    _, stats = run_pipeline(g, "eliminate-dropout")
    assert dict(stats["eliminate-dropout"].refusals) == {
        "its output is a graph output and its input is a graph input, output or initializer": 1}
    assert ops(g, "Dropout") == ["drop"]


def test_dropout_second_run_changes_nothing():
    g = fixture_graph()
    run_pipeline(g, "eliminate-dropout")
    assert_second_run_changes_nothing(g, "eliminate-dropout")


def test_dropout_numbers_agree_bit_for_bit():
    g = fixture_graph()
    run_pipeline(g, "eliminate-dropout")
    assert_agrees(IDENTITY_DROPOUT, g, rtol=0, runners=("onnxruntime",), seed=2)


# ====================================================================== eliminate-dead-nodes
def test_dead_nodes_removes_exactly_the_dead_branch():
    g = fixture_graph()
    before = op_names(g)
    _, stats = run_pipeline(g, "eliminate-dead-nodes")
    s = stats["eliminate-dead-nodes"]
    assert s.rewrites == 2 and not s.refusals
    assert sorted(set(before) - set(op_names(g))) == ["dead_neg", "dead_sigmoid"]
    assert "dead_neg" not in g.tensors
    assert not g.check_invariants()


def test_dead_nodes_leave_no_stale_tensor_rows():
    g = fixture_graph()
    run_pipeline(g, "eliminate-dead-nodes")
    assert "dead_sigmoid" not in g.tensors


def test_dead_nodes_keeps_nodes_read_only_from_subgraphs():
    """control_flow.onnx: the Conv's output is read only inside the If branches and the Loop body."""
    path = os.path.join(FIXTURES_DIR, "control_flow.onnx")
    g = onnx_io.load(path)
    conv = next(n for n in g.nodes if n.op_type == "Conv")
    assert not any(conv.outputs[0] in n.inputs for n in g.nodes), "fixture changed: Conv output read explicitly"
    before = op_names(g)
    _, stats = run_pipeline(g, "eliminate-dead-nodes")
    assert stats["eliminate-dead-nodes"].rewrites == 0 and op_names(g) == before
    assert_agrees(path, g, rtol=0, runners=("onnxruntime",))


def test_dead_nodes_keeps_a_node_with_one_used_output_and_a_graph_output_without_readers():
    nodes = [helper.make_node("Dropout", ["x"], ["d", "mask"], name="drop"),  # mask unused, d used
             helper.make_node("Relu", ["d"], ["y"], name="relu"),
             helper.make_node("Neg", ["x"], ["z"], name="neg_out"),  # a graph output nothing reads
             helper.make_node("Abs", ["x"], ["dead"], name="dead_abs"),
             helper.make_node("Neg", ["dead"], ["dead2"], name="dead_neg")]
    model = make_model(nodes, [vi("x")], [vi("y"), vi("z")])
    g = onnx_io.load(model)
    _, stats = run_pipeline(g, "eliminate-dead-nodes")
    assert op_names(g) == ["drop", "neg_out", "relu"]
    assert stats["eliminate-dead-nodes"].rewrites == 2
    assert_agrees(model, g, rtol=0, runners=("onnxruntime",))


def test_dead_nodes_second_run_changes_nothing():
    g = fixture_graph()
    run_pipeline(g, "eliminate-dead-nodes")
    assert_second_run_changes_nothing(g, "eliminate-dead-nodes")


def test_dead_nodes_numbers_agree_bit_for_bit():
    g = fixture_graph()
    run_pipeline(g, "eliminate-dead-nodes")
    assert_agrees(IDENTITY_DROPOUT, g, rtol=0, runners=("onnxruntime",), seed=3)


# ====================================================================== eliminate-unused-initializers
def test_unused_initializers_removes_only_the_unused_one():
    g = fixture_graph()
    _, stats = run_pipeline(g, "eliminate-unused-initializers")
    assert stats["eliminate-unused-initializers"].rewrites == 1
    assert list(g.initializers) == ["conv_a_w", "conv_b_w"]
    assert "unused_w" not in g.tensors
    proto = assert_agrees(IDENTITY_DROPOUT, g, rtol=0, runners=("onnxruntime",))
    assert [t.name for t in proto.graph.initializer] == ["conv_a_w", "conv_b_w"]


def test_initializers_of_dead_nodes_go_once_the_nodes_are_gone():
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu"),
             helper.make_node("Add", ["x", "bias"], ["dead"], name="dead_add")]
    model = make_model(nodes, [vi("x")], [vi("y")], [numpy_helper.from_array(np.ones((1, 4), np.float32), "bias")])
    g = onnx_io.load(model)
    report, stats = run_pipeline(g, "eliminate-unused-initializers", "eliminate-dead-nodes")
    # sweep 1 removes the node (freeing the initializer), sweep 2 the initializer, sweep 3 confirms the fixpoint
    assert report.converged and report.iterations == 3
    assert list(g.initializers) == [] and op_names(g) == ["relu"]


def test_unused_initializers_keeps_ones_read_from_a_subgraph_or_listed_as_outputs():
    then_g = helper.make_graph([helper.make_node("Add", ["x", "inner_w"], ["t"], name="then_add")], "then", [], [vi("t")])
    else_g = helper.make_graph([helper.make_node("Sub", ["x", "inner_w"], ["e"], name="else_sub")], "else", [], [vi("e")])
    nodes = [helper.make_node("If", ["flag"], ["y"], name="if", then_branch=then_g, else_branch=else_g)]
    inits = [numpy_helper.from_array(np.full((1, 4), 2, np.float32), "inner_w"),
             numpy_helper.from_array(np.full((1, 4), 3, np.float32), "exported_w"),
             numpy_helper.from_array(np.full((1, 4), 4, np.float32), "junk")]
    model = make_model(nodes, [vi("x"), vi("flag", (), TensorProto.BOOL)], [vi("y"), vi("exported_w")], inits)
    g = onnx_io.load(model)
    _, stats = run_pipeline(g, "eliminate-unused-initializers")
    assert list(g.initializers) == ["inner_w", "exported_w"]
    assert stats["eliminate-unused-initializers"].rewrites == 1
    assert_agrees(model, g, rtol=0, runners=("onnxruntime",))


def test_unused_initializers_in_an_ir3_model_also_leave_the_input_list():
    nodes = [helper.make_node("Add", ["x", "w"], ["y"], name="add")]
    inits = [numpy_helper.from_array(np.ones((1, 4), np.float32), "w"),
             numpy_helper.from_array(np.ones((1, 4), np.float32) * 5, "unused")]
    model = make_model(nodes, [vi("x"), vi("w"), vi("unused")], [vi("y")], inits, opset=8, ir_version=3)
    g = onnx_io.load(model)
    run_pipeline(g, "eliminate-unused-initializers")
    assert g.inputs == ["x", "w"] and list(g.initializers) == ["w"]
    proto = assert_agrees(model, g, rtol=0, runners=("onnxruntime",))
    assert [i.name for i in proto.graph.input] == ["x", "w"]


def test_unused_overridable_input_stays_in_ir4_models():
    nodes = [helper.make_node("Add", ["x", "w"], ["y"], name="add")]
    inits = [numpy_helper.from_array(np.ones((1, 4), np.float32), "w"),
             numpy_helper.from_array(np.ones((1, 4), np.float32), "optional_in")]
    model = make_model(nodes, [vi("x"), vi("w"), vi("optional_in")], [vi("y")], inits)
    g = onnx_io.load(model)
    run_pipeline(g, "eliminate-unused-initializers")
    assert [i.name for i in onnx_io.to_model_proto(g).graph.input] == ["x", "w", "optional_in"]


def test_unused_initializers_second_run_changes_nothing():
    g = fixture_graph()
    run_pipeline(g, "eliminate-unused-initializers")
    assert_second_run_changes_nothing(g, "eliminate-unused-initializers")


# ====================================================================== dedupe-initializers
def test_dedupe_merges_the_byte_identical_initializers():
    g = fixture_graph()
    _, stats = run_pipeline(g, "dedupe-initializers")
    assert stats["dedupe-initializers"].rewrites == 1
    assert list(g.initializers) == ["conv_a_w", "unused_w"]
    conv_a, conv_b = (next(n for n in g.nodes if n.name == name) for name in ("conv_a", "conv_b"))
    assert conv_a.inputs[1] == conv_b.inputs[1] == "conv_a_w"
    proto = assert_agrees(IDENTITY_DROPOUT, g, rtol=0, runners=("onnxruntime",), seed=4)
    assert [t.name for t in proto.graph.initializer] == ["conv_a_w", "unused_w"]


def test_dedupe_refuses_lookalikes():
    """Same bytes but another dtype, same values but another shape, 0.0 vs -0.0: all stay separate."""
    base = np.array([[0.0, 1.0, 2.0, 3.0]], np.float32)
    inits = {
        "f": base, "f_same": base.copy(),
        "i_same_bytes": base.view(np.int32),  # identical bytes, other element type
        "f_other_shape": base.reshape(4, 1, 1, 1).reshape(2, 2).copy(),
        "neg_zero": np.array([[-0.0, 1.0, 2.0, 3.0]], np.float32),
    }
    nodes = [helper.make_node("Add", ["x", "f"], ["a"], name="add_f"),
             helper.make_node("Add", ["a", "f_same"], ["b"], name="add_f_same"),
             helper.make_node("Add", ["b", "neg_zero"], ["c"], name="add_neg_zero"),
             helper.make_node("Cast", ["i_same_bytes"], ["ic"], name="cast_i", to=F),
             helper.make_node("Add", ["c", "ic"], ["d"], name="add_i"),
             helper.make_node("Reshape", ["f_other_shape", "shape"], ["rs"], name="reshape"),
             helper.make_node("Add", ["d", "rs"], ["y"], name="add_rs")]
    tensors = [numpy_helper.from_array(v, k) for k, v in inits.items()]
    tensors.append(numpy_helper.from_array(np.array([1, 4], np.int64), "shape"))
    model = make_model(nodes, [vi("x")], [vi("y")], tensors)
    g = onnx_io.load(model)
    _, stats = run_pipeline(g, "dedupe-initializers")
    assert stats["dedupe-initializers"].rewrites == 1
    assert list(g.initializers) == ["f", "i_same_bytes", "f_other_shape", "neg_zero", "shape"]
    assert_agrees(model, g, rtol=0, runners=("onnxruntime",))


def test_dedupe_keeps_an_initializer_that_is_a_graph_output():
    w = np.ones((1, 4), np.float32)
    nodes = [helper.make_node("Add", ["x", "w1"], ["y"], name="add")]
    model = make_model(nodes, [vi("x")], [vi("y"), vi("w2")],
                       [numpy_helper.from_array(w, "w1"), numpy_helper.from_array(w.copy(), "w2")])
    g = onnx_io.load(model)
    run_pipeline(g, "dedupe-initializers")
    assert list(g.initializers) == ["w1", "w2"] and g.outputs == ["y", "w2"]
    assert_agrees(model, g, rtol=0, runners=("onnxruntime",))


def test_dedupe_follows_reads_inside_subgraphs():
    then_g = helper.make_graph([helper.make_node("Add", ["x", "w2"], ["t"], name="then_add")], "then", [], [vi("t")])
    else_g = helper.make_graph([helper.make_node("Sub", ["x", "w2"], ["e"], name="else_sub")], "else", [], [vi("e")])
    nodes = [helper.make_node("Mul", ["x", "w1"], ["m"], name="mul"),
             helper.make_node("If", ["flag"], ["i"], name="if", then_branch=then_g, else_branch=else_g),
             helper.make_node("Add", ["m", "i"], ["y"], name="add")]
    w = np.arange(4, dtype=np.float32).reshape(1, 4)
    model = make_model(nodes, [vi("x"), vi("flag", (), TensorProto.BOOL)], [vi("y")],
                       [numpy_helper.from_array(w, "w1"), numpy_helper.from_array(w.copy(), "w2")])
    g = onnx_io.load(model)
    _, stats = run_pipeline(g, "dedupe-initializers")
    assert stats["dedupe-initializers"].rewrites == 1 and list(g.initializers) == ["w1"]
    if_node = next(n for n in g.nodes if n.op_type == "If")
    assert if_node.implicit_inputs == ("x", "w1")
    for flag in (True, False):
        feeds = {"x": np.array([[1, -2, 3, -4]], np.float32), "flag": np.array(flag)}
        assert_agrees(model, g, rtol=0, runners=("onnxruntime",), feeds=feeds)


def test_dedupe_reads_only_initializers_that_could_be_equal(tmp_path):
    """external_weights.onnx: three external weights of distinct shapes are never read from disk."""
    for name in ("external_weights.onnx", "external_weights.onnx.data"):
        shutil.copy(os.path.join(FIXTURES_DIR, name), tmp_path / name)
    g = onnx_io.load(tmp_path / "external_weights.onnx")
    external = [n for n in g.initializers if g.tensors[n].const.proto.data_location == TensorProto.EXTERNAL]
    assert len(external) == 3
    run_pipeline(g, "dedupe-initializers")
    assert not any(g.tensors[n].const.loaded for n in external)


def test_dedupe_leaves_overridable_inputs_alone_in_ir4_models():
    w = np.ones((1, 4), np.float32)
    nodes = [helper.make_node("Add", ["x", "a"], ["s"], name="add_a"), helper.make_node("Add", ["s", "b"], ["y"], name="add_b")]
    model = make_model(nodes, [vi("x"), vi("a"), vi("b")], [vi("y")],
                       [numpy_helper.from_array(w, "a"), numpy_helper.from_array(w.copy(), "b")])
    g = onnx_io.load(model)
    run_pipeline(g, "dedupe-initializers")
    assert [i.name for i in onnx_io.to_model_proto(g).graph.input] == ["x", "a", "b"]


def test_dedupe_second_run_changes_nothing():
    g = fixture_graph()
    run_pipeline(g, "dedupe-initializers")
    assert_second_run_changes_nothing(g, "dedupe-initializers")


# ====================================================================== all five together
def test_cleanup_pipeline_on_the_fixture():
    g = fixture_graph()
    report, stats = run_pipeline(g, *CLEANUP)
    assert report.converged
    assert op_names(g) == ["add", "apply_mask", "conv_a", "conv_b", "dropout_with_mask", "mask_to_float", "relu"]
    assert list(g.initializers) == ["conv_a_w"]
    assert {n: s.rewrites for n, s in stats.items()} == {
        "eliminate-identity": 3, "eliminate-dropout": 1, "eliminate-dead-nodes": 2,
        "eliminate-unused-initializers": 1, "dedupe-initializers": 1}
    assert_agrees(IDENTITY_DROPOUT, g, rtol=0, runners=("onnxruntime",), seed=5)
    assert_second_run_changes_nothing(g, *CLEANUP)


def test_the_light_zoo_is_there(light_models, light_zoo_dir):
    assert len(light_models) == 9 and all(p.startswith(light_zoo_dir) for p in light_models)
    assert {light_model_id(p) for p in light_models} >= {"resnet50", "inception_v1", "squeezenet"}


def test_cleanup_pipeline_on_the_light_zoo_is_exact_and_idempotent(light_model):
    path = light_model
    g = onnx_io.load(path)
    report, _ = run_pipeline(g, *CLEANUP)
    assert report.converged and not g.check_invariants()
    assert_agrees(path, g, rtol=0, runners=("onnxruntime",))
    assert_second_run_changes_nothing(g, *CLEANUP)

