"""Merging sibling 1x1 convolutions (the parallel reduce convs of an Inception module)."""

from __future__ import annotations

import numpy as np

from optimizer.cost import infer_shapes, node_macs
from optimizer.ir import Node
from optimizer.pipeline import Pass
from optimizer.registry import register_pass


@register_pass("merge-sibling-conv1x1", exact=True, default=False)
class MergeSiblingConv1x1(Pass):
    """1x1 convs reading the same tensor -> one wider 1x1 conv (+ one ReLU) and a Split on channels.

    Each output channel is the same dot product as before, so the rewrite is exact and the
    MACs are unchanged; what shrinks is the node count (one big matmul instead of several
    small ones). Siblings qualify with stride 1, no pads, group 1, constant weights and
    biases; they merge in groups of equal dilations and weight dtype. The ReLU merges too
    when every sibling's only reader is its own ReLU. Off by default: whether onnxruntime
    runs the merged form faster is a benchmark question (tests/benchmarks/bench_optimized_models.py).
    """

    def run(self, g, stats):
        siblings: dict[str, list[Node]] = {}
        for node in g.nodes:
            if node.op_type == "Conv" and node.domain in ("", "ai.onnx") and _is_1x1(g, node):
                siblings.setdefault(node.inputs[0], []).append(node)
        shapes = None
        changed = False
        for convs in siblings.values():
            if len(convs) < 2:
                continue
            groups: dict[tuple, list[Node]] = {}
            for conv in convs:
                reason = _blocker(g, conv)
                if reason:
                    stats.refuse(reason)
                    continue
                weight = g.const(conv.inputs[1])
                key = (_dilations(conv, weight.ndim - 2), weight.dtype.str, weight.ndim)
                groups.setdefault(key, []).append(conv)
            for group in groups.values():
                if len(group) < 2:
                    continue
                stats.matches += 1
                if shapes is None:
                    shapes = infer_shapes(g)
                if self._merge(g, group, shapes, stats):
                    stats.rewrites += 1
                    changed = True
        return changed

    def _merge(self, g, convs: list[Node], shapes, stats) -> bool:
        """Merge one group of siblings if the cost model agrees; records the decision."""
        x = convs[0].inputs[0]
        relus = _sole_relus(g, convs)
        if relus is None and any(r.op_type == "Relu" for c in convs for r in g.consumers(c.outputs[0])):
            stats.refuse("ReLUs stay per branch: not every sibling conv output has its own ReLU as only reader")
        weights = [g.const(c.inputs[1]) for c in convs]
        sizes = [w.shape[0] for w in weights]
        out_shape = shapes.get(convs[0].outputs[0])
        merged_shape = None if out_shape is None else (out_shape[0], sum(sizes), *out_shape[2:])
        label = convs[0].name or convs[0].outputs[0]
        w_name, out_name = g.fresh_name(f"{label}_merged_w"), g.fresh_name(f"{label}_merged")
        priced = Node("Conv", [x, w_name], [out_name])  # priced before it exists
        macs_before = [node_macs(g, c, shapes) for c in convs]
        macs_after = node_macs(g, priced, {w_name: (sum(sizes), *weights[0].shape[1:]), out_name: merged_shape})
        nodes_before = len(convs) * (2 if relus else 1)
        nodes_after = 3 if relus else 2
        macs_before = None if None in macs_before else sum(macs_before)
        decision = {"node": convs[0].name, "siblings": [c.name for c in convs], "macs_before": macs_before,
                    "macs_after": macs_after, "nodes_before": nodes_before, "nodes_after": nodes_after,
                    "relu_merged": relus is not None, "applied": False}
        stats.decisions.append(decision)
        if macs_before is None or macs_after is None:
            stats.refuse("output shapes are unknown, so the merge cannot be priced")
            return False
        if macs_after > macs_before:
            stats.refuse("the merged conv would cost more MACs")
            return False
        if nodes_after >= nodes_before:
            stats.refuse("the merge saves no nodes")
            return False
        decision["applied"] = True

        merged_w = np.concatenate(weights, axis=0)
        inputs = [x, g.add_initializer(merged_w, w_name)]
        bias_names = [c.inputs[2] if len(c.inputs) > 2 else "" for c in convs]
        if any(bias_names):
            biases = [g.const(b) if b else np.zeros(n, merged_w.dtype) for b, n in zip(bias_names, sizes)]
            inputs.append(g.add_initializer(np.concatenate(biases).astype(merged_w.dtype), g.fresh_name(f"{w_name}_b")))
        attrs = {"kernel_shape": [1] * (merged_w.ndim - 2)}
        if "dilations" in convs[0].attrs:
            attrs["dilations"] = list(convs[0].attrs["dilations"])
        finals = [r.outputs[0] for r in relus] if relus else [c.outputs[0] for c in convs]
        g.remove_nodes(convs + (relus or []))
        g.add_node("Conv", inputs, [out_name], attrs, name=g.fresh_name(f"{label}_merged"))
        split_in = out_name
        if relus:
            relu_label = relus[0].name or relus[0].outputs[0]
            split_in = g.fresh_name(f"{relu_label}_merged")
            g.add_node("Relu", [out_name], [split_in], name=g.fresh_name(f"{relu_label}_merged"))
        _add_split(g, split_in, finals, sizes)
        return True


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


def _add_split(g, tensor: str, outputs: list[str], sizes: list[int]) -> None:
    """Split along channels: sizes are an attribute before opset 13 and an input from 13."""
    name = g.fresh_name(f"{tensor}_split")
    if g.opset() < 13:
        g.add_node("Split", [tensor], outputs, {"axis": 1, "split": sizes}, name=name)
    else:
        sizes_name = g.add_initializer(np.asarray(sizes, dtype=np.int64), g.fresh_name(f"{tensor}_split_sizes"))
        g.add_node("Split", [tensor, sizes_name], outputs, {"axis": 1}, name=name)
