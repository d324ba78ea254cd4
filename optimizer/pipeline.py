"""The pass contract and the PassManager that runs passes to a fixpoint, checking invariants after each.

Two kinds of pass:

* ``RewritePass``: match, check, rewrite. ``check(g, m)`` accepts a match or raises
  ``Refuse``; ``rewrite(g, m)`` builds and returns a ``Replacement`` (it may still refuse,
  e.g. on cost) without touching the graph; the driver applies it in one place, records
  its decision, and under per-pass verification checks it and rolls it back alone.
* ``GraphPass``: a whole-graph transformation whose steps depend on each other within a
  run (constant folding, dead-code elimination); it edits the graph in ``run`` and is
  checked and rolled back as a whole.

``register_pass`` lives here, next to the contract, so the built-in passes import nothing
above this layer; ``optimizer.registry`` loads them and the named pipelines.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from optimizer.decisions import Decision
from optimizer.errors import InvariantError
from optimizer.executor import blas_limit
from optimizer.ir import Graph, paused_gc
from optimizer.pattern import Match, OpPattern, match
from optimizer.rewrite import ContractError, Refuse, Replacement, apply_replacement
from optimizer.shape_inference import infer_shapes

#: Sweeps over the whole pass list before giving up on reaching a fixpoint.
MAX_ITERATIONS = 8

#: Checks a rewritten graph against the original's numbers: None when it agrees, else why not.
Checker = Callable[[Graph], "str | None"]


@dataclass
class PassStats:
    """What one pass did over a whole pipeline run; the report is built from these."""

    name: str
    runs: int = 0
    matches: int = 0
    rewrites: int = 0
    refusals: Counter = field(default_factory=Counter)  # reason -> count
    decisions: list[Decision] = field(default_factory=list)  # cost-model verdicts
    rollbacks: list[dict[str, Any]] = field(default_factory=list)  # rewrites undone by --verify-each-pass
    seconds: float = 0.0

    def refuse(self, reason: str) -> None:
        self.refusals[reason] += 1

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "runs": self.runs, "matches": self.matches, "rewrites": self.rewrites,
                "refusals": dict(self.refusals), "decisions": [d.to_dict() for d in self.decisions],
                "rollbacks": self.rollbacks, "seconds": round(self.seconds, 6)}


class ShapeContext:
    """Tensor shapes for one pass run: the tensor table's when static, else shape inference's, run
    at most once per run and only when a pass asks.

    Inference walks the whole graph, so it is not redone after each rewrite: the exact rewrites
    keep the shapes of the tensors they keep, and a tensor a rewrite adds is read from the table
    (or is unknown). ``pins`` fixes symbolic input dims for pricing (see ``pinned``).
    """

    def __init__(self, g: Graph):
        self._g = g
        self._inferred: dict[str, tuple | None] | None = None
        self._pinned: dict[str, tuple | None] | None = None

    def of(self, name: str) -> tuple[Dim, ...] | None:
        shape = self._g.shape(name)
        if shape is not None and all(isinstance(d, int) for d in shape):
            return shape
        inferred = self.inferred.get(name)
        return shape if inferred is None else inferred  # () is a known shape

    @property
    def inferred(self) -> Mapping[str, tuple | None]:
        """Every tensor's inferred shape (None where unknown), as the cost model reads them."""
        if self._inferred is None:
            self._inferred = infer_shapes(self._g)
        return self._inferred

    @property
    def pinned(self) -> Mapping[str, tuple | None]:
        """Shapes with every symbolic graph-input dim set to 1: for comparing the MACs of two forms
        of one subgraph, which scale alike with those dims."""
        if self._pinned is None:
            pins: dict[str, Sequence[int]] = {}
            for name in self._g.feed_inputs():
                shape = self._g.shape(name)
                if shape is not None and not all(isinstance(d, int) for d in shape):
                    pins[name] = tuple(d if isinstance(d, int) else 1 for d in shape)
            self._pinned = infer_shapes(self._g, pins) if pins else self.inferred
        return self._pinned


