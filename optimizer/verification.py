"""Compare two graphs on the same inputs: per-output error metrics, the tolerance that would pass, a verdict.

(Named ``verification`` rather than DESIGN.md's ``verify.py``: a submodule ``optimizer.verify``
would rebind the package attribute and shadow the public ``optimizer.verify()`` function as
soon as anything imported it.)

``a`` is the reference (usually the model before a rewrite) and ``b`` the candidate. An
output passes when every element satisfies ``|b - a| <= atol + rtol * |a|`` (numpy's
``allclose`` rule, NaN matching NaN), with per-output tolerances where given. Besides the
verdict the report says by how much: max |Δ|, max |Δ| / max |a|, cosine similarity,
arg-max agreement for outputs with a class axis, and the smallest atol / rtol that would
have passed, so a failing check never just "cries wolf".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from optimizer.errors import NinoptError
from optimizer.executor import Executor, ResourceLimitError, default_max_tensor_bytes
from optimizer.ir import Graph


@dataclass
class OutputReport:
    """Metrics and verdict of one output."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    atol: float
    rtol: float
    passed: bool
    message: str
    max_abs: float = 0.0
    max_rel: float = 0.0
    cosine: float = 1.0
    argmax_agreement: float | None = None
    min_atol: float = 0.0  # smallest atol passing with rtol = 0 (= max |Δ|)
    min_rtol: float = 0.0  # smallest rtol passing with this output's atol
    min_rtol_alone: float = 0.0  # smallest rtol passing with atol = 0

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "shape": list(self.shape), "dtype": self.dtype, "passed": self.passed,
                "atol": self.atol, "rtol": self.rtol, "max_abs": json_number(self.max_abs), "max_rel": json_number(self.max_rel),
                "cosine": json_number(self.cosine), "argmax_agreement": self.argmax_agreement,
                "min_atol": json_number(self.min_atol), "min_rtol": json_number(self.min_rtol),
                "min_rtol_alone": json_number(self.min_rtol_alone), "message": self.message}


@dataclass
class VerifyReport:
    outputs: list[OutputReport]
    inputs: dict[str, tuple[tuple[int, ...], str]] = field(default_factory=dict)  # name -> (shape, dtype)
    seed: int | None = None  # None when all inputs were given

    @property
    def passed(self) -> bool:
        return all(o.passed for o in self.outputs)

    def failures(self) -> list[OutputReport]:
        """Failing outputs; each carries a one-sentence ``message``."""
        return [o for o in self.outputs if not o.passed]

    def worst_failure(self) -> str | None:
        """A clause naming the failing output furthest off by relative error; None when all pass."""
        failures = self.failures()
        if not failures:
            return None
        worst = max(failures, key=lambda o: o.max_rel)
        return f"output {worst.name!r} is off by relative {worst.max_rel:.3g}"

    def __getitem__(self, name: str) -> OutputReport:
        for o in self.outputs:
            if o.name == name:
                return o
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {"passed": self.passed, "seed": self.seed,
                "inputs": {k: {"shape": list(s), "dtype": d} for k, (s, d) in self.inputs.items()},
                "outputs": [o.to_dict() for o in self.outputs]}


def json_number(x: float) -> float | str:
    """JSON has no inf/nan: those become strings."""
    return x if math.isfinite(x) else str(x)


