"""Where the executor's time goes: per op type and per node, with the work each node did.

``profile(graph, feeds, runs)`` runs the model ``runs`` times after a warm-up and keeps, per
node, the median of its seconds across runs, its output shapes and its MACs (the cost model's,
at the shapes the run produced), so achieved GFLOP/s (2 × MACs / seconds) shows which nodes
run far below what BLAS gives the big ones. The total is the median wall time of ``run``
itself; what the nodes do not account for is the executor's own overhead (feeds, scope,
output copies). ``ninopt run --profile`` prints it; ``optimizer.profile`` returns it. (Named
``profiling``: a submodule ``profile`` would shadow the ``optimizer.profile()`` function, as
``verify.py`` once shadowed ``optimizer.verify()``.)
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from optimizer.cost import node_macs
from optimizer.executor import Executor
from optimizer.ir import Graph


@dataclass
class NodeTiming:
    name: str
    op_type: str
    seconds: float  # median over the runs
    output_shapes: list[tuple[int, ...] | None]
    macs: int | None

    @property
    def gflops(self) -> float | None:
        """Achieved GFLOP/s, a multiply-add counted as 2 operations; None where MACs are unknown."""
        if self.macs is None or self.seconds <= 0:
            return None
        return 2 * self.macs / self.seconds / 1e9

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "op_type": self.op_type, "seconds": self.seconds,
                "output_shapes": [list(s) if s is not None else None for s in self.output_shapes],
                "macs": self.macs, "gflops": self.gflops}


@dataclass
class OpTypeTiming:
    op_type: str
    nodes: int
    seconds: float
    share: float  # of the measured total
    macs: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"op_type": self.op_type, "nodes": self.nodes, "seconds": self.seconds, "share": self.share,
                "macs": self.macs}


@dataclass
class Profile:
    """Per-node timings of one model on the executor (medians over ``runs`` runs)."""

    total_seconds: float  # median wall time of Executor.run
    runs: int
    nodes: list[NodeTiming] = field(default_factory=list)

    @property
    def node_seconds(self) -> float:
        return sum(n.seconds for n in self.nodes)

    def by_op_type(self) -> list[OpTypeTiming]:
        """Op types, slowest first."""
        groups: dict[str, list[NodeTiming]] = {}
        for n in self.nodes:
            groups.setdefault(n.op_type, []).append(n)
        rows = []
        for op_type, members in groups.items():
            seconds = sum(n.seconds for n in members)
            macs = None if any(n.macs is None for n in members) else sum(n.macs for n in members)
            rows.append(OpTypeTiming(op_type, len(members), seconds, seconds / self.total_seconds
                                     if self.total_seconds > 0 else 0.0, macs))
        return sorted(rows, key=lambda r: -r.seconds)

    def slowest(self, count: int = 10) -> list[NodeTiming]:
        return sorted(self.nodes, key=lambda n: -n.seconds)[:count]

    def to_dict(self) -> dict[str, Any]:
        return {"total_seconds": self.total_seconds, "node_seconds": self.node_seconds, "runs": self.runs,
                "by_op_type": [r.to_dict() for r in self.by_op_type()],
                "slowest": [n.to_dict() for n in self.slowest()], "nodes": [n.to_dict() for n in self.nodes]}


def profile(graph: Graph, feeds: Mapping[str, np.ndarray], runs: int = 3) -> Profile:
    """Profile ``graph`` on ``feeds``: one warm-up run, then ``runs`` timed ones."""
    executor = Executor(graph)
    executor.run(feeds)
    walls, per_run = [], []
    for _ in range(max(1, runs)):
        started = time.perf_counter()
        _, timings = executor.run_timed(feeds)
        walls.append(time.perf_counter() - started)
        per_run.append(timings)
    shapes: dict[str, Any] = {name: np.shape(value) for name, value in feeds.items()}
    shapes.update((name, graph.shape(name)) for name in graph.initializers)
    # Constant nodes run once per executor, not in a timed run: their values give their shapes
    shapes.update((name, np.shape(value)) for node in graph.nodes if node.is_constant_op
                  for name in node.outputs if (value := graph.const(name)) is not None)
    for node, _, outputs in per_run[0]:
        shapes.update((name, shape) for name, shape in zip(node.outputs, outputs) if name)
    nodes = []
    for i, (node, _, outputs) in enumerate(per_run[0]):
        seconds = statistics.median(run[i][1] for run in per_run)
        nodes.append(NodeTiming(node.name or (node.outputs[0] if node.outputs else node.op_type), node.op_type,
                                seconds, [tuple(s) if s is not None else None for s in outputs],
                                node_macs(graph, node, shapes)))
    return Profile(statistics.median(walls), len(per_run), nodes)
