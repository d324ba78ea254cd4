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
allclose rule against the reference instead of the criterion.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from optimizer.errors import NinoptError
from optimizer.executor import Executor, ResourceLimitError, default_max_tensor_bytes
from optimizer.ir import Graph

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
    inputs: dict[str, tuple[tuple[int, ...], str]] = field(default_factory=dict)  # name -> (shape, dtype)
    seed: int | None = None  # None when all inputs were given
    criterion: Criterion | None = None  # None when every output was judged by explicit atol/rtol
    oracle: str = "executor"  # what ran the models: "executor" or "onnxruntime"

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
        return {"passed": self.passed, "oracle": self.oracle, "seed": self.seed,
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


# ---------------------------------------------------------------------- inputs
#: Sizes tried, in order, for a free spatial dim (axis 2 or 3) of a 4-D, image-like input: common
#: multiples of 32 first (a 32x32 image through a stride-32 detector leaves 1x1 maps and saturated
#: outputs, which verify little), then a small one that is cheap to try (PP-OCR rec runs only at
#: small heights), then larger ones.
SPATIAL_SIZES = (224, 320, 64, 416, 640, 32)
#: Sizes tried, in order, for any other free dim (sequence lengths, feature counts, ...).
OTHER_SIZES = (16, 64, 256, 512, 1024)
#: Executor runs the search may spend confirming candidates (every spatial size once; failing runs
#: stop at the first node that cannot take the shape, measured at 0.02-4 s on PP-OCRv4 rec).
_MAX_CONFIRM_RUNS = len(SPATIAL_SIZES)
#: Ops an integer input may pass through on its way to being compared with a constant.
_VALUE_PATH_OPS = frozenset({"Reshape", "Gather", "Cast", "Squeeze", "Unsqueeze", "Identity", "Flatten"})


@dataclass
class ShapeChoice:
    """Concrete shapes to run a model at, and which axes ninopt chose itself.

    Rule (``choose_input_shapes``): a declared size is used; a dim given by the caller is
    used; a dynamic batch is 1 (axis 0, or an unnamed dim of an input whose axis 0 is fixed);
    any other dynamic dim takes the first size the model runs with, from the model's own
    hints (metadata such as ``imgsz``, then dims its value_info or outputs pin, checked by
    shape inference) and then SPATIAL_SIZES for the spatial axes of 4-D inputs,
    OTHER_SIZES elsewhere. A symbol names one size across all inputs.
    """

    shapes: dict[str, tuple[int, ...]]
    chosen_axes: dict[str, list[int]] = field(default_factory=dict)  # input -> axes neither declared nor given
    #: The shapes that differ from (or fill in) the declared ones: what a cost analysis must pin.
    pins: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"input_shapes": {k: list(v) for k, v in self.shapes.items()}, "chosen_by_default": self.chosen_axes}


