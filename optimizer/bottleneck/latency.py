"""What a factorization costs: onnxruntime latency measured in isolation, or MACs as the fallback.

MACs alone mislead: on a random-weight SqueezeNet the MAC-optimal bottlenecks give 1.13x fewer
MACs and 0.81x the onnxruntime speed, because every extra small layer has a fixed cost (a
kernel launch, a pass over memory) that MACs do not see. So a candidate is priced by running
it: the layer as it is (its Conv/Gemm node alone) and as factored (the nodes the engine would
write, with the fitted weights) each become a one-input ONNX model that onnxruntime times at
the layer's real input shape, between two depthwise 1x1s that stand for the network around it
(``single_layer``: a rank off onnxruntime's channel blocking breaks its NCHWc runs; on SqueezeNet
that added 16 reorders and made a model with fewer MACs 15% slower). Timings are cached by a shape signature (op, attributes, weight
shapes, input shape, structure and rank), since a network repeats its layer shapes.

Both cost models share one interface, so the engine needs no branch:

* ``layer_cost(graph, node, x_shape)``: the node as it is, in ``unit``;
* ``factored_cost(graph, node, fit, x_shape)``: the nodes ``fit`` would replace it with;
* ``saving(graph, node, fit, x_shape)``: what factoring saves; keep the fit only when > 0;
* ``models_seconds(models)``: end-to-end onnxruntime latency of each, runs interleaved so load
  from elsewhere on the machine hits them alike (None for ``MacCost``);
* ``end_to_end(before, after)``: predicted and measured end-to-end figures for the report.

Times are the fastest of repeated runs, not the median: on a shared machine the slower runs
measure the neighbours (medians of one model moved by 2x between runs here; minima by ~10%).

``cost_in_use(name)`` is the one place that settles which cost a run prices by: None (the default
everywhere: ``--cost``, ``BottleneckOptions``, the pass) means onnxruntime when it is importable,
else MACs, and onnxruntime asked for but not importable is MACs too. ``cost_model(name)`` builds
that model; a ``MacCost`` that replaces onnxruntime says so in its ``note``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import onnx

from optimizer.cost import analyze_costs
from optimizer.errors import NinoptError
from optimizer.ir import Graph, Node
from optimizer.onnx_io import to_model_proto
from optimizer.oracle import onnxruntime_available, serialize

#: The timed layer's input and output inside its context (``single_layer``).
LAYER_INPUT, LAYER_OUTPUT = "layer_input", "layer_output"
#: A timed run of a single layer should last about this long (see ``LatencyCost._time``) ...
RUN_SECONDS = 2e-3
#: ... with at most this many copies of it.
MAX_COPIES = 64

COSTS = ("macs", "onnxruntime")


def cost_in_use(name: str | None = None) -> str:
    """The cost a run prices by: ``name`` checked; None and "onnxruntime" mean onnxruntime latency when
    onnxruntime is importable, else MACs (timing makes decisions depend on the machine's load: pin "macs"
    where they must be reproducible)."""
    if name is not None and name not in COSTS:
        raise NinoptError(f"unknown cost {name!r}; choose from {', '.join(COSTS)}.")
    return "onnxruntime" if name != "macs" and onnxruntime_available() else "macs"


def cost_model(name: str | None = None, **options) -> MacCost | LatencyCost:
    """The cost model ``cost_in_use(name)`` names."""
    if cost_in_use(name) == "onnxruntime":
        return LatencyCost(**options)
    return MacCost(note="" if name == "macs" else "onnxruntime is not importable, so savings are counted in MACs")


def single_layer(graph: Graph, node: Node, x_shape: tuple[int, ...], context: bool = False) -> Graph:
    """``node`` alone in a graph of its own, its constants copied: input ``x`` of ``x_shape``, output ``y``.

    With ``context`` a 2-D Conv sits between two depthwise 1x1 convolutions (a multiply per value),
    as inside a CNN: onnxruntime keeps runs of convolutions in its blocked NCHWc layout and pays a
    reorder wherever a run breaks, for example at a rank that is not a multiple of the block
    (8 floats with AVX2); timed alone, both versions would pay the reorders at their ends alike.
    """
    tiny = Graph(dict(graph.opsets))
    tiny.ir_version = graph.ir_version
    x_info = tiny.tensor("x")
    x_info.elem_type, x_info.shape = onnx.TensorProto.FLOAT, tuple(x_shape)
    tiny.inputs.append("x")
    weights = [tiny.add_initializer(graph.const(t), t) if t else "" for t in node.inputs[1:]]
    context = context and node.op_type == "Conv" and len(x_shape) == 4
    x, y = (LAYER_INPUT, LAYER_OUTPUT) if context else ("x", "y")
    if context:
        _depthwise(tiny, "x", x, x_shape[1])
    tiny.add_node(node.op_type, [x] + weights, [y], dict(node.attrs), name=node.name or "layer", domain=node.domain)
    if context:
        _depthwise(tiny, y, "y", graph.const(node.inputs[1]).shape[0])
    tiny.tensor("y").elem_type = onnx.TensorProto.FLOAT
    tiny.outputs.append("y")
    return tiny


def _depthwise(tiny: Graph, x: str, y: str, channels: int) -> None:
    w = tiny.add_initializer(np.ones((channels, 1, 1, 1), np.float32), tiny.fresh_name("depthwise"))
    tiny.add_node("Conv", [x, w], [y], {"group": channels, "kernel_shape": [1, 1]}, name=tiny.fresh_name("depthwise"))


def factored_layer(graph: Graph, node: Node, fit, x_shape: tuple[int, ...], context: bool = False) -> Graph:
    """``single_layer`` with ``fit`` written in by the engine's own insertion code."""
    from optimizer.bottleneck.engine import _Insertion  # at call time: the engine may import this module

    tiny = single_layer(graph, node, x_shape, context)
    layer = next(n for n in tiny.nodes if n.name == (node.name or "layer"))
    _Insertion(layer, fit, rung=None).apply(tiny)  # the rung only matters for rollback
    for name in [t for t in tiny.initializers if tiny.num_uses(t) == 0]:
        tiny.remove_initializer(name)
    return tiny


