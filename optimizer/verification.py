"""Compare models on the same inputs against a float64 truth; per-output metrics and a verdict.

(Named ``verification`` rather than DESIGN.md's ``verify.py``: a submodule ``optimizer.verify``
would rebind the package attribute and shadow the public ``optimizer.verify()`` function as
soon as anything imported it.)

**The criterion.** The reference model (the original, or ``A`` of ``ninopt verify A B``) is run
twice on the executor: in its own precision and in float64 (the *truth*). The error of a run
is max |run - truth| / max |truth| over the positions where all values are finite. The
reference's own error is the *noise floor*: what rounding in its precision costs on these
inputs. A candidate passes when, for every output, its error against the truth is at most
``max(tolerance, NOISE_FACTOR x noise floor)`` and it is non-finite (inf/NaN) at exactly the
positions, and with exactly the values, where the reference is. A rewrite that only reorders
rounding stays within a few noise floors; a wrong one does not, however noisy the model.

Besides the verdict the report says by how much: max |d| and max |d| / max |a| between
candidate and reference, cosine similarity (finite values), arg-max agreement for outputs
with a class axis, the smallest atol / rtol that would have passed ``numpy.allclose``, and
how many positions were non-finite. Outputs given an explicit atol/rtol are judged by the
allclose rule against the reference instead of the criterion. The inputs both models run on
(shapes for dynamic dims, seeded values) come from ``optimizer.inputs``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from optimizer.errors import NinoptError
from optimizer.executor import Executor
from optimizer.inputs import Runs, prepare_runs
from optimizer.ir import Graph
from optimizer.onnx_io import load

#: The default floor of the criterion: relative error (max |d| / max |truth|) always allowed.
EXACT_TOLERANCE = 1e-5

#: k of the criterion: an exact rewrite may be up to k times further from the float64 truth than
#: the original model is. Measured (tests/benchmarks/bench_verification.py): exact pipelines on the
#: randomized light zoo, the fixtures (also in float16) and the real models land at most 2.9 noise
#: floors off (PP-OCRv4 rec), 1.9 in onnxruntime; of the fuzzer's 500 networks none fails, and
#: ratios above 16 occur only under noise floors of 1e-8, where the tolerance floor decides. A
#: weight scaled by (1 + 1e-4) in a model with a noise floor of 1.8e-7 lands 182 noise floors off.
NOISE_FACTOR = 16.0


@dataclass(frozen=True)
class Criterion:
    """Error against the truth <= max(tolerance, factor x noise floor), per output."""

    tolerance: float = EXACT_TOLERANCE
    factor: float = NOISE_FACTOR

    def allowed(self, noise_floor: float) -> float:
        return max(self.tolerance, self.factor * noise_floor)

    def to_dict(self) -> dict[str, Any]:
        return {"rule": "error vs float64 truth <= max(tolerance, factor * noise floor)",
                "tolerance": self.tolerance, "factor": self.factor}


@dataclass
class OutputReport:
    """Metrics and verdict of one output (``error``/``noise_floor`` are None when judged by atol/rtol)."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    atol: float | None
    rtol: float | None
    passed: bool
    message: str
    max_abs: float = 0.0  # candidate vs reference, finite positions
    max_rel: float = 0.0  # max_abs / max |reference|
    cosine: float = 1.0
    argmax_agreement: float | None = None
    min_atol: float = 0.0  # smallest atol passing with rtol = 0 (= max |d|)
    min_rtol: float = 0.0  # smallest rtol passing with this output's atol (or 0)
    min_rtol_alone: float = 0.0  # smallest rtol passing with atol = 0
    noise_floor: float | None = None  # the reference's error against the truth
    error: float | None = None  # the candidate's error against the truth
    allowed: float | None = None  # what the criterion allowed this output
    nonfinite: int = 0  # positions left out of the metrics because a value there is inf or NaN
    nonfinite_mismatches: int = 0  # of those, positions where reference and candidate differ
    first_mismatch: tuple[int, ...] | None = None

    @property
    def ratio(self) -> float | None:
        """error / noise floor: how many noise floors the candidate is from the truth."""
        if self.error is None or self.noise_floor is None:
            return None
        if self.noise_floor > 0:
            return self.error / self.noise_floor
        return 0.0 if self.error == 0 else math.inf

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "passed": self.passed,
                "noise_floor": _json_or_none(self.noise_floor), "error": _json_or_none(self.error),
                "ratio": _json_or_none(self.ratio), "allowed": _json_or_none(self.allowed),
                "atol": self.atol, "rtol": self.rtol, "max_abs": json_number(self.max_abs), "max_rel": json_number(self.max_rel),
                "cosine": json_number(self.cosine), "argmax_agreement": self.argmax_agreement,
                "min_atol": json_number(self.min_atol), "min_rtol": json_number(self.min_rtol),
                "min_rtol_alone": json_number(self.min_rtol_alone), "nonfinite": self.nonfinite,
                "nonfinite_mismatches": self.nonfinite_mismatches,
                "first_mismatch": list(self.first_mismatch) if self.first_mismatch is not None else None,
                "message": self.message}


