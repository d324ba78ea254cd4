"""Which inputs a model is run and verified on: concrete shapes for dynamic dims, seeded values.

Split from ``optimizer.verification`` (which compares outputs) because choosing inputs is
its own problem, shared by ``ninopt run``, ``analyze`` (costs at the shapes verification
would use), the bottleneck engine and verification: a dynamic dim needs a size the model
actually runs with, found from its hints and confirmed on the executor, and an integer
input the model compares with a constant needs that constant.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import numpy as np

from optimizer.errors import NinoptError
from optimizer.executor import Executor, ResourceLimitError, default_max_tensor_bytes
from optimizer.ir import Graph
from optimizer.onnx_checks import shape_inference_accepts

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
    screen = shape_inference_accepts(graph, {})  # a model it rejects as declared tells nothing
    executor, runs = None, 0
    if confirm:
        try:
            executor = Executor(graph)
        except NinoptError:  # an op it cannot run: running the model is reported by whoever runs it next
            executor = None
    for attempt in range(max(len(sizes) for sizes in candidates.values())):
        choice = choice_of({key: sizes[min(attempt, len(sizes) - 1)] for key, sizes in candidates.items()})
        if screen and not shape_inference_accepts(graph, choice.shapes):
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


@dataclass(frozen=True)
class Runs:
    """What a model is run on: one feed dict per run. A model with a fixed batch given more samples than
    its batch (a folder of pages for a batch-1 detector) runs once per batch of them; the outputs of
    several runs are stacked on a new leading axis, so each judgment covers every run."""

    feeds: tuple[dict[str, np.ndarray], ...]

    @property
    def first(self) -> dict[str, np.ndarray]:
        return self.feeds[0]

    def outputs(self, run: Callable[[Mapping[str, np.ndarray]], Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
        """``run`` on every feed: one run's outputs as they are, several runs' stacked."""
        results = [run(feed) for feed in self.feeds]
        if len(results) == 1:
            return dict(results[0])
        return {name: np.stack([r[name] for r in results]) for name in results[0]}


def split_runs(graph: Graph, samples: Mapping[str, np.ndarray], source: str = "the inputs",
               dynamic_batch: int | None = None) -> Runs:
    """``samples`` (input name -> samples along axis 0) as runs of the model's fixed batch, in order; a
    dynamic batch takes ``dynamic_batch`` samples a run (None: all in one run). An input that already
    fits (a scalar, a state) is the same in every run. ``source`` names them in errors."""
    counts = {}
    for name, value in samples.items():
        batch = (graph.shape(name) or (None,))[0] if name in graph.feed_inputs() else None
        if not (isinstance(batch, int) and batch > 0):
            batch = dynamic_batch
        if batch is not None and np.ndim(value) > 0 and len(value) != batch:
            if len(value) % batch:
                raise NinoptError(f"{source} give {len(value)} sample(s) of input {name!r}, but the model runs a "
                                  f"fixed batch of {batch}; give a multiple of {batch}.")
            counts[name] = (len(value) // batch, batch)
    runs = {count for count, _ in counts.values()}
    if not runs:
        return Runs((dict(samples),))
    if len(runs) > 1:
        raise NinoptError(f"{source} make different numbers of runs per input "
                          f"({', '.join(f'{n}: {count} of batch {batch}' for n, (count, batch) in counts.items())}).")
    count = runs.pop()
    return Runs(tuple({name: np.asarray(value)[i * counts[name][1]:(i + 1) * counts[name][1]] if name in counts
                       else value for name, value in samples.items()} for i in range(count)))


def prepare_runs(graph: Graph, inputs: Runs | Mapping[str, np.ndarray] | None = None,
                 shapes: Mapping[str, tuple[int, ...]] | None = None, seed: int = 0) -> tuple[Runs, int | None]:
    """``prepare_feeds`` for every run of ``inputs`` (a dict is one run); inputs left out are drawn once, at the
    first run's shapes, and shared by all runs."""
    runs = inputs if isinstance(inputs, Runs) else Runs((dict(inputs or {}),))
    first, used_seed = prepare_feeds(graph, runs.first, shapes, seed)
    drawn = {name: value for name, value in first.items() if name not in runs.first}
    return Runs((first,) + tuple(drawn | feed for feed in runs.feeds[1:])), used_seed


def prepare_feeds(graph: Graph, inputs: Mapping[str, np.ndarray] | None = None,
                  shapes: Mapping[str, tuple[int, ...]] | None = None, seed: int = 0) -> tuple[dict, int | None]:
    """The inputs to run ``graph`` on: those given, the rest seeded random; and the seed used (None if unused)."""
    given = dict(inputs or {})
    if all(name in given for name in graph.feed_inputs()):
        return given, None
    drawn = random_inputs(graph, input_shape_choice(graph, given, shapes, seed).shapes, seed)
    return drawn | given, seed
