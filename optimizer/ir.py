"""The ninopt IR: a `Graph` facade over a networkx.MultiDiGraph.

Ops are networkx nodes (keyed by an integer id); a tensor produced by one op and read by
another is an edge keyed by ``(tensor name, consumer input index)``. Graph inputs and
initializers have no producing op, so their uses live only in the use index. Tensor facts
(element type, shape, constant value) live in one table, ``Graph.tensors``.

Passes talk to this facade only; this is the only module that imports networkx. Everything
the IR does not model (opset imports, metadata, functions, doc strings, value_info, the
original protobuf of untouched nodes and initializers) is carried in ``Graph.source`` by
``optimizer.onnx_io`` so a round trip is lossless. What tensors and attributes hold
(constants, element types, ``Subgraph`` bodies) lives one layer below, in ``optimizer.values``.
"""

from __future__ import annotations

import contextlib
import gc
import heapq
import itertools
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Iterable

import networkx as nx
import numpy as np

from optimizer.values import (Constant, Dim, Subgraph, Tensor, constant_attr_value, dtype_to_elem_type,
                              subgraphs_in)

#: Input index recorded for a tensor that a node reads implicitly, from inside a subgraph
#: attribute (If/Loop/Scan bodies referring to outer-scope names).
IMPLICIT_USE = -1


