"""Plan once, run lean: the executor proper.

Planning walks the graph once (topological order, kernel lookup for every node including
those inside If/Loop bodies, last use of every tensor) and raises a single error naming
every op it cannot run. Running feeds values through the planned steps and drops each
intermediate right after its last reader, so peak memory follows the live set, not the
model.
"""

from __future__ import annotations

import functools
import operator
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import onnx

from optimizer.errors import NinoptError
from optimizer.executor.errors import FeedError, KernelError, UnsupportedOp, UnsupportedOpError
from optimizer.executor.precision import Precision, output_sources
from optimizer.executor.registry import NodeContext, lookup
from optimizer.executor.threads import blas_limit
from optimizer.ir import Graph, Node
from optimizer.values import Subgraph

#: Attributes holding subgraphs, per op; their bodies are planned with the parent.
SUBGRAPH_ATTRS = {"If": ("then_branch", "else_branch"), "Loop": ("body",), "Scan": ("body",)}


_max_tensor_bytes: int | None = None  # set_max_tensor_bytes() overrides the machine-derived default


def set_max_tensor_bytes(limit: int | None) -> None:
    """Set the largest tensor any executor may allocate, process-wide (None: back to the default)."""
    global _max_tensor_bytes
    if limit is not None and limit <= 0:
        raise NinoptError("the tensor size limit must be a positive number of bytes.")
    _max_tensor_bytes = limit


def default_max_tensor_bytes() -> int:
    """The limit set by ``set_max_tensor_bytes``, else half of physical memory: larger tensors would thrash
    or kill the process."""
    if _max_tensor_bytes is not None:
        return _max_tensor_bytes
    return _half_physical_memory()


