"""The error measures a bottleneck budget can be given in (``--metric``), and how they add up.

Every measure compares a model output's reference values with approximate ones over all
samples at once (one array per sample, differences in float64):

* ``max-rel``: max|d| / max|y|, verification's measure and the default (the strictest);
* ``rms``: ||d|| / ||y||;
* ``cosine``: 1 - cos(y, y') of the flattened samples;
* ``top1``: the fraction of arg-max positions over the last axis that disagree (classifiers).

The global allocation adds errors of independently factored layers: perturbations of different
layers are roughly uncorrelated, so squared norms add (``rms``, and ``max-rel`` as its
worst-case stand-in), while ``cosine`` (about half the squared relative error orthogonal to y)
and ``top1`` (a count) add as they are. ``additive``/``from_additive`` map to and from that scale.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from optimizer.bottleneck.calibration import relative_error
from optimizer.errors import NinoptError
from optimizer.verification import NOISE_FACTOR

METRICS = ("max-rel", "rms", "cosine", "top1")
_SQUARED = frozenset({"max-rel", "rms"})


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise NinoptError(f"unknown error metric {metric!r}; choose one of {', '.join(METRICS)}.")
    return metric


def layer_rms_target(metric: str, error: float) -> float:
    """The relative RMS error of one layer's output that spends ``error`` in ``metric`` when it reaches
    the output unchanged (what rank predictions from spectra are compared with): max-rel keeps its
    number as before, 1 - cos is about half the squared relative error, top1 has no such equivalent."""
    if check_metric(metric) == "top1":
        raise NinoptError("top1 disagreement cannot be predicted from spectra; analyze with max-rel, rms or cosine.")
    return math.sqrt(2 * error) if metric == "cosine" else error


def metric_error(metric: str, reference: list[np.ndarray], approx: list[np.ndarray]) -> float:
    """The error of ``approx`` against ``reference`` (one array per sample each) in ``metric``."""
    if metric == "max-rel":
        return relative_error(reference, approx)
    if metric == "top1":
        disagree = [np.argmax(y, axis=-1) != np.argmax(a, axis=-1) for y, a in zip(reference, approx)]
        return float(np.mean(np.concatenate([np.ravel(d) for d in disagree])))
    y = np.concatenate([np.ravel(r) for r in reference]).astype(np.float64)
    a = np.concatenate([np.ravel(x) for x in approx]).astype(np.float64)
    if metric == "rms":
        scale = float(np.linalg.norm(y))
        worst = float(np.linalg.norm(a - y))
        return worst / scale if scale > 0 else (0.0 if worst == 0 else float("inf"))
    if metric == "cosine":
        norms = float(np.linalg.norm(y)) * float(np.linalg.norm(a))
        if norms == 0:
            return 0.0 if not (y.any() or a.any()) else 1.0
        return max(0.0, 1.0 - float(y @ a) / norms)
    raise ValueError(check_metric(metric))


def model_error(metric: str, reference: dict[str, list[np.ndarray]], outputs: dict[str, list[np.ndarray]]) -> float:
    """The worst error over model outputs (name -> one array per sample)."""
    return max((metric_error(metric, ref, outputs[name]) for name, ref in reference.items()), default=0.0)


def additive(metric: str, error: float) -> float:
    """The error on the scale where independent layers' errors add."""
    return error * error if metric in _SQUARED else error


def from_additive(metric: str, total: float) -> float:
    return float(np.sqrt(total)) if metric in _SQUARED else total


def noise_factor(metric: str) -> float:
    """How many of the original's own noise floors in ``metric`` rounding alone may cost: verification's
    NOISE_FACTOR, which is in relative error, so squared for 1 - cos (about half the squared relative error)."""
    return NOISE_FACTOR ** 2 if metric == "cosine" else NOISE_FACTOR


def judge_in_metric(report, metric: str, budget: float, original: dict[str, np.ndarray],
                    got: dict[str, np.ndarray], noise_floors: Mapping[str, float]):
    """``report`` (a VerifyReport whose outputs were checked for shape and non-finite agreement) with each
    output's verdict taken in ``metric`` instead: the candidate ``got`` against the ``original`` model's
    outputs, within ``budget``, or within what rounding alone may cost where the oracle's own noise floor
    in the metric (``noise_floors``, per output) is that large: onnxruntime's Sigmoid rounds to 2^-24
    absolute, so a detector's map of tiny probabilities is 0.05 from itself in cosine between two of its
    own runs. The final check of an approximate (bottleneck) result."""
    for out in report.outputs:
        if not out.passed:  # a shape or inf/NaN disagreement stays a failure whatever the metric
            continue
        error = metric_error(metric, [original[out.name]], [got[out.name]])
        floor = noise_floors.get(out.name, 0.0)
        allowed = max(budget, noise_factor(metric) * floor)
        out.error, out.allowed, out.noise_floor, out.passed = error, allowed, floor, error <= allowed
        verdict = "within" if out.passed else "over"
        out.message = f"Output {out.name!r} is {error:.3g} from the original in the {metric} metric, {verdict} "
        if allowed > budget:
            out.message += (f"{allowed:.3g}, what rounding alone may cost there ({noise_factor(metric):g} x the "
                            f"oracle's own noise floor of {floor:.3g} in this metric; the budget is {budget:.3g}).")
        else:
            out.message += f"the budget {budget:.3g}."
    return report