def choose_input_shapes(graph: Graph, shapes: Mapping[str, tuple[int, ...]] | None = None, *, seed: int = 0,
                        confirm: bool = True) -> ShapeChoice:
    """Concrete shapes for every fed input (see ``ShapeChoice`` for the rule).

    Unless only batch dims are free (then there is nothing to search), candidates are
    screened by strict onnx shape inference, and with ``confirm`` the first one it accepts
    must also run on the executor (on the seeded inputs ``random_inputs`` would draw) to
    non-empty, finite outputs. Raises NinoptError, asking for ``--shape``, when none does.
    """
    from optimizer import onnx_io

    shapes = {k: tuple(int(d) for d in v) for k, v in (shapes or {}).items()}
    feeds = graph.feed_inputs()
    unknown = [n for n in shapes if n not in feeds]
    if unknown:
        raise NinoptError(f"--shape names {', '.join(map(repr, unknown))}, which the model does not take as "
                          f"input(s); its inputs are {', '.join(map(repr, feeds)) or 'none'}.")
    declared = {name: graph.tensors[name].shape if name in graph.tensors else None for name in feeds}
    bound: dict[Any, int] = {}
    for name, given in shapes.items():
        _check_given_shape(name, given, declared[name], bound)
    free = _free_slots(feeds, shapes, declared, bound)
    candidates = _candidates(graph, free, declared)
    chosen_axes = {}
    for places in free.values():
        for name, axis in places:
            chosen_axes.setdefault(name, []).append(axis)

    def choice_of(sizes: dict) -> ShapeChoice:
        concrete = {name: shapes[name] if name in shapes else _resolve(name, declared[name], bound | sizes)
                    for name in feeds}
        return ShapeChoice(concrete, {name: sorted(chosen_axes[name]) for name in feeds if name in chosen_axes},
                           {name: shape for name, shape in concrete.items() if declared[name] != shape})

    if all(len(sizes) == 1 for sizes in candidates.values()):
        return choice_of({key: sizes[0] for key, sizes in candidates.items()})
    screen = onnx_io.shape_inference_accepts(graph, {})  # a model it rejects as declared tells nothing
    executor, runs = None, 0
    if confirm:
        try:
            executor = Executor(graph)
        except NinoptError:  # an op it cannot run: running the model is reported by whoever runs it next
            executor = None
    for attempt in range(max(len(sizes) for sizes in candidates.values())):
        choice = choice_of({key: sizes[min(attempt, len(sizes) - 1)] for key, sizes in candidates.items()})
        if screen and not onnx_io.shape_inference_accepts(graph, choice.shapes):
            continue
        if executor is None:
            return choice
        if runs == _MAX_CONFIRM_RUNS:
            break
        runs += 1
        try:
            with warnings.catch_warnings(), np.errstate(all="ignore"):  # a rejected candidate is not news
                warnings.simplefilter("ignore")
                outputs = executor.run(random_inputs(graph, choice.shapes, seed))
        except ResourceLimitError:
            break  # later candidates are larger
        except NinoptError:
            continue
        if all(_meaningful(v) for v in outputs.values()):
            return choice
    names = sorted({name for places in free.values() for name, _ in places})
    raise NinoptError(f"No default size runs the model for the dynamic dims of {', '.join(map(repr, names))}; "
                      f"pass the input shape(s) with --shape {names[0]}:d0xd1x...")


def _meaningful(value) -> bool:
    """An output worth verifying on: not empty, and finite (a too-small image can pool over nothing)."""
    value = np.asarray(value)
    return value.size > 0 and (value.dtype.kind != "f" or bool(np.isfinite(value).all()))


def _free_slots(feeds, shapes, declared, bound) -> dict[Any, list[tuple[str, int]]]:
    """Dynamic dims nobody fixed, grouped into slots of one size each: a symbol, or one unnamed (input, axis)."""
    free: dict[Any, list[tuple[str, int]]] = {}
    for name in feeds:
        if name in shapes:
            continue
        dims = declared[name]
        if dims is None:
            raise NinoptError(f"Input {name!r} has no declared shape; pass it with --shape {name}:d0xd1x...")
        for axis, d in enumerate(dims):
            if isinstance(d, int) and d > 0 or (isinstance(d, str) and d in bound):
                continue
            if isinstance(d, int):
                raise NinoptError(f"Input {name!r} has size {d} on axis {axis}; pass its shape with "
                                  f"--shape {name}:d0xd1x...")
            free.setdefault(_slot(name, axis, d), []).append((name, axis))
    return free


def _slot(name: str, axis: int, d) -> Any:
    return d if isinstance(d, str) and d else (name, axis)


def _candidates(graph: Graph, free, declared) -> dict[Any, tuple[int, ...]]:
    """Sizes to try per slot, best first: 1 for a batch, hinted then default sizes otherwise.

    An unnamed dynamic dim of an input whose axis 0 is fixed is a batch too: recurrent
    states put the batch on axis 1 (``state [2, ?, 128]``).
    """
    hinted = _metadata_image_size(graph)
    result = {}
    for key, places in free.items():
        if any(axis == 0 for _, axis in places) or (isinstance(key, tuple) and isinstance(declared[key[0]][0], int)):
            result[key] = (1,)
        else:
            spatial = [axis for name, axis in places if len(declared[name]) == 4 and axis >= 2]
            hint = (hinted[spatial[0] - 2],) if spatial and hinted else ()
            result[key] = tuple(dict.fromkeys(hint + (SPATIAL_SIZES if spatial else OTHER_SIZES)))
    return result


