"""The rewrite contract: a Replacement is checked and applied in one place; rewrite never edits the graph."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import numpy as np
import pytest

from optimizer import onnx_io
from optimizer.decisions import FoldDecision
from optimizer.pattern import P
from optimizer.pipeline import GraphPass, PassManager, RewritePass
from optimizer.registry import all_passes
from optimizer.rewrite import ContractError, Refuse, Replacement, apply_replacement
from support import chain_graph, node_named

PASSES_DIR = Path(__file__).resolve().parent.parent / "passes"
#: Graph methods that change it: only apply_replacement and GraphPass.run may call them.
MUTATORS = {"add_node", "add_like", "remove_node", "remove_nodes", "set_input", "set_attr", "replace_all_uses",
            "rename_tensor", "add_initializer", "set_const", "remove_initializer", "restore"}


# ---------------------------------------------------------------------- apply_replacement
def test_a_removed_intermediate_read_from_outside_is_refused_and_nothing_changes():
    g = chain_graph("Relu", "Neg", "Abs")
    g.add_node("Exp", ["t0"], ["side"], name="side_reader")  # t0 is read outside the rewrite
    g.outputs.append("side")
    version = g.version
    with pytest.raises(Refuse, match="the Relu's output 't0' has readers outside the rewrite"):
        apply_replacement(g, Replacement(remove=[node_named(g, "n0"), node_named(g, "n1")], rename={"t1": "x"}))
    assert g.version == version and not g.check_invariants()


def test_a_removed_graph_output_must_be_produced_again_or_renamed():
    g = chain_graph("Relu", "Neg")
    with pytest.raises(Refuse, match="the Neg's output 'y' is a graph output"):
        apply_replacement(g, Replacement(remove=[node_named(g, "n1")]))


def test_bypassing_a_node_whose_output_is_a_graph_output_keeps_the_output_name():
    g = chain_graph("Relu", "Identity")
    apply_replacement(g, Replacement().bypass(node_named(g, "n1")))
    assert [n.name for n in g.nodes] == ["n0"] and node_named(g, "n0").outputs == ["y"] and g.outputs == ["y"]
    assert not g.check_invariants()


def test_a_graph_output_bypass_refuses_when_the_input_has_other_readers():
    g = chain_graph("Relu", "Identity")
    g.add_node("Exp", ["t0"], ["side"], name="side_reader")
    g.outputs.append("side")
    with pytest.raises(Refuse, match="its input has other readers"):
        apply_replacement(g, Replacement().bypass(node_named(g, "n1")))


def test_replace_keeps_the_name_and_the_record_of_changed_attributes_through_export():
    g = chain_graph("Relu", "Transpose")
    node_named(g, "n1").attrs["perm"] = [0, 1]
    g.set_attr(node_named(g, "n1"), "perm", [1, 0])  # changed by an earlier rewrite: must stay marked
    r = Replacement()
    r.replace(node_named(g, "n1"), inputs=["x"], attrs={"extra": 3})
    (new,) = apply_replacement(g, r)
    assert new.name == "n1" and new.inputs == ["x"] and new.attrs == {"perm": [1, 0], "extra": 3}
    assert new.changed_attrs == {"perm", "extra"}
    exported = {n.name: n for n in onnx_io.to_model_proto(g).graph.node}["n1"]
    assert {a.name for a in exported.attribute} == {"perm", "extra"}


def test_a_new_node_may_not_take_a_name_that_a_surviving_node_produces():
    g = chain_graph("Relu", "Neg")
    r = Replacement()
    r.add_node("Abs", ["x"], ["t0"])
    with pytest.raises(ContractError, match="already has"):
        apply_replacement(g, r)


# ---------------------------------------------------------------------- the driver
class DropNeg(RewritePass):
    """Neg(x) -> x (semantics do not matter here)."""

    name = "test-drop-neg"
    pattern = P.Neg("x", out="y")

    def rewrite(self, g, m):
        r = Replacement(remove=[m.root], rename={m["y"]: m["x"]})
        r.decision = FoldDecision(node=m.root.name, macs_before=0, macs_after=0, nodes_before=len(g),
                                  nodes_after=len(g) - 1, applied=True)
        return r


class EditsInRewrite(DropNeg):
    """Breaks the contract: edits the graph from rewrite."""

    name = "test-edits-in-rewrite"

    def rewrite(self, g, m):
        g.set_attr(m.root, "touched", 1)
        return super().rewrite(g, m)


def test_a_rewrite_that_edits_the_graph_is_a_contract_error():
    with pytest.raises(ContractError, match="'test-edits-in-rewrite' changed the graph in check or rewrite"):
        PassManager([EditsInRewrite()]).run(chain_graph("Neg", "Relu"))


def test_refusals_carry_their_decision_and_rollbacks_mark_it_not_applied():
    class PricedRefusal(DropNeg):
        name = "test-priced-refusal"

        def rewrite(self, g, m):
            decision = super().rewrite(g, m).decision
            decision.applied = False
            raise Refuse("too expensive", decision)

    (stats,) = PassManager([PricedRefusal()]).run(chain_graph("Neg", "Relu")).passes
    assert dict(stats.refusals) == {"too expensive": 1} and [d.applied for d in stats.decisions] == [False]
    assert stats.to_dict()["decisions"][0]["kind"] == "fold"

    g = chain_graph("Neg", "Relu")
    (stats,) = PassManager([DropNeg()], checker=lambda candidate: "output 'y' moved").run(g).passes
    assert stats.rewrites == 0 and len(stats.rollbacks) == 1 and [d.applied for d in stats.decisions] == [False]
    assert [n.op_type for n in g.nodes] == ["Neg", "Relu"]


def test_a_rolled_back_root_is_not_retried_in_later_sweeps():
    calls = []

    def checker(candidate):
        calls.append(1)
        return "numbers moved"

    report = PassManager([DropNeg()], checker=checker).run(chain_graph("Neg", "Relu"))
    assert len(calls) == 1 and report.converged


# ---------------------------------------------------------------------- every built-in pass keeps the contract
def _rewrite_pass_modules() -> list[str]:
    return sorted({p.cls.__module__ for p in all_passes()
                   if p.cls.__module__.startswith("passes.") and issubclass(p.cls, RewritePass)})


@pytest.mark.parametrize("module", _rewrite_pass_modules())
def test_no_rewrite_pass_calls_a_graph_mutator(module):
    """Statically: nothing in a RewritePass's module calls ``g.<mutator>(...)``; the driver applies."""
    path = Path(importlib.import_module(module).__file__)
    calls = [f"{path.name}:{n.lineno} {n.func.value.id}.{n.func.attr}" for n in ast.walk(ast.parse(path.read_text()))
             if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in MUTATORS
             and isinstance(n.func.value, ast.Name) and n.func.value.id in ("g", "graph")]
    assert not calls, f"{module} edits the graph itself: {calls}"