@functools.cache
def _half_physical_memory() -> int:
    """Read once: ``run_node`` asks for every node a bottleneck walk or a constant fold computes."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2
    except (ValueError, OSError, AttributeError):
        return 8 << 30


@dataclass
class _Step:
    fn: Any
    ctx: NodeContext
    inputs: list[str]
    outputs: list[str]
    free: list[str] = field(default_factory=list)
    has_subgraphs: bool = False
    widened_attrs: bool = False  # the kernel reads float types its node names, widened by the precision mode
    sources: list | None = None  # where each output's type comes from; worked out on first need
    reuses_inputs: bool = False  # the kernel takes ``out=`` (KernelSpec.reuses_inputs)
    donors: tuple[int, ...] = ()  # inputs read for the last time here, whose buffers it may write into

    def __post_init__(self) -> None:
        # the inputs' values in one C call where every input is named: a list comprehension took twice
        # as long, and this loop's cost is paid by every node of every run
        named = all(self.inputs)
        self.fetch = operator.itemgetter(*self.inputs) if named and len(self.inputs) > 1 else None
        self.only_input = self.inputs[0] if named and len(self.inputs) == 1 else None
        self.only_output = self.outputs[0] if len(self.outputs) == 1 and self.outputs[0] else None


class Executor:
    """A graph planned for repeated runs: ``Executor(graph).run({"x": array})``.

    ``compute_dtype=np.float64`` runs any float model in float64: feeds, initializers,
    constants and every float tensor inside (If/Loop bodies too) are float64, float target
    types that ops name (Cast ``to``, EyeLike ``dtype``, ...) become float64, and outputs
    come back in float64. That run is the numerical truth verification measures against:
    the original model's float32 run differs from it by the model's own round-off, so an
    optimized model is judged by how far it is from the truth, relative to that, rather
    than by bit-equality with another float32 run whose summation order it changed.
    Without ``compute_dtype``, every tensor has the type the model gives it; float16 and
    bfloat16 ops compute in float32 and round once per op (see ``precision``).

    ``outputs`` names the tensors ``run`` returns instead of the graph's outputs, intermediates
    included (to capture activations): only what they need is computed, and they are kept.
    """

    def __init__(self, graph: Graph, *, max_tensor_bytes: int | None = None, compute_dtype: Any = None,
                 outputs: Iterable[str] | None = None, _parent: Executor | None = None):
        from optimizer.onnx_io import inline_functions  # model-local functions run as their bodies

        if outputs is not None:
            graph = _with_outputs(graph, outputs)
        self.graph = graph if _parent is not None else inline_functions(graph)
        #: largest tensor (in bytes) a kernel may allocate; bodies of If/Loop use their root's
        self.max_tensor_bytes = default_max_tensor_bytes() if max_tensor_bytes is None else int(max_tensor_bytes)
        self._limits = self if _parent is None else _parent._limits
        #: the float types tensors are held and computed in; bodies of If/Loop use their root's
        self.precision = Precision(compute_dtype) if _parent is None else _parent.precision
        newest = onnx.defs.onnx_opset_version()
        if _parent is None and self.graph.opset("") > newest:
            raise NinoptError(f"The model imports ai.onnx opset {self.graph.opset('')}, newer than any this executor "
                              f"knows (up to {newest}), so what its ops compute is unknown.")
        problems: list[UnsupportedOp] = []
        steps = self._plan(problems)
        #: Constant nodes run once, with the weights (their values never change); the rest every run
        self._constant_steps = [s for s in steps if s.ctx.node.is_constant_op]
        self._steps = [s for s in steps if not s.ctx.node.is_constant_op]
        if problems and _parent is None:
            raise UnsupportedOpError(problems)
        self._problems = problems
        self._constants: dict[str, np.ndarray] | None = None  # read on first run: planning stays cheap
        self._constant_ids: set[int] = set()  # ids of those views, alive as long as this executor
        produced = {o for s in steps for o in s.outputs if o}
        local = produced | set(graph.inputs) | set(graph.initializers)
        reads = {n for s in steps for n in s.inputs + list(s.ctx.node.implicit_inputs) if n}
        #: names this graph reads from an enclosing scope (subgraph bodies only)
        self.outer_names = sorted((reads | set(graph.outputs)) - local)

    # ------------------------------------------------------------------ planning
    def _plan(self, problems: list[UnsupportedOp]) -> list[_Step]:
        graph = self.graph
        live = graph.live_nodes()
        steps: list[_Step] = []
        for node in graph.toposort():
            opset = graph.opset(node.domain)
            spec, reason = _kernel_for(node, opset)
            if reason:
                problems.append(UnsupportedOp(node.op_type, node.domain, opset, _label(node), reason))
            subgraphs = self._plan_subgraphs(node, problems)
            if reason or node.id not in live:
                continue
            attrs = self.precision.kernel_attrs(node)
            ctx = NodeContext(node, opset, self._limits, subgraphs, attrs)
            steps.append(_Step(spec.fn, ctx, list(node.inputs), list(node.outputs), has_subgraphs=bool(subgraphs),
                               widened_attrs=attrs is not None, reuses_inputs=spec.reuses_inputs))
        self._set_lifetimes(steps)
        self._set_donors(steps)
        return steps

    def _plan_subgraphs(self, node: Node, problems: list[UnsupportedOp]) -> dict[str, Executor]:
        planned = {}
        for key, value in node.attrs.items():
            if isinstance(value, Subgraph):
                body = Executor(value.as_graph(self.graph), _parent=self)
                problems.extend(body._problems)
                planned[key] = body
        return planned

    def _set_lifetimes(self, steps: list[_Step]) -> None:
        """Free each tensor after its last reader (or right away if nobody reads it)."""
        keep = set(self.graph.outputs)
        last: dict[str, int] = {}
        for i, step in enumerate(steps):
            for name in step.outputs:
                if name:
                    last[name] = i
            for name in step.inputs + list(step.ctx.node.implicit_inputs):
                if name in last:
                    last[name] = i
        for name, i in last.items():
            if name not in keep:
                steps[i].free.append(name)

    def _set_donors(self, steps: list[_Step]) -> None:
        """Offer a kernel that can write in place the inputs it reads last, once each, that some step of
        this graph computed (not feeds, weights, Constant values or outer-scope names). Whether a buffer
        is really free is decided per run (``_donation``): a view of it may still be alive."""
        constants = {name for step in steps if step.ctx.node.is_constant_op for name in step.outputs}
        for step in steps:
            if step.reuses_inputs and not step.has_subgraphs:
                step.donors = tuple(i for i, name in enumerate(step.inputs)
                                    if name and name in step.free and name not in constants
                                    and step.inputs.count(name) == 1)

    def _scope(self) -> dict[str, np.ndarray]:
        """A fresh scope holding the initializers and Constant nodes' values, as read-only views so no
        kernel or caller can change the weights."""
        if self._constants is None:
            self._constants = {}
            for name in self.graph.initializers:  # default values, also of overridable (input-listed) ones
                self._hold_constant(name, self.precision.held(np.asarray(self.graph.initializer_value(name))))
            if self._constant_steps:
                made: dict[str, Any] = {}
                self._execute(made, self._constant_steps)
                for name, value in made.items():
                    self._hold_constant(name, value)
        return dict(self._constants)

    def _hold_constant(self, name: str, value: np.ndarray) -> None:
        view = value.view()
        view.flags.writeable = False
        self._constants[name] = view
        self._constant_ids.add(id(view))

    def holds_constant(self, array: Any) -> bool:
        """Whether ``array`` is one of this executor's read-only weight views, of an initializer or a Constant
        node (for kernels' caches)."""
        return id(array) in self._constant_ids

    @property
    def schedule(self) -> list[tuple[Node, tuple[str, ...]]]:
        """The order of each run: each node with the tensors dropped right after it runs (Constant nodes
        are not in it: they are evaluated once, with the initializers)."""
        return [(step.ctx.node, tuple(step.free)) for step in self._steps]

    # ------------------------------------------------------------------ running
    def run(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        """Graph outputs (or the ``outputs`` planned for) by name for the given inputs."""
        env = self._scope()
        env.update(self._check_feeds(feeds))
        with blas_limit:
            self._execute(env, self._steps)
        return {name: _owned(env[name]) for name in self.graph.outputs}

    def call(self, outer: Mapping[str, np.ndarray], inputs: list[np.ndarray]) -> list[np.ndarray]:
        """Run a subgraph body: outer-scope values plus positional body inputs -> body outputs."""
        env = self._scope()
        env.update((name, outer[name]) for name in self.outer_names if name in outer)
        env.update(zip(self.graph.inputs, inputs))
        self._execute(env, self._steps)
        return [env[name] for name in self.graph.outputs]

    def run_timed(self, feeds: Mapping[str, Any]) -> tuple[dict[str, np.ndarray], list[tuple[Node, float, list]]]:
        """``run``, also returning each top-level node with its seconds and its output shapes (for profiles)."""
        env = self._scope()
        env.update(self._check_feeds(feeds))
        timings: list[tuple[Node, float, list]] = []
        with blas_limit:
            self._execute(env, self._steps, timings)
        return {name: _owned(env[name]) for name in self.graph.outputs}, timings

    def _execute(self, env: dict[str, Any], steps: list[_Step], timings: list | None = None) -> None:
        """Run ``steps`` in ``env``. This loop is the executor's fixed cost per node, so the common
        case (no subgraphs, no float widening, one ndarray out) takes the fewest steps."""
        precision = self.precision
        adapts_outputs = precision.compute_dtype is not None
        with np.errstate(all="ignore"):  # overflow to inf, 0/0 -> nan: ONNX semantics, not errors
            for step in steps:
                if timings is not None:
                    started = time.perf_counter()
                if step.fetch is not None:
                    args = step.fetch(env)
                elif step.only_input is not None:
                    args = (env[step.only_input],)
                else:
                    args = [env[name] if name else None for name in step.inputs]
                ctx = step.ctx
                stored = None  # the inputs' own dtypes, when some were widened for the kernel
                if step.has_subgraphs:  # bodies adapt their own ops; If/Loop pass values through as held
                    ctx.outer = env
                elif precision.needs_widening(args):
                    args, stored = precision.kernel_inputs(args)
                try:
                    # found before the call packs args into a tuple: one more reference
                    out = _donation(env, args, step) if step.donors else None
                    if out is None:
                        result = step.fn(ctx, *args)
                    else:
                        result = step.fn(ctx, *args, out=out)
                        out = None
                except NinoptError:
                    raise
                except Exception as exc:  # a numpy error on this node's values: name the node
                    raise _kernel_failure(ctx.node, exc) from exc
                finally:
                    ctx.outer = None
                if type(result) is np.ndarray and step.only_output is not None \
                        and not (adapts_outputs or stored is not None or step.widened_attrs):
                    env[step.only_output] = result  # the common case, without the general one's loops
                    values = (result,)
                else:
                    if type(result) is not tuple:
                        result = (result,)
                    values = [value if type(value) is np.ndarray or not name else np.asarray(value)
                              for name, value in zip(step.outputs, result)]
                    if adapts_outputs or stored is not None or step.widened_attrs:
                        if step.sources is None:
                            step.sources = output_sources(ctx.node, ctx.opset)
                        values = precision.kernel_outputs(step.sources, values, stored)
                    for name, value in zip(step.outputs, values):
                        if name:
                            env[name] = value
                for name in step.free:  # freeing large arrays takes time too: it is the step's
                    env.pop(name, None)
                if timings is not None:
                    timings.append((step.ctx.node, time.perf_counter() - started,
                                    [np.shape(v) if name else None for name, v in zip(step.outputs, values)]))
                result = values = value = args = None  # hold no outputs past their step: ``_donation`` counts references

    def _check_feeds(self, feeds: Mapping[str, Any]) -> dict[str, np.ndarray]:
        graph = self.graph
        if not isinstance(feeds, Mapping):
            raise FeedError(f"Inputs must be a mapping of input name to array, not {type(feeds).__name__}.")
        allowed = set(graph.inputs)
        unknown = [name for name in feeds if name not in allowed]
        if unknown:
            raise FeedError(f"Unknown input(s) {_names(unknown)}; the model's inputs are {_names(graph.feed_inputs())}.")
        missing = [name for name in graph.feed_inputs() if name not in feeds]
        if missing:
            raise FeedError(f"Missing input(s) {_names(missing)}; the model needs {_names(graph.feed_inputs())}.")
        checked: dict[str, np.ndarray] = {}
        bound: dict[str, tuple[str, int]] = {}
        for name, value in feeds.items():
            array = np.asarray(value)
            info = graph.tensors.get(name)
            expected = info.dtype if info is not None else None
            if expected is not None and array.dtype != expected \
                    and not self.precision.accepts_feed(array.dtype, expected):
                raise FeedError(f"Input {name!r} has dtype {array.dtype}, but the model expects {expected}.")
            shape = info.shape if info is not None else None
            if shape is not None:
                _check_shape(name, array.shape, shape, bound)
            checked[name] = self.precision.held(array)
        return checked


def _check_shape(name: str, actual: tuple[int, ...], declared: tuple, bound: dict[str, tuple[str, int]]) -> None:
    if len(actual) != len(declared):
        raise FeedError(f"Input {name!r} has rank {len(actual)} (shape {actual}), but the model expects rank "
                        f"{len(declared)} (shape {_shape_text(declared)}).")
    for axis, (got, want) in enumerate(zip(actual, declared)):
        if isinstance(want, int) and got != want:
            raise FeedError(f"Input {name!r} has size {got} on axis {axis}, but the model expects {want} "
                            f"(shape {_shape_text(declared)}).")
        if isinstance(want, str) and want:
            first = bound.setdefault(want, (name, got))
            if first[1] != got:
                raise FeedError(f"Dimension {want!r} is {first[1]} in input {first[0]!r} but {got} in input {name!r}.")


def _shape_text(shape: tuple) -> str:
    return "(" + ", ".join("?" if d is None else str(d) for d in shape) + ")"


def _names(names) -> str:
    return ", ".join(repr(n) for n in names) or "none"


def _owned(value: np.ndarray) -> np.ndarray:
    """A result the caller may modify: copies views of weights and broadcast views."""
    return value if value.flags.writeable else value.copy()


def unsupported_ops(graph: Graph) -> list[UnsupportedOp]:
    """Every node (including in If/Loop bodies) the executor cannot run; empty when all can run."""
    try:
        Executor(graph)
    except UnsupportedOpError as exc:
        return exc.ops
    return []


def run(graph: Graph, feeds: Mapping[str, Any], *, max_tensor_bytes: int | None = None,
        compute_dtype: Any = None, outputs: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Plan and run ``graph`` once (``compute_dtype=np.float64``: the float64 truth run; ``outputs``:
    the tensors to return instead of the graph's; see ``Executor``)."""
    return Executor(graph, max_tensor_bytes=max_tensor_bytes, compute_dtype=compute_dtype,
                    outputs=outputs).run(feeds)


def _with_outputs(graph: Graph, names: Iterable[str]) -> Graph:
    """A copy of ``graph`` whose outputs are ``names``, so planning computes just them and keeps them."""
    names = list(dict.fromkeys(names))
    unknown = [n for n in names if graph.producer(n) is None and n not in graph.inputs and n not in graph.initializers]
    if unknown:
        raise NinoptError(f"Cannot return {_names(unknown)}: the graph has no tensor of that name.")
    copy = graph.copy()
    copy.outputs = names
    return copy


@dataclass(frozen=True)
class _Limit:
    """The allocation guard ``run_node`` gives a kernel (an Executor is its own); it holds no weights."""

    max_tensor_bytes: int

    def holds_constant(self, array: Any) -> bool:
        return False


def _reference_count(env: dict[str, Any], args: list, name: str, index: int) -> int:
    """References to ``args[index]`` as seen from here, or -1 when ``env`` does not hold it under ``name``.
    Callers hold no reference of their own, so a count equal to ``_SOLE_REFERENCES`` means the scope and
    the argument list are all there is."""
    return sys.getrefcount(args[index]) if env.get(name) is args[index] else -1


def _sole_references() -> int:
    """What ``_reference_count`` counts for a buffer held by a scope and an argument list alone,
    measured once on this interpreter rather than assumed."""
    probe = np.empty(1)
    env, args = {"probe": probe}, [probe]
    del probe
    return _reference_count(env, args, "probe", 0)


def _base_reference_count(view: np.ndarray) -> int:
    return sys.getrefcount(view.base)


def _sole_base_references() -> int:
    """What ``_base_reference_count`` counts for an array referred to by one view of it alone."""
    view = np.empty(4).reshape(2, 2)
    return _base_reference_count(view)


_SOLE_REFERENCES = _sole_references()
#: below this an input is not offered: a fresh small array costs less than finding out whether it is free
MIN_DONATED_BYTES = 64 << 10
_SOLE_BASE_REFERENCES = _sole_base_references()


def _donation(env: dict[str, Any], args: list, step: _Step) -> np.ndarray | None:
    """The first donor input whose buffer nothing else can see: held by the scope and this step's
    arguments only (no other view of it, no alias under another name, no caller holding it) and
    writable; it owns its memory, or it is the one view of an array nothing else refers to (kernels
    often return a reshaped product). It is C-contiguous, as a fresh result would be, so later ops see
    the same layout and sum in the same order. The kernel writes its result there if shape and type fit."""
    for index in step.donors:
        if type(args[index]) is not np.ndarray or args[index].nbytes < MIN_DONATED_BYTES:
            continue  # small results come cheaply from numpy's own cache: not worth the checks below
        if _reference_count(env, args, step.inputs[index], index) == _SOLE_REFERENCES:
            value = args[index]
            if value.flags.writeable and value.flags.c_contiguous and (value.flags.owndata or _sole_view(value)):
                return value
    return None


def _sole_view(value: np.ndarray) -> bool:
    if _base_reference_count(value) != _SOLE_BASE_REFERENCES:  # counted before this frame refers to the base
        return False
    base = value.base
    return type(base) is np.ndarray and base.flags.owndata


def _kernel_for(node: Node, opset: int) -> tuple[Any, str | None]:
    """The node's kernel spec and None, or (spec or None, why the executor cannot run the node)."""
    spec = lookup(node.domain, node.op_type, opset)
    if spec is None:
        return None, "no kernel is registered for it"
    return spec, None if spec.check is None else spec.check(node, opset)


def _label(node: Node) -> str:
    return node.name or (node.outputs[0] if node.outputs else node.op_type)


def _kernel_failure(node: Node, exc: Exception) -> KernelError:
    """A numpy error raised by a kernel, as a sentence naming the node."""
    first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
    return KernelError(f"{node.op_type} node {node.name!r} failed: {first}.")


def has_kernel(node: Node, opset: int) -> bool:
    """Whether the executor can run ``node`` at ``opset``: a kernel is registered and its ``check``
    accepts the variant of the op the node uses (a node with subgraphs still needs a planned Executor)."""
    return _kernel_for(node, opset)[1] is None


def run_node(node: Node, inputs: Sequence[np.ndarray | None], opset: int, *,
             max_tensor_bytes: int | None = None) -> tuple[np.ndarray | None, ...]:
    """Run one node on its own with its kernel: one value per ``node.outputs`` entry (None may stand
    for an omitted output, named "").

    ``inputs`` are positional (None for an omitted optional input) and reach the kernel as given:
    no graph, no feed checks, no float16 widening. For constant folding and layer-by-layer walks;
    nodes with subgraphs (If/Loop/Scan) need a planned ``Executor``. Raises ``UnsupportedOpError``
    when the executor cannot run the node, ``ResourceLimitError`` before allocating a tensor over
    ``max_tensor_bytes`` (default: ``default_max_tensor_bytes()``), ``KernelError`` when the kernel
    fails on these values.
    """
    spec, reason = _kernel_for(node, opset)
    if reason is None and node.op_type in SUBGRAPH_ATTRS and node.domain in ("", "ai.onnx"):
        reason = "it holds subgraphs, which only a planned Executor runs"
    if reason:
        raise UnsupportedOpError([UnsupportedOp(node.op_type, node.domain, opset, _label(node), reason)])
    limit = _Limit(default_max_tensor_bytes() if max_tensor_bytes is None else int(max_tensor_bytes))
    with np.errstate(all="ignore"), blas_limit:  # overflow to inf, 0/0 -> nan: ONNX semantics, not errors
        try:
            result = spec.fn(NodeContext(node, opset, limit), *inputs)
        except NinoptError:
            raise
        except Exception as exc:
            raise _kernel_failure(node, exc) from exc
    if not isinstance(result, tuple):
        result = (result,)
    return tuple(np.asarray(value) if name and not isinstance(value, np.ndarray) else value
                 for name, value in zip(node.outputs, result))
