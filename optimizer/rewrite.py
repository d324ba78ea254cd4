"""The rewrite contract: a rule refuses with a reason or returns a ``Replacement``; one function applies it.

Rules that edited the graph themselves had to know unwritten rules: remove a node before
re-adding its output name, re-check that intermediate outputs have no other readers,
carry a re-added node's changed-attribute record (forgetting it once lost fold-pad's
pads). A ``Replacement`` is data instead: the nodes that go, the nodes and initializers
that come, and the tensors whose readers move. ``apply_replacement`` checks it against
the graph and applies it in that one place, so those rules live here only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from optimizer.decisions import Decision
from optimizer.ir import Graph, Node


class Refuse(Exception):
    """Raised anywhere under a pass's ``check`` or ``rewrite`` to turn down a match, saying why.

    ``decision`` is the cost-model verdict that led to it, when one was priced.
    """

    def __init__(self, reason: str, decision: Decision | None = None):
        super().__init__(reason)
        self.reason = reason
        self.decision = decision


class ContractError(RuntimeError):
    """A pass broke the rewrite contract (a bug in the pass, not in the model)."""


@dataclass
class NewNode:
    """A node a Replacement adds. ``like`` is the removed node it continues: its name, original
    protobuf and record of changed attributes carry over (``changed`` adds the attributes this
    rewrite changed), so the export rewrites exactly the attributes that differ."""

    op_type: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    name: str | None = None  # None: a fresh name from the op type
    domain: str = ""
    like: Node | None = None
    changed: set[str] = field(default_factory=set)


@dataclass
class Replacement:
    """What one rewrite does, built by a pass's ``rewrite`` without touching the graph.

    ``rename`` maps an old tensor to the one its readers read instead. An output of a removed
    node must be produced again (by a new node or initializer of the same name) or renamed,
    unless nothing outside the removed nodes reads it.
    """

    remove: list[Node] = field(default_factory=list)
    nodes: list[NewNode] = field(default_factory=list)
    initializers: dict[str, np.ndarray] = field(default_factory=dict)
    rename: dict[str, str] = field(default_factory=dict)
    #: opset imports the new nodes need (e.g. com.microsoft for FusedConv)
    opsets: dict[str, int] = field(default_factory=dict)
    decision: Decision | None = None

    def add_node(self, op_type: str, inputs: list[str], outputs: list[str], attrs: dict[str, Any] | None = None, *,
                 name: str | None = None, domain: str = "") -> NewNode:
        node = NewNode(op_type, list(inputs), list(outputs), dict(attrs or {}), name, domain)
        self.nodes.append(node)
        return node

    def add_initializer(self, name: str, value: np.ndarray) -> str:
        self.initializers[name] = np.asarray(value)
        return name

    def replace(self, old: Node, *, inputs: list[str] | None = None, outputs: list[str] | None = None,
                attrs: dict[str, Any] | None = None) -> NewNode:
        """``old`` again, rewired and with ``attrs`` changed (a None value removes an attribute)."""
        changes = dict(attrs or {})
        merged = {k: v for k, v in {**old.attrs, **changes}.items() if v is not None}
        if old not in self.remove:
            self.remove.append(old)
        node = NewNode(old.op_type, list(old.inputs if inputs is None else inputs),
                       list(old.outputs if outputs is None else outputs), merged, old.name, old.domain, like=old,
                       changed=set(changes))
        self.nodes.append(node)
        return node

    def bypass(self, node: Node, input_index: int = 0, output_index: int = 0) -> Replacement:
        """Remove a pass-through node: readers of its output read its input (a graph output keeps its name)."""
        self.remove.append(node)
        self.rename[node.outputs[output_index]] = node.inputs[input_index]
        return self


def apply_replacement(g: Graph, r: Replacement) -> list[Node]:
    """Apply ``r`` and return the nodes it added; raises Refuse, before changing anything, when the
    graph forbids it (an intermediate output read from outside, a graph output that cannot keep its name)."""
    removed = {n.id for n in r.remove}
    if any(g.node(nid) is None for nid in removed):
        raise ContractError("the replacement removes a node that is not in the graph")
    produced = {out for n in r.nodes for out in n.outputs if out} | set(r.initializers)
    _check_outputs(g, r, removed, produced)
    output_renames = _output_renames(g, r, removed, produced)
    # a tensor produced again keeps its declared type and shape, even with no reader to keep its row
    known = {out: g.tensors[out] for n in r.remove for out in n.outputs if out in produced and out in g.tensors}
    for node in r.remove:
        g.remove_node(node)
    for name, value in r.initializers.items():
        g.add_initializer(value, name=name)
    added = [_add(g, n) for n in r.nodes]
    for out, info in known.items():
        tensor = g.tensor(out)
        tensor.elem_type = tensor.elem_type or info.elem_type
        tensor.shape = info.shape if tensor.shape is None else tensor.shape
    for domain, version in r.opsets.items():
        g.opsets.setdefault(domain, version)
    for old, new in r.rename.items():
        g.replace_all_uses(old, new)
        if old in output_renames:
            g.rename_tensor(new, old)
    return added


def _check_outputs(g: Graph, r: Replacement, removed: set[int], produced: set[str]) -> None:
    for node in r.remove:
        for out in node.outputs:
            if not out or out in produced or out in r.rename:
                continue
            if g.is_graph_output(out):
                raise Refuse(f"the {node.op_type}'s output {out!r} is a graph output")
            if any(reader.id not in removed for reader, _ in g.uses(out)):
                raise Refuse(f"the {node.op_type}'s output {out!r} has readers outside the rewrite")
    for out in produced:
        producer = g.producer(out)
        if (producer is not None and producer.id not in removed) or out in g.inputs or out in g.initializers:
            raise ContractError(f"the replacement produces {out!r}, which the graph already has")


def _output_renames(g: Graph, r: Replacement, removed: set[int], produced: set[str]) -> set[str]:
    """Renamed graph outputs: the tensor that replaces one takes its name, so the interface stays.
    That needs a tensor of the old graph produced by a surviving node and read by nothing else."""
    renamed = set()
    for old, new in r.rename.items():
        if not g.is_graph_output(old):
            continue
        if new in produced:
            raise ContractError(f"graph output {old!r} is replaced by the new tensor {new!r}: produce {old!r} instead")
        producer = g.producer(new)
        if g.is_graph_output(new) or new in g.inputs or new in g.initializers:
            raise Refuse("its output is a graph output and its input is a graph input, output or initializer")
        if producer is None or producer.id in removed:
            raise Refuse("its output is a graph output and its input has no producer to rename")
        if any(reader.id not in removed for reader, _ in g.uses(new)):
            raise Refuse("its output is a graph output and its input has other readers")
        renamed.add(old)
    return renamed


def _add(g: Graph, n: NewNode) -> Node:
    if n.like is None:
        return g.add_node(n.op_type, n.inputs, n.outputs, n.attrs, name=n.name, domain=n.domain)
    node = g.add_node(n.op_type, n.inputs, n.outputs, n.attrs, name=n.name, domain=n.domain, proto=n.like.proto,
                      implicit_inputs=n.like.implicit_inputs)
    node.changed_attrs = set(n.like.changed_attrs) | n.changed
    return node