@dataclass
class VerifyReport:
    outputs: list[OutputReport]
    inputs: dict[str, tuple[tuple[int, ...], str]] = field(default_factory=dict)  # name -> (shape, dtype) of a run
    seed: int | None = None  # None when all inputs were given
    criterion: Criterion | None = None  # None when every output was judged by explicit atol/rtol
    oracle: str = "executor"  # what ran the models: "executor" or "onnxruntime"
    runs: int = 1  # runs of the model (a fixed batch given more samples); outputs stacked across them

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def failures(self) -> list[OutputReport]:
        """Failing outputs; each carries a one-sentence ``message``."""
        return [o for o in self.outputs if not o.passed]

    def worst_failure(self) -> str | None:
        """A clause naming the failing output furthest off; None when all pass."""
        failures = self.failures()
        if not failures:
            return None
        worst = max(failures, key=lambda o: (o.nonfinite_mismatches > 0, _worst_key(o)))
        return worst.message[0].lower() + worst.message[1:].rstrip(".")

    @property
    def worst_error(self) -> float:
        """The largest error against the truth (max_rel for outputs judged by atol/rtol)."""
        return max((_worst_key(o) for o in self.outputs), default=0.0)

    def __getitem__(self, name: str) -> OutputReport:
        for o in self.outputs:
            if o.name == name:
                return o
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "oracle": self.oracle, "seed": self.seed, "runs": self.runs,
                "criterion": self.criterion.to_dict() if self.criterion is not None else {"rule": "allclose"},
                "inputs": {k: {"shape": list(s), "dtype": d} for k, (s, d) in self.inputs.items()},
                "outputs": [o.to_dict() for o in self.outputs]}


def _worst_key(o: OutputReport) -> float:
    return o.error if o.allowed is not None else o.max_rel


def _times(ratio: float | None) -> str:
    return "infinitely many times" if ratio is None or not math.isfinite(ratio) else f"{ratio:.3g} times"


def _json_or_none(x: float | None) -> float | str | None:
    return None if x is None else json_number(x)


def json_number(x: float) -> float | str:
    """JSON has no inf/nan: those become strings."""
    return x if math.isfinite(x) else str(x)


# ---------------------------------------------------------------------- comparing
def verify(a: Any, b: Any, *, inputs: Runs | Mapping[str, np.ndarray] | None = None,
           shapes: Mapping[str, tuple[int, ...]] | None = None, seed: int = 0, tolerance: float = EXACT_TOLERANCE,
           atol: float | None = None, rtol: float | None = None, per_output_atol: Mapping[str, float] | None = None,
           per_output_rtol: Mapping[str, float] | None = None) -> VerifyReport:
    """Run reference ``a`` (in its precision and in float64, the truth) and candidate ``b`` on the same
    inputs and judge every output of ``a`` by the criterion, ``tolerance`` being its floor.

    An output given an atol or rtol (for all outputs, or by name) is judged by
    ``|b - a| <= atol + rtol * |a|`` instead (the one not given is 0). Inputs not given in
    ``inputs`` (a dict, or ``Runs``: each run's outputs are judged together) are drawn by
    ``optimizer.inputs.random_inputs(a, shapes, seed)``.
    """
    a, b = load(a), load(b)
    if set(a.feed_inputs()) != set(b.feed_inputs()):
        raise NinoptError(f"The models take different inputs ({', '.join(a.feed_inputs())} vs "
                          f"{', '.join(b.feed_inputs())}), so they cannot be compared.")
    missing = [o for o in a.outputs if o not in b.outputs]
    if missing:
        raise NinoptError(f"The candidate model lacks output(s) {', '.join(map(repr, missing))}.")
    per_output_atol, per_output_rtol = dict(per_output_atol or {}), dict(per_output_rtol or {})
    stray = [n for n in list(per_output_atol) + list(per_output_rtol) if n not in a.outputs]
    if stray:
        raise NinoptError(f"Per-output tolerance names {', '.join(map(repr, stray))}, which is not an output; "
                          f"the outputs are {', '.join(map(repr, a.outputs))}.")
    runs, used_seed = prepare_runs(a, inputs, shapes, seed)
    reference = Reference.measure(a, runs, used_seed)
    got = runs.outputs(Executor(b).run)
    criterion = Criterion(tolerance)
    reports = []
    for name in a.outputs:
        explicit = atol is not None or rtol is not None or name in per_output_atol or name in per_output_rtol
        limits = {"atol": per_output_atol.get(name, atol or 0.0), "rtol": per_output_rtol.get(name, rtol or 0.0)} \
            if explicit else {}
        reports.append(judge(name, reference.truth[name], reference.outputs[name], got[name], criterion, **limits))
    judged_by_criterion = any(o.allowed is not None for o in reports)
    return VerifyReport(reports, _describe(runs), used_seed, criterion if judged_by_criterion else None,
                        runs=len(runs.feeds))


