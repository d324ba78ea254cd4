"""The inputs bottlenecks are measured on, and the error the budget is counted in.

Calibration data (or seeded random inputs drawn as verification draws them) split into one
feed per sample; errors are verification's max|d| / max|y|, taken over all samples at once.
"""

from __future__ import annotations

import numpy as np

from optimizer import verification
from optimizer.inputs import choose_input_shapes, random_inputs, split_runs
from optimizer.ir import Graph


def random_feeds(graph: Graph, samples: int, seed: int) -> list[dict[str, np.ndarray]]:
    """Seeded inputs, one feed dict per sample, drawn as verification draws them and at the shapes it
    chooses for dynamic dims (a symbolic H or W of 1 breaks real detectors and recognizers)."""
    shapes = choose_input_shapes(graph, seed=seed).shapes
    return [random_inputs(graph, shapes, seed + i) for i in range(samples)]


def calibration_feeds(graph: Graph, calibration, samples: int, seed: int) -> tuple[list[dict], str]:
    """Per-sample feeds: a calibration dict (its leading axis split into the model's batch) or random."""
    if calibration is None:
        return random_feeds(graph, samples, seed), "random"
    names = graph.feed_inputs()
    missing = [n for n in names if n not in calibration]
    if missing:
        raise ValueError(f"calibration lacks input(s) {', '.join(missing)}")
    # a dynamic batch takes one sample per feed
    runs = split_runs(graph, {n: np.asarray(calibration[n]) for n in names}, "the calibration data", dynamic_batch=1)
    dtypes = {n: graph.tensors[n].dtype for n in names if n in graph.tensors and graph.tensors[n].dtype is not None}
    return [{n: v.astype(dtypes[n]) if n in dtypes else v for n, v in feed.items()} for feed in runs.feeds], \
        "calibration"


def relative_error(reference: list[np.ndarray], approx: list[np.ndarray]) -> float:
    """Verification's max|d| / max|y| (the budget's metric) over all samples at once: one array per
    sample each, the differences taken in float64 so float32 outputs lose nothing to round-off."""
    truth = np.concatenate([np.ravel(y) for y in reference])
    value = np.concatenate([np.ravel(a) for a in approx]).astype(np.float64)
    return verification.relative_error(value, truth, np.ones(truth.shape, bool))
