"""Global allocation: measure each layer's end-to-end sensitivity, then choose all ranks jointly.

A layer's local error says little about what it costs at the model outputs (a layer before a
sigmoid head matters more than one before a ReLU that clips its error away), and per-layer
budgets add up. So each candidate layer is factored ALONE at every rung of its ladder (the
ranks ``LayerFitter.ladder`` proposes), on the original network's activations, and the rest
of the network is re-run from there — only the nodes downstream of it, reading every other
value from one stored forward pass — to measure the end-to-end error in the budget's metric.

The choice is a Lagrangian sweep over those curves: for a multiplier lam each layer takes the
rung maximizing ``MACs saved - lam * additive(error)`` (or stays whole), and lam is bisected
to the smallest value whose summed additive error fits the budget (``optimizer.bottleneck.metrics``
says which scale adds). The sum is the prediction the engine then checks end to end.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from optimizer.bottleneck.fitting import LayerFitter
from optimizer.bottleneck.metrics import additive, model_error
from optimizer.executor import Executor, run_node
from optimizer.ir import Graph, Node

#: Most calibration samples the sensitivities are measured on (each stores one full forward pass).
#: As many as the engine's default: solo errors measured on fewer samples than the final check
#: uses mispredict it (PP-OCRv4 det: 3x, on documents vs photos).
SENSITIVITY_SAMPLES = 8
#: A rung whose solo error costs more than this many budgets ends the walk down its structure's
#: ladder (measured from the least aggressive rank down): lower ranks of the same structure discard
#: more and cost more still. PP-OCRv4 det at cosine 1e-3 has no rung within budget on 32 of its
#: 62 layers, and every rung of each took a downstream re-run.
HOPELESS_BUDGETS = 4.0


@dataclass
class Rung:
    """One (structure, rank) of a layer, measured alone: cost saved (MACs, or seconds when priced by
    ``optimizer.bottleneck.latency``) and end-to-end error."""

    structure: str
    rank: int
    saved: float
    error: float  # in the budget's metric, worst model output
    cost: float  # ``additive(metric, error)``


@dataclass
class Sensitivity:
    """A candidate layer's measured rungs, per structure from the highest rank down (errors need not
    fall with rank, so the allocation weighs every rung measured)."""

    node: Node
    macs: int
    rungs: list[Rung] = field(default_factory=list)


def walk_node(g: Graph, node: Node, env, samples: int) -> list[list[np.ndarray]]:
    """The node's outputs on every sample: ``env`` maps each tensor to one value per sample."""
    opset = g.opset(node.domain)
    outs: list[list[np.ndarray]] = [[] for _ in node.outputs]
    for s in range(samples):
        for i, value in enumerate(run_node(node, [env[t][s] if t else None for t in node.inputs], opset)):
            outs[i].append(value)
    return outs


