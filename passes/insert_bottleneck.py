"""The insert-bottleneck pass: a thin layer over ``optimizer.bottleneck.insert_bottlenecks``."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from optimizer.bottleneck import insert_bottlenecks
from optimizer.bottleneck.latency import cost_in_use, cost_model
from optimizer.decisions import BottleneckDecision
from optimizer.inputs import prepare_feeds
from optimizer.pipeline import GraphPass, register_pass


@register_pass("insert-bottleneck", exact=False)
class InsertBottleneck(GraphPass):
    """Insert 1x1 channel bottlenecks in Conv/Gemm layers wider than their information (approximate, budgeted).

    ``max_error`` bounds the error of every model output in ``metric`` (``max-rel``: max|d| / max|y|,
    ``rms``, ``cosine``, ``top1``; see ``optimizer.bottleneck.metrics``) over the calibration inputs
    (``calibration``: input name -> samples along the leading axis; None: seeded random inputs);
    the ranks are allocated over all layers at once against that budget. ``held_apart`` (feed dicts,
    one per run, never fitted to: ``optimize`` passes the inputs it verifies on) vetoes layers until the model
    is within ``held_apart_budget`` on it too (see ``optimizer.bottleneck.engine``).
    ``relu_bottleneck`` puts a ReLU after each inserted 1x1 (exact CReLU where still below
    break-even, else measured). Each considered layer lands in ``stats.decisions``. A GraphPass:
    the budget is spent over the whole model at once, so a single layer's rewrite has no meaning alone.

    Within one pipeline run the pass works once: a later sweep that finds the graph as the pass
    left it does nothing, so the budget is not spent twice against a moving reference.
    """

    max_error: float = 1e-2
    calibration: Mapping[str, np.ndarray] | None = None
    relu_bottleneck: bool = False
    seed: int = 0
    samples: int = 8
    metric: str = "max-rel"
    #: what a factorization must save: "macs", or "onnxruntime" latency measured per layer; None: the
    #: default, onnxruntime when importable, else MACs (``optimizer.bottleneck.latency.cost_in_use``)
    cost: str | None = None
    held_apart: list[Mapping[str, np.ndarray]] | None = None
    held_apart_budget: float | None = None

    def __init__(self, max_error: float | None = None, calibration: Mapping[str, np.ndarray] | None = None,
                 relu_bottleneck: bool | None = None, seed: int | None = None, samples: int | None = None,
                 metric: str | None = None, cost: str | None = None,
                 held_apart: list[Mapping[str, np.ndarray]] | None = None, held_apart_budget: float | None = None):
        for key, value in (("max_error", max_error), ("calibration", calibration),
                           ("relu_bottleneck", relu_bottleneck), ("seed", seed), ("samples", samples),
                           ("metric", metric), ("cost", cost), ("held_apart", held_apart),
                           ("held_apart_budget", held_apart_budget)):
            if value is not None:
                setattr(self, key, value)
        self._left: tuple[int, int] | None = None  # (id of graph, version) this pass last left

    def run(self, g, ctx) -> bool:
        if self._left == (id(g), g.version):
            return False
        # None: the engine counts MACs itself
        cost = cost_model(self.cost) if cost_in_use(self.cost) == "onnxruntime" else None
        before = g.copy() if cost is not None else None
        result = insert_bottlenecks(g, max_error=self.max_error, calibration=self.calibration,
                                    relu_bottleneck=self.relu_bottleneck, seed=self.seed, samples=self.samples,
                                    metric=self.metric, cost=cost,
                                    held_apart=self.held_apart,
                                    held_apart_budget=self.held_apart_budget)
        latency = self._latency(cost, before, g, [row["node"] for row in result.rows if row["applied"]])
        stats = ctx.stats
        for row in result.rows:
            stats.matches += 1
            stats.decisions.append(BottleneckDecision(**row, model_error=result.error, max_error=self.max_error,
                                                      evidence=result.evidence, metric=result.metric,
                                                      held_apart_error=result.held_apart_error,
                                                      predicted_model_error=result.predicted_error, **latency))
            if row["applied"]:
                stats.rewrites += 1
            else:
                stats.refuse(row["reason"])
        self._left = (id(g), g.version)
        return result.changed

    @staticmethod
    def _latency(cost, before, after, applied: list[str]) -> dict[str, float]:
        """The model's onnxruntime seconds before, predicted and measured after, when priced by latency."""
        if cost is None or not applied:
            return {}
        feeds, _ = prepare_feeds(before, None, None, 0)
        report = cost.end_to_end(before, after, applied, feeds)
        return {key: report[key] for key in ("seconds_before", "seconds_predicted", "seconds_after") if key in report}
