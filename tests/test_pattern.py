"""Declarative patterns: what they bind, and every way they refuse."""

from __future__ import annotations

import pytest

from optimizer.ir import Graph
from optimizer.pattern import ANY, Match, Opt, P, match


def conv_bn_graph(*, bias: bool = True) -> Graph:
    g = Graph({"": 13})
    g.inputs = ["x"]
    for name in ("w", "b", "scale", "bias", "mean", "var"):
        g.initializers[name] = None
    conv_inputs = ["x", "w", "b"] if bias else ["x", "w"]
    g.add_node("Conv", conv_inputs, ["y"], name="conv")
    g.add_node("BatchNormalization", ["y", "scale", "bias", "mean", "var"], ["z"], name="bn")
    g.outputs = ["z"]
    return g


def node(g: Graph, name: str):
    return next(n for n in g.nodes if n.name == name)


BN_OF_CONV = P.BatchNormalization(P.Conv("x", "w", Opt("b"), out="y"), "scale", "bias", "mean", "var", out="z")


def test_pattern_binds_tensors_and_nodes_root_first():
    g = conv_bn_graph()
    m = match(g, BN_OF_CONV, node(g, "bn"))
    assert isinstance(m, Match)
    assert m.tensors == {"z": "z", "y": "y", "x": "x", "w": "w", "b": "b", "scale": "scale", "bias": "bias",
                         "mean": "mean", "var": "var"}
    assert m["w"] == "w"
    assert m.root is node(g, "bn")
    assert [n.name for n in m.nodes] == ["bn", "conv"]
    assert m.node("Conv") is node(g, "conv") and m.node("BatchNormalization") is node(g, "bn")


def test_node_keyword_names_the_binding():
    g = conv_bn_graph()
    m = match(g, P.BatchNormalization(P.Conv("x", "w", ..., node="producer"), ..., node="norm"), node(g, "bn"))
    assert m.node("producer").name == "conv" and m.node("norm").name == "bn"
    with pytest.raises(KeyError):
        m.node("Conv")


def test_mismatched_op_type_does_not_match():
    g = conv_bn_graph()
    assert match(g, P.Relu("x"), node(g, "conv")) is None
    # the root matches but the producer of its first input is not a Gemm
    assert match(g, P.BatchNormalization(P.Gemm("x", "w"), "s", "b", "m", "v"), node(g, "bn")) is None


def test_an_input_without_a_producer_does_not_match_a_subpattern():
    g = conv_bn_graph()
    # the Conv reads the graph input x: no producer to match P.Relu against
    assert match(g, P.Conv(P.Relu("a"), "w", Opt("b")), node(g, "conv")) is None


def test_a_name_used_twice_must_bind_the_same_tensor():
    g = Graph()
    g.inputs = ["x", "y"]
    g.add_node("Add", ["x", "x"], ["s"], name="double")
    g.add_node("Add", ["x", "y"], ["t"], name="sum")
    pattern = P.Add("a", "a")
    m = match(g, pattern, node(g, "double"))
    assert m is not None and m["a"] == "x"
    assert match(g, pattern, node(g, "sum")) is None


def test_a_name_shared_between_parent_and_child_must_agree():
    g = Graph()
    g.inputs = ["x", "y"]
    g.add_node("Relu", ["x"], ["r"], name="relu")
    g.add_node("Mul", ["r", "x"], ["m1"], name="gate_ok")  # x * relu(x)
    g.add_node("Mul", ["r", "y"], ["m2"], name="gate_bad")  # y * relu(x)
    pattern = P.Mul(P.Relu("v"), "v")
    assert match(g, pattern, node(g, "gate_ok"))["v"] == "x"
    assert match(g, pattern, node(g, "gate_bad")) is None


def test_opt_binds_empty_string_when_absent():
    g = conv_bn_graph(bias=False)
    m = match(g, BN_OF_CONV, node(g, "bn"))
    assert m is not None and m["b"] == ""


def test_opt_binds_empty_string_for_an_explicitly_omitted_input():
    g = Graph()
    g.inputs = ["x", "w"]
    g.add_node("Conv", ["x", "w", ""], ["y"], name="conv")
    assert match(g, P.Conv("x", "w", Opt("b")), node(g, "conv"))["b"] == ""


def test_required_input_that_is_absent_does_not_match():
    g = conv_bn_graph(bias=False)
    assert match(g, P.Conv("x", "w", "b"), node(g, "conv")) is None


