"""The insertion engine behind the insert-bottleneck pass: measure, allocate, refit, insert, verify, roll back.

Three phases. (1) Each candidate layer's end-to-end sensitivity is measured on its ladder of
ranks (``allocation``), and the ranks are chosen jointly within the budget. (2) The graph is
walked node by node on two sets of activations (the original network's and the approximated
one's), so every chosen layer is refitted at its rank on what its factored predecessors really
give it (asymmetric reconstruction). (3) The fits are written into the graph, checked end to end
in the budget's metric, and rolled back, largest predicted error share first, until every model
output is within budget. (4) With held-apart inputs (the ones the result will be verified on,
never fitted to), layers that do not generalize are vetoed: each kept layer's error on them
alone is measured, and the worst per unit of cost saved are rolled back until the model is
within the held-apart budget there. A single document page says little about another one:
PP-OCRv4 det calibrated on one page erred 0.34 in cosine on the next.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from optimizer.bottleneck.allocation import SENSITIVITY_SAMPLES, Rung, SensitivityProbe, allocate, \
    walk_node
from optimizer.bottleneck.calibration import calibration_feeds
from optimizer.bottleneck.fitting import Fit, LayerFitter
from optimizer.bottleneck.layers import Layer, layer_of, linear_bottleneck_blocker
from optimizer.bottleneck.metrics import additive, check_metric, from_additive, model_error
from optimizer.cost import node_macs
from optimizer.executor import Executor, unsupported_ops
from optimizer.ir import Graph, Node
from optimizer.values import Subgraph

#: Ops known to produce non-negative outputs (a ReLU after a non-negative projection of them is exact).
NONNEGATIVE_OPS = frozenset({"Relu", "Sigmoid", "Softmax", "Abs", "Exp", "Softplus"})
NO_RUNG = "no rank below break-even meets the error budget"
OUTBID = "the global allocation spent the budget on layers that save more MACs per unit of error"
#: Allocations tried before rolling layers back: each plans for the budget scaled by how far the
#: previous one's measured error was from its prediction (times REPLAN_MARGIN), since layers
#: interact beyond their solo errors.
REPLANS = 3
REPLAN_MARGIN = 0.8


@dataclass
class BottleneckResult:
    """What ``insert_bottlenecks`` did: one row per Conv/Gemm considered, and the measured end-to-end error."""

    graph: Graph
    rows: list[dict[str, Any]]
    error: float  # end-to-end error in ``metric`` on the calibration inputs (0 when nothing was inserted)
    max_error: float
    evidence: str  # "calibration" or "random"
    rolled_back: list[str] = field(default_factory=list)
    metric: str = "max-rel"
    predicted_error: float = 0.0  # the allocation's additive model of ``error``, from the solo sensitivities
    held_apart_error: float | None = None  # the error on the held-apart inputs after vetoes (None: none given)

    @property
    def changed(self) -> bool:
        return any(r["applied"] for r in self.rows)

    @property
    def macs_before(self) -> int:
        return sum(r["macs_before"] for r in self.rows)

    @property
    def macs_after(self) -> int:
        return sum(r["macs_after"] for r in self.rows)

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "max_error": self.max_error, "error": self.error,
                "predicted_error": self.predicted_error, "held_apart_error": self.held_apart_error,
                "evidence": self.evidence,
                "rolled_back": self.rolled_back, "layers": self.rows}
@dataclass
class _Insertion:
    node: Node  # the replaced node (re-added as is on rollback)
    fit: Fit
    rung: Rung  # what the allocation measured for it alone
    added: list[Node] = field(default_factory=list)
    initializers: list[str] = field(default_factory=list)

    def apply(self, g: Graph) -> None:
        # the layer as the graph holds it now (a later plan may have replaced and restored it since)
        self.node = node = g.producer(self.node.outputs[0])
        fit = self.fit
        g.remove_node(node)
        x, y = node.inputs[0], node.outputs[0]
        gemm = node.op_type == "Gemm"
        last = len(fit.weights) - 1
        for i, (role, w, b, attrs) in enumerate(fit.weights):
            out = y if i == last else g.fresh_name(f"{node.name or y}_{role}")
            if gemm:
                inputs = [x, self._init(g, w[:, :, 0, 0].T.astype(np.float32))]
                node_attrs = {}
            else:
                inputs = [x, self._init(g, w.astype(np.float32))]
                node_attrs = dict(attrs) if attrs else {}
                if attrs and "kernel_shape" in attrs:
                    node_attrs["kernel_shape"] = list(w.shape[2:])
            if b is None and gemm and g.opset(node.domain) < 11:  # Gemm's C is optional only from opset 11
                b = np.zeros(w.shape[0], np.float32)
            if b is not None:
                inputs.append(self._init(g, b.astype(np.float32)))
            name = node.name if i == last else g.fresh_name(f"{node.name or y}_{role}")
            self.added.append(g.add_node("Gemm" if gemm else "Conv", inputs, [out], node_attrs, name=name))
            x = out
            if i == 0 and role == "reduce" and fit.relu != "none":
                relu_out = g.fresh_name(f"{node.name or y}_relu")
                self.added.append(g.add_node("Relu", [x], [relu_out], name=g.fresh_name(f"{node.name or y}_relu")))
                x = relu_out

    def _init(self, g: Graph, array: np.ndarray) -> str:
        name = g.add_initializer(np.ascontiguousarray(array), g.fresh_name(f"{self.node.name or 'bottleneck'}_w"))
        self.initializers.append(name)
        return name

    def revert(self, g: Graph) -> None:
        g.remove_nodes(reversed(self.added))
        for name in self.initializers:
            g.remove_initializer(name)
        self.added, self.initializers = [], []  # so it can be applied (and reverted) again
        self.node = g.add_like(self.node)


def _nonnegative(g: Graph, tensor: str) -> bool:
    prod = g.producer(tensor)
    return prod is not None and prod.op_type in NONNEGATIVE_OPS


def _has_control_flow(g: Graph) -> bool:
    return any(n.implicit_inputs or any(isinstance(v, Subgraph) for v in n.attrs.values()) for n in g.nodes)


def insert_bottlenecks(graph: Graph, *, max_error: float, calibration: Mapping[str, np.ndarray] | None = None,
                       relu_bottleneck: bool = False, seed: int = 0, samples: int = 8,
                       metric: str = "max-rel", cost=None, held_apart: list[dict] | None = None,
                       held_apart_budget: float | None = None) -> BottleneckResult:
    """Factor the Conv/Gemm layers of ``graph`` (modified in place) within ``max_error`` at every output.

    ``max_error`` bounds the error of every model output in ``metric`` (see
    ``optimizer.bottleneck.metrics``) over the calibration inputs (``calibration``: input name ->
    array whose leading axis holds samples; None: ``samples`` seeded standard-normal inputs). Rows
    name each considered layer with its structure, rank, MACs before/after and saved, measured layer
    error, its share of the predicted end-to-end error and, for refusals, the reason. ``cost`` (a
    cost model of ``optimizer.bottleneck.latency``, e.g. onnxruntime latency) decides which
    factorizations pay and how much; None counts MACs. ``held_apart`` (feed dicts never fitted to, e.g.
    the inputs the result will be verified on) vetoes layers that do not generalize: the model must
    also be within ``held_apart_budget`` (default ``max_error``) on them.
    """
    check_metric(metric)
    blocker = "the graph has control flow (If/Loop/Scan), which the engine does not walk" \
        if _has_control_flow(graph) else None
    unsupported = unsupported_ops(graph) if blocker is None else []
    if unsupported:
        blocker = f"the executor cannot run {unsupported[0].op_type} (node {unsupported[0].node!r}), so nothing can be measured"
    if blocker:
        return BottleneckResult(graph, [{"node": "(graph)", "op": "", "macs_before": None, "macs_after": None,
                                         "nodes_before": 0, "nodes_after": 0, "applied": False, "reason": blocker}],
                                0.0, max_error, "none", metric=metric)
    feeds, evidence = calibration_feeds(graph, calibration, samples, seed)
    held_apart_reference = _outputs(graph, held_apart) if held_apart else None
    fitter_args = {"opset": graph.opset(), "relu_bottleneck": relu_bottleneck, "rng": np.random.default_rng(seed)}
    order, candidates = _candidates(graph)
    budget = additive(metric, max_error)
    sensitivities = []
    if candidates:
        probe = SensitivityProbe(graph, order, feeds[:SENSITIVITY_SAMPLES], metric, cost)
        sensitivities = [probe.measure(layer, {**fitter_args, "nonneg_input": _nonnegative(graph, layer.node.inputs[0])},
                                       budget) for layer in candidates.values()]
        del probe  # one forward pass per sample of every tensor: free it before the refit walk
    refusals = {s.node.outputs[0]: NO_RUNG if all(r.cost > budget for r in s.rungs) else OUTBID for s in sensitivities}
    share, kept = 1.0, None
    for attempt in range(REPLANS):
        plan, predicted = allocate(sensitivities, share * budget)
        rows, insertions, reference = _refit(graph, order, feeds, candidates, plan, predicted, refusals, fitter_args,
                                             cost)
        outcome = BottleneckResult(graph, rows, 0.0, max_error, evidence, metric=metric,
                                   predicted_error=from_additive(metric, predicted))
        for ins in insertions:
            ins.apply(graph)
        outcome.error = _measure(graph, metric, reference, feeds) if insertions else 0.0
        measured = additive(metric, outcome.error)
        within = outcome.error <= max_error
        if within and (kept is None or outcome.macs_after < kept[0].macs_after):
            kept = (outcome, insertions)
        last = attempt == REPLANS - 1 or not insertions or predicted <= 0 or measured <= 0 \
            or (within and measured > REPLAN_MARGIN * budget)
        if last and (kept is None or kept[0] is outcome):
            break
        for ins in reversed(insertions):
            ins.revert(graph)
        if last:  # the last plan went over budget: go back to the best one within it
            outcome, insertions = kept
            for ins in insertions:
                ins.apply(graph)
            break
        # the additive model was off by measured/predicted (either way): aim the next prediction at the budget
        share = REPLAN_MARGIN * predicted / measured
        order, candidates = _candidates(graph)
    _roll_back(outcome, insertions, reference, feeds)
    if held_apart and _veto(outcome, insertions, held_apart, held_apart_reference,
                            max_error if held_apart_budget is None else held_apart_budget):
        outcome.error = _measure(graph, metric, reference, feeds)
    _drop_replaced_weights(graph, insertions, outcome.rolled_back)
    return outcome


def _candidates(graph: Graph) -> tuple[list[Node], dict[str, Layer]]:
    """The live nodes in order, and the layers that may be factored, by output tensor."""
    live = graph.live_nodes()
    order = [n for n in graph.toposort() if n.id in live]
    candidates = {}
    for node in order:
        if node.op_type in ("Conv", "Gemm"):
            layer, _ = layer_of(graph, node)
            if layer is not None and not linear_bottleneck_blocker(graph, node):
                candidates[node.outputs[0]] = layer
    return order, candidates


def _outputs(graph: Graph, feeds: list[dict]) -> dict[str, list[np.ndarray]]:
    """Each model output, one array per feed."""
    executor = Executor(graph)
    runs = [executor.run(f) for f in feeds]
    return {o: [r[o] for r in runs] for o in graph.outputs}


def _measure(graph: Graph, metric: str, reference: dict, feeds: list[dict]) -> float:
    return model_error(metric, reference, _outputs(graph, feeds))


def _refit(graph: Graph, order: list[Node], feeds: list[dict], candidates: dict[str, Layer], plan: dict[str, Rung],
           predicted: float, refusals: dict[str, str], fitter_args: dict, cost=None):
    """Walk the graph on the original and the approximated activations, refitting each planned layer at its
    rank on the inputs its factored predecessors give it; rows, insertions and the original outputs. A
    ``cost`` model prices each refitted layer again (a cache hit), so it holds the fits chosen."""
    last_use: dict[str, int] = {}
    for i, node in enumerate(order):
        for t in node.inputs:
            last_use[t] = i
    keep = set(graph.outputs)
    count = len(feeds)
    env_o: dict[str, list[np.ndarray]] = {n: [f[n] for f in feeds] for n in graph.feed_inputs()}
    env_o.update({n: [graph.const(n)] * count for n in graph.initializers})
    env_a = dict(env_o)
    rows: list[dict[str, Any]] = []
    insertions: list[_Insertion] = []
    for i, node in enumerate(order):
        outs_o = walk_node(graph, node, env_o, count)
        fit = None
        if node.op_type in ("Conv", "Gemm"):
            row = {"node": node.name or node.outputs[0], "op": node.op_type}
            layer = candidates.get(node.outputs[0])
            if layer is not None:
                x = node.inputs[0]
                fitter = LayerFitter(layer, env_o[x], env_a[x], outs_o[0],
                                     nonneg_input=_nonnegative(graph, x), **fitter_args)
                rung = plan.get(node.outputs[0])
                fit = fitter.fit(rung.structure, rung.rank) if rung is not None else None
                if fit is not None and cost is not None:
                    cost.saving(graph, node, fit, env_o[x][0].shape)
                row.update(_row(layer, fitter, fit, rung, predicted))
                reason = "" if fit is not None else refusals[node.outputs[0]]
            else:
                layer, reason = layer_of(graph, node)
                reason = reason or linear_bottleneck_blocker(graph, node)
                shapes = {t: env_o[t][0].shape for t in node.inputs if t in env_o}
                shapes[node.outputs[0]] = outs_o[0][0].shape
                macs = node_macs(graph, node, shapes)
                row.update(macs_before=macs, macs_after=macs, nodes_before=1, nodes_after=1)
            row.update(applied=fit is not None, reason=reason or "")
            rows.append(row)
        if fit is not None:
            insertions.append(_Insertion(node, fit, plan[node.outputs[0]]))
            env_a.update({node.outputs[0]: fit.outputs})
        elif all(env_a[t] is env_o[t] for t in node.inputs if t):
            env_a.update({o: v for o, v in zip(node.outputs, outs_o) if o})
        else:
            env_a.update({o: v for o, v in zip(node.outputs, walk_node(graph, node, env_a, count)) if o})
        env_o.update({o: v for o, v in zip(node.outputs, outs_o) if o})
        for t in node.inputs:
            if last_use.get(t) == i and t not in keep and t not in graph.initializers:
                env_o.pop(t, None)
                env_a.pop(t, None)
    return rows, insertions, {o: env_o[o] for o in graph.outputs}


def _roll_back(outcome: BottleneckResult, insertions: list[_Insertion], reference: dict, feeds: list[dict]) -> None:
    """Roll back the largest predicted contributors until the model is within budget on the calibration inputs."""
    for ins in sorted(insertions, key=lambda s: (-s.rung.cost, -s.fit.error)):
        if outcome.error <= outcome.max_error:
            break
        _undo(outcome, ins, "rolled back: the model went over budget at its outputs")
        outcome.error = _measure(outcome.graph, outcome.metric, reference, feeds)


def _veto(outcome: BottleneckResult, insertions: list[_Insertion], feeds: list[dict], reference: dict,
          budget: float) -> bool:
    """Roll back kept layers, the largest error on ``feeds`` alone per unit of cost saved first, until the
    model is within ``budget`` on them (they were never fitted to, so a layer's calibration error says
    nothing of its share here). Whether any was rolled back."""
    graph, metric = outcome.graph, outcome.metric
    outcome.held_apart_error = error = _measure(graph, metric, reference, feeds)
    kept = [ins for ins in insertions if _label(ins) not in outcome.rolled_back]
    if error <= budget or not kept:
        return False
    for ins in kept:
        ins.revert(graph)
    alone = {}
    for ins in kept:
        ins.apply(graph)
        alone[_label(ins)] = _measure(graph, metric, reference, feeds)
        ins.revert(graph)
    for ins in kept:
        ins.apply(graph)
    # rolling every layer back leaves the graph the reference ran, so the loop always ends within budget
    for ins in sorted(kept, key=lambda i: -additive(metric, alone[_label(i)]) / max(i.rung.saved, 1e-30)):
        if error <= budget:
            break
        _undo(outcome, ins, f"rolled back: {alone[_label(ins)]:.3g} alone on the held-apart inputs, "
                            f"where the model must stay within {budget:.3g}")
        outcome.held_apart_error = error = _measure(graph, metric, reference, feeds)
    return True


def _undo(outcome: BottleneckResult, ins: _Insertion, reason: str) -> None:
    ins.revert(outcome.graph)
    row = next(r for r in outcome.rows if r["node"] == _label(ins))
    row.update(applied=False, reason=reason, macs_after=row["macs_before"], macs_saved=0)
    outcome.rolled_back.append(row["node"])


def _label(ins: _Insertion) -> str:
    return ins.node.name or ins.node.outputs[0]


def _drop_replaced_weights(graph: Graph, insertions: list[_Insertion], rolled_back: list[str]) -> None:
    """Remove the weights of the layers the kept insertions replaced, once nothing else reads them."""
    for ins in insertions:
        if _label(ins) not in rolled_back:
            for name in ins.node.inputs[1:]:
                if name and name in graph.initializers and graph.num_uses(name) == 0:
                    graph.remove_initializer(name)


def _row(layer: Layer, fitter: LayerFitter, fit: Fit | None, rung: Rung | None, predicted: float) -> dict[str, Any]:
    row = {"shape": [layer.cout, layer.cin, *layer.w.shape[2:]], "macs_before": fitter.macs,
           "macs_after": fitter.macs, "macs_saved": 0, "nodes_before": 1, "nodes_after": 1}
    if fit is not None:
        row.update(structure=fit.structure, rank=fit.rank, basis=fit.basis, relu=fit.relu, macs_after=fit.macs,
                   macs_saved=fitter.macs - fit.macs, nodes_after=fit.nodes, layer_error=fit.error,
                   predicted_error=fit.predicted, solo_error=rung.error,
                   error_share=rung.cost / predicted if predicted > 0 else 0.0)
    return row