@dataclass
class PassContext:
    """What the manager hands a pass for one run."""

    stats: PassStats
    shapes: ShapeContext
    #: per-pass verification: each rewrite (RewritePass) or the whole run (GraphPass) is checked
    checker: Checker | None = None
    #: ids of match roots whose rewrite a checker rolled back: never retried in this pipeline run
    rolled_back: set[int] = field(default_factory=set)


class Pass:
    """A graph transformation. ``run`` returns True when it changed the graph."""

    name = "unnamed"
    exact = True

    def run(self, g: Graph, ctx: PassContext) -> bool:
        raise NotImplementedError


class GraphPass(Pass):
    """A whole-graph transformation: ``run`` edits the graph itself and counts matches, rewrites
    and refusals in ``ctx.stats`` (``apply_replacement`` is there for node-by-node edits).

    For passes whose steps feed each other within one run, so a single step has no meaning
    alone: folding a constant makes its readers foldable, a dead node makes its producers
    dead. Under per-pass verification the manager checks the whole run and undoes it if the
    numbers moved.
    """


class RewritePass(Pass):
    """Pattern, check, rewrite: the shape of most passes.

    The driver visits each node whose op type can root ``pattern`` (or one of a tuple of
    alternative patterns, the first that matches wins), once per run, skipping matches whose
    nodes an earlier rewrite of the run removed. Override ``matches`` for candidates a
    pattern cannot express (a group of siblings, a sum tree). Within ``check`` and
    ``rewrite`` the graph is read-only; ``m.shapes`` is the run's ``ShapeContext``.
    """

    pattern: OpPattern | tuple[OpPattern, ...]

    def check(self, g: Graph, m: Match) -> None:
        """Raise ``Refuse`` to turn the match down; by default every match is accepted."""

    def rewrite(self, g: Graph, m: Match) -> Replacement:
        raise NotImplementedError

    def matches(self, g: Graph, ctx: PassContext) -> Iterator[Match]:
        patterns = self.pattern if isinstance(self.pattern, tuple) else (self.pattern,)
        roots = set().union(*(p.ops() for p in patterns))
        for candidate in [n for n in g.nodes if n.op_type in roots]:
            node = g.node(candidate.id)
            if node is None:
                continue
            found = next((m for m in (match(g, p, node) for p in patterns) if m is not None), None)
            if found is not None:
                yield found

    def run(self, g: Graph, ctx: PassContext) -> bool:
        changed = False
        for m in self.matches(g, ctx):
            if any(g.node(n.id) is not n for n in m.nodes) or m.root.id in ctx.rolled_back:
                continue  # an earlier rewrite of this run replaced part of it, or it broke the numbers once
            ctx.stats.matches += 1
            m.shapes = ctx.shapes
            version = g.version
            try:
                self.check(g, m)
                replacement = self.rewrite(g, m)
                if g.version != version:
                    raise ContractError(f"pass {self.name!r} changed the graph in check or rewrite")
                snapshot = g.copy() if ctx.checker is not None else None
                apply_replacement(g, replacement)
            except Refuse as refusal:
                ctx.stats.refuse(refusal.reason)
                if refusal.decision is not None:
                    ctx.stats.decisions.append(refusal.decision)
                continue
            decision = replacement.decision
            problem = ctx.checker(g) if ctx.checker is not None else None
            if problem is not None:
                g.restore(snapshot)
                ctx.rolled_back.add(m.root.id)
                ctx.stats.rollbacks.append({"nodes": [repr(n) for n in m.nodes], "problem": problem})
                if decision is not None:
                    decision.applied = False
            else:
                ctx.stats.rewrites += 1
                changed = True
            if decision is not None:
                ctx.stats.decisions.append(decision)
        return changed


@dataclass
class PipelineReport:
    passes: list[PassStats]
    iterations: int
    converged: bool

    def to_dict(self) -> dict[str, Any]:
        return {"iterations": self.iterations, "converged": self.converged,
                "passes": [p.to_dict() for p in self.passes]}


