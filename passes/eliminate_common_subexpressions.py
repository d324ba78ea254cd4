"""Common-subexpression elimination."""

import numpy as np

from optimizer.pipeline import Pass
from optimizer.registry import register_pass
from passes.fold_constants import NONDETERMINISTIC


@register_pass("eliminate-common-subexpressions", exact=True)
class EliminateCommonSubexpressions(Pass):
    """Nodes with the same op, domain, attributes and inputs compute the same values: keep the first.

    Nodes are visited in topological order and readers of a duplicate are rewired before
    their own turn, so whole duplicated chains merge in one run, always into the earliest
    copy (deterministic). Random ops, ops of other domains than ONNX's own, and nodes with
    subgraph or other non-plain attributes are never merged.
    """

    def run(self, g, stats):
        first: dict[tuple, object] = {}
        changed = False
        for node in g.toposort():
            key = _key(node)
            if key is None:
                continue
            keep = first.setdefault(key, node)
            if keep is node:
                continue
            stats.matches += 1
            if any(g.is_graph_output(out) for out in node.outputs if out):
                stats.refuse("the duplicate's output is a graph output")
                continue
            for out, kept in zip(node.outputs, keep.outputs):
                if out:
                    g.replace_all_uses(out, kept)
            g.remove_node(node)
            stats.rewrites += 1
            changed = True
        return changed


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
