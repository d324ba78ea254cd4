"""PassManager: fixpoint, bound, statistics, invariant checks naming the guilty pass; Graph.check_invariants."""

from __future__ import annotations

import time

import pytest

from optimizer.errors import InvariantError, NinoptError
from optimizer.ir import Graph
from optimizer.pattern import P
from optimizer.pipeline import (MAX_ITERATIONS, GraphPass, PassContext, PassManager, PassStats, RewritePass,
                                register_pass, unregister_pass, ShapeContext)
from optimizer.registry import get_pass
from optimizer.rewrite import Refuse, Replacement
from support import chain_graph, node_named


# ---------------------------------------------------------------------- passes used only here
class AbsToIdentity(GraphPass):
    """Abs -> Identity (semantics do not matter here: it feeds eliminate-identity a second sweep)."""

    name = "test-abs-to-identity"

    def run(self, g, ctx):
        changed = False
        for node in [n for n in g.nodes if n.op_type == "Abs"]:
            ctx.stats.matches += 1
            ctx.stats.rewrites += 1
            g.remove_node(node)
            g.add_node("Identity", node.inputs, node.outputs, name=node.name)
            changed = True
        return changed


class AlwaysChanges(GraphPass):
    """Bumps an attribute on every run, so the pipeline never reaches a fixpoint."""

    name = "test-always-changes"

    def __init__(self, report_change: bool = True):
        self.report_change = report_change

    def run(self, g, ctx):
        node = g.nodes[0]
        g.set_attr(node, "counter", node.attr("counter", 0) + 1)
        return self.report_change


class ReluRefuser(RewritePass):
    """Relu(x) -> x unless x is a graph input (then refuses); sleeps a little so time is measurable."""

    name = "test-relu-refuser"
    pattern = P.Relu("x", out="y")

    def check(self, g, m):
        time.sleep(0.002)
        if m["x"] in g.inputs:
            raise Refuse("it reads a graph input")

    def rewrite(self, g, m):
        return Replacement().bypass(m.root)


class NegNegToNothing(RewritePass):
    """Neg(Neg(x)) -> x."""

    name = "test-neg-neg"
    pattern = P.Neg(P.Neg("x", node="inner"), out="y", node="outer")

    def rewrite(self, g, m):
        return Replacement(remove=m.nodes, rename={m["y"]: m["x"]})


@pytest.fixture
def broken_pass():
    """A registered pass that removes a producer whose output is still read."""

    @register_pass("test-broken-remove-producer", exact=True)
    class RemoveProducer(GraphPass):
        """Removes every Relu without rewiring its readers (deliberately broken)."""

        def run(self, g, ctx):
            relus = [n for n in g.nodes if n.op_type == "Relu"]
            g.remove_nodes(relus)
            return bool(relus)

    try:
        yield get_pass("test-broken-remove-producer")
    finally:
        unregister_pass("test-broken-remove-producer")


# ---------------------------------------------------------------------- fixpoint and bound
def test_runs_to_a_fixpoint_that_needs_two_changing_sweeps():
    g = chain_graph("Relu", "Abs", "Neg")
    report = PassManager([get_pass("eliminate-identity").create(), AbsToIdentity()]).run(g)
    # sweep 1: Abs -> Identity; sweep 2: the Identity goes; sweep 3: nothing changes
    assert report.converged and report.iterations == 3
    stats = {s.name: s for s in report.passes}
    assert stats["eliminate-identity"].rewrites == 1 and stats["eliminate-identity"].runs == 3
    assert stats["test-abs-to-identity"].rewrites == 1 and stats["test-abs-to-identity"].runs == 3
    assert sorted(n.op_type for n in g.nodes) == ["Neg", "Relu"]
    assert node_named(g, "n2").inputs == ["t0"]


def test_a_pipeline_that_changes_nothing_stops_after_one_sweep():
    g = chain_graph("Relu", "Neg")
    version = g.version
    report = PassManager([get_pass("eliminate-identity").create()]).run(g)
    assert report.converged and report.iterations == 1 and g.version == version