@dataclass
class Reference:
    """The reference model's outputs on the verification inputs (its runs' outputs stacked when several):
    in its own precision and in float64 (the truth)."""

    runs: Runs
    seed: int | None
    outputs: dict[str, np.ndarray]
    truth: dict[str, np.ndarray]

    @classmethod
    def measure(cls, graph: Graph, runs: Runs, seed: int | None) -> Reference:
        return cls(runs, seed, runs.outputs(Executor(graph).run),
                   runs.outputs(Executor(graph, compute_dtype=np.float64).run))

    def noise_floors(self, measure: Callable[[np.ndarray, np.ndarray], float] | None = None) -> dict[str, float]:
        """Per output: the reference's own error against the truth, in ``measure(truth, value)`` (default
        ``finite_relative_error``, the criterion's)."""
        measure = measure or finite_relative_error
        return {name: measure(self.truth[name], value) for name, value in self.outputs.items()}

    def judge(self, candidate: Mapping[str, np.ndarray], criterion: Criterion, *, oracle: str = "executor",
              baseline: Mapping[str, np.ndarray] | None = None,
              oracle_noise: Mapping[str, float] | None = None) -> VerifyReport:
        """Every output of ``candidate`` by the criterion.

        Another runtime (``oracle``) rounds differently: ``oracle_noise`` is its own noise floor
        per output, and the larger of it and the executor's is used. With ``baseline`` (that
        runtime's outputs of the reference model) the candidate is measured against the
        baseline instead of the truth, so a runtime that cannot run float64 needs no executor
        value to be trusted.
        """
        floors = self.noise_floors()
        for name, extra in (oracle_noise or {}).items():
            floors[name] = max(floors[name], extra)
        reports = []
        for name in self.outputs:
            if baseline is None:
                reports.append(judge(name, self.truth[name], self.outputs[name], candidate[name], criterion,
                                     noise_floor=floors[name]))
            else:
                reports.append(judge(name, baseline[name], baseline[name], candidate[name], criterion,
                                     noise_floor=floors[name], against=f"the original in {oracle}"))
        return VerifyReport(reports, _describe(self.runs), self.seed, criterion, oracle, len(self.runs.feeds))


def _describe(runs: Runs) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (tuple(np.shape(v)), str(np.asarray(v).dtype)) for k, v in runs.first.items()}


def finite_relative_error(truth: np.ndarray, value: np.ndarray) -> float:
    """``relative_error`` of ``value`` against ``truth`` over the positions where both are finite."""
    t, v = np.asarray(truth, np.float64), np.asarray(value, np.float64)
    return relative_error(v, t, np.isfinite(t) & np.isfinite(v))


def relative_error(value: np.ndarray, truth: np.ndarray, mask: np.ndarray) -> float:
    """max |value - truth| / max |truth| over the positions in ``mask`` (the criterion's measure).

    Relative to the output's largest magnitude rather than element by element: elements near
    zero, whose own relative error is meaningless, cannot dominate it, and one wrong element
    among millions still shows at full size.
    """
    worst = float(np.abs(value[mask] - truth[mask]).max(initial=0.0))
    scale = float(np.abs(truth[mask]).max(initial=0.0))
    return _ratio(worst, scale)


def _ratio(worst: float, scale: float) -> float:
    if scale > 0:
        return worst / scale
    return 0.0 if worst == 0 else math.inf


