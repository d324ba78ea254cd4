"""Merging sibling 1x1 convolutions (the parallel reduce convs of an Inception module)."""

from __future__ import annotations

import numpy as np

from optimizer.cost import node_macs
from optimizer.decisions import SiblingMerge
from optimizer.ir import Node
from optimizer.pattern import Match
from optimizer.pipeline import RewritePass, register_pass
from optimizer.rewrite import Refuse, Replacement

#: Why a group's ReLUs do not merge with its convs (the convs still do).
RELUS_STAY = "ReLUs stay per branch: not every sibling conv output has its own ReLU as only reader"


@register_pass("merge-sibling-conv1x1", exact=True)
class MergeSiblingConv1x1(RewritePass):
    """1x1 convs reading the same tensor -> one wider 1x1 conv (+ one ReLU) and a Split on channels.

    Each output channel is the same dot product as before, so the rewrite is exact and the
    MACs are unchanged; what shrinks is the node count (one big matmul instead of several
    small ones). Siblings qualify with stride 1, no pads, group 1, constant weights and
    biases; they merge in groups of equal dilations and weight dtype. The ReLU merges too
    when every sibling's only reader is its own ReLU. Off by default: whether onnxruntime
    runs the merged form faster is a benchmark question (tests/benchmarks/bench_optimized_models.py).
    """

    def matches(self, g, ctx):
        """Per tensor read by two or more 1x1 convs: each sibling that cannot join (a match bound as
        ``blocked``, which check refuses), then per group the ReLUs that stay per branch when some but
        not all can merge (bound as ``relus_stay``, refused too) and the group (its convs, then its ReLUs)."""
        siblings: dict[str, list[Node]] = {}
        for node in g.nodes:
            if node.op_type == "Conv" and node.domain in ("", "ai.onnx") and _is_1x1(g, node):
                siblings.setdefault(node.inputs[0], []).append(node)
        for x, convs in siblings.items():
            if len(convs) < 2:
                continue
            groups: dict[tuple, list[Node]] = {}
            for conv in convs:
                if _blocker(g, conv):
                    yield Match(tensors={"x": x}, bound_nodes={"blocked": conv}, nodes=[conv])
                    continue
                weight = g.const(conv.inputs[1])
                key = (_dilations(conv, weight.ndim - 2), weight.dtype.str, weight.ndim)
                groups.setdefault(key, []).append(conv)
            for group in groups.values():
                if len(group) < 2:
                    continue
                relus = _sole_relus(g, group)
                if relus is None:
                    branch_relus = [r for c in group for r in g.consumers(c.outputs[0]) if r.op_type == "Relu"]
                    if branch_relus:
                        yield Match(tensors={"x": x}, bound_nodes={"relus_stay": branch_relus[0]},
                                    nodes=branch_relus)
                yield Match(tensors={"x": x}, nodes=group + (relus or []))

    def check(self, g, m):
        if "blocked" in m.bound_nodes:
            raise Refuse(_blocker(g, m.node("blocked")))
        if "relus_stay" in m.bound_nodes:
            raise Refuse(RELUS_STAY)

    def rewrite(self, g, m):
        """The merged form, if the cost model agrees (the decision is recorded either way)."""
        convs = [n for n in m.nodes if n.op_type == "Conv"]
        relus = [n for n in m.nodes if n.op_type == "Relu"]
        x, shapes = m["x"], m.shapes.inferred
        weights = [g.const(c.inputs[1]) for c in convs]
        sizes = [w.shape[0] for w in weights]
        out_shape = shapes.get(convs[0].outputs[0])
        merged_shape = None if out_shape is None else (out_shape[0], sum(sizes), *out_shape[2:])
        label = convs[0].name or convs[0].outputs[0]
        w_name, out_name = g.fresh_name(f"{label}_merged_w"), g.fresh_name(f"{label}_merged")
        priced = Node("Conv", [x, w_name], [out_name])  # priced before it exists
        macs_before = [node_macs(g, c, shapes) for c in convs]
        macs_after = node_macs(g, priced, {w_name: (sum(sizes), *weights[0].shape[1:]), out_name: merged_shape})
        decision = SiblingMerge(node=convs[0].name, siblings=[c.name for c in convs],
                                macs_before=None if None in macs_before else sum(macs_before), macs_after=macs_after,
                                nodes_before=len(convs) + len(relus), nodes_after=3 if relus else 2,
                                relu_merged=bool(relus), applied=False)
        if decision.macs_before is None or macs_after is None:
            raise Refuse("output shapes are unknown, so the merge cannot be priced", decision=decision)
        if macs_after > decision.macs_before:
            raise Refuse("the merged conv would cost more MACs", decision=decision)
        if decision.nodes_after >= decision.nodes_before:
            raise Refuse("the merge saves no nodes", decision=decision)
        decision.applied = True

        replacement = Replacement(remove=convs + relus, decision=decision)
        merged_w = np.concatenate(weights, axis=0)
        inputs = [x, replacement.add_initializer(w_name, merged_w)]
        bias_names = [c.inputs[2] if len(c.inputs) > 2 else "" for c in convs]
        if any(bias_names):
            biases = [g.const(b) if b else np.zeros(n, merged_w.dtype) for b, n in zip(bias_names, sizes)]
            inputs.append(replacement.add_initializer(g.fresh_name(f"{w_name}_b"),
                                                      np.concatenate(biases).astype(merged_w.dtype)))
        attrs = {"kernel_shape": [1] * (merged_w.ndim - 2)}
        if "dilations" in convs[0].attrs:
            attrs["dilations"] = list(convs[0].attrs["dilations"])
        replacement.add_node("Conv", inputs, [out_name], attrs, name=g.fresh_name(f"{label}_merged"))
        split_in = out_name
        if relus:
            relu_label = relus[0].name or relus[0].outputs[0]
            split_in = g.fresh_name(f"{relu_label}_merged")
            replacement.add_node("Relu", [out_name], [split_in], name=g.fresh_name(f"{relu_label}_merged"))
        finals = [n.outputs[0] for n in (relus or convs)]
        _add_split(g, replacement, split_in, finals, sizes)
        return replacement


