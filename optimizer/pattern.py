"""Small declarative patterns, so a pass reads like the subgraph it rewrites.

    P.BatchNormalization(P.Conv("x", "w", Opt("b"), out="y"), "scale", "bias", "mean", "var")

matches a BatchNormalization whose first input is produced by a Conv. Strings bind tensor
names (a name used twice must bind the same tensor), ``Opt`` marks an optional input
(bound to "" when absent), ``ANY`` matches and binds nothing, a trailing ``...`` accepts
further inputs. ``P.op("Mul|Add", ...)`` matches any of several op types. Matched nodes
are bound under ``node=`` (default: the op type) and the output under ``out=``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from optimizer.ir import Graph, Node

ANY = object()


@dataclass(frozen=True)
class Opt:
    """An optional input: binds "" when the node omits it."""

    name: str


@dataclass(frozen=True)
class OpPattern:
    op_types: frozenset[str]
    inputs: tuple[Any, ...]
    out: str | None = None
    node: str | None = None
    domain: str = ""

    def ops(self) -> set[str]:
        """Every op type this pattern (root) can match; passes are indexed by it."""
        return set(self.op_types)


class _PatternBuilder:
    def op(self, op_types: str, *inputs: Any, out: str | None = None, node: str | None = None,
           domain: str = "") -> OpPattern:
        return OpPattern(frozenset(op_types.split("|")), inputs, out, node, domain)

    def __getattr__(self, op_type: str):
        if op_type.startswith("_"):
            raise AttributeError(op_type)
        return lambda *inputs, out=None, node=None, domain="": self.op(op_type, *inputs, out=out, node=node,
                                                                       domain=domain)


P = _PatternBuilder()


@dataclass
class Match:
    """The tensors and nodes a pattern bound (``m["x"]``, ``m.node("pad")``, ``m.root``).

    ``shapes`` is set by the pass driver: the run's lazy ``ShapeContext``.
    """

    tensors: dict[str, str] = field(default_factory=dict)
    bound_nodes: dict[str, Node] = field(default_factory=dict)
    nodes: list[Node] = field(default_factory=list)  # root first
    shapes: Any = None

    def __getitem__(self, key: str) -> str:
        return self.tensors[key]

    def node(self, key: str) -> Node:
        return self.bound_nodes[key]

    @property
    def root(self) -> Node:
        return self.nodes[0]


def match(g: Graph, pattern: OpPattern, node: Node) -> Match | None:
    """Match ``pattern`` rooted at ``node``; None when the structure differs."""
    m = Match()
    return m if _match_node(g, pattern, node, m) else None


def _match_node(g: Graph, pattern: OpPattern, node: Node, m: Match) -> bool:
    if node.op_type not in pattern.op_types or _domain(node.domain) != _domain(pattern.domain):
        return False
    if any(n is node for n in m.nodes):
        return False
    if pattern.node is not None:
        if pattern.node in m.bound_nodes:
            return False
        m.bound_nodes[pattern.node] = node
    else:
        m.bound_nodes.setdefault(node.op_type, node)  # the first (outermost) node of each op type
    m.nodes.append(node)
    if pattern.out is not None and not _bind(m, pattern.out, node.outputs[0] if node.outputs else ""):
        return False
    expected = pattern.inputs
    open_ended = bool(expected) and expected[-1] is Ellipsis
    if open_ended:
        expected = expected[:-1]
    actual = list(node.inputs)
    if len(actual) > len(expected) and not open_ended and any(actual[len(expected):]):
        return False
    for i, want in enumerate(expected):
        have = actual[i] if i < len(actual) else ""
        if want is ANY:
            continue
        if isinstance(want, Opt):
            if not _bind(m, want.name, have):
                return False
            continue
        if have == "":
            return False
        if isinstance(want, str):
            if not _bind(m, want, have):
                return False
        elif isinstance(want, OpPattern):
            producer = g.producer(have)
            if producer is None or producer.outputs[0] != have or not _match_node(g, want, producer, m):
                return False
        else:
            raise TypeError(f"pattern input {want!r} is not a name, Opt, ANY or pattern")
    return True


def _domain(domain: str) -> str:
    return "" if domain == "ai.onnx" else domain


def _bind(m: Match, key: str, tensor: str) -> bool:
    bound = m.tensors.setdefault(key, tensor)
    return bound == tensor
