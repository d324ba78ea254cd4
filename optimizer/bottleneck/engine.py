"""The insertion engine behind the insert-bottleneck pass: walk, fit, insert, verify, roll back.

The graph is walked node by node on two sets of activations (the original network's and the
approximated one's) so every layer is fitted on what its factored predecessors really give it;
the fits are then written into the graph, checked end to end, and rolled back largest layer
error first until every model output is within budget.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from optimizer.bottleneck.calibration import calibration_feeds, output_error
from optimizer.bottleneck.fitting import Fit, LayerFitter
from optimizer.bottleneck.layers import Layer, layer_of, linear_bottleneck_blocker
from optimizer.cost import node_macs
from optimizer.executor import run_node, unsupported_ops
from optimizer.ir import Graph, Node
from optimizer.values import Subgraph

#: Ops known to produce non-negative outputs (a ReLU after a non-negative projection of them is exact).
NONNEGATIVE_OPS = frozenset({"Relu", "Sigmoid", "Softmax", "Abs", "Exp", "Softplus"})


@dataclass
class BottleneckResult:
    """What ``insert_bottlenecks`` did: one row per Conv/Gemm considered, and the measured end-to-end error."""

    graph: Graph
    rows: list[dict[str, Any]]
    error: float  # end-to-end max|d|/max|y| on the calibration inputs (0 when nothing was inserted)
    max_error: float
    evidence: str  # "calibration" or "random"
    rolled_back: list[str] = field(default_factory=list)

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
        return {"max_error": self.max_error, "error": self.error, "evidence": self.evidence,
                "rolled_back": self.rolled_back, "layers": self.rows}


@dataclass
class _Insertion:
    node: Node  # the replaced node (re-added as is on rollback)
    fit: Fit
    added: list[Node] = field(default_factory=list)
    initializers: list[str] = field(default_factory=list)

    def apply(self, g: Graph) -> None:
        node, fit = self.node, self.fit
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
        self.node = g.add_like(self.node)


def _nonnegative(g: Graph, tensor: str) -> bool:
    prod = g.producer(tensor)
    return prod is not None and prod.op_type in NONNEGATIVE_OPS


def _has_control_flow(g: Graph) -> bool:
    return any(n.implicit_inputs or any(isinstance(v, Subgraph) for v in n.attrs.values()) for n in g.nodes)


def _walk_node(g: Graph, node: Node, env: dict) -> list[list[np.ndarray]]:
    """The node's outputs on every sample: ``env`` maps each tensor to one value per sample."""
    opset = g.opset(node.domain)
    samples = len(next(iter(env.values())))
    outs: list[list[np.ndarray]] = [[] for _ in node.outputs]
    for s in range(samples):
        for i, value in enumerate(run_node(node, [env[t][s] if t else None for t in node.inputs], opset)):
            outs[i].append(value)
    return outs


