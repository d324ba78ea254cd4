"""Per-op rules of shape inference: output shapes, element types and small values.

Split from ``optimizer.shape_inference`` (the driver that walks the graph and merges these
with onnx inference and value_info) because this is a table with one entry per op, grown
op by op and checked against onnxruntime in tests/test_cost.py. A rule takes (node, input
shapes, input values, opset); an unknown shape or value it reads raises, which the driver
takes as "unknown".
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from onnx import TensorProto

from optimizer.ir import Graph, Node
from optimizer.values import Dim, dtype_to_elem_type, elem_type_to_dtype

Shape = tuple[Dim, ...]

#: Values of numeric tensors up to this size are propagated (shape computations are tiny).
MAX_VALUE_ELEMS = 64

_ShapeRule = Callable[[Node, list, list, int], Sequence]
_ValueRule = Callable[[Node, list, list, int], "np.ndarray | None"]


def fully_known(shape: Shape | None) -> bool:
    return shape is not None and all(isinstance(d, int) for d in shape)


def merge_shapes(*candidates: Shape | None) -> Shape | None:
    """Combine shape candidates in priority order: per dim an int beats a symbol beats None."""
    known = [s for s in candidates if s is not None]
    if not known:
        return None
    if fully_known(known[0]):
        return known[0]
    mates = [s for s in known if len(s) == len(known[0])]
    return tuple(_best_dim([s[i] for s in mates]) for i in range(len(known[0])))


def _best_dim(dims: list[Dim]) -> Dim:
    for kind in (int, str):
        for d in dims:
            if isinstance(d, kind):
                return d
    return None


# ---------------------------------------------------------------------- element types
_INT64, _BOOL = TensorProto.INT64, TensorProto.BOOL
_OUTPUT_TYPES = {("Shape", 0): _INT64, ("Size", 0): _INT64, ("ArgMax", 0): _INT64, ("ArgMin", 0): _INT64,
                 ("NonZero", 0): _INT64, ("TopK", 1): _INT64, ("MaxPool", 1): _INT64, ("Dropout", 1): _BOOL,
                 **{(op, 0): _BOOL for op in ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual",
                                               "And", "Or", "Xor", "Not", "IsNaN", "IsInf")}}


def output_elem_type(graph: Graph, node: Node, index: int, types: dict[str, int]) -> int:
    """Element type of an output onnx inference did not type: fixed by the op, else the first input's."""
    op = node.op_type
    if (op, index) in _OUTPUT_TYPES:
        return _OUTPUT_TYPES[op, index]
    if op == "Cast":
        return int(node.attr("to", 0))
    if op == "Constant":
        value = graph.const(node.outputs[0])
        return 0 if value is None else dtype_to_elem_type(value.dtype)
    if op == "ConstantOfShape":  # float32 zeros unless the value attribute says otherwise
        value = node.attr("value")
        return TensorProto.FLOAT if value is None else dtype_to_elem_type(value.dtype)
    data = node.inputs[1] if op == "Where" else (node.inputs[0] if node.inputs else "")
    return types.get(data, 0)


# ---------------------------------------------------------------------- dim arithmetic
def _prod(dims: Sequence[Dim]) -> Dim:
    """Product of dims; one symbol times ones stays that symbol, anything else unknown is None."""
    total, symbol = 1, None
    for d in dims:
        if isinstance(d, int):
            total *= d
        elif isinstance(d, str) and symbol is None:
            symbol = d
        else:
            return None
    if symbol is None:
        return total
    return symbol if total == 1 else None


def _broadcast(shapes: Sequence[Shape]) -> Shape:
    """Numpy-style multidirectional broadcasting over possibly unknown dims."""
    rank = max(len(s) for s in shapes)
    padded = [(1,) * (rank - len(s)) + tuple(s) for s in shapes]
    return tuple(_broadcast_dim([s[i] for s in padded]) for i in range(rank))


def _broadcast_dim(dims: list[Dim]) -> Dim:
    others = {d for d in dims if d != 1}
    ints = {d for d in others if isinstance(d, int)}
    if ints:
        return ints.pop() if len(ints) == 1 else None
    if not others:
        return 1
    return others.pop() if len(others) == 1 else None  # one symbol; None if unknown or symbols differ


