"""Passes and the PassManager that runs them to a fixpoint, checking invariants after each."""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

from optimizer.errors import InvariantError
from optimizer.ir import Graph, Node, paused_gc
from optimizer.pattern import Match, OpPattern, match

#: Sweeps over the whole pass list before giving up on reaching a fixpoint.
MAX_ITERATIONS = 8


@dataclass
class PassStats:
    """What one pass did over a whole pipeline run; the report is built from these."""

    name: str
    runs: int = 0
    matches: int = 0
    rewrites: int = 0
    refusals: Counter = field(default_factory=Counter)  # reason -> count
    decisions: list[dict[str, Any]] = field(default_factory=list)  # cost-model verdicts
    rollbacks: list[dict[str, Any]] = field(default_factory=list)  # rewrites undone by --verify-each-pass
    seconds: float = 0.0

    def refuse(self, reason: str) -> None:
        self.refusals[reason] += 1

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "runs": self.runs, "matches": self.matches, "rewrites": self.rewrites,
                "refusals": dict(self.refusals), "decisions": self.decisions, "rollbacks": self.rollbacks,
                "seconds": round(self.seconds, 6)}


#: Checks a rewritten graph against the original's numbers: None when it agrees, else why not.
Checker = Callable[[Graph], "str | None"]


class Pass:
    """A graph transformation. ``run`` returns True when it changed the graph."""

    name = "unnamed"
    exact = True
    default = True
    #: set by the PassManager under per-pass verification; RewritePass checks every single rewrite
    checker: Checker | None = None

    def run(self, g: Graph, stats: PassStats) -> bool:
        raise NotImplementedError


class RewritePass(Pass):
    """Pattern, check, rewrite: the shape of most passes.

    ``check`` returns the match (to go ahead) or ``m.fail(reason)``; ``rewrite`` edits the
    graph through the facade. The pass visits each node whose op type can root the pattern,
    once per run, skipping nodes removed by earlier rewrites in the same run.
    """

    pattern: OpPattern

    def check(self, g: Graph, m: Match) -> Match:
        return m

    def rewrite(self, g: Graph, m: Match) -> None:
        raise NotImplementedError

    def candidates(self, g: Graph) -> Iterable[Node]:
        roots = self.pattern.ops()
        return [n for n in g.nodes if n.op_type in roots]

    def run(self, g: Graph, stats: PassStats) -> bool:
        changed = False
        removed_ids: set[int] = set()
        rolled_back = self.__dict__.setdefault("_rolled_back", set())  # roots never to retry
        for candidate in self.candidates(g):
            node = g.node(candidate.id)  # by id: a rollback swaps in the snapshot's node objects
            if node is None or node.id in removed_ids or node.id in rolled_back:
                continue
            m = match(g, self.pattern, node)
            if m is None:
                continue
            stats.matches += 1
            m = self.check(g, m)
            if not m.ok:
                stats.refuse(m.reason)
                continue
            snapshot = g.copy() if self.checker is not None else None
            self.rewrite(g, m)
            problem = self.checker(g) if self.checker is not None else None
            if problem is not None:
                g.restore(snapshot)
                rolled_back.add(node.id)
                stats.rollbacks.append({"nodes": [repr(n) for n in m.nodes], "problem": problem})
                continue
            removed_ids.update(n.id for n in m.nodes)
            stats.rewrites += 1
            changed = True
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
        undone when it fails; any other pass is checked (and undone) as a whole."""
        self.passes = list(passes)
        self.max_iterations = max_iterations
        self.check = check
        self.checker = checker
        for p in self.passes:
            p.checker = checker

    def run(self, g: Graph) -> PipelineReport:
        with paused_gc():
            return self._run(g)

    def _run(self, g: Graph) -> PipelineReport:
        stats = {p.name: PassStats(p.name) for p in self.passes}
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
                snapshot = g.copy() if self.checker is not None and not isinstance(p, RewritePass) else None
                changed = p.run(g, stats[p.name])
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