def insert_bottlenecks(graph: Graph, *, max_error: float, calibration: Mapping[str, np.ndarray] | None = None,
                       relu_bottleneck: bool = False, seed: int = 0, samples: int = 8) -> BottleneckResult:
    """Factor the Conv/Gemm layers of ``graph`` (modified in place) within ``max_error`` at every output.

    ``max_error`` bounds max|d| / max|y| of every model output over the calibration inputs
    (``calibration``: input name -> array whose leading axis holds samples; None: ``samples``
    seeded standard-normal inputs). Rows name each considered layer with its structure, rank,
    MACs before/after, measured layer error and, for refusals, the reason.
    """
    blocker = "the graph has control flow (If/Loop/Scan), which the engine does not walk" \
        if _has_control_flow(graph) else None
    unsupported = unsupported_ops(graph) if blocker is None else []
    if unsupported:
        blocker = f"the executor cannot run {unsupported[0].op_type} (node {unsupported[0].node!r}), so nothing can be measured"
    if blocker:
        return BottleneckResult(graph, [{"node": "(graph)", "op": "", "macs_before": None, "macs_after": None,
                                         "nodes_before": 0, "nodes_after": 0, "applied": False, "reason": blocker}],
                                0.0, max_error, "none")
    feeds, evidence = calibration_feeds(graph, calibration, samples, seed)
    rng = np.random.default_rng(seed)
    live = graph.live_nodes()
    order = [n for n in graph.toposort() if n.id in live]
    last_use: dict[str, int] = {}
    for i, node in enumerate(order):
        for t in node.inputs:
            last_use[t] = i
    keep = set(graph.outputs)
    env_o: dict[str, list[np.ndarray]] = {n: [f[n] for f in feeds] for n in graph.feed_inputs()}
    env_o.update({n: [graph.const(n)] * len(feeds) for n in graph.initializers})
    env_a = dict(env_o)
    rows: list[dict[str, Any]] = []
    insertions: list[_Insertion] = []
    opset = graph.opset()
    for i, node in enumerate(order):
        outs_o = _walk_node(graph, node, env_o)
        layer, reason = layer_of(graph, node) if node.op_type in ("Conv", "Gemm") else (None, None)
        fit = None
        if node.op_type in ("Conv", "Gemm"):
            reason = reason or linear_bottleneck_blocker(graph, node)
            row = {"node": node.name or node.outputs[0], "op": node.op_type}
            if reason is None:
                xs_o, xs_a = env_o[node.inputs[0]], env_a[node.inputs[0]]
                fitter = LayerFitter(layer, xs_o, xs_a, outs_o[0], opset, max_error, relu_bottleneck,
                                      _nonnegative(graph, node.inputs[0]), rng)
                fit, reason = fitter.best()
                row.update(_row(layer, fitter, fit))
            else:
                shapes = {t: env_o[t][0].shape for t in node.inputs if t in env_o}
                shapes[node.outputs[0]] = outs_o[0][0].shape
                macs = node_macs(graph, node, shapes)
                row.update(macs_before=macs, macs_after=macs, nodes_before=1, nodes_after=1)
            row.update(applied=fit is not None, reason=reason or "")
            rows.append(row)
        if fit is not None:
            insertions.append(_Insertion(node, fit))
            env_a.update({node.outputs[0]: fit.outputs})
        elif all(env_a[t] is env_o[t] for t in node.inputs if t):
            env_a.update({o: v for o, v in zip(node.outputs, outs_o) if o})
        else:
            env_a.update({o: v for o, v in zip(node.outputs, _walk_node(graph, node, env_a)) if o})
        env_o.update({o: v for o, v in zip(node.outputs, outs_o) if o})
        for t in node.inputs:
            if last_use.get(t) == i and t not in keep and t not in graph.initializers:
                env_o.pop(t, None)
                env_a.pop(t, None)
    reference = {o: env_o[o] for o in graph.outputs}
    for ins in insertions:
        ins.apply(graph)
    error = output_error(reference, graph, feeds) if insertions else 0.0
    rolled_back = []
    by_row = {r["node"]: r for r in rows}
    for ins in sorted(insertions, key=lambda s: -s.fit.error):
        if error <= max_error:
            break
        ins.revert(graph)
        row = by_row[ins.node.name or ins.node.outputs[0]]
        row.update(applied=False, reason="rolled back: the model went over budget at its outputs",
                   macs_after=row["macs_before"])
        rolled_back.append(row["node"])
        error = output_error(reference, graph, feeds)
    for ins in insertions:
        if ins.node.name not in rolled_back:
            for name in ins.node.inputs[1:]:
                if name and name in graph.initializers and graph.num_uses(name) == 0:
                    graph.remove_initializer(name)
    return BottleneckResult(graph, rows, error, max_error, evidence, rolled_back)


def _row(layer: Layer, fitter: LayerFitter, fit: Fit | None) -> dict[str, Any]:
    row = {"shape": [layer.cout, layer.cin, *layer.w.shape[2:]], "macs_before": fitter.macs,
           "macs_after": fitter.macs, "nodes_before": 1, "nodes_after": 1}
    if fit is not None:
        row.update(structure=fit.structure, rank=fit.rank, basis=fit.basis, relu=fit.relu, macs_after=fit.macs,
                   nodes_after=fit.nodes, layer_error=fit.error, predicted_error=fit.predicted)
    return row

