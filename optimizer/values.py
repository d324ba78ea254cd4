"""What the IR's tensors and attributes hold: constants, element types, subgraph bodies.

Kept apart from ``optimizer.ir`` (which models how ops connect) because these are plain
values with no knowledge of the graph around them. ``Subgraph`` is the IR's view of a
graph-valued attribute; the ONNX boundary (``optimizer.onnx_io``) supplies the protobuf-
backed implementation, so the IR never imports the boundary that builds it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

if TYPE_CHECKING:
    from optimizer.ir import Graph

#: A dimension is an int, a symbolic name, or None when unknown.
Dim = int | str | None


class Constant:
    """A constant tensor value that may stay unread until a pass needs it.

    ``proto`` is the original protobuf (a TensorProto, or the SparseTensorProto of a sparse
    Constant attribute), reused verbatim on export while the value is untouched; ``loader``
    produces the array on first access, so models with external data are not read into
    memory up front.
    """

    __slots__ = ("_array", "_loader", "proto", "nbytes", "dtype", "shape")

    def __init__(self, array: np.ndarray | None = None, *, loader: Callable[[], np.ndarray] | None = None,
                 proto: Any = None, dtype: np.dtype | None = None, shape: tuple[int, ...] | None = None):
        if array is None and loader is None:
            raise ValueError("a Constant needs an array or a loader")
        self._array = None if array is None else np.asarray(array)
        self._loader = loader
        self.proto = proto
        if self._array is not None:
            dtype, shape = self._array.dtype, self._array.shape
        self.dtype = np.dtype(dtype) if dtype is not None else None
        self.shape = tuple(shape) if shape is not None else None
        itemsize = self.dtype.itemsize if self.dtype is not None else 0
        self.nbytes = int(np.prod(self.shape, dtype=np.int64)) * itemsize if self.shape is not None else 0

    @property
    def loaded(self) -> bool:
        return self._array is not None

    @property
    def value(self) -> np.ndarray:
        if self._array is None:
            self._array = self._loader()
        return self._array


@dataclass
class Tensor:
    """One row of the tensor table."""

    name: str
    elem_type: int = 0  # onnx TensorProto.DataType; 0 when unknown
    shape: tuple[Dim, ...] | None = None
    const: Constant | None = None

    @property
    def dtype(self) -> np.dtype | None:
        return elem_type_to_dtype(self.elem_type)


def elem_type_to_dtype(elem_type: int) -> np.dtype | None:
    """numpy dtype of an ONNX element type, or None for types numpy cannot hold."""
    if not elem_type:
        return None
    from onnx import helper  # dtype table only; model I/O stays in onnx_io

    try:
        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type))
    except (KeyError, TypeError, ValueError):
        return None


def dtype_to_elem_type(dtype: np.dtype) -> int:
    from onnx import helper

    return int(helper.np_dtype_to_tensor_dtype(np.dtype(dtype)))


_CONSTANT_ATTR_DTYPES = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64,
                         "value_ints": np.int64}


def constant_attr_value(attrs: dict[str, Any]) -> np.ndarray | None:
    """A Constant op's value from whichever attribute form it uses (string forms and large sparse ones: None).

    A small ``sparse_value`` arrives from the boundary as a ``Constant`` that densifies on first read.
    """
    value = attrs.get("value")
    if isinstance(value, np.ndarray):
        return value
    for key, dtype in _CONSTANT_ATTR_DTYPES.items():
        if key in attrs:
            return np.asarray(attrs[key], dtype=dtype)
    sparse = attrs.get("sparse_value")
    return sparse.value if isinstance(sparse, Constant) else None


class Subgraph:
    """A graph-valued attribute (an If branch, a Loop or Scan body), made by the ONNX boundary.

    The IR does not model bodies; it needs only what keeps the main graph consistent around
    them: the names defined inside (so fresh names never collide with them) and the
    outer-scope names a body reads (its node's implicit inputs, renamed when the tensor
    they read is). The executor plans a body through ``as_graph``. Instances are immutable:
    a rename returns a new one.
    """

    __slots__ = ()

    def defined_names(self) -> Iterable[str]:
        """Every value and node name defined inside, nested bodies included."""
        raise NotImplementedError

    def outer_references(self) -> list[str]:
        """Names read from enclosing scopes (not defined inside), in first-use order."""
        raise NotImplementedError

    def with_outer_renamed(self, old: str, new: str) -> Subgraph:
        """A copy reading outer-scope ``new`` where this one reads ``old`` (self when it does not read ``old``)."""
        raise NotImplementedError

    def as_graph(self, parent: Graph) -> Graph:
        """The body as a Graph with the parent's opsets; outer-scope names stay reads nothing produces."""
        raise NotImplementedError


def subgraphs_in(value: Any) -> list[Subgraph]:
    """The subgraphs an attribute value holds: itself, or each of a list of graphs (a GRAPHS attribute)."""
    if isinstance(value, Subgraph):
        return [value]
    if isinstance(value, list):
        return [v for v in value if isinstance(v, Subgraph)]
    return []