# ---------------------------------------------------------------------- inputs
def random_inputs(graph: Graph, shapes: Mapping[str, tuple[int, ...]] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for every fed graph input: floats ~ N(0, 1), ints in [0, 10), bools fair coins.

    Dynamic or symbolic dimensions come from ``shapes`` (whole shapes per input name); a
    symbolic dimension pinned by one input's shape is reused by the others.
    """
    shapes = dict(shapes or {})
    feeds = graph.feed_inputs()
    unknown = [n for n in shapes if n not in feeds]
    if unknown:
        raise NinoptError(f"--shape names {', '.join(map(repr, unknown))}, which the model does not take as "
                          f"input(s); its inputs are {', '.join(map(repr, feeds)) or 'none'}.")
    declared = {name: graph.tensors[name].shape if name in graph.tensors else None for name in feeds}
    bound: dict[str, int] = {}
    for name, given in shapes.items():
        _check_given_shape(name, tuple(int(d) for d in given), declared[name], bound)
    rng = np.random.default_rng(seed)
    result = {}
    for name in feeds:
        info = graph.tensors.get(name)
        dtype = info.dtype if info is not None else None
        if dtype is None:
            raise NinoptError(f"Input {name!r} has no numeric element type, so no random value can be made for it; "
                              f"pass the input explicitly.")
        shape = tuple(int(d) for d in shapes[name]) if name in shapes else _resolve(name, declared[name], bound)
        nbytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        if nbytes > default_max_tensor_bytes():
            raise ResourceLimitError(f"Input {name!r} of shape {shape} would take {nbytes:,} bytes, more than the "
                                     f"executor's limit of {default_max_tensor_bytes():,} bytes.")
        result[name] = _random(rng, shape, dtype)
    return result


def _check_given_shape(name, given, declared, bound) -> None:
    if declared is None:
        return
    if len(given) != len(declared):
        raise NinoptError(f"--shape for {name!r} has rank {len(given)}, but the input has rank {len(declared)}.")
    for axis, (g, d) in enumerate(zip(given, declared)):
        if isinstance(d, int) and g != d:
            raise NinoptError(f"--shape for {name!r} sets axis {axis} to {g}, but the model fixes it at {d}.")
        if isinstance(d, str) and d:
            if bound.setdefault(d, g) != g:
                raise NinoptError(f"Dimension {d!r} is given as both {bound[d]} and {g}.")


def _resolve(name, declared, bound) -> tuple[int, ...]:
    if declared is None:
        raise NinoptError(f"Input {name!r} has no declared shape; pass it with --shape {name}:d0xd1x...")
    dims = []
    for axis, d in enumerate(declared):
        if isinstance(d, int) and d > 0:
            dims.append(d)
        elif isinstance(d, str) and d in bound:
            dims.append(bound[d])
        else:
            what = (f"size {d}" if isinstance(d, int) else f"dimension {d!r}") if d is not None and d != "" \
                else "an unnamed dynamic dimension"
            raise NinoptError(f"Input {name!r} has {what} on axis {axis}; pass its shape with --shape {name}:d0xd1x...")
    return tuple(dims)


def _random(rng, shape, dtype) -> np.ndarray:
    if dtype.kind == "f":
        return rng.standard_normal(shape).astype(dtype)
    if dtype.kind in "iu":
        return rng.integers(0, 10, size=shape).astype(dtype)
    if dtype.kind == "b":
        return rng.random(shape) < 0.5
    raise NinoptError(f"Cannot make random inputs of type {dtype}; pass the input explicitly.")


# ---------------------------------------------------------------------- comparing
def verify(a: Any, b: Any, *, inputs: Mapping[str, np.ndarray] | None = None,
           shapes: Mapping[str, tuple[int, ...]] | None = None, seed: int = 0, atol: float = 1e-5,
           rtol: float = 1e-5, per_output_atol: Mapping[str, float] | None = None,
           per_output_rtol: Mapping[str, float] | None = None) -> VerifyReport:
    """Run reference ``a`` and candidate ``b`` on the same inputs and judge every output of ``a``.

    Inputs not given in ``inputs`` are drawn by ``random_inputs(a, shapes, seed)``.
    """
    from optimizer import onnx_io

    a, b = onnx_io.load(a), onnx_io.load(b)
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
    feeds, used_seed = prepare_feeds(a, inputs, shapes, seed)
    ref = Executor(a).run(feeds)
    got = Executor(b).run(feeds)
    reports = [compare(name, ref[name], got[name], per_output_atol.get(name, atol), per_output_rtol.get(name, rtol))
               for name in a.outputs]
    return VerifyReport(reports, _describe(feeds), used_seed)


def prepare_feeds(graph: Graph, inputs: Mapping[str, np.ndarray] | None = None,
                  shapes: Mapping[str, tuple[int, ...]] | None = None, seed: int = 0) -> tuple[dict, int | None]:
    """The inputs to run ``graph`` on: those given, the rest seeded random; and the seed used (None if unused)."""
    given = dict(inputs or {})
    if all(name in given for name in graph.feed_inputs()):
        return given, None
    drawn = random_inputs(graph, {k: v for k, v in (shapes or {}).items() if k not in given}
                          | {k: np.shape(v) for k, v in given.items() if k in graph.feed_inputs()}, seed)
    return drawn | given, seed


def within_relative_error(reference: Mapping[str, np.ndarray], candidate: Mapping[str, np.ndarray],
                          tolerance: float, feeds: Mapping[str, np.ndarray], seed: int | None) -> VerifyReport:
    """Judge outputs by max |Δ| / max |reference| <= ``tolerance`` (the budget of exact rewrites).

    That is ``compare`` with rtol 0 and atol = tolerance * max |reference| per output, so the
    report carries the usual metrics and minimum passing tolerances.
    """
    reports = []
    for name, ref in reference.items():
        finite = np.abs(np.nan_to_num(np.asarray(ref, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0))
        reports.append(compare(name, ref, candidate[name], tolerance * float(finite.max(initial=0.0)), 0.0))
    return VerifyReport(reports, _describe(feeds), seed)


def _describe(feeds: Mapping[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (tuple(np.shape(v)), str(np.asarray(v).dtype)) for k, v in feeds.items()}


def compare(name: str, ref: np.ndarray, got: np.ndarray, atol: float, rtol: float) -> OutputReport:
    """Metrics and verdict for one output (``ref`` is the reference value)."""
    ref, got = np.asarray(ref), np.asarray(got)
    if ref.shape != got.shape:
        return OutputReport(name, ref.shape, str(ref.dtype), atol, rtol, False,
                            f"Output {name!r} has shape {got.shape} instead of {ref.shape}.",
                            math.inf, math.inf, 0.0, None, math.inf, math.inf, math.inf)
    r, g = ref.astype(np.float64), got.astype(np.float64)
    both_nan = np.isnan(r) & np.isnan(g)
    diff = np.where(both_nan, 0.0, np.abs(g - r))
    diff = np.where(np.isnan(diff), np.inf, diff)  # NaN on one side only: infinitely wrong
    mag = np.where(both_nan, 0.0, np.abs(r))
    max_abs = float(diff.max(initial=0.0))
    scale = float(np.nan_to_num(mag, posinf=0.0).max(initial=0.0))
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else math.inf)
    min_rtol = _needed_rtol(diff, mag, atol)
    min_rtol_alone = _needed_rtol(diff, mag, 0.0)
    passed = bool(np.all(diff <= atol + rtol * mag))
    report = OutputReport(name, ref.shape, str(ref.dtype), atol, rtol, passed, "", max_abs, max_rel,
                          _cosine(r, g), _argmax_agreement(ref, got), max_abs, min_rtol, min_rtol_alone)
    report.message = _message(report)
    return report


def _needed_rtol(diff: np.ndarray, mag: np.ndarray, atol: float) -> float:
    """Smallest rtol with diff <= atol + rtol * mag everywhere (nudged one ulp up so re-checking passes)."""
    over = diff > atol
    if not over.any():
        return 0.0
    if np.any(over & (mag == 0)) or not np.all(np.isfinite(diff[over])):
        return math.inf
    need = float(((diff[over] - atol) / mag[over]).max())
    while np.any(diff > atol + need * mag):  # float round-off in the product
        need = float(np.nextafter(need * (1 + 1e-15), math.inf))
    return need


def _cosine(r: np.ndarray, g: np.ndarray) -> float:
    r, g = np.nan_to_num(r.reshape(-1)), np.nan_to_num(g.reshape(-1))
    nr, ng = float(np.linalg.norm(r)), float(np.linalg.norm(g))
    if nr == 0 and ng == 0:
        return 1.0
    if nr == 0 or ng == 0:
        return 0.0
    return float(np.dot(r, g) / (nr * ng))


def _argmax_agreement(ref: np.ndarray, got: np.ndarray) -> float | None:
    """Fraction of rows (all axes but the last) whose arg-max agrees; None without a class axis."""
    if ref.ndim == 0 or ref.shape[-1] <= 1 or ref.size == 0 or ref.dtype.kind not in "fiu":
        return None
    rows_r, rows_g = ref.reshape(-1, ref.shape[-1]), got.reshape(-1, got.shape[-1])
    return float(np.mean(rows_r.argmax(axis=1) == rows_g.argmax(axis=1)))


def _message(o: OutputReport) -> str:
    if o.passed:
        return f"Output {o.name!r} matches within atol={o.atol:g}, rtol={o.rtol:g} (max |diff| {o.max_abs:.3g})."
    return (f"Output {o.name!r} differs by up to {o.max_abs:.3g} (relative {o.max_rel:.3g}), beyond atol={o.atol:g} "
            f"and rtol={o.rtol:g}; it would pass with atol={o.min_atol:.3g} or rtol={o.min_rtol:.3g}.")
