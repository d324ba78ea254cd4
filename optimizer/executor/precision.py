"""Precision modes: which float type each tensor is held in, and which type kernels compute in.

Kernels are plain numpy and only ever see float32 or float64 (besides the non-float types);
the core adapts every op around them, so a kernel written without any thought for
precision still runs every mode:

* default: float16 and bfloat16 tensors are held as the model declares them. The core
  widens a kernel's float16/bfloat16 inputs (and any float16/bfloat16 type or tensor in
  its attributes) to float32, runs the kernel, and rounds its float outputs back to the
  type the op produces (round to nearest even), once per op. That is the spec's
  semantics, and bit for bit what onnxruntime computes for a single float16 element-wise
  op or reduction (Conv and MatMul differ only in summation order). Over whole models
  onnxruntime's CPU provider differs by about one float16 step: it runs each chain of
  ops it has no float16 kernel for (Conv, BatchNormalization, Add, Relu, ...) in float32
  and rounds only at the chain's end. Which type an op produces follows its ONNX schema:
  an output shares the type parameter of some input (Add, Conv, Resize's X, CastLike's
  target), or the type an attribute names (Cast ``to``, EyeLike ``dtype``,
  LayerNormalization ``stash_type``, ConstantOfShape's ``value``), or failing both the
  type of its first float input. float32 and float64 models run exactly as the kernels
  compute them.
* ``compute_dtype=np.float64``: every float tensor (feeds, initializers, attribute
  tensors, every kernel output) is held and computed in float64, and every float target
  type an attribute names becomes float64; integer targets stay, so a Cast to int
  truncates the same way.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import numpy as np
import onnx

from optimizer.errors import NinoptError
from optimizer.ir import Node
from optimizer.values import dtype_to_elem_type, elem_type_to_dtype

FLOAT32 = np.dtype(np.float32)
FLOAT64 = np.dtype(np.float64)
#: float types numpy computes poorly or not at all: stored as declared, computed in float32
#: (bfloat16 is ml_dtypes.bfloat16, which onnx uses for it)
NARROW_FLOATS = frozenset(d for d in (np.dtype(np.float16), elem_type_to_dtype(onnx.TensorProto.BFLOAT16))
                          if d is not None and d.itemsize < 4)
#: attributes whose integer value names an element type
TYPE_ATTRS = ("to", "dtype", "output_dtype", "stash_type")

#: where an output's type comes from: input positions sharing its type parameter (the first
#: present float one decides), a type named by the node itself, or None (whatever the kernel made)
Source = tuple[int, ...] | np.dtype | None


def is_float(dtype: np.dtype) -> bool:
    """float16 to float64 and bfloat16; not the float8 types, which (like integers) quantize."""
    return dtype in NARROW_FLOATS or (dtype.kind == "f" and dtype.itemsize >= 4)


class Precision:
    """The float types of one executor (and of its If/Loop bodies)."""

    def __init__(self, compute_dtype: Any = None):
        if compute_dtype is not None and np.dtype(compute_dtype) != FLOAT64:
            raise NinoptError(f"compute_dtype must be None (the model's own types) or float64, "
                              f"not {np.dtype(compute_dtype)}.")
        #: None: the model's own types; float64: every float tensor in float64
        self.compute_dtype = None if compute_dtype is None else FLOAT64
        #: stored type -> the type kernels compute in
        self.widen = ({dtype: FLOAT32 for dtype in NARROW_FLOATS} if compute_dtype is None
                      else {dtype: FLOAT64 for dtype in NARROW_FLOATS | {FLOAT32}})

    def held(self, value: Any) -> Any:
        """A feed or initializer as the executor holds it (float64 mode: float64; otherwise as given)."""
        if self.compute_dtype is None or not isinstance(value, np.ndarray):
            return value
        return self.widened(value)

    def widened(self, value: Any) -> Any:
        """``value`` in the type kernels compute in (unchanged when it already is, or is not a float array)."""
        target = self.widen.get(value.dtype) if isinstance(value, np.ndarray) else None
        return value if target is None else value.astype(target)

    def accepts_feed(self, given: np.dtype, declared: np.dtype) -> bool:
        """float64 mode also takes float64 values for any float input (truth runs on exact inputs)."""
        return self.compute_dtype is not None and given == self.compute_dtype and is_float(declared)

    def kernel_attrs(self, node: Node) -> dict[str, Any] | None:
        """The node's attributes as its kernel reads them: float types they name and float tensors they hold
        widened; None when nothing changes."""
        changed = {}
        for key, value in node.attrs.items():
            if key in TYPE_ATTRS and isinstance(value, int):
                dtype = elem_type_to_dtype(value)
                if dtype in self.widen:
                    changed[key] = dtype_to_elem_type(self.widen[dtype])
            elif isinstance(value, np.ndarray) and value.dtype in self.widen:
                changed[key] = value.astype(self.widen[value.dtype])
        return {**node.attrs, **changed} if changed else None

    def needs_widening(self, args: list[Any]) -> bool:
        """Whether some input is held in a type kernels do not compute in (checked before every op)."""
        widen = self.widen
        for a in args:
            if isinstance(a, np.ndarray) and a.dtype in widen:
                return True
        return False

    def kernel_inputs(self, args: list[Any]) -> tuple[list[Any], list[np.dtype | None]]:
        """Inputs widened for the kernel, and every input's stored dtype (call when ``needs_widening``)."""
        stored = [a.dtype if isinstance(a, np.ndarray) else None for a in args]
        return [self.widened(a) for a in args], stored

    def kernel_outputs(self, sources: Sequence[Source], values: list[Any],
                       stored: list[np.dtype | None] | None) -> list[Any]:
        """Kernel outputs in the type the executor holds them: float64 mode widens every float output; the
        default mode rounds float outputs to float16/bfloat16 where the op produces those."""
        if self.compute_dtype is not None:
            return [self.widened(v) for v in values]
        result = []
        for value, source in zip(values, sources):
            if isinstance(value, np.ndarray) and is_float(value.dtype):
                target = _source_dtype(source, stored)
                if target in NARROW_FLOATS and value.dtype != target:
                    value = value.astype(target)
            result.append(value)
        return result


