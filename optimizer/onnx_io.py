"""ONNX <-> Graph: loading, exporting and saving models.

The boundary between protobuf and the IR (with ``model_files`` for the files themselves
and ``onnx_checks`` for onnx's inference and checker). Subgraph attributes become
``OnnxSubgraph`` values here, the IR's ``Subgraph`` backed by the GraphProto; small sparse
Constant attributes become lazily densified ``Constant`` values. Why not onnx-graphsurgeon at this
boundary: ``gs.export_onnx(gs.import_onnx(m))`` drops initializer graph inputs of IR v3
models (every light-zoo model) and rewrites protobufs it did not need to touch. Instead
the original protobuf of every node and initializer is kept and written back verbatim
unless a pass changed it, and everything the IR does not model travels in a model
"shell" (opsets, metadata, functions, graph doc string, sparse initializers, ...).
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import onnx
import onnx.inliner
from onnx import helper, numpy_helper
from google.protobuf.message import DecodeError

from optimizer.errors import NinoptError, first_line
from optimizer.ir import Graph, paused_gc
from optimizer.model_files import atomic_writer, check_destination, lazy_constant, write_external
from optimizer.values import Constant, Subgraph, Tensor, elem_type_to_dtype, subgraphs_in

#: Protobuf cannot serialize messages of 2 GiB or more; above this, weights go to external data.
PROTO_LIMIT = 2**31 - 1
#: Initializers at least this large go to the external data file when one is written.
EXTERNAL_MIN_BYTES = 1024

_GRAPH_LISTS = ("node", "initializer", "input", "output", "value_info")


@dataclass
class Source:
    """What the IR does not model, carried from load to save for a lossless round trip."""

    shell: onnx.ModelProto  # the model with an empty graph body: opsets, metadata, functions, ...
    input_info: dict[str, onnx.ValueInfoProto] = field(default_factory=dict)
    output_info: dict[str, onnx.ValueInfoProto] = field(default_factory=dict)
    value_info: dict[str, onnx.ValueInfoProto] = field(default_factory=dict)
    base_dir: Path | None = None  # folder that external data locations are relative to
    external: bool = False  # the model kept (some) weights in external files
    external_files: set[Path] = field(default_factory=set)
    keepalive: Any = None  # the loaded ModelProto that owns the original TensorProtos


# ---------------------------------------------------------------------- loading
def load(model: str | os.PathLike | onnx.ModelProto | Graph) -> Graph:
    """Read a model from a path or a ModelProto into a Graph; weights in external files stay unread."""
    if isinstance(model, Graph):
        return model
    if isinstance(model, onnx.ModelProto):
        return _from_model(model, base_dir=None)
    path = Path(model)
    if not path.exists():
        raise NinoptError(f"{path} does not exist.")
    if not path.is_file():
        raise NinoptError(f"{path} is not a file.")
    if path.stat().st_size == 0:
        raise NinoptError(f"{path} is empty, not an ONNX model.")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, TypeError, OSError) as exc:
        raise NinoptError(f"{path} is not a readable ONNX model ({first_line(exc)}).") from None
    if not proto.HasField("graph") or (not proto.graph.node and not proto.graph.output):
        raise NinoptError(f"{path} holds no ONNX graph (is it an ONNX model?).")
    return _from_model(proto, base_dir=path.resolve().parent, label=str(path))


def _from_model(model: onnx.ModelProto, base_dir: Path | None, label: str = "the model") -> Graph:
    opsets = {op.domain if op.domain != "ai.onnx" else "": op.version for op in model.opset_import}
    if not model.opset_import:
        opsets = {"": 1}
    graph = Graph(opsets)
    graph.ir_version = model.ir_version
    shell = onnx.ModelProto()
    for desc, value in model.ListFields():
        if desc.name != "graph":
            _copy_field(shell, desc.name, value, desc)
    for desc, value in model.graph.ListFields():
        if desc.name not in _GRAPH_LISTS:
            _copy_field(shell.graph, desc.name, value, desc)
    source = Source(shell=shell, base_dir=base_dir, keepalive=model)
    graph.source = source
    try:
        with paused_gc():
            _fill_graph(graph, model.graph, source)
    except ValueError as exc:
        raise NinoptError(f"{label} is not a valid graph: {exc}.") from None
    problems = graph.check_invariants()
    if problems:
        raise NinoptError(f"{label} is not a valid graph: {problems[0]}.")
    return graph


def _copy_field(target, name, value, desc) -> None:
    if desc.is_repeated:
        getattr(target, name).extend(value)
    elif desc.message_type:
        getattr(target, name).CopyFrom(value)
    else:
        setattr(target, name, value)


def _fill_graph(graph: Graph, gp: onnx.GraphProto, source: Source) -> None:
    for vi in gp.input:
        source.input_info[vi.name] = vi
        graph.inputs.append(vi.name)
        _note_value_info(graph, vi)
    for vi in gp.output:
        source.output_info[vi.name] = vi
        graph.outputs.append(vi.name)
        _note_value_info(graph, vi)
    for vi in gp.value_info:
        source.value_info[vi.name] = vi
        _note_value_info(graph, vi)
    for tp in gp.initializer:
        info = graph.tensor(tp.name)
        info.elem_type = tp.data_type
        info.shape = tuple(tp.dims)
        info.const = lazy_constant(tp, source)
        graph.initializers[tp.name] = None
    for np_ in gp.node:
        attrs = _attrs(np_)
        implicit = dict.fromkeys(name for value in attrs.values() for body in subgraphs_in(value)
                                 for name in body.outer_references())
        graph.add_node(np_.op_type, np_.input, np_.output, attrs, name=np_.name, domain=np_.domain,
                       proto=np_, implicit_inputs=implicit)
    # ONNX does not require unique node names (onnxruntime runs such models); keep the exporter's repeats
    graph.inherited_duplicate_names = frozenset(
        name for name, count in Counter(n.name for n in gp.node).items() if name and count > 1)


def _note_value_info(graph: Graph, vi: onnx.ValueInfoProto) -> None:
    info = graph.tensor(vi.name)
    if vi.type.HasField("tensor_type"):
        tt = vi.type.tensor_type
        info.elem_type = info.elem_type or tt.elem_type
        if tt.HasField("shape") and info.shape is None:
            info.shape = tuple(onnx_dim(d) for d in tt.shape.dim)


def onnx_dim(d) -> int | str | None:
    """One declared dim: a size, a symbol, or None when dynamic.

    paddle2onnx writes -1 for a dynamic dim, and names several different dynamic dims ``?``
    (H and W of one image): ``?`` is a placeholder, not a symbol that equates them."""
    if d.HasField("dim_value"):
        return int(d.dim_value) if d.dim_value >= 0 else None
    if d.HasField("dim_param") and d.dim_param != "?":
        return d.dim_param
    return None


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out = {}
    for a in node.attribute:
        if a.ref_attr_name:  # inside functions: a reference, not a value
            out[a.name] = a
            continue
        value = helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode("utf-8", "surrogateescape")
        elif isinstance(value, onnx.TensorProto):
            value = numpy_helper.to_array(value)
        elif isinstance(value, list) and value and isinstance(value[0], bytes):
            value = [v.decode("utf-8", "surrogateescape") for v in value]
        elif isinstance(value, list) and value and isinstance(value[0], onnx.TensorProto):
            value = [numpy_helper.to_array(v) for v in value]
        elif isinstance(value, onnx.GraphProto):
            value = OnnxSubgraph(value)
        elif isinstance(value, list) and value and isinstance(value[0], onnx.GraphProto):
            value = [OnnxSubgraph(v) for v in value]
        elif isinstance(value, onnx.SparseTensorProto):
            value = _sparse_constant(value)
        out[a.name] = value
    return out


#: A sparse Constant is densified only up to this many elements (a sparse huge tensor stays a node).
MAX_DENSIFIED_ELEMENTS = 1 << 20


def _sparse_constant(sparse: onnx.SparseTensorProto) -> Constant | onnx.SparseTensorProto:
    """A sparse attribute as a Constant that densifies on first read (written back as the sparse proto);
    past MAX_DENSIFIED_ELEMENTS it stays the protobuf, a value the IR does not read."""
    dims = tuple(sparse.dims)
    if int(np.prod(dims, dtype=np.int64)) > MAX_DENSIFIED_ELEMENTS:
        return sparse
    return Constant(loader=lambda: _densify(sparse), proto=sparse, dtype=elem_type_to_dtype(sparse.values.data_type),
                    shape=dims)


def _densify(sparse: onnx.SparseTensorProto) -> np.ndarray:
    """A SparseTensorProto as a dense array (linear [NNZ] or coordinate [NNZ, rank] indices)."""
    values = numpy_helper.to_array(sparse.values)
    indices = numpy_helper.to_array(sparse.indices).astype(np.int64)
    dense = np.zeros(tuple(sparse.dims), dtype=values.dtype)
    if indices.ndim == 2:
        dense[tuple(indices.T)] = values
    else:
        dense.reshape(-1)[indices] = values
    return dense


def _subgraphs(node: onnx.NodeProto):
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            yield from a.graphs


class OnnxSubgraph(Subgraph):
    """A body as loaded: the GraphProto, written back verbatim unless an outer name it reads is renamed."""

    __slots__ = ("proto", "_outer")

    def __init__(self, proto: onnx.GraphProto):
        self.proto = proto
        self._outer: list[str] | None = None

    def defined_names(self) -> Iterable[str]:
        return _defined_names(self.proto)

    def outer_references(self) -> list[str]:
        if self._outer is None:
            self._outer = _outer_references(self.proto)
        return list(self._outer)

    def with_outer_renamed(self, old: str, new: str) -> OnnxSubgraph:
        if old not in self.outer_references():
            return self
        copy = onnx.GraphProto()
        copy.CopyFrom(self.proto)
        _rename_in(copy, old, new)
        return OnnxSubgraph(copy)

    def as_graph(self, parent: Graph) -> Graph:
        graph = Graph(parent.opsets)
        graph.ir_version = parent.ir_version
        source = Source(shell=onnx.ModelProto(), base_dir=getattr(parent.source, "base_dir", None),
                        keepalive=self.proto)
        graph.source = source
        _fill_graph(graph, self.proto, source)
        return graph


def _outer_references(gp: onnx.GraphProto) -> list[str]:
    """Names a subgraph reads from enclosing scopes (not defined inside it), in first-use order."""
    defined = {vi.name for vi in gp.input} | {t.name for t in gp.initializer} | {t.name for t in gp.sparse_initializer}
    found: dict[str, None] = {}
    for node in gp.node:
        for name in node.input:
            if name and name not in defined:
                found[name] = None
        for sub in _subgraphs(node):
            for name in _outer_references(sub):
                if name not in defined:
                    found[name] = None
        defined.update(o for o in node.output if o)
    for vi in gp.output:
        if vi.name not in defined:
            found[vi.name] = None
    return list(found)


def _rename_in(gp: onnx.GraphProto, old: str, new: str) -> None:
    if old in {vi.name for vi in gp.input} | {t.name for t in gp.initializer}:
        return  # shadowed here
    for node in gp.node:
        for i, name in enumerate(node.input):
            if name == old:
                node.input[i] = new
        for sub in _subgraphs(node):
            _rename_in(sub, old, new)
        if old in node.output:
            return  # redefined from here on (not valid SSA, but stay safe)
    for vi in gp.output:
        if vi.name == old:
            vi.name = new


def _defined_names(gp: onnx.GraphProto) -> Iterable[str]:
    yield from (vi.name for vi in gp.input)
    yield from (t.name for t in gp.initializer)
    for node in gp.node:
        yield node.name
        yield from node.output
        for sub in _subgraphs(node):
            yield from _defined_names(sub)


def inline_functions(graph: Graph) -> Graph:
    """The graph with calls to model-local functions expanded (for running it), or the graph itself if none."""
    source: Source | None = graph.source
    functions = {(f.domain, f.name) for f in source.shell.functions} if source is not None else set()
    if not any((n.domain, n.op_type) in functions for n in graph.nodes):
        return graph
    inlined = onnx.inliner.inline_local_functions(to_model_proto(graph))
    return _from_model(inlined, base_dir=source.base_dir)


# ---------------------------------------------------------------------- exporting
def to_model_proto(graph: Graph, *, external: dict[str, tuple[str, int, int]] | None = None,
                   max_weight_bytes: int | None = None) -> onnx.ModelProto:
    """The Graph as a ModelProto.

    ``external`` maps initializer names to (location, offset, length) to write by reference;
    with ``max_weight_bytes``, larger initializers are left out and become typed graph inputs
    (for analyses such as shape inference that need no weight values).
    """
    source: Source = graph.source or Source(shell=_default_shell(graph))
    model = onnx.ModelProto()
    model.CopyFrom(source.shell)
    del model.opset_import[:]
    for domain, version in graph.opsets.items():
        model.opset_import.append(helper.make_opsetid(domain, version))
    if not model.ir_version:
        model.ir_version = onnx.IR_VERSION
    gp = model.graph
    nodes = graph.toposort()
    gp.node.extend(_node_proto(n) for n in nodes)
    left_out: list[str] = []
    for name in graph.initializers:
        info = graph.tensors[name]
        if max_weight_bytes is not None and info.const.nbytes > max_weight_bytes:
            left_out.append(name)
            continue
        gp.initializer.append(_initializer_proto(info, (external or {}).get(name)))
    gp.input.extend(_value_info(graph, name, source.input_info) for name in graph.inputs)
    listed = set(graph.inputs)
    gp.input.extend(_value_info(graph, name, {}) for name in left_out if name not in listed)
    if model.ir_version < 4:  # IR v3 requires every initializer to be listed as a graph input too
        gp.input.extend(_value_info(graph, name, source.input_info) for name in graph.initializers
                        if name not in listed and name not in left_out)
    gp.output.extend(_value_info(graph, name, source.output_info) for name in graph.outputs)
    alive = set(graph.tensors)
    gp.value_info.extend(vi for name, vi in source.value_info.items() if name in alive and graph.producer(name) is not None)
    return model


def _default_shell(graph: Graph) -> onnx.ModelProto:
    shell = onnx.ModelProto()
    shell.producer_name = "ninopt"
    shell.graph.name = "ninopt"
    return shell


def _node_proto(node) -> onnx.NodeProto:
    original = node.proto
    if original is not None and not node.changed_attrs and list(original.input) == node.inputs \
            and list(original.output) == node.outputs and original.name == node.name:
        return original
    proto = onnx.NodeProto()
    if original is not None:
        proto.CopyFrom(original)
        del proto.input[:]
        del proto.output[:]
        kept = [a for a in original.attribute if a.name not in node.changed_attrs]
        del proto.attribute[:]
        proto.attribute.extend(kept)
        changed = node.changed_attrs
    else:
        proto.op_type = node.op_type
        proto.domain = node.domain
        changed = node.attrs.keys()
    proto.name = node.name
    proto.input.extend(node.inputs)
    proto.output.extend(node.outputs)
    for key in sorted(changed):
        if key in node.attrs:
            proto.attribute.append(_make_attribute(key, node.attrs[key]))
    return proto


def _make_attribute(key: str, value: Any) -> onnx.AttributeProto:
    if isinstance(value, onnx.AttributeProto):
        return value
    if isinstance(value, OnnxSubgraph):
        return helper.make_attribute(key, value.proto)
    if isinstance(value, list) and value and isinstance(value[0], OnnxSubgraph):
        return helper.make_attribute(key, [v.proto for v in value])
    if isinstance(value, Constant) and isinstance(value.proto, onnx.SparseTensorProto):
        return helper.make_attribute(key, value.proto)
    if isinstance(value, np.ndarray):
        return helper.make_attribute(key, numpy_helper.from_array(value))
    if isinstance(value, (list, tuple)) and value and isinstance(value[0], np.ndarray):
        return helper.make_attribute(key, [numpy_helper.from_array(v) for v in value])
    if isinstance(value, np.generic):
        value = value.item()
    return helper.make_attribute(key, value)


def _initializer_proto(info: Tensor, external: tuple[str, int, int] | None) -> onnx.TensorProto:
    const = info.const
    original = const.proto
    if external is not None:
        location, offset, length = external
        proto = onnx.TensorProto()
        proto.name = info.name
        proto.data_type = info.elem_type
        proto.dims.extend(const.shape)
        if original is not None and original.doc_string:
            proto.doc_string = original.doc_string
        proto.data_location = onnx.TensorProto.EXTERNAL
        for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
            entry = proto.external_data.add()
            entry.key, entry.value = k, v
        return proto
    if original is not None and original.data_location != onnx.TensorProto.EXTERNAL and original.name == info.name:
        return original
    proto = numpy_helper.from_array(const.value, info.name)
    if original is not None:
        proto.data_type = original.data_type  # keep the declared type (e.g. bfloat16 read as float32 bits)
        if original.doc_string:
            proto.doc_string = original.doc_string
    return proto


def _value_info(graph: Graph, name: str, known: dict[str, onnx.ValueInfoProto]) -> onnx.ValueInfoProto:
    if name in known:
        return known[name]
    info = graph.tensors.get(name) or Tensor(name)
    shape = graph.shape(name)
    return helper.make_tensor_value_info(name, info.elem_type or onnx.TensorProto.UNDEFINED, shape)


# ---------------------------------------------------------------------- saving

def save(graph: Graph, path: str | os.PathLike, *, external_data: bool | None = None,
         proto_limit: int = PROTO_LIMIT, external_min_bytes: int = EXTERNAL_MIN_BYTES) -> Path:
    """Write a Graph atomically: a temporary file in the destination folder, then a rename.

    Weights go to ``<name>.data`` beside the model when ``external_data`` is True, or when it
    is None and the model came with external data or would exceed ``proto_limit`` bytes.
    Never writes over a file the graph still reads weights from.
    """
    path = Path(path)
    check_destination(path)
    source: Source | None = graph.source
    if external_data is None:
        external_data = bool(source and source.external) or _estimated_size(graph) >= proto_limit
    data_path = path.with_name(path.name + ".data")
    protected = set(source.external_files) if source else set()
    if path.resolve() in protected or (external_data and data_path.resolve() in protected):
        raise NinoptError(f"refusing to overwrite {path}: the model still reads weights from it.")
    tmp_data = None
    try:
        external = None
        if external_data:
            external, tmp_data = write_external(graph, data_path, external_min_bytes)
        model = to_model_proto(graph, external=external)
        if model.ByteSize() >= PROTO_LIMIT:
            raise NinoptError("the model is over 2 GiB even with its weights outside; it cannot be saved as ONNX.")
        with atomic_writer(path) as f:
            f.write(model.SerializeToString())
            if tmp_data is not None:
                os.replace(tmp_data, data_path)
                tmp_data = None
    except OSError as exc:
        raise NinoptError(f"could not write {path}: {exc.strerror or exc}.") from None
    finally:
        if tmp_data is not None:
            tmp_data.unlink(missing_ok=True)
    return path


def _estimated_size(graph: Graph) -> int:
    return sum(graph.tensors[n].const.nbytes for n in graph.initializers if graph.tensors[n].const is not None)
