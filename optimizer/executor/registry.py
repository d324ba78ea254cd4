"""Kernel registry: plain functions keyed by (domain, op_type, opset range).

A kernel is ``fn(ctx, *inputs) -> array | tuple[array, ...]``; omitted optional inputs
arrive as None. ``ctx`` (a ``NodeContext``) carries the node's attributes, the opset it
runs under, the allocation guard and planned subgraphs. Semantics that change across
opsets are separate registrations, so the opset alone picks the right behaviour.
An optional ``check(node, opset)`` returns a reason when a node uses a variant of the op
that the kernel does not implement; planning reports it like a missing kernel.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from optimizer.executor.errors import ResourceLimitError

Kernel = Callable[..., Any]
Check = Callable[[Any, int], "str | None"]


@dataclass(frozen=True)
class KernelSpec:
    op_type: str
    domain: str
    since: int
    until: int | None
    fn: Kernel
    check: Check | None = None
    #: the kernel takes ``out=``: an input's buffer nobody else can see any more, which it may write
    #: its result into when shape and type fit (the executor offers one; see ``Executor``)
    reuses_inputs: bool = False


_KERNELS: dict[tuple[str, str], list[KernelSpec]] = {}
ONNX_DOMAINS = ("", "ai.onnx")


def kernel(*op_types: str, since: int = 1, until: int | None = None, domain: str = "",
           check: Check | None = None, reuses_inputs: bool = False) -> Callable[[Kernel], Kernel]:
    """Register ``fn`` for ``op_types`` at opsets ``since..until`` (inclusive; None = open);
    ``reuses_inputs``: ``fn`` takes ``out=`` (see ``KernelSpec``)."""
    domain = "" if domain == "ai.onnx" else domain

    def register(fn: Kernel) -> Kernel:
        for op_type in op_types:
            specs = _KERNELS.setdefault((domain, op_type), [])
            for other in specs:
                if since <= (other.until or 10**9) and other.since <= (until or 10**9):
                    raise ValueError(f"kernels for {op_type} overlap at opsets {since}..{until}")
            specs.append(KernelSpec(op_type, domain, since, until, fn, check, reuses_inputs))
        return fn

    return register


def lookup(domain: str, op_type: str, opset: int) -> KernelSpec | None:
    """The kernel registered for ``op_type`` at ``opset``, or None."""
    domain = "" if domain == "ai.onnx" else domain
    for spec in _KERNELS.get((domain, op_type), ()):
        if spec.since <= opset and (spec.until is None or opset <= spec.until):
            return spec
    return None


def registered_ops() -> list[tuple[str, str, int, int | None]]:
    """(domain, op_type, since, until) of every registration, for documentation and tests."""
    return sorted((s.domain, s.op_type, s.since, s.until) for specs in _KERNELS.values() for s in specs)


class NodeContext:
    """What a kernel knows about its node besides the input values."""

    __slots__ = ("node", "attrs", "opset", "limits", "subgraphs", "outer", "_derived", "_by_shape")

    #: shape plans a node keeps (a model fed several input sizes in turn keeps the latest few)
    SHAPE_PLANS = 4

    def __init__(self, node, opset: int, limits, subgraphs: dict[str, Any] | None = None,
                 attrs: dict[str, Any] | None = None):
        self.node = node
        self.attrs = node.attrs if attrs is None else attrs  # the executor's precision mode may widen float types
        self.opset = opset
        self.limits = limits  # the owning Executor: its max_tensor_bytes is read at run time
        self.subgraphs = subgraphs or {}
        self.outer = None  # the running scope, set while a node with subgraphs executes
        self._derived: dict[str, tuple[Any, Any]] = {}
        self._by_shape: dict[Any, Any] = {}

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    def derived(self, key: str, source: np.ndarray | tuple[np.ndarray, ...], make: Callable[[Any], Any]) -> Any:
        """``make(source)``, remembered while ``source`` (an array, or a tuple of them) is the
        executor's own weights.

        Weights reach a kernel as the same read-only initializer view on every run, so work done
        on them alone (a transposed or widened copy, a batch norm's folded scale) is done once per
        executor, not once per run. Any other array (computed, or fed by a caller who may change
        it) is never remembered."""
        sources = source if type(source) is tuple else (source,)
        hit = self._derived.get(key)
        if hit is not None and len(hit[0]) == len(sources) and all(a is b for a, b in zip(hit[0], sources)):
            return hit[1]
        value = make(source)
        if all(self.limits.holds_constant(array) for array in sources):
            self._derived[key] = (sources, value)
        return value

    def by_shape(self, key: Any, make: Callable[[], Any]) -> Any:
        """``make()``, remembered while the node's inputs have the shapes and dtypes ``key`` names.

        For what a kernel works out from its attributes and input shapes alone (a convolution's
        window, pads, strides and bands): on small tensors that took longer than the arithmetic,
        and it is the same on every run."""
        plan = self._by_shape.get(key)
        if plan is None:
            if len(self._by_shape) >= self.SHAPE_PLANS:
                self._by_shape.clear()
            plan = self._by_shape[key] = make()
        return plan

    @property
    def n_outputs(self) -> int:
        return len(self.node.outputs)

    def wants_output(self, index: int) -> bool:
        outs = self.node.outputs
        return index < len(outs) and outs[index] != ""

    def guard(self, shape, dtype, what: str = "output") -> None:
        """Refuse, before allocating, a tensor larger than the executor's limit."""
        count = 1
        for dim in shape:
            count *= max(int(dim), 0)
        nbytes = count * np.dtype(dtype).itemsize
        limit = self.limits.max_tensor_bytes
        if nbytes > limit:
            shape_text = "x".join(str(int(d)) for d in shape) or "scalar"
            raise ResourceLimitError(
                f"{self.node.op_type} node {self.node.name!r} would allocate a {shape_text} {np.dtype(dtype)} "
                f"{what} ({nbytes:,} bytes), more than the executor's limit of {limit:,} bytes.")