class PassManager:
    """Run passes in order, sweep after sweep, until a sweep changes nothing (or the bound)."""

    def __init__(self, passes: Iterable[Pass], *, max_iterations: int = MAX_ITERATIONS, check: bool = True,
                 checker: Checker | None = None):
        """``checker`` turns on per-pass verification: a RewritePass has each rewrite checked and
        undone when it fails; a GraphPass is checked (and undone) as a whole."""
        self.passes = list(passes)
        self.max_iterations = max_iterations
        self.check = check
        self.checker = checker

    def run(self, g: Graph) -> PipelineReport:
        # passes compute node by node (constant folds, bottleneck walks): BLAS's thread count is set once
        with paused_gc(), blas_limit:
            return self._run(g)

    def _run(self, g: Graph) -> PipelineReport:
        stats = {p.name: PassStats(p.name) for p in self.passes}
        rolled_back: dict[str, set[int]] = {p.name: set() for p in self.passes}
        history: list[str] = []
        disabled: set[str] = set()  # whole passes rolled back by the checker
        iterations = 0
        converged = False
        while iterations < self.max_iterations:
            iterations += 1
            sweep_changed = False
            for p in self.passes:
                if p.name in disabled:
                    continue
                before = g.version
                start = time.perf_counter()
                whole = self.checker is not None and not isinstance(p, RewritePass)
                snapshot = g.copy() if whole else None
                ctx = PassContext(stats[p.name], ShapeContext(g), None if whole else self.checker,
                                  rolled_back[p.name])
                changed = p.run(g, ctx)
                if snapshot is not None and g.version != before:
                    problem = self.checker(g)
                    if problem is not None:
                        g.restore(snapshot)
                        changed = False
                        disabled.add(p.name)
                        stats[p.name].rollbacks.append({"nodes": ["(the whole pass)"], "problem": problem})
                stats[p.name].seconds += time.perf_counter() - start
                stats[p.name].runs += 1
                history.append(p.name)
                if changed or g.version != before:
                    sweep_changed = True
                    if self.check:
                        self._check(g, p.name, history)
            if not sweep_changed:
                converged = True
                break
        return PipelineReport(list(stats.values()), iterations, converged)

    @staticmethod
    def _check(g: Graph, name: str, history: list[str]) -> None:
        problems = g.check_invariants()
        if problems:
            before = ", ".join(dict.fromkeys(history[:-1])) or "none"
            raise InvariantError(f"internal error: pass {name!r} broke the graph: {problems[0]} (passes run before it: "
                                 f"{before}); nothing was written, please report it.")


# ---------------------------------------------------------------------- registration
@dataclass(frozen=True)
class PassInfo:
    name: str
    cls: type
    exact: bool
    doc: str  # first line of the class docstring

    def create(self) -> Pass:
        return self.cls()


#: Every registered pass by name; ``optimizer.registry`` loads the built-ins and plug-ins into it.
REGISTERED: dict[str, PassInfo] = {}


def register_pass(name: str, *, exact: bool = True):
    """Class decorator: make a Pass available by ``name``. ``exact`` passes keep outputs within
    float round-off. Which pipelines run it is said in the pipeline table (``passes.PIPELINES``)."""

    def decorate(cls):
        doc = (cls.__doc__ or "").strip().splitlines()
        if not doc:
            raise TypeError(f"pass {name!r} needs a docstring saying what it rewrites")
        known = REGISTERED.get(name)
        if known is not None and _qualified(known.cls) != _qualified(cls):  # a re-imported module may re-register
            raise ValueError(f"pass name {name!r} is registered twice")
        cls.name, cls.exact = name, exact
        REGISTERED[name] = PassInfo(name, cls, exact, doc[0])
        return cls

    return decorate


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def unregister_pass(name: str) -> None:
    """Remove a pass (tests register throwaway passes)."""
    REGISTERED.pop(name, None)