def _attrs_key(attrs: dict | None) -> tuple:
    return tuple(sorted((k, repr(v)) for k, v in (attrs or {}).items()))


def layer_signature(graph: Graph, node: Node, x_shape) -> tuple:
    """What the layer's cost depends on: op, attributes, weight shapes and input shape (read from the
    weights themselves: a folded Constant's tensor may carry no declared shape)."""
    weights = tuple(graph.const(t).shape if t else None for t in node.inputs[1:])
    return ("layer", node.op_type, node.domain, _attrs_key(node.attrs), weights, tuple(x_shape))


def factored_signature(graph: Graph, node: Node, fit, x_shape) -> tuple:
    """``layer_signature`` plus the structure, rank, ReLU and the shape of every factor."""
    factors = tuple((role, w.shape, b is None, _attrs_key(a)) for role, w, b, a in fit.weights)
    return ("factored", layer_signature(graph, node, x_shape), fit.structure, repr(fit.rank),
            fit.relu != "none", factors)


class _Cost:
    """The shared half: per-layer records, savings and the end-to-end report."""

    name = ""
    unit = ""

    def __init__(self, note: str = ""):
        self.note = note
        #: layer (node name, else its output) -> (cost as it is, cost factored) of the fit ``saving``
        #: priced last for it: price the chosen fit last (a cache hit) so ``end_to_end`` predicts from it
        self.layers: dict[str, tuple[float, float]] = {}

    def layer_cost(self, graph: Graph, node: Node, x_shape) -> float:
        raise NotImplementedError

    def factored_cost(self, graph: Graph, node: Node, fit, x_shape) -> float:
        raise NotImplementedError

    def saving(self, graph: Graph, node: Node, fit, x_shape) -> float:
        """Cost saved by factoring ``node`` as ``fit`` at input shape ``x_shape`` (> 0: keep it)."""
        before = self.layer_cost(graph, node, x_shape)
        after = self.factored_cost(graph, node, fit, x_shape)
        self.layers[node.name or node.outputs[0]] = (before, after)
        return before - after

    def models_seconds(self, models: list, feeds: dict[str, np.ndarray] | None = None) -> list[float] | None:
        return None

    def end_to_end(self, before: Graph, after: Graph, applied: list[str] | None = None,
                   feeds: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
        """The report's figures: layers' predicted saving (``applied``: the kept layers' names,
        default every layer priced) and, for latency, end-to-end seconds on ``feeds`` predicted and measured."""
        names = list(self.layers) if applied is None else [n for n in applied if n in self.layers]
        saved = sum(self.layers[n][0] - self.layers[n][1] for n in names)
        report = {"cost": self.name, "unit": self.unit, "note": self.note, "predicted_saving": saved}
        measured = self.models_seconds([before, after], feeds)
        if measured is not None:
            # a layer timed alone carries a session's fixed cost and its timing context, so the kept
            # layers can add up to more than the whole model: they cannot save more than all of it
            timed_alone = sum(self.layers[n][0] for n in names)
            share = min(1.0, measured[0] / timed_alone) if timed_alone > 0 else 1.0
            report.update(seconds_before=measured[0], seconds_predicted=measured[0] - saved * share,
                          seconds_after=measured[1])
        return report


class MacCost(_Cost):
    """Multiply-accumulates (``optimizer.cost``): the fallback when onnxruntime is not importable."""

    name, unit = "macs", "MACs"

    def layer_cost(self, graph: Graph, node: Node, x_shape) -> float:
        return float(analyze_costs(single_layer(graph, node, x_shape)).total_macs)

    def factored_cost(self, graph: Graph, node: Node, fit, x_shape) -> float:
        return float(analyze_costs(factored_layer(graph, node, fit, x_shape)).total_macs)


class LatencyCost(_Cost):
    """onnxruntime latency in seconds: one intra-op thread, all graph optimizations, fastest of runs.

    Each new signature gets one warm-up run, then at least 3 and at most ``repeats`` timed runs,
    no new one past ``seconds_per_layer`` (so a 20 µs layer gets many runs, a 30 ms one few);
    once ``budget`` seconds of timing have gone into this model, a new signature gets a single
    timed run. ``margin`` is the share of the layer's time a factorization must save beyond the
    measured difference (timing noise), so ``saving`` is ``(1 - margin) * before - after``.
    """

    name, unit = "onnxruntime", "s"

    def __init__(self, *, repeats: int = 200, seconds_per_layer: float = 0.05, budget: float = 5.0,
                 margin: float = 0.05, seed: int = 0, note: str = ""):
        super().__init__(note)
        self.repeats, self.seconds_per_layer, self.budget = repeats, seconds_per_layer, budget
        self.margin, self.seed = margin, seed
        self.spent = 0.0  # seconds of timing so far, sessions included
        self.timings = 0  # signatures timed (the cache's misses)
        self._cache: dict[tuple, float] = {}

    def layer_cost(self, graph: Graph, node: Node, x_shape) -> float:
        key = layer_signature(graph, node, x_shape)
        if key not in self._cache:
            self._cache[key] = self._time(single_layer(graph, node, x_shape, context=True), x_shape)
        return self._cache[key]

    def factored_cost(self, graph: Graph, node: Node, fit, x_shape) -> float:
        key = factored_signature(graph, node, fit, x_shape)
        if key not in self._cache:
            self._cache[key] = self._time(factored_layer(graph, node, fit, x_shape, context=True), x_shape)
        return self._cache[key]

    def saving(self, graph: Graph, node: Node, fit, x_shape) -> float:
        before = self.layer_cost(graph, node, x_shape)
        return super().saving(graph, node, fit, x_shape) - self.margin * before

    def _session(self, model: Graph | onnx.ModelProto):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        serialized = serialize(model) if isinstance(model, Graph) else model.SerializeToString()
        return ort.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])

    def _time(self, tiny: Graph, x_shape) -> float:
        """Seconds per run of ``tiny``; a layer faster than ``RUN_SECONDS`` is timed as up to
        ``MAX_COPIES`` parallel copies in one model, so the fixed cost of a ``session.run`` call and its jitter
        (tens of µs, as much as a small layer) are spread over the copies."""
        start = time.perf_counter()
        feed = {"x": np.random.default_rng(self.seed).standard_normal(x_shape).astype(np.float32)}
        proto = to_model_proto(tiny)
        session = self._session(proto)
        once, = _fastest_runs([session], feed, 1, 1, start)
        copies = min(MAX_COPIES, max(1, int(RUN_SECONDS / once)))
        if copies > 1:
            session = self._session(_replicated(proto, copies))
        seconds = _fastest_runs([session], feed, *self._runs(start))[0] / copies
        self.spent += time.perf_counter() - start
        self.timings += 1
        return seconds

    def _runs(self, start: float) -> tuple[int, int, float]:
        """(fewest, most, stop-after deadline) timed runs for the next measurement."""
        if self.spent >= self.budget:
            return 1, 1, start
        return min(3, self.repeats), self.repeats, start + self.seconds_per_layer

    def models_seconds(self, models: list, feeds: dict[str, np.ndarray] | None = None) -> list[float]:
        """End-to-end onnxruntime latency of each model (path, ModelProto or Graph; same inputs) on
        ``feeds`` (default: seeded random inputs at the shapes verification chooses for the first)."""
        from optimizer.inputs import prepare_feeds
        from optimizer.onnx_io import load

        graphs = [load(m) for m in models]
        feeds, _ = prepare_feeds(graphs[0], feeds, seed=self.seed)
        sessions = [self._session(g) for g in graphs]
        return _fastest_runs(sessions, feeds, 5, self.repeats, time.perf_counter() + self.budget / 2)