def _source_dtype(source: Source, stored: list[np.dtype | None] | None) -> np.dtype | None:
    if source is None or isinstance(source, np.dtype):
        return source
    for position in source:
        dtype = stored[position] if stored is not None and position < len(stored) else None
        if dtype is not None and is_float(dtype):
            return dtype
    return None


def output_sources(node: Node, opset: int) -> list[Source]:
    """Where each output of ``node`` takes its type from, per the op's schema (no schema: its float inputs)."""
    every_input = tuple(range(len(node.inputs)))
    schema = _schema(node.domain, node.op_type, opset)
    if schema is None:
        return [every_input] * len(node.outputs)
    named = _named_type(schema, node)
    return [_output_source(schema, i, every_input, named) for i in range(len(node.outputs))]


def _output_source(schema: onnx.defs.OpSchema, index: int, every_input: tuple[int, ...],
                   named: np.dtype | None) -> Source:
    formal = _formal(schema.outputs, index)
    if formal is None or not formal.is_homogeneous:
        return None  # positional pairing unknown (heterogeneous variadic): keep what the kernel made
    param = formal.type_str
    if param not in {c.type_param_str for c in schema.type_constraints}:
        return None  # a fixed type such as tensor(float)
    bound = tuple(j for j in every_input if (f := _formal(schema.inputs, j)) is not None and f.type_str == param)
    if bound:
        return bound
    return named if named is not None else every_input  # e.g. EyeLike without dtype: the input's type


def _formal(params: Sequence[onnx.defs.OpSchema.FormalParameter], index: int):
    """The formal parameter at ``index``; a trailing variadic one covers every later position."""
    if index < len(params):
        return params[index]
    if params and params[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
        return params[-1]
    return None


def _named_type(schema: onnx.defs.OpSchema, node: Node) -> np.dtype | None:
    """The type the node names itself: a type attribute (or its default), else a float tensor attribute's."""
    for key in TYPE_ATTRS:
        value = node.attrs.get(key)
        if value is None and key in schema.attributes:
            default = schema.attributes[key].default_value
            value = onnx.helper.get_attribute_value(default) if default.type else None
        dtype = elem_type_to_dtype(value) if isinstance(value, int) else None
        if dtype is not None:
            return dtype
    for value in node.attrs.values():
        if isinstance(value, np.ndarray) and is_float(value.dtype):
            return value.dtype
    return None


@functools.lru_cache(maxsize=None)
def _schema(domain: str, op_type: str, opset: int) -> onnx.defs.OpSchema | None:
    try:
        return onnx.defs.get_schema(op_type, opset, "" if domain == "ai.onnx" else domain)
    except onnx.defs.SchemaError:
        return None