def judge(name: str, truth: np.ndarray, ref: np.ndarray, got: np.ndarray, criterion: Criterion | None = None, *,
          atol: float | None = None, rtol: float | None = None, noise_floor: float | None = None,
          against: str = "the float64 truth") -> OutputReport:
    """Metrics and verdict for one output: candidate ``got`` against reference ``ref`` and ``truth``.

    Non-finite values must agree position by position (inf with the same sign, NaN with NaN);
    every metric is taken over the positions where truth, reference and candidate are all
    finite. The verdict is the criterion's, or ``|got - ref| <= atol + rtol * |ref|`` when an
    atol or rtol is given. ``noise_floor`` overrides the reference's measured error;
    ``against`` names what ``truth`` is, for the message.
    """
    ref, got = np.asarray(ref), np.asarray(got)
    explicit = atol is not None or rtol is not None
    atol, rtol = (atol or 0.0, rtol or 0.0) if explicit else (None, None)
    if ref.shape != got.shape:
        return OutputReport(name, ref.shape, str(ref.dtype), atol, rtol, False,
                            f"Output {name!r} has shape {got.shape} instead of {ref.shape}.",
                            math.inf, math.inf, 0.0, None, math.inf, math.inf, math.inf)
    r, g, t = ref.astype(np.float64), got.astype(np.float64), np.asarray(truth, np.float64)
    finite_r, finite_g = np.isfinite(r), np.isfinite(g)
    same_special = (r == g) | (np.isnan(r) & np.isnan(g))
    mismatch = ~(finite_r & finite_g) & ~same_special
    mask = finite_r & finite_g & np.isfinite(t)
    diff, mag = np.abs(g[mask] - r[mask]), np.abs(r[mask])
    max_abs = float(diff.max(initial=0.0))
    noise = relative_error(r, t, mask) if noise_floor is None else noise_floor
    error = relative_error(g, t, mask)
    allowed = None if explicit else criterion.allowed(noise)
    within = bool(np.all(diff <= atol + rtol * mag)) if explicit else error <= allowed
    first = tuple(int(i) for i in np.argwhere(mismatch)[0]) if mismatch.any() else None
    report = OutputReport(name, ref.shape, str(ref.dtype), atol, rtol, within and first is None, "", max_abs,
                          _ratio(max_abs, float(mag.max(initial=0.0))), _cosine(r[mask], g[mask]),
                          _argmax_agreement(ref, got), max_abs, _needed_rtol(diff, mag, atol or 0.0),
                          _needed_rtol(diff, mag, 0.0), noise, error, allowed, int(ref.size - mask.sum()),
                          int(mismatch.sum()), first)
    report.message = _message(report, r, g, against)
    return report


def _needed_rtol(diff: np.ndarray, mag: np.ndarray, atol: float) -> float:
    """Smallest rtol with diff <= atol + rtol * mag everywhere (nudged one ulp up so re-checking passes)."""
    over = diff > atol
    if not over.any():
        return 0.0
    if np.any(over & (mag == 0)):
        return math.inf
    need = float(((diff[over] - atol) / mag[over]).max())
    while np.any(diff > atol + need * mag):  # float round-off in the product
        need = float(np.nextafter(need * (1 + 1e-15), math.inf))
    return need


def _cosine(r: np.ndarray, g: np.ndarray) -> float:
    """Cosine similarity of the finite values (1 when both are all zeros)."""
    nr, ng = float(np.linalg.norm(r)), float(np.linalg.norm(g))
    if nr == 0 and ng == 0:
        return 1.0
    if nr == 0 or ng == 0:
        return 0.0
    return float(np.clip(np.dot(r, g) / (nr * ng), -1.0, 1.0))


def _argmax_agreement(ref: np.ndarray, got: np.ndarray) -> float | None:
    """Fraction of rows (all axes but the last) whose arg-max agrees; None without a class axis."""
    if ref.ndim == 0 or ref.shape[-1] <= 1 or ref.size == 0 or ref.dtype.kind not in "fiu":
        return None
    rows_r, rows_g = ref.reshape(-1, ref.shape[-1]), got.reshape(-1, got.shape[-1])
    return float(np.mean(rows_r.argmax(axis=1) == rows_g.argmax(axis=1)))


def _message(o: OutputReport, ref: np.ndarray, got: np.ndarray, against: str) -> str:
    if o.nonfinite_mismatches:
        at = o.first_mismatch
        return (f"Output {o.name!r} differs where a value is inf or NaN at {o.nonfinite_mismatches} position(s), "
                f"first at {list(at)} (reference {ref[at]:g}, candidate {got[at]:g}).")
    skipped = f", leaving out {o.nonfinite} non-finite position(s)" if o.nonfinite else ""
    if o.allowed is None:
        if o.passed:
            return f"Output {o.name!r} matches within atol={o.atol:g}, rtol={o.rtol:g} (max |diff| {o.max_abs:.3g}{skipped})."
        return (f"Output {o.name!r} differs by up to {o.max_abs:.3g} (relative {o.max_rel:.3g}{skipped}), beyond "
                f"atol={o.atol:g} and rtol={o.rtol:g}; it would pass with atol={o.min_atol:.3g} or rtol={o.min_rtol:.3g}.")
    return (f"Output {o.name!r} is off by relative {o.error:.3g} from {against}, {_times(o.ratio)} the "
            f"reference's noise floor of {o.noise_floor:.3g} (allowed {o.allowed:.3g}{skipped}).")