def _replicated(proto: onnx.ModelProto, copies: int) -> onnx.ModelProto:
    """``proto`` with its nodes and weights repeated ``copies`` times side by side, all reading input
    ``x``; each copy has its own weights and outputs, so no common-subexpression pass merges them."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    nodes, weights, outputs = list(graph.node), list(graph.initializer), list(graph.output)
    inputs = {vi.name for vi in graph.input}
    for i in range(1, copies):
        def rename(name: str) -> str:
            return name if not name or name in inputs else f"{name}__{i}"

        for tensor in weights:
            copy = graph.initializer.add()
            copy.CopyFrom(tensor)
            copy.name = rename(tensor.name)
        for node in nodes:
            copy = graph.node.add()
            copy.CopyFrom(node)
            copy.name = rename(node.name)
            copy.input[:] = [rename(t) for t in node.input]
            copy.output[:] = [rename(t) for t in node.output]
        for vi in outputs:
            copy = graph.output.add()
            copy.CopyFrom(vi)
            copy.name = rename(vi.name)
    return model


def _fastest_runs(sessions: list, feed: dict[str, np.ndarray], fewest: int, most: int, deadline: float) -> list[float]:
    """Per session, the fastest wall time of ``session.run`` after one warm-up, the sessions taking
    turns: at least ``fewest`` rounds, at most ``most``, no new one after ``deadline`` once ``fewest`` are done."""
    for session in sessions:
        session.run(None, feed)
    fastest = [math.inf] * len(sessions)
    rounds = 0
    while rounds < most and (rounds < fewest or time.perf_counter() < deadline):
        for i, session in enumerate(sessions):
            start = time.perf_counter()
            session.run(None, feed)
            fastest[i] = min(fastest[i], time.perf_counter() - start)
        rounds += 1
    return fastest