def _metadata_image_size(graph: Graph) -> tuple[int, int] | None:
    """(height, width) from metadata exporters write, e.g. Ultralytics' ``imgsz: [320, 320]``."""
    import ast

    shell = getattr(graph.source, "shell", None)
    for prop in getattr(shell, "metadata_props", ()):
        if prop.key.lower() not in ("imgsz", "img_size", "image_size", "input_size"):
            continue
        try:
            value = ast.literal_eval(prop.value)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            continue
        sizes = [value] * 2 if isinstance(value, int) else list(value) if isinstance(value, (list, tuple)) else []
        if len(sizes) == 2 and all(isinstance(v, int) and v > 0 for v in sizes):
            return sizes[0], sizes[1]
    return None


def value_hints(graph: Graph) -> dict[str, np.ndarray]:
    """Integer inputs the model compares with a constant (silero-vad's ``Equal(sr, 16000)``): that constant.

    A random integer would take a branch no real input takes; the compared value is the one
    the model expects. Follows the input through reshaping ops only.
    """
    hints = {}
    for name in graph.feed_inputs():
        info = graph.tensors.get(name)
        if info is None or info.dtype is None or info.dtype.kind not in "iu":
            continue
        frontier = [name]
        while frontier and name not in hints:
            tensor = frontier.pop()
            for node in graph.consumers(tensor):
                if node.op_type == "Equal":
                    other = node.inputs[1] if node.inputs[0] == tensor else node.inputs[0]
                    value = graph.const(other)
                    if value is not None and value.size == 1:
                        hints[name] = value.reshape(())
                        break
                elif node.op_type in _VALUE_PATH_OPS and node.inputs[0] == tensor:
                    frontier.append(node.outputs[0])
    return hints