class SensitivityProbe:
    """One stored forward pass of the original network, and the downstream re-runs from a perturbed layer."""

    def __init__(self, graph: Graph, order: list[Node], feeds: list[dict], metric: str, cost=None):
        """``cost``: a cost model of ``optimizer.bottleneck.latency`` pricing each rung; None counts MACs."""
        self.graph, self.order, self.metric, self.cost = graph, order, metric, cost
        names = [t for n in order for t in n.outputs if t]
        executor = Executor(graph, outputs=names)
        runs = [executor.run(f) for f in feeds]
        self.values = {t: [r[t] for r in runs] for t in names}
        self.values.update({n: [f[n] for f in feeds] for n in graph.feed_inputs()})
        self.values.update({n: [graph.const(n)] * len(feeds) for n in graph.initializers})
        self.samples = len(feeds)
        self.position = {n.id: i for i, n in enumerate(order)}
        self.reference = {o: self.values[o] for o in graph.outputs}

    def end_to_end(self, node: Node, outputs: list[np.ndarray]) -> float:
        """The model's error (worst output, in the metric) when ``node`` alone gives ``outputs``."""
        changed = {node.outputs[0]: outputs}
        for later in self.order[self.position[node.id] + 1:]:
            if any(t in changed for t in later.inputs if t):
                env = {t: changed.get(t, self.values.get(t)) for t in later.inputs if t}
                changed.update((o, v) for o, v in zip(later.outputs, walk_node(self.graph, later, env, self.samples))
                               if o)
        return model_error(self.metric, self.reference,
                           {o: changed.get(o, self.values[o]) for o in self.graph.outputs})

    def measure(self, layer, fitter_args: dict, budget: float | None = None) -> Sensitivity:
        """The rungs of the layer's ladder, fitted on the original activations and measured end to end: per
        structure from the highest rank down, until one costs more than HOPELESS_BUDGETS x ``budget``
        (additive; None: every rung)."""
        node = layer.node
        xs, ys = self.values[node.inputs[0]], self.values[node.outputs[0]]
        fitter = LayerFitter(layer, xs, xs, ys, **fitter_args)
        sens = Sensitivity(node, fitter.macs)
        ladder = fitter.ladder()
        for structure in dict.fromkeys(s for s, _ in ladder):
            for rank in reversed([r for s, r in ladder if s == structure]):
                fit = fitter.fit(structure, rank)
                if fit is None:
                    continue
                saved = fitter.macs - fit.macs if self.cost is None else \
                    self.cost.saving(self.graph, node, fit, xs[0].shape)
                if saved > 0:
                    error = self.end_to_end(node, fit.outputs)
                    sens.rungs.append(Rung(structure, rank, saved, error, additive(self.metric, error)))
                    if budget is not None and sens.rungs[-1].cost > HOPELESS_BUDGETS * budget:
                        break
        return sens


def allocate(sensitivities: list[Sensitivity], budget_cost: float) -> tuple[dict[str, Rung], float]:
    """Layer (its output tensor) -> chosen rung, maximizing MACs saved with the summed additive error
    within ``budget_cost``; also the predicted sum. Layers absent from the result stay whole.

    The sweep finds the best plan on the convex hull of the curves; what it leaves of the budget
    then goes, greedily, to the moves saving the most per unit of error that still fit.
    """
    affordable = {s.node.outputs[0]: [r for r in s.rungs if r.cost <= budget_cost] for s in sensitivities}

    def choose(lam: float) -> dict[str, Rung]:
        plan = {}
        for key, rungs in affordable.items():
            best = max(rungs, key=lambda r: r.saved - lam * r.cost, default=None)
            if best is not None and best.saved - lam * best.cost > 0:
                plan[key] = best
        return plan

    def total(plan: dict[str, Rung]) -> float:
        return sum(r.cost for r in plan.values())

    plan = choose(0.0)
    if total(plan) > budget_cost:
        lo, hi = 0.0, 1.0
        while total(choose(hi)) > budget_cost:
            hi *= 16
        for _ in range(60):  # bisection on a log scale once the bracket is known
            mid = math.sqrt(max(lo, hi * 1e-12) * hi)
            lo, hi = (mid, hi) if total(choose(mid)) > budget_cost else (lo, mid)
            if hi <= lo * (1 + 1e-6):
                break
        plan = choose(hi)
    while True:
        left = budget_cost - total(plan)
        moves = [(key, r) for key, rungs in affordable.items() for r in rungs
                 if r.saved > _saved(plan, key) and r.cost - _cost(plan, key) <= left]
        if not moves:
            return plan, total(plan)
        key, rung = max(moves, key=lambda m: (m[1].saved - _saved(plan, m[0]))
                        / max(m[1].cost - _cost(plan, m[0]), 1e-300))
        plan[key] = rung


def _saved(plan: dict[str, Rung], key: str) -> float:
    return plan[key].saved if key in plan else 0


def _cost(plan: dict[str, Rung], key: str) -> float:
    return plan[key].cost if key in plan else 0.0
