"""Common-subexpression elimination."""

import numpy as np

from optimizer.pattern import Match
from optimizer.pipeline import RewritePass, register_pass
from optimizer.rewrite import Refuse, Replacement
from passes.fold_constants import NONDETERMINISTIC


@register_pass("eliminate-common-subexpressions", exact=True)
class EliminateCommonSubexpressions(RewritePass):
    """Nodes with the same op, domain, attributes and inputs compute the same values: keep the first.

    Nodes are visited in topological order and readers of a duplicate are rewired before
    their own turn, so whole duplicated chains merge in one run, always into the earliest
    copy (deterministic). Random ops, ops of other domains than ONNX's own, and nodes with
    subgraph or other non-plain attributes are never merged.
    """

    def matches(self, g, ctx):
        """Each duplicate with the first node of its value (``nodes=[duplicate, kept]``).

        A node's key is read when its turn comes, after the merges before it rewired its inputs.
        """
        first: dict[tuple, int] = {}  # key -> id of the node kept for it
        for visited in g.toposort():
            node = g.node(visited.id)  # the graph's own node: a rolled-back rewrite restores copies
            key = None if node is None else _key(node)
            if key is None:
                continue
            kept = first.setdefault(key, node.id)
            if kept != node.id:
                yield Match(nodes=[node, g.node(kept)])

    def check(self, g, m):
        if any(g.is_graph_output(out) for out in m.root.outputs if out):
            raise Refuse("the duplicate's output is a graph output")

    def rewrite(self, g, m):
        duplicate, kept = m.nodes
        return Replacement(remove=[duplicate],
                           rename={out: kept_out for out, kept_out in zip(duplicate.outputs, kept.outputs) if out})


def _key(node) -> tuple | None:
    """What makes two nodes compute the same outputs; None for nodes that must never merge."""
    if node.domain not in ("", "ai.onnx") or node.op_type in NONDETERMINISTIC or node.implicit_inputs \
            or not node.inputs:
        return None  # a custom-domain op may keep state; only ONNX's own ops are known to be functions
    attrs = []
    for name, value in sorted(node.attrs.items()):
        if isinstance(value, np.ndarray):
            value = (value.dtype.str, value.shape, value.tobytes())
        elif isinstance(value, list):
            if not all(isinstance(v, (int, float, str)) for v in value):
                return None
            value = tuple(value)
        elif not isinstance(value, (int, float, str)):
            return None
        attrs.append((name, value))
    outputs = tuple(bool(out) for out in node.outputs)
    return node.op_type, tuple(node.inputs), tuple(attrs), outputs