def random_inputs(graph: Graph, shapes: Mapping[str, tuple[int, ...]] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded inputs for every fed graph input: floats ~ N(0, 1), ints in [0, 10), bools fair coins.

    Shapes are ``shapes`` (whole shapes per input name) where given, else chosen by
    ``choose_input_shapes``. An integer input the model compares with a constant gets that
    constant (``value_hints``).
    """
    if any(name not in (shapes or {}) for name in graph.feed_inputs()):
        shapes = choose_input_shapes(graph, shapes, seed=seed).shapes
    hints = value_hints(graph)
    rng = np.random.default_rng(seed)
    result = {}
    for name in graph.feed_inputs():
        info = graph.tensors.get(name)
        dtype = info.dtype if info is not None else None
        if dtype is None:
            raise NinoptError(f"Input {name!r} has no numeric element type, so no random value can be made for it; "
                              f"pass the input explicitly.")
        shape = tuple(int(d) for d in shapes[name])
        nbytes = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
        if nbytes > default_max_tensor_bytes():
            raise ResourceLimitError(f"Input {name!r} of shape {shape} would take {nbytes:,} bytes, more than the "
                                     f"executor's limit of {default_max_tensor_bytes():,} bytes.")
        value = _random(rng, shape, dtype)  # drawn even when hinted, so other inputs keep their values
        result[name] = np.full(shape, hints[name], dtype) if name in hints else value
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


def _resolve(name, declared, sizes) -> tuple[int, ...]:
    """The input's shape: declared sizes, and the size of its slot for every dynamic dim."""
    return tuple(d if isinstance(d, int) and d > 0 else sizes[_slot(name, axis, d)] for axis, d in enumerate(declared))


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
           shapes: Mapping[str, tuple[int, ...]] | None = None, seed: int = 0, tolerance: float = EXACT_TOLERANCE,
           atol: float | None = None, rtol: float | None = None, per_output_atol: Mapping[str, float] | None = None,
           per_output_rtol: Mapping[str, float] | None = None) -> VerifyReport:
    """Run reference ``a`` (in its precision and in float64, the truth) and candidate ``b`` on the same
    inputs and judge every output of ``a`` by the criterion, ``tolerance`` being its floor.

    An output given an atol or rtol (for all outputs, or by name) is judged by
    ``|b - a| <= atol + rtol * |a|`` instead (the one not given is 0). Inputs not given in
    ``inputs`` are drawn by ``random_inputs(a, shapes, seed)``.
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
    reference = Reference.measure(a, feeds, used_seed)
    got = Executor(b).run(feeds)
    criterion = Criterion(tolerance)
    reports = []
    for name in a.outputs:
        explicit = atol is not None or rtol is not None or name in per_output_atol or name in per_output_rtol
        limits = {"atol": per_output_atol.get(name, atol or 0.0), "rtol": per_output_rtol.get(name, rtol or 0.0)} \
            if explicit else {}
        reports.append(judge(name, reference.truth[name], reference.outputs[name], got[name], criterion, **limits))
    judged_by_criterion = any(o.allowed is not None for o in reports)
    return VerifyReport(reports, _describe(feeds), used_seed, criterion if judged_by_criterion else None)


def input_shape_choice(graph: Graph, inputs: Mapping[str, np.ndarray] | None = None,
                       shapes: Mapping[str, tuple[int, ...]] | None = None, seed: int = 0, *,
                       confirm: bool = True) -> ShapeChoice:
    """The shapes ``prepare_feeds`` runs ``graph`` at: those of the given inputs, the rest from
    ``shapes`` or chosen (``choose_input_shapes``)."""
    given = {k: tuple(np.shape(v)) for k, v in (inputs or {}).items() if k in graph.feed_inputs()}
    if all(name in given for name in graph.feed_inputs()):
        declared = {name: graph.tensors[name].shape if name in graph.tensors else None for name in given}
        return ShapeChoice(given, {}, {k: v for k, v in given.items() if declared[k] != v})
    return choose_input_shapes(graph, {k: v for k, v in (shapes or {}).items() if k not in given} | given,
                               seed=seed, confirm=confirm)


def prepare_feeds(graph: Graph, inputs: Mapping[str, np.ndarray] | None = None,
                  shapes: Mapping[str, tuple[int, ...]] | None = None, seed: int = 0) -> tuple[dict, int | None]:
    """The inputs to run ``graph`` on: those given, the rest seeded random; and the seed used (None if unused)."""
    given = dict(inputs or {})
    if all(name in given for name in graph.feed_inputs()):
        return given, None
    drawn = random_inputs(graph, input_shape_choice(graph, given, shapes, seed).shapes, seed)
    return drawn | given, seed


@dataclass
class Reference:
    """The reference model's outputs on the verification inputs: in its own precision and in float64 (the truth)."""

    feeds: dict[str, np.ndarray]
    seed: int | None
    outputs: dict[str, np.ndarray]
    truth: dict[str, np.ndarray]

    @classmethod
    def measure(cls, graph: Graph, feeds: Mapping[str, np.ndarray], seed: int | None) -> Reference:
        return cls(dict(feeds), seed, Executor(graph).run(feeds), Executor(graph, compute_dtype=np.float64).run(feeds))

    def noise_floors(self) -> dict[str, float]:
        """Per output: the reference's own error against the truth."""
        floors = {}
        for name, value in self.outputs.items():
            r, t = np.asarray(value, np.float64), np.asarray(self.truth[name], np.float64)
            floors[name] = relative_error(r, t, np.isfinite(r) & np.isfinite(t))
        return floors

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
        return VerifyReport(reports, _describe(self.feeds), self.seed, criterion, oracle)


def _describe(feeds: Mapping[str, np.ndarray]) -> dict[str, tuple[tuple[int, ...], str]]:
    return {k: (tuple(np.shape(v)), str(np.asarray(v).dtype)) for k, v in feeds.items()}


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