def test_every_builtin_pass_is_a_rewrite_pass_or_a_documented_graph_pass():
    graph_passes = []
    for info in all_passes():
        if not info.cls.__module__.startswith("passes."):
            continue
        assert issubclass(info.cls, (RewritePass, GraphPass)), info.name
        if issubclass(info.cls, GraphPass):
            graph_passes.append(info.name)
            assert "GraphPass" in info.cls.__doc__ or "whole" in info.cls.__doc__, \
                f"{info.name}: say in the docstring why it is a whole-graph pass"
    assert set(graph_passes) <= {"fold-constants", "eliminate-dead-nodes", "eliminate-unused-initializers",
                                 "dedupe-initializers", "insert-bottleneck"}


def test_replacement_initializers_are_added_with_their_values():
    g = chain_graph("Relu", "Neg")
    r = Replacement(remove=[node_named(g, "n1")])
    w = r.add_initializer("w", np.arange(3, dtype=np.float32))
    r.add_node("Mul", ["t0", w], ["y"], name="scale")
    apply_replacement(g, r)
    assert g.const("w").tolist() == [0.0, 1.0, 2.0] and node_named(g, "scale").outputs == ["y"]
    assert not g.check_invariants()


def test_a_replaced_node_keeps_the_declared_type_and_shape_of_an_unread_output():
    g = chain_graph("Relu", "Neg")
    g.add_node("Abs", ["t0"], ["unread"], name="side")
    g.tensor("unread").elem_type, g.tensor("unread").shape = 1, (2, 3)
    r = Replacement()
    r.replace(node_named(g, "side"), attrs={"note": 1})
    apply_replacement(g, r)
    assert (g.tensor("unread").elem_type, g.tensor("unread").shape) == (1, (2, 3))