@contextlib.contextmanager
def paused_gc():
    """Pause Python's cyclic garbage collector while building or rewriting a large graph.

    Each full collection walks every live object, so on 100k-node graphs the collector's
    passes grow faster than the work itself; the IR creates no reference cycles that need
    collecting in between (measured: load of 100k nodes 10.0 s -> 6.5 s).
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


@dataclass(eq=False)
class Node:
    """One op. ``inputs`` uses "" for an omitted optional input.

    ``attrs`` holds Python values (int, float, str, lists, numpy arrays for tensors,
    ``Subgraph`` for bodies). Change attributes through ``Graph.set_attr`` so the export
    knows which ones to rewrite; everything else of an untouched node is written back
    verbatim from ``proto``.
    """

    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str = ""
    domain: str = ""
    id: int = -1
    proto: Any = None
    changed_attrs: set[str] = field(default_factory=set)
    #: outer-scope names read by subgraph attributes (If/Loop/Scan bodies)
    implicit_inputs: tuple[str, ...] = ()

    def attr(self, name: str, default: Any = None) -> Any:
        return self.attrs.get(name, default)

    @property
    def is_constant_op(self) -> bool:
        """An ai.onnx Constant: its value is in its attributes."""
        return self.op_type == "Constant" and self.domain in ("", "ai.onnx")

    def subgraphs(self) -> list[Subgraph]:
        """The bodies its attributes hold (If branches, Loop/Scan bodies)."""
        return [body for value in self.attrs.values() for body in subgraphs_in(value)]

    def __repr__(self) -> str:
        label = self.name or (self.outputs[0] if self.outputs else f"#{self.id}")
        return f"{self.op_type} node {label!r}"


class Graph:
    """A model's main graph: ops, tensor table, graph inputs/outputs and opsets."""

    def __init__(self, opsets: dict[str, int] | None = None):
        self._g = nx.MultiDiGraph()
        self._nodes: dict[int, Node] = {}
        self._producer: dict[str, int] = {}
        self._uses: dict[str, dict[tuple[int, int], None]] = {}
        self._ids = itertools.count()
        self._name_counter = itertools.count()
        #: how many live nodes carry each name, so fresh names avoid node names too
        self._node_names: Counter[str] = Counter()
        #: node names the loaded model already repeats (ONNX allows it); passes may not add more
        self.inherited_duplicate_names: frozenset[str] = frozenset()
        self.tensors: dict[str, Tensor] = {}
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self.initializers: dict[str, None] = {}  # ordered set: initializer names in file order
        self.opsets: dict[str, int] = dict(opsets or {"": 13})
        #: ONNX IR version; from 4 on, an initializer also listed as a graph input is an overridable default
        self.ir_version = 8
        #: what onnx_io carries for a lossless export (model shell, value_info, ...)
        self.source: Any = None
        #: bumped by every mutation; the pass manager compares it to detect a fixpoint
        self.version = 0
        self._topo_cache: tuple[int, list[Node]] | None = None
        self._subgraph_name_cache: frozenset[str] | None = None

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self._nodes)

    @property
    def nodes(self) -> list[Node]:
        """Nodes in insertion order (cheap); use ``toposort`` when order matters."""
        return list(self._nodes.values())

    def node(self, node_id: int) -> Node | None:
        return self._nodes.get(node_id)

    def opset(self, domain: str = "") -> int:
        if domain in ("", "ai.onnx"):
            return self.opsets.get("", self.opsets.get("ai.onnx", 1))
        return self.opsets.get(domain, 1)

    def tensor(self, name: str) -> Tensor:
        info = self.tensors.get(name)
        if info is None:
            info = self.tensors[name] = Tensor(name)
        return info

    def shape(self, name: str) -> tuple[Dim, ...] | None:
        info = self.tensors.get(name)
        if info is None:
            return None
        if info.shape is None and info.const is not None:
            return info.const.shape
        return info.shape

    def producer(self, tensor: str) -> Node | None:
        nid = self._producer.get(tensor)
        return None if nid is None else self._nodes[nid]

    def uses(self, tensor: str) -> list[tuple[Node, int]]:
        """(consumer, input index) pairs; index IMPLICIT_USE marks a read from a subgraph."""
        return [(self._nodes[nid], idx) for nid, idx in self._uses.get(tensor, ())]

    def consumers(self, tensor: str) -> list[Node]:
        seen: dict[int, None] = {}
        for nid, _ in self._uses.get(tensor, ()):
            seen[nid] = None
        return [self._nodes[nid] for nid in seen]

    def is_graph_output(self, tensor: str) -> bool:
        return tensor in self.outputs

    def num_uses(self, tensor: str) -> int:
        """Node uses plus one per appearance as a graph output."""
        return len(self._uses.get(tensor, ())) + self.outputs.count(tensor)

    def const(self, tensor: str) -> np.ndarray | None:
        """The value of an initializer or a Constant op's output, else None."""
        info = self.tensors.get(tensor)
        if info is not None and info.const is not None and self._fixed_initializer(tensor):
            return info.const.value
        node = self.producer(tensor)
        if node is not None and node.is_constant_op:
            return constant_attr_value(node.attrs)
        return None

    def initializer_value(self, name: str) -> np.ndarray:
        """An initializer's stored value, also when it is an overridable default (IR >= 4 graph input)."""
        return self.tensors[name].const.value

    def _fixed_initializer(self, tensor: str) -> bool:
        """An initializer a caller cannot override (IR v3 lists every initializer as an input; later IRs do not)."""
        return tensor in self.initializers and (self.ir_version < 4 or tensor not in self.inputs)

    def is_const(self, tensor: str) -> bool:
        if self._fixed_initializer(tensor):
            return True
        node = self.producer(tensor)
        return node is not None and node.op_type == "Constant" and constant_attr_value(node.attrs) is not None

    def all_constant(self, *tensors: str) -> bool:
        """True when every named tensor is constant; "" (an omitted input) counts as constant."""
        return all(t == "" or self.is_const(t) for t in tensors)

    def feed_inputs(self) -> list[str]:
        """Graph inputs a caller must feed (IR v3 also lists initializers as inputs)."""
        return [name for name in self.inputs if name not in self.initializers]

    def removable_initializers(self) -> list[str]:
        """Initializers that are constants rather than part of the model's interface."""
        return [name for name in self.initializers if self._fixed_initializer(name)]

    def toposort(self) -> list[Node]:
        """Nodes in a topological order that keeps the original order wherever it can.

        Kahn's algorithm with the smallest ready id first, over the facade's own indexes
        (several times faster than networkx's lexicographic sort on 100k-node graphs);
        cached until the next mutation. Raises ValueError on a cycle.
        """
        if self._topo_cache is not None and self._topo_cache[0] == self.version:
            return list(self._topo_cache[1])
        waiting: dict[int, int] = {}
        readers: dict[int, list[int]] = {}
        producer = self._producer
        for nid, node in self._nodes.items():
            preds = {producer[t] for t in itertools.chain(node.inputs, node.implicit_inputs) if t in producer}
            waiting[nid] = len(preds)
            for pred in preds:
                readers.setdefault(pred, []).append(nid)
        ready = [nid for nid, count in waiting.items() if count == 0]
        heapq.heapify(ready)
        order: list[Node] = []
        while ready:
            nid = heapq.heappop(ready)
            order.append(self._nodes[nid])
            for reader in readers.get(nid, ()):
                waiting[reader] -= 1
                if waiting[reader] == 0:
                    heapq.heappush(ready, reader)
        if len(order) != len(self._nodes):
            raise ValueError("the graph has a cycle")
        self._topo_cache = (self.version, order)
        return list(order)

    def live_nodes(self) -> set[int]:
        """Ids of nodes some graph output depends on (one reverse walk from all outputs)."""
        stack = [self._producer[t] for t in self.outputs if t in self._producer]
        live = set(stack)
        while stack:
            for pred in self._g.predecessors(stack.pop()):
                if pred not in live:
                    live.add(pred)
                    stack.append(pred)
        return live

    # ------------------------------------------------------------------ naming
    def fresh_name(self, base: str) -> str:
        """A name no tensor, node or subgraph value of this model uses yet: one service for tensor
        and node names, so an invented ``Add__4`` never collides with a node the exporter named so."""
        base = base or "t"
        while True:
            candidate = f"{base}__{next(self._name_counter)}"
            if (candidate not in self.tensors and candidate not in self._node_names
                    and candidate not in self._subgraph_names()):
                return candidate

    def _subgraph_names(self) -> frozenset[str]:
        """Every value and node name inside If/Loop/Scan bodies (read once: passes never add subgraphs)."""
        if self._subgraph_name_cache is None:
            self._subgraph_name_cache = frozenset(
                name for node in self._nodes.values() for body in node.subgraphs() for name in body.defined_names())
        return self._subgraph_name_cache

    # ------------------------------------------------------------------ mutation
    def add_node(self, op_type: str, inputs: Iterable[str], outputs: Iterable[str] | int = 1,
                 attrs: dict[str, Any] | None = None, *, name: str | None = None, domain: str = "",
                 proto: Any = None, implicit_inputs: Iterable[str] = ()) -> Node:
        """Add an op; ``outputs`` may be names or a count of fresh names to make."""
        if isinstance(outputs, int):
            outputs = [self.fresh_name(f"{name or op_type}_out") for _ in range(outputs)]
        outputs = list(outputs)
        for out in outputs:
            if out and (out in self._producer or outputs.count(out) > 1):
                raise ValueError(f"tensor {out!r} already has a producer")
        node = Node(op_type, list(inputs), list(outputs), dict(attrs or {}),
                    name=self.fresh_name(op_type) if name is None else name, domain=domain,
                    id=next(self._ids), proto=proto, implicit_inputs=tuple(implicit_inputs))
        self._nodes[node.id] = node
        self._node_names[node.name] += 1
        self._g.add_node(node.id)
        for out in node.outputs:
            if out == "":
                continue
            self._producer[out] = node.id
            self.tensor(out)
            for cid, idx in self._uses.get(out, ()):
                self._g.add_edge(node.id, cid, key=(out, idx))
        for idx, name_ in enumerate(node.inputs):
            self._link(name_, node.id, idx)
        for name_ in node.implicit_inputs:
            self._link(name_, node.id, IMPLICIT_USE)
        self.version += 1
        return node

    def add_like(self, old: Node, inputs: Iterable[str] | None = None,
                 outputs: Iterable[str] | None = None) -> Node:
        """Re-add a removed node, optionally rewired, keeping its op, name, attributes and the
        record of attributes ``set_attr`` changed (else the export would revert them to the proto's)."""
        node = self.add_node(old.op_type, old.inputs if inputs is None else inputs,
                             old.outputs if outputs is None else outputs, dict(old.attrs), name=old.name,
                             domain=old.domain, proto=old.proto, implicit_inputs=old.implicit_inputs)
        node.changed_attrs = set(old.changed_attrs)
        return node

    def remove_node(self, node: Node) -> None:
        """Detach an op. Tensors it produced lose their producer (and their row, if unused)."""
        for idx, name_ in enumerate(node.inputs):
            self._unlink(name_, node.id, idx)
        for name_ in node.implicit_inputs:
            self._unlink(name_, node.id, IMPLICIT_USE)
        for out in node.outputs:
            if self._producer.get(out) == node.id:
                del self._producer[out]
                if not self._uses.get(out) and not self.is_graph_output(out):
                    self.tensors.pop(out, None)
        self._g.remove_node(node.id)
        del self._nodes[node.id]
        self._node_names[node.name] -= 1
        if not self._node_names[node.name]:
            del self._node_names[node.name]
        for name_ in itertools.chain(node.inputs, node.implicit_inputs):
            if name_ and self._is_orphan(name_):
                self.tensors.pop(name_, None)
        self.version += 1

    def _is_orphan(self, tensor: str) -> bool:
        return (tensor not in self._producer and not self._uses.get(tensor) and tensor not in self.initializers
                and tensor not in self.inputs and tensor not in self.outputs)

    def remove_nodes(self, nodes: Iterable[Node]) -> None:
        for node in list(nodes):
            if node.id in self._nodes:
                self.remove_node(node)

    def set_input(self, node: Node, index: int, tensor: str) -> None:
        self._unlink(node.inputs[index], node.id, index)
        node.inputs[index] = tensor
        self._link(tensor, node.id, index)
        self.version += 1

    def set_attr(self, node: Node, name: str, value: Any) -> None:
        """Set (or, with None, remove) an attribute and mark it for re-export."""
        if value is None:
            node.attrs.pop(name, None)
        else:
            node.attrs[name] = value
        node.changed_attrs.add(name)
        self.version += 1

    def replace_all_uses(self, old: str, new: str) -> None:
        """Make every reader of ``old`` read ``new``; graph outputs keep their names.

        A graph output named ``old`` is not renamed (that would change the model's
        interface); ``optimizer.rewrite.Replacement.bypass`` removes a node whose output is one.
        """
        if old == new:
            return
        for nid, idx in list(self._uses.get(old, ())):
            node = self._nodes[nid]
            if idx == IMPLICIT_USE:
                self._rename_implicit(node, old, new)
            else:
                self.set_input(node, idx, new)
        self.version += 1

    def rename_tensor(self, old: str, new: str) -> None:
        """Give a tensor produced by an op a new name everywhere (producer, readers, table)."""
        if new in self.tensors and new != old and (self._producer.get(new) is not None or self._uses.get(new)):
            raise ValueError(f"tensor name {new!r} is already in use")
        producer = self.producer(old)
        info = self.tensors.pop(old, Tensor(old))
        kept = self.tensors.get(new)
        info.name = new
        if kept is not None:  # e.g. a graph output's declared type and shape
            info.elem_type = info.elem_type or kept.elem_type
            info.shape = info.shape if info.shape is not None else kept.shape
        self.tensors[new] = info
        if producer is not None:
            del self._producer[old]
            producer.outputs = [new if o == old else o for o in producer.outputs]
            self._producer[new] = producer.id
            self._g.remove_edges_from([(u, v, k) for u, v, k in self._g.out_edges(producer.id, keys=True) if k[0] == old])
        self.replace_all_uses(old, new)
        self.outputs = [new if o == old else o for o in self.outputs]
        self.version += 1

    def add_initializer(self, array: np.ndarray, name: str | None = None) -> str:
        """Add a constant as an initializer and return its (fresh unless given) name."""
        array = np.asarray(array)
        if name is None:
            name = self.fresh_name("const")
        self.tensors[name] = Tensor(name, dtype_to_elem_type(array.dtype), tuple(array.shape), Constant(array))
        self.initializers[name] = None
        self.version += 1
        return name

    def set_const(self, name: str, array: np.ndarray) -> None:
        """Replace an initializer's value (the original protobuf is no longer reused)."""
        array = np.asarray(array)
        self.tensors[name] = Tensor(name, dtype_to_elem_type(array.dtype), tuple(array.shape), Constant(array))
        self.initializers[name] = None
        self.version += 1

    def remove_initializer(self, name: str) -> None:
        self.initializers.pop(name, None)
        if name in self.inputs:
            self.inputs.remove(name)
        if not self._uses.get(name) and not self.is_graph_output(name) and name not in self._producer:
            self.tensors.pop(name, None)
        self.version += 1

    # ------------------------------------------------------------------ checking
    def check_invariants(self) -> list[str]:
        """Structural problems, each a sentence; empty when the graph is well formed."""
        problems: list[str] = []
        try:
            self.toposort()
        except ValueError:
            cycle = nx.find_cycle(self._g)
            problems.append("the graph has a cycle through " + ", ".join(repr(self._nodes[u]) for u, *_ in cycle))
        produced: dict[str, Node] = {}
        node_names: set[str] = set()
        inputs = set(self.inputs)
        for node in self._nodes.values():
            if node.name and node.name not in self.inherited_duplicate_names:
                if node.name in node_names:
                    problems.append(f"node name {node.name!r} is used twice")
                node_names.add(node.name)
            for out in node.outputs:
                if not out:
                    continue
                if out in produced:
                    problems.append(f"tensor {out!r} is produced by {produced[out]!r} and {node!r}")
                elif out in inputs or out in self.initializers:
                    problems.append(f"tensor {out!r} is both a graph input/initializer and produced by {node!r}")
                produced[out] = node
        for node in self._nodes.values():
            for name_ in itertools.chain(node.inputs, node.implicit_inputs):
                if name_ and name_ not in produced and name_ not in inputs and name_ not in self.initializers:
                    problems.append(f"{node!r} reads {name_!r}, which nothing produces")
        for out in self.outputs:
            if out not in produced and out not in inputs and out not in self.initializers:
                problems.append(f"graph output {out!r} is not produced")
        return problems

    # ------------------------------------------------------------------ copying
    def copy(self) -> Graph:
        """An independent copy for snapshots and rollback; constant values are shared (never mutated in place)."""
        other = Graph(self.opsets)
        other._g = self._g.copy()
        other._nodes = {nid: Node(n.op_type, list(n.inputs), list(n.outputs), dict(n.attrs), name=n.name,
                                  domain=n.domain, id=n.id, proto=n.proto, changed_attrs=set(n.changed_attrs),
                                  implicit_inputs=n.implicit_inputs)
                        for nid, n in self._nodes.items()}
        other._producer = dict(self._producer)
        other._uses = {t: dict(u) for t, u in self._uses.items()}
        other._ids = itertools.count(next(self._ids))  # ids are never reused, even across copies
        other._name_counter = itertools.count(next(self._name_counter))
        other._node_names = Counter(self._node_names)
        other.inherited_duplicate_names = self.inherited_duplicate_names
        other._subgraph_name_cache = self._subgraph_name_cache
        other.tensors = {k: Tensor(v.name, v.elem_type, v.shape, v.const) for k, v in self.tensors.items()}
        other.inputs = list(self.inputs)
        other.outputs = list(self.outputs)
        other.initializers = dict(self.initializers)
        other.source = self.source
        other.ir_version = self.ir_version
        other.version = self.version
        return other

    def restore(self, snapshot: Graph) -> None:
        """Become ``snapshot`` (a ``copy()`` taken earlier), e.g. to roll a rewrite back."""
        self.__dict__.update(snapshot.__dict__)

    # ------------------------------------------------------------------ internals
    def _link(self, tensor: str, nid: int, idx: int) -> None:
        if tensor == "":
            return
        self._uses.setdefault(tensor, {})[(nid, idx)] = None
        self.tensor(tensor)
        pid = self._producer.get(tensor)
        if pid is not None:
            self._g.add_edge(pid, nid, key=(tensor, idx))

    def _unlink(self, tensor: str, nid: int, idx: int) -> None:
        if tensor == "":
            return
        uses = self._uses.get(tensor)
        if uses is not None:
            uses.pop((nid, idx), None)
            if not uses:
                del self._uses[tensor]
        pid = self._producer.get(tensor)
        if pid is not None and self._g.has_edge(pid, nid, key=(tensor, idx)):
            self._g.remove_edge(pid, nid, key=(tensor, idx))

    def _rename_implicit(self, node: Node, old: str, new: str) -> None:
        for key, value in list(node.attrs.items()):
            if isinstance(value, Subgraph):
                renamed = value.with_outer_renamed(old, new)
            elif subgraphs_in(value):
                renamed = [v.with_outer_renamed(old, new) if isinstance(v, Subgraph) else v for v in value]
                renamed = value if all(r is v for r, v in zip(renamed, value)) else renamed
            else:
                continue
            if renamed is not value:
                self.set_attr(node, key, renamed)
        self._unlink(old, node.id, IMPLICIT_USE)
        node.implicit_inputs = tuple(new if t == old else t for t in node.implicit_inputs)
        self._link(new, node.id, IMPLICIT_USE)