@pytest.mark.parametrize("report_change", [True, False], ids=["says-changed", "changes-silently"])
def test_a_pass_that_always_changes_stops_at_max_iterations(report_change):
    g = chain_graph("Relu")
    report = PassManager([AlwaysChanges(report_change)], max_iterations=4).run(g)
    assert not report.converged and report.iterations == 4
    assert report.passes[0].runs == 4
    assert g.nodes[0].attr("counter") == 4
    assert report.to_dict()["converged"] is False


def test_default_bound_is_max_iterations():
    report = PassManager([AlwaysChanges()]).run(chain_graph("Relu"))
    assert report.iterations == MAX_ITERATIONS == 8 and not report.converged


# ---------------------------------------------------------------------- statistics
def test_statistics_record_matches_rewrites_refusals_and_time():
    g = chain_graph("Relu", "Relu", "Relu", "Neg")  # the first Relu reads the graph input: refused every sweep
    report = PassManager([ReluRefuser()]).run(g)
    (s,) = report.passes
    assert report.converged and report.iterations == 2
    assert s.runs == 2
    assert s.rewrites == 2
    assert s.matches == 3 + 1  # sweep 1: three Relus; sweep 2: the survivor
    assert dict(s.refusals) == {"it reads a graph input": 2}
    assert s.seconds >= 4 * 0.002
    d = report.to_dict()
    assert d["iterations"] == 2 and d["converged"] is True
    assert d["passes"][0] == {"name": "test-relu-refuser", "runs": 2, "matches": 4, "rewrites": 2,
                              "refusals": {"it reads a graph input": 2}, "decisions": [], "rollbacks": [],
                              "seconds": round(s.seconds, 6)}
    assert [n.name for n in g.nodes] == ["n0", "n3"] and node_named(g, "n3").inputs == ["t0"]


def test_pass_stats_count_refusals_by_reason():
    s = PassStats("p")
    for reason in ("a", "b", "a"):
        s.refuse(reason)
    assert s.to_dict()["refusals"] == {"a": 2, "b": 1}


def test_rewrite_pass_skips_nodes_removed_earlier_in_the_same_run():
    g = Graph({"": 13})
    g.inputs = ["x"]
    # inserted outer-first, so the first candidate's rewrite removes the second candidate
    g.add_node("Relu", ["t3"], ["y"], name="relu")
    g.add_node("Neg", ["t2"], ["t3"], name="neg4")
    g.add_node("Neg", ["t1"], ["t2"], name="neg3")
    g.add_node("Neg", ["t0"], ["t1"], name="neg2")
    g.add_node("Neg", ["x"], ["t0"], name="neg1")
    g.outputs = ["y"]
    stats = PassStats("test-neg-neg")
    assert NegNegToNothing().run(g, PassContext(stats, ShapeContext(g)))
    assert (stats.matches, stats.rewrites) == (2, 2)
    assert [n.name for n in g.nodes] == ["relu"] and node_named(g, "relu").inputs == ["x"]
    assert not g.check_invariants()


# ---------------------------------------------------------------------- invariants after every pass
def test_broken_pass_raises_invariant_error_naming_it_and_the_passes_before(broken_pass):
    g = chain_graph("Relu", "Neg")
    passes = [get_pass("eliminate-identity").create(), get_pass("eliminate-dropout").create(), broken_pass.create()]
    with pytest.raises(InvariantError) as info:
        PassManager(passes).run(g)
    message = str(info.value)
    assert "'test-broken-remove-producer'" in message
    assert "passes run before it: eliminate-identity, eliminate-dropout" in message
    assert "'t0'" in message and "nothing produces" in message
    assert isinstance(info.value, NinoptError) and info.value.exit_code == 3  # a bug of ninopt, not a failed check


def test_broken_pass_running_first_names_no_predecessors(broken_pass):
    with pytest.raises(InvariantError, match=r"passes run before it: none"):
        PassManager([broken_pass.create()]).run(chain_graph("Relu", "Neg"))