def _is_1x1(g, conv: Node) -> bool:
    shape = g.shape(conv.inputs[1]) if len(conv.inputs) > 1 else None
    kernel = conv.attr("kernel_shape") or (shape[2:] if shape is not None else None)
    return shape is not None and len(shape) >= 3 and kernel is not None and all(k == 1 for k in kernel)


def _blocker(g, conv: Node) -> str | None:
    """Why a 1x1 conv cannot join a merge of its siblings, or None."""
    if any(s != 1 for s in conv.attr("strides") or ()):
        return f"sibling 1x1 conv has strides {list(conv.attr('strides'))}, not 1"
    if any(p != 0 for p in conv.attr("pads") or ()):
        return "sibling 1x1 conv has pads"
    if conv.attr("group", 1) != 1:
        return "sibling 1x1 conv is grouped"
    if not g.all_constant(*conv.inputs[1:3]):
        return "sibling 1x1 conv has non-constant weights or bias"
    return None


def _dilations(conv: Node, spatial: int) -> tuple[int, ...]:
    return tuple(conv.attr("dilations") or (1,) * spatial)


def _sole_relus(g, convs: list[Node]) -> list[Node] | None:
    """Each sibling's ReLU when every sibling output is read by exactly one ReLU (and is no graph output)."""
    relus = []
    for conv in convs:
        readers = g.consumers(conv.outputs[0])
        if g.num_uses(conv.outputs[0]) != 1 or not readers or readers[0].op_type != "Relu" \
                or readers[0].domain not in ("", "ai.onnx"):
            return None
        relus.append(readers[0])
    return relus


def _add_split(g, replacement: Replacement, tensor: str, outputs: list[str], sizes: list[int]) -> None:
    """Split along channels: sizes are an attribute before opset 13 and an input from 13."""
    name = g.fresh_name(f"{tensor}_split")
    if g.opset() < 13:
        replacement.add_node("Split", [tensor], outputs, {"axis": 1, "split": sizes}, name=name)
    else:
        sizes_name = replacement.add_initializer(g.fresh_name(f"{tensor}_split_sizes"), np.asarray(sizes, np.int64))
        replacement.add_node("Split", [tensor, sizes_name], outputs, {"axis": 1}, name=name)