def test_extra_inputs_need_ellipsis():
    g = conv_bn_graph()
    assert match(g, P.Conv("x", "w"), node(g, "conv")) is None  # the bias is an extra input
    m = match(g, P.Conv("x", "w", ...), node(g, "conv"))
    assert m is not None and set(m.tensors) == {"x", "w"}
    # a trailing omitted input is not an extra input
    g2 = Graph()
    g2.inputs = ["x", "w"]
    g2.add_node("Conv", ["x", "w", ""], ["y"], name="conv")
    assert match(g2, P.Conv("x", "w"), node(g2, "conv")) is not None


def test_any_matches_without_binding():
    g = conv_bn_graph()
    m = match(g, P.BatchNormalization("y", ANY, ANY, ANY, "var"), node(g, "bn"))
    assert m is not None and set(m.tensors) == {"y", "var"}


def test_alternative_op_types():
    g = Graph()
    g.inputs = ["x", "c"]
    g.add_node("Mul", ["x", "c"], ["m"], name="mul")
    g.add_node("Add", ["m", "c"], ["a"], name="add")
    g.add_node("Sub", ["a", "c"], ["s"], name="sub")
    pattern = P.op("Mul|Add", "t", "c")
    assert pattern.ops() == {"Mul", "Add"}
    assert match(g, pattern, node(g, "mul"))["t"] == "x"
    assert match(g, pattern, node(g, "add"))["t"] == "m"
    assert match(g, pattern, node(g, "sub")) is None
    nested = P.op("Mul|Add", P.op("Mul|Add", "x", "c", node="inner"), "c", node="outer")
    m = match(g, nested, node(g, "add"))
    assert m.node("inner").name == "mul" and m.node("outer").name == "add"


def test_domain_must_agree():
    g = Graph({"": 13, "com.microsoft": 1})
    g.inputs = ["x"]
    g.add_node("Gelu", ["x"], ["y"], name="ms_gelu", domain="com.microsoft")
    g.add_node("Relu", ["x"], ["r"], name="relu", domain="ai.onnx")
    assert match(g, P.Gelu("x"), node(g, "ms_gelu")) is None
    assert match(g, P.Gelu("x", domain="com.microsoft"), node(g, "ms_gelu")) is not None
    assert match(g, P.Relu("x"), node(g, "relu")) is not None  # "ai.onnx" is the default domain


def test_only_a_producers_first_output_feeds_a_subpattern():
    g = Graph()
    g.inputs = ["x"]
    g.add_node("Dropout", ["x"], ["d", "mask"], name="drop")
    g.add_node("Not", ["mask"], ["n"], name="not_mask")
    g.add_node("Relu", ["d"], ["r"], name="relu_d")
    assert match(g, P.Not(P.Dropout("x")), node(g, "not_mask")) is None
    assert match(g, P.Relu(P.Dropout("x")), node(g, "relu_d")) is not None


def test_out_binds_the_first_output():
    g = Graph()
    g.inputs = ["x"]
    g.add_node("Dropout", ["x"], ["d", "mask"], name="drop")
    g.outputs = ["d"]
    assert match(g, P.Dropout("x", out="y"), node(g, "drop"))["y"] == "d"


def test_bad_pattern_input_is_a_type_error():
    g = conv_bn_graph()
    with pytest.raises(TypeError, match="pattern input"):
        match(g, P.Conv(42, "w", ...), node(g, "conv"))


def test_two_nodes_of_the_same_op_type_without_node_names():
    g = Graph()
    g.inputs = ["x", "w1", "w2"]
    g.add_node("Conv", ["x", "w1"], ["a"], name="conv1")
    g.add_node("Conv", ["a", "w2"], ["b"], name="conv2")
    assert match(g, P.Conv(P.Conv("x", "w1"), "w2"), node(g, "conv2")) is not None


def test_two_nodes_of_the_same_op_type_with_node_names():
    g = Graph()
    g.inputs = ["x", "w1", "w2"]
    g.add_node("Conv", ["x", "w1"], ["a"], name="conv1")
    g.add_node("Conv", ["a", "w2"], ["b"], name="conv2")
    m = match(g, P.Conv(P.Conv("x", "w1", node="first"), "w2", node="second"), node(g, "conv2"))
    assert m is not None and [n.name for n in m.nodes] == ["conv2", "conv1"]
    assert m["w1"] == "w1" and m["w2"] == "w2"


def test_a_node_is_not_matched_twice_in_one_pattern():
    g = Graph()
    g.inputs = ["x"]
    g.add_node("Relu", ["x"], ["r"], name="relu")
    g.add_node("Add", ["r", "r"], ["s"], name="add")
    # both inputs come from the same Relu: as two distinct pattern nodes this must not match
    pattern = P.Add(P.Relu("x", node="left"), P.Relu("x", node="right"))
    assert match(g, pattern, node(g, "add")) is None