def _axis(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _window(size: Dim, kernel: Dim, stride: int, dilation: int, pad_begin: int, pad_end: int,
            auto_pad: str, ceil_mode: bool) -> Dim:
    """Output size of a sliding window (Conv, pooling) along one spatial axis."""
    if auto_pad == "VALID":
        pad_begin = pad_end = 0
    if isinstance(size, str) and isinstance(kernel, int) and stride == 1 and (
            auto_pad in ("SAME_UPPER", "SAME_LOWER") or pad_begin + pad_end == dilation * (kernel - 1)):
        return size  # a stride-1 window padded to keep the size keeps the symbol too
    if not isinstance(size, int) or not isinstance(kernel, int):
        return None
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        return -(-size // stride)
    span = size + pad_begin + pad_end - dilation * (kernel - 1) - 1
    if not ceil_mode:
        return span // stride + 1
    out = -(-span // stride) + 1
    return out - 1 if (out - 1) * stride >= size + pad_begin else out  # no window may start in the end padding


def _spatial(node: Node, sizes: Shape, kernel: Sequence[Dim]) -> Shape:
    n = len(sizes)
    strides = node.attr("strides") or [1] * n
    dilations = node.attr("dilations") or [1] * n
    pads = node.attr("pads") or [0] * (2 * n)
    auto_pad = node.attr("auto_pad", "NOTSET")
    ceil_mode = bool(node.attr("ceil_mode", 0))
    return tuple(_window(sizes[i], kernel[i], strides[i], dilations[i], pads[i], pads[i + n], auto_pad, ceil_mode)
                 for i in range(n))


# ---------------------------------------------------------------------- shape rules
# Each takes (node, input shapes, input values, opset) and returns one shape per output.
def _same(node, ins, vals, opset):
    return [ins[0]] * len(node.outputs)


def _elementwise(node, ins, vals, opset):
    return [_broadcast([s for s, t in zip(ins, node.inputs) if t])]


def _batchnorm(node, ins, vals, opset):
    x = ins[0]
    return [x] + [(x[1],)] * (len(node.outputs) - 1)  # training outputs are per channel


def _conv(node, ins, vals, opset):
    x, w = ins[0], ins[1]
    kernel = node.attr("kernel_shape") or (w[2:] if w is not None else [None] * (len(x) - 2))
    return [(x[0], None if w is None else w[0], *_spatial(node, x[2:], kernel))]


def _conv_transpose(node, ins, vals, opset):
    x, w = ins[0], ins[1]
    n = len(x) - 2
    group = node.attr("group", 1)
    cout = w[1] * group if w is not None and isinstance(w[1], int) else None
    if node.attr("output_shape"):
        return [(x[0], cout, *node.attr("output_shape")[-n:])]
    kernel = node.attr("kernel_shape") or w[2:]
    strides = node.attr("strides") or [1] * n
    dilations = node.attr("dilations") or [1] * n
    out_pad = node.attr("output_padding") or [0] * n
    auto_pad = node.attr("auto_pad", "NOTSET")
    pads = [0] * (2 * n) if auto_pad == "VALID" else (node.attr("pads") or [0] * (2 * n))
    sizes = []
    for i, size in enumerate(x[2:]):
        if not isinstance(size, int) or not isinstance(kernel[i], int):
            sizes.append(None)
        elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
            sizes.append(size * strides[i])
        else:
            sizes.append(strides[i] * (size - 1) + out_pad[i] + dilations[i] * (kernel[i] - 1) + 1
                         - pads[i] - pads[i + n])
    return [(x[0], cout, *sizes)]


def _pool(node, ins, vals, opset):
    x = ins[0]
    y = (x[0], x[1], *_spatial(node, x[2:], node.attr("kernel_shape")))
    return [y] * len(node.outputs)  # MaxPool's Indices has the output's shape


def _global_pool(node, ins, vals, opset):
    x = ins[0]
    return [(x[0], x[1], *[1] * (len(x) - 2))]


def _gemm(node, ins, vals, opset):
    a, b = ins[0], ins[1]
    return [(a[1] if node.attr("transA", 0) else a[0], b[0] if node.attr("transB", 0) else b[1])]


def _matmul(node, ins, vals, opset):
    a, b = ins[0], ins[1]
    a2 = (1, *a) if len(a) == 1 else a
    b2 = (*b, 1) if len(b) == 1 else b
    out = (*_broadcast([a2[:-2], b2[:-2]]), a2[-2], b2[-1])
    if len(b) == 1:
        out = out[:-1]
    if len(a) == 1:
        out = out[:-2] + out[-1:] if len(b) > 1 else out[:-1]
    return [out]


def _reshape(node, ins, vals, opset):
    if vals[1] is None:  # a data-dependent target (or an overridable initializer): only its length is known
        return [(None,) * ins[1][0]]
    x, target = ins[0], list(_dims_of(vals[1]))
    keep_zero = node.attr("allowzero", 0)
    out: list[Dim] = [x[i] if d == 0 and not keep_zero else d for i, d in enumerate(target)]
    if -1 in out:
        numerator, denominator = list(x), []
        for d in out:
            if d == -1:
                continue
            if isinstance(d, str) and d in numerator:
                numerator.remove(d)  # symbols cancel
            else:
                denominator.append(d)
        p, q = _prod(numerator), _prod(denominator)
        out[out.index(-1)] = p // q if isinstance(p, int) and isinstance(q, int) and q else (p if q == 1 else None)
    return [tuple(out)]


def _flatten(node, ins, vals, opset):
    x = ins[0]
    axis = _axis(node.attr("axis", 1), len(x))
    return [(_prod(x[:axis]), _prod(x[axis:]))]


def _concat(node, ins, vals, opset):
    shapes = [s for s, t in zip(ins, node.inputs) if t]
    axis = _axis(node.attr("axis"), len(shapes[0]))
    sizes = [s[axis] for s in shapes]
    out = list(merge_shapes(*shapes))
    out[axis] = sum(sizes) if all(isinstance(d, int) for d in sizes) else None
    return [tuple(out)]


def _transpose(node, ins, vals, opset):
    x = ins[0]
    perm = node.attr("perm") or list(reversed(range(len(x))))
    return [tuple(x[p] for p in perm)]


def _axes_of(node, vals, opset):
    """Unsqueeze/Squeeze axes: an attribute before opset 13, an optional input from 13."""
    if opset < 13:
        return node.attr("axes")
    return None if len(node.inputs) < 2 or not node.inputs[1] else [int(a) for a in vals[1]]


def _unsqueeze(node, ins, vals, opset):
    x = ins[0]
    axes = _axes_of(node, vals, opset)
    rank = len(x) + len(axes)
    out = list(x)
    for axis in sorted(_axis(a, rank) for a in axes):  # axes index the output
        out.insert(axis, 1)
    return [tuple(out)]


def _squeeze(node, ins, vals, opset):
    x = ins[0]
    axes = _axes_of(node, vals, opset)
    if axes is None:
        if not fully_known(x):
            return [None]  # which dims are 1 is not known
        return [tuple(d for d in x if d != 1)]
    dropped = {_axis(a, len(x)) for a in axes}
    return [tuple(d for i, d in enumerate(x) if i not in dropped)]


def _constant_of_shape(node, ins, vals, opset):
    if vals[0] is not None:
        return [_dims_of(vals[0])]
    return [(None,) * ins[0][0]]  # rank known from the shape input's length


def _dims_of(value: np.ndarray) -> Shape:
    """A shape-valued tensor as dims (symbols stay strs, entries nobody knows stay None)."""
    return tuple(d if d is None or isinstance(d, str) else int(d) for d in value.tolist())


def _shape(node, ins, vals, opset):
    return [(len(_shape_slice(node, ins[0])),)]


def _shape_slice(node, x: Shape) -> Shape:
    return tuple(x)[slice(node.attr("start", 0), node.attr("end"))]


def _gather(node, ins, vals, opset):
    data, indices = ins[0], ins[1]
    axis = _axis(node.attr("axis", 0), len(data))
    return [(*data[:axis], *indices, *data[axis + 1:])]


def _input_value(node, vals, index: int, opset_from: int, opset: int, attr: str):
    """An operand that moved from an attribute to an input at ``opset_from`` (Slice, Pad, Split ...)."""
    if opset < opset_from:
        return node.attr(attr)
    if index >= len(node.inputs) or not node.inputs[index]:
        return None
    value = vals[index]
    if value is None:
        raise ValueError("data-dependent operand")  # unknown, not absent
    return [int(v) for v in value.reshape(-1).tolist()]  # an unknown (None) or symbolic entry raises


def _pad(node, ins, vals, opset):
    x = ins[0]
    pads = _input_value(node, vals, 1, 11, opset, "pads")
    axes = _input_value(node, vals, 3, 18, opset, "axes") if opset >= 18 else None
    axes = [_axis(a, len(x)) for a in axes] if axes is not None else list(range(len(x)))
    out = list(x)
    for i, axis in enumerate(axes):
        grow = pads[i] + pads[i + len(axes)]
        out[axis] = x[axis] if grow == 0 else (x[axis] + grow if isinstance(x[axis], int) else None)
    return [tuple(out)]


def _slice_params(node, vals, opset):
    """(starts, ends, axes, steps) of a Slice: attributes before opset 10, inputs from it (ValueError when data-dependent)."""
    starts = _input_value(node, vals, 1, 10, opset, "starts")
    ends = _input_value(node, vals, 2, 10, opset, "ends")
    axes = _input_value(node, vals, 3, 10, opset, "axes") or list(range(len(starts)))
    steps = _input_value(node, vals, 4, 10, opset, "steps") or [1] * len(starts)
    return starts, ends, axes, steps


def _slice(node, ins, vals, opset):
    x = ins[0]
    starts, ends, axes, steps = _slice_params(node, vals, opset)
    out = list(x)
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis = _axis(axis, len(x))
        if isinstance(x[axis], int):
            out[axis] = len(range(*slice(start, end, step).indices(x[axis])))
        elif not (start == 0 and step == 1 and end >= 2 ** 31 - 1):  # only the whole axis keeps its symbol
            out[axis] = None
    return [tuple(out)]


def _expand(node, ins, vals, opset):
    return [_broadcast([ins[0], _dims_of(vals[1])])]


def _tile(node, ins, vals, opset):
    return [tuple(d * r if isinstance(d, int) else (d if r == 1 else None)
                  for d, r in zip(ins[0], _dims_of(vals[1])))]


def _split(node, ins, vals, opset):
    x = ins[0]
    axis = _axis(node.attr("axis", 0), len(x))
    sizes = _input_value(node, vals, 1, 13, opset, "split")
    if sizes is None:
        count = len(node.outputs)
        sizes = [-(-x[axis] // count)] * (count - 1)
        sizes.append(x[axis] - sum(sizes))
    return [(*x[:axis], size, *x[axis + 1:]) for size in sizes]


def _recurrent(node, ins, vals, opset):
    """LSTM/GRU/RNN: Y, then the last hidden (and LSTM's cell) state."""
    x = ins[0]
    hidden = node.attr("hidden_size")
    directions = 2 if node.attr("direction", "forward") == "bidirectional" else 1
    if node.attr("layout", 0):
        seq, batch = x[1], x[0]
        return [(batch, seq, directions, hidden)] + [(batch, directions, hidden)] * (len(node.outputs) - 1)
    seq, batch = x[0], x[1]
    return [(seq, directions, batch, hidden)] + [(directions, batch, hidden)] * (len(node.outputs) - 1)


def _reduce(node, ins, vals, opset):
    """Reduce*/ArgMax/ArgMin: axes an attribute, or an input from opset 18 (ReduceSum: 13)."""
    x = ins[0]
    if node.op_type.startswith("Arg"):
        axes = [node.attr("axis", 0)]
    else:
        axes = _input_value(node, vals, 1, 13 if node.op_type == "ReduceSum" else 18, opset, "axes")
    if not axes:
        if node.attr("noop_with_empty_axes", 0):
            return [x]
        axes = range(len(x))
    reduced = {_axis(a, len(x)) for a in axes}
    if node.attr("keepdims", 1):
        return [tuple(1 if i in reduced else d for i, d in enumerate(x))]
    return [tuple(d for i, d in enumerate(x) if i not in reduced)]


def _range(node, ins, vals, opset):
    start, limit, delta = (v.item() for v in vals)
    return [(max(math.ceil((limit - start) / delta), 0),)]


def _resize(node, ins, vals, opset):
    """Output sizes from a known ``sizes`` input, else floor(size * scale) (no ``axes`` subset)."""
    x = ins[0]
    if node.attr("axes") is not None:
        return [None]
    sizes_index, scales_index = (3, 2) if opset >= 11 else (None, 1)
    if sizes_index is not None and len(node.inputs) > sizes_index and node.inputs[sizes_index]:
        if node.attr("keep_aspect_ratio_policy", "stretch") != "stretch":
            return [None]  # the sizes are only an upper or lower bound
        return [_dims_of(vals[sizes_index])]
    scales = vals[scales_index].tolist()
    return [tuple(d if s == 1 else (math.floor(d * s) if isinstance(d, int) else None) for d, s in zip(x, scales))]


_SAME_SHAPE_OPS = (
    "Relu", "LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Celu", "HardSigmoid", "HardSwish",
    "Softplus", "Softsign", "Softmax", "LogSoftmax", "Hardmax", "Clip", "Abs", "Neg", "Exp", "Log", "Sqrt",
    "Reciprocal", "Floor", "Ceil", "Round", "Sign", "Erf", "Not", "Identity", "Cast", "Dropout", "LRN",
    "InstanceNormalization", "Mish", "Gelu", "ThresholdedRelu", "Shrink", "IsNaN", "IsInf", "Sin", "Cos",
    "MeanVarianceNormalization")
_BROADCAST_OPS = ("Add", "Sub", "Mul", "Div", "Pow", "Mod", "Sum", "Max", "Min", "Mean", "Equal", "Less",
                  "Greater", "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Where", "BitShift")

SHAPE_RULES: dict[str, _ShapeRule] = {
    **dict.fromkeys(_SAME_SHAPE_OPS, _same), **dict.fromkeys(_BROADCAST_OPS, _elementwise),
    "BatchNormalization": _batchnorm, "Conv": _conv, "ConvTranspose": _conv_transpose,
    "MaxPool": _pool, "AveragePool": _pool, "LpPool": _pool,
    "GlobalAveragePool": _global_pool, "GlobalMaxPool": _global_pool, "GlobalLpPool": _global_pool,
    "Gemm": _gemm, "MatMul": _matmul, "Reshape": _reshape, "Flatten": _flatten, "Concat": _concat,
    "Transpose": _transpose, "Unsqueeze": _unsqueeze, "Squeeze": _squeeze,
    "ConstantOfShape": _constant_of_shape, "Shape": _shape, "Gather": _gather, "Pad": _pad, "Slice": _slice,
    "Expand": _expand, "Tile": _tile, "Split": _split, "Range": _range, "Resize": _resize,
    **dict.fromkeys(("ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
                     "ReduceLogSum", "ReduceLogSumExp", "ReduceSumSquare", "ArgMax", "ArgMin"), _reduce),
    "Size": lambda node, ins, vals, opset: [()], "LSTM": _recurrent, "GRU": _recurrent, "RNN": _recurrent,
}

# ---------------------------------------------------------------------- value rules
# Values of small numeric tensors, for the shape computations exporters emit
# (Shape -> Gather -> Unsqueeze -> Concat -> Reshape). A shape with symbolic dims is an
# object array holding ints, strs and None (unknown). Shape reads its input's shape; the others run only
# when every input value is known.
def _shape_value(node, ins, vals, opset):
    dims = _shape_slice(node, ins[0])
    if fully_known(dims):
        return np.array(dims, dtype=np.int64)
    return np.array(dims, dtype=object)  # symbols and unknown (None) entries ride along


def _cast_value(node, ins, vals, opset):
    dtype = elem_type_to_dtype(node.attr("to"))
    if vals[0].dtype == object:  # a shape with symbols stays one through an integer cast
        return vals[0] if dtype is not None and dtype.kind in "iu" else None
    return vals[0].astype(dtype)


def _numeric(vals) -> list:
    """Operands of arithmetic: plain numbers only (a str symbol times an int would repeat the str)."""
    if any(v.dtype == object for v in vals):
        raise TypeError("symbolic operand")
    return vals


def _div_value(node, ins, vals, opset):
    a, b = _numeric(vals)
    if a.dtype.kind not in "iu":
        return None
    if not np.all(b):
        raise ZeroDivisionError
    return np.trunc(a / b).astype(a.dtype)  # integer Div truncates, as onnxruntime's does


def _constant_of_shape_value(node, ins, vals, opset):
    dims = [int(d) for d in vals[0].tolist()]
    fill = node.attr("value")
    if math.prod(dims) > MAX_VALUE_ELEMS:
        return None
    return np.full(dims, 0.0 if fill is None else fill.reshape(-1)[0], np.float32 if fill is None else fill.dtype)


def _reshape_value(node, ins, vals, opset):
    data, target = vals
    keep_zero = node.attr("allowzero", 0)
    return np.reshape(data, [data.shape[i] if d == 0 and not keep_zero else int(d) for i, d in enumerate(target.tolist())])


def _slice_value(node, ins, vals, opset):
    data = vals[0]
    starts, ends, axes, steps = _slice_params(node, vals, opset)
    index = [slice(None)] * data.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        index[_axis(axis, data.ndim)] = slice(start, end, step)
    return data[tuple(index)]


def _range_value(node, ins, vals, opset):
    start, limit, delta = (v.item() for v in _numeric(vals))
    if max(math.ceil((limit - start) / delta), 0) > MAX_VALUE_ELEMS:
        return None
    return np.arange(start, limit, delta, dtype=vals[0].dtype)


def _expand_value(node, ins, vals, opset):
    shape = np.broadcast_shapes(vals[0].shape, tuple(int(d) for d in _numeric(vals)[1].tolist()))
    return np.broadcast_to(vals[0], shape).copy() if math.prod(shape) <= MAX_VALUE_ELEMS else None


def _binary(op) -> _ValueRule:
    return lambda node, ins, vals, opset: op(*_numeric(vals))


def _squeeze_value(node, ins, vals, opset):
    axes = _axes_of(node, vals, opset)
    return np.squeeze(vals[0], None if axes is None else tuple(axes))


VALUE_RULES: dict[str, _ValueRule] = {
    "Shape": _shape_value,
    "Gather": lambda node, ins, vals, opset: np.asarray(np.take(vals[0], vals[1], axis=node.attr("axis", 0)),
                                                        dtype=vals[0].dtype),
    "Unsqueeze": lambda node, ins, vals, opset: np.expand_dims(vals[0], tuple(_axes_of(node, vals, opset))),
    "Squeeze": _squeeze_value,
    "Concat": lambda node, ins, vals, opset: np.concatenate(vals, axis=node.attr("axis")),
    "Cast": _cast_value,
    "Identity": lambda node, ins, vals, opset: vals[0],
    "ConstantOfShape": _constant_of_shape_value,
    "Reshape": _reshape_value,
    "Slice": _slice_value,
    "Transpose": lambda node, ins, vals, opset: np.transpose(vals[0], node.attr("perm")),
    "Range": _range_value,
    "Add": _binary(np.add), "Sub": _binary(np.subtract), "Mul": _binary(np.multiply), "Div": _div_value,
    "Max": _binary(np.maximum), "Min": _binary(np.minimum), "Neg": lambda node, ins, vals, opset: -_numeric(vals)[0],
    "Equal": _binary(np.equal), "Where": lambda node, ins, vals, opset: np.where(*vals),
    "Expand": _expand_value,
}