def test_breakage_in_a_later_sweep_lists_each_earlier_pass_once(broken_pass):
    g = chain_graph("Abs", "Neg")  # no Relu in sweep 1 until MakesRelu runs; the broken pass strikes in sweep 2

    class MakesRelu(GraphPass):
        name = "test-makes-relu"

        def run(self, g, ctx):
            abs_nodes = [n for n in g.nodes if n.op_type == "Abs"]
            for n in abs_nodes:
                g.remove_node(n)
                g.add_node("Relu", n.inputs, n.outputs, name=n.name)
            return bool(abs_nodes)

    passes = [broken_pass.create(), MakesRelu(), get_pass("eliminate-identity").create()]
    with pytest.raises(InvariantError) as info:
        PassManager(passes).run(g)
    assert "pass 'test-broken-remove-producer' broke the graph" in str(info.value)
    assert "passes run before it: test-broken-remove-producer, test-makes-relu, eliminate-identity" in str(info.value)


def test_invariant_checks_can_be_switched_off(broken_pass):
    g = chain_graph("Relu", "Neg")
    PassManager([broken_pass.create()], check=False).run(g)
    assert any("nothing produces" in p for p in g.check_invariants())


# ---------------------------------------------------------------------- Graph.check_invariants
def test_a_well_formed_graph_has_no_problems():
    assert chain_graph("Relu", "Neg", "Abs").check_invariants() == []


def test_check_invariants_catches_a_cycle():
    g = Graph()
    g.inputs = ["x"]
    g.add_node("Add", ["x", "b"], ["a"], name="first")
    g.add_node("Relu", ["a"], ["b"], name="second")
    g.outputs = ["b"]
    problems = g.check_invariants()
    assert len(problems) == 1 and "cycle" in problems[0]
    assert "'first'" in problems[0] and "'second'" in problems[0]


def test_check_invariants_catches_a_duplicate_producer():
    g = chain_graph("Relu", "Neg")
    # a pass that edits node.outputs behind the facade's back is caught
    stray = g.add_node("Abs", ["x"], ["z"], name="stray")
    stray.outputs = ["t0"]
    problems = g.check_invariants()
    assert len(problems) == 1
    assert "'t0' is produced by" in problems[0] and "n0" in problems[0] and "stray" in problems[0]


def test_add_node_refuses_a_second_producer():
    g = chain_graph("Relu", "Neg")
    with pytest.raises(ValueError, match="already has a producer"):
        g.add_node("Abs", ["x"], ["t0"], name="again")


def test_a_refused_add_node_leaves_the_graph_unchanged():
    g = chain_graph("Relu", "Neg")
    version, count = g.version, len(g)
    with pytest.raises(ValueError):
        g.add_node("Abs", ["x"], ["t0"], name="again")
    assert (len(g), g.version) == (count, version)
    assert g.check_invariants() == []


def test_check_invariants_catches_a_producer_of_a_graph_input():
    g = chain_graph("Relu")
    g.add_node("Neg", ["y"], ["x"], name="writes_input")
    assert any("'x' is both a graph input/initializer and produced by" in p for p in g.check_invariants())


def test_check_invariants_catches_an_undefined_input():
    g = chain_graph("Relu")
    g.add_node("Add", ["y", "ghost"], ["z"], name="reads_ghost")
    problems = g.check_invariants()
    assert len(problems) == 1
    assert "reads_ghost" in problems[0] and "reads 'ghost', which nothing produces" in problems[0]


def test_check_invariants_catches_an_undefined_implicit_input():
    g = chain_graph("Relu")
    g.add_node("If", ["x"], ["z"], name="if", implicit_inputs=["outer_ghost"])
    problems = g.check_invariants()
    assert len(problems) == 1 and "'outer_ghost'" in problems[0]


def test_check_invariants_catches_an_unproduced_graph_output():
    g = chain_graph("Relu")
    g.outputs.append("missing")
    assert g.check_invariants() == ["graph output 'missing' is not produced"]


def test_check_invariants_catches_duplicate_node_names():
    g = chain_graph("Relu")
    g.add_node("Neg", ["y"], ["z"], name="n0")
    problems = g.check_invariants()
    assert problems == ["node name 'n0' is used twice"]


def test_graph_inputs_and_initializers_count_as_produced():
    g = chain_graph("Relu")
    g.initializers["w"] = None
    g.add_node("Add", ["y", "w"], ["z"], name="add")
    g.outputs.append("x")  # a graph input passed straight through is a valid output
    assert g.check_invariants() == []
