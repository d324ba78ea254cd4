"""Structural re-parameterization: parallel linear branches of one tensor, summed, become one Conv.

RepVGG (3x3 + 1x1 + identity), ACNet (3x3 + 1x3 + 3x1), DBB (1x1 -> KxK sequences and
average pools) and MobileOne (several depthwise branches) are trained with summed branches
that are all linear in the same input; at inference their sum is one convolution.

Each summand of an ``Add`` tree or a ``Sum`` is read as a ``Branch``: a convolution of some
source tensor, found by walking back through linear ops only (Conv, BatchNormalization in
inference mode, AveragePool, and a 1x1 Conv feeding a KxK one). A plain tensor ``x`` is the
identity convolution of ``x``. Branches of the same source are padded to the largest kernel
(at the offset their pads imply) and added; the result replaces them.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Iterator

import numpy as np

from optimizer.cost import node_macs
from optimizer.decisions import BranchMerge
from optimizer.ir import Graph, Node
from optimizer.pattern import Match
from optimizer.pipeline import RewritePass, register_pass
from optimizer.rewrite import Refuse, Replacement
from passes._affine import bn_affine, require_inference_bn
from passes._conv import conv_macs, dense_weight, spatial_attrs

#: How many linear ops a branch may chain (BN after a 1x1 -> BN -> KxK is 4).
MAX_CHAIN = 4


Params = Callable[[], "tuple[np.ndarray, np.ndarray]"]


@dataclass
class Branch:
    """A summand as ``conv(src, weight, group, strides, dilations, pads) + bias``.

    ``shape`` is the kernel's shape; ``params()`` computes (weight, bias) in float64 only
    when a merge needs them, so weights that are never merged are never read. A
    ``diagonal`` branch (identity, BN of the input, average pool) maps channel c to channel
    c only: its kernel is (1 or C, 1, *k) and it fits any group. Spatial attributes are
    empty tuples for the rank-free identity, meaning 1/1/0 on every axis.
    """

    src: str
    shape: tuple[int, ...]
    params: Params
    group: int = 1
    strides: tuple[int, ...] = ()
    dilations: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()
    nodes: list[Node] = field(default_factory=list)
    diagonal: bool = False
    dtype: np.dtype | None = None

    @property
    def kernel(self) -> tuple[int, ...]:
        return self.shape[2:]

    def affine(self, scale: np.ndarray, shift: np.ndarray, node: Node) -> Branch:
        """This branch followed by a per-channel ``y * scale + shift`` (an inference BN)."""
        def params():
            weight, bias = self.params()
            return weight * scale.reshape((-1,) + (1,) * (weight.ndim - 1)), bias * scale + shift

        return replace(self, shape=(len(scale), *self.shape[1:]), params=params, nodes=[*self.nodes, node])

    def at_rank(self, nd: int) -> Branch:
        """A rank-free branch given ``nd`` spatial axes."""
        if self.strides:
            return self

        def params():
            weight, bias = self.params()
            return weight.reshape(weight.shape + (1,) * nd), bias

        return replace(self, shape=self.shape + (1,) * nd, params=params, strides=(1,) * nd, dilations=(1,) * nd,
                       pads=(0,) * (2 * nd))


def _identity(t: str) -> Branch:
    return Branch(t, (1, 1), lambda: (np.ones((1, 1)), np.zeros(1)), diagonal=True)


@dataclass
class SumTree:
    """A sum of summands read as branches: ``tree`` its Add/Sum nodes (root first), ``terms`` its
    summands, ``readings[i]`` every way to read ``terms[i]`` as a Branch (deepest source first),
    and ``fails[i]`` the deeper readings that were impossible, as (sources they would have had, reason)."""

    tree: list[Node]
    terms: list[str]
    readings: list[list[Branch]]
    fails: list[list[tuple[set[str], str]]]


@register_pass("merge-parallel-branches", exact=True)
class MergeParallelBranches(RewritePass):
    """Sum of Conv/BN/identity/avg-pool branches of one tensor -> one Conv (RepVGG, ACNet, DBB, MobileOne).

    Applies per group of branches sharing a source when the merged KxK costs no more MACs
    than the branches' convolutions; a sum of n summands is counted as n - 1 adds, so the
    merge always has fewer nodes.
    """

    def matches(self, g: Graph, ctx) -> Iterator[Match]:
        """The roots of sum trees with a convolution among their summands, each read when reached,
        so a root an earlier rewrite of the run replaced is skipped."""
        for root in [n for n in g.nodes if self._is_sum(g, n)]:
            if g.node(root.id) is root and self._is_root(g, root):
                found = self._read(g, root)
                if found is not None:
                    yield Match(bound_nodes={"root": root}, nodes=found.tree)

    def rewrite(self, g: Graph, m: Match) -> Replacement:
        found = self._read(g, m.root)
        accepted: list[tuple[list[int], Branch, BranchMerge]] = []
        refusals: list[Refuse] = []
        for members in self._group(found.readings):
            branches = [found.readings[i][0] for i in members]
            try:
                merged = self._merge(branches)
                accepted.append((members, merged, self._price(g, m, branches, merged, found.terms[members[0]])))
            except Refuse as refusal:
                refusals.append(refusal)
        if not accepted:
            if refusals:
                raise refusals[0]
            reasons = self._relevant(found.readings, found.fails)
            raise Refuse(reasons[0] if reasons else "branches read different tensors")
        return self._replacement(g, m.root, found, accepted)

    # ------------------------------------------------------------------ the sum
    @staticmethod
    def _is_sum(g: Graph, node: Node) -> bool:
        if node.domain not in ("", "ai.onnx") or len(node.outputs) != 1:
            return False
        if node.op_type == "Add":
            return not node.attr("broadcast", 0)  # opset < 7 axis broadcasting is not a plain sum
        return node.op_type == "Sum"

    def _is_root(self, g: Graph, node: Node) -> bool:
        """The top of a sum tree: its output is not simply one more summand of an enclosing sum."""
        out = node.outputs[0]
        readers = g.consumers(out)
        return not (readers and g.num_uses(out) == 1 and self._is_sum(g, readers[0]))

    def _flatten(self, g: Graph, root: Node) -> tuple[list[Node], list[str]]:
        """The sum nodes of the tree rooted at ``root`` and its summands, in order."""
        tree, terms = [root], []
        for t in root.inputs:
            producer = g.producer(t)
            if producer is not None and g.num_uses(t) == 1 and self._is_sum(g, producer):
                sub_tree, sub_terms = self._flatten(g, producer)
                tree += sub_tree
                terms += sub_terms
            elif t:
                terms.append(t)
        return tree, terms

    def _read(self, g: Graph, root: Node) -> SumTree | None:
        """The sum tree at ``root`` with its summands read, or None when there is nothing convolutional to merge."""
        tree, terms = self._flatten(g, root)
        if len(terms) < 2:
            return None
        fails: list[list[tuple[set[str], str]]] = [[] for _ in terms]
        readings = [self._readings(g, t, fails[i], MAX_CHAIN) for i, t in enumerate(terms)]
        if all(b.diagonal for rs in readings for b in rs) and not self._relevant(readings, fails):
            return None  # a sum of activations
        return SumTree(tree, terms, readings, fails)

    # ------------------------------------------------------------------ reading branches
    def _readings(self, g: Graph, t: str, fails: list, depth: int) -> list[Branch]:
        """Every way to read ``t`` as a Branch, deepest source first; the last is the identity of ``t``.

        A deeper reading that is impossible is noted in ``fails`` as (sources it would have had, reason).
        """
        found: list[Branch] = []
        node = g.producer(t)
        if node is not None and depth > 0 and node.domain in ("", "ai.onnx") \
                and node.op_type in ("Conv", "BatchNormalization", "AveragePool"):
            inner_fails: list = []
            inner = self._readings(g, node.inputs[0], inner_fails, depth - 1)
            if g.num_uses(t) != 1:
                fails.append(({b.src for b in inner}, "a branch output has another reader"))
            elif node.op_type == "BatchNormalization":
                try:
                    require_inference_bn(g, node)
                except Refuse as refusal:
                    fails.append(({b.src for b in inner}, refusal.reason))
                else:
                    fails += inner_fails
                    scale, shift = bn_affine(g, node)
                    found = [b.affine(scale, shift, node) for b in inner]
            else:
                try:
                    branch = (self._conv if node.op_type == "Conv" else self._pool)(g, node)
                except Refuse as refusal:
                    fails.append(({b.src for b in inner}, refusal.reason))
                else:
                    composed = [self._compose(branch, b, fails) for b in inner[:-1]] if node.op_type == "Conv" else []
                    found = [c for c in composed if c] + [branch]
        return found + [_identity(t)]

    @staticmethod
    def _relevant(readings: list[list[Branch]], fails: list[list[tuple[set[str], str]]]) -> list[str]:
        """Reasons of impossible readings that would have shared a source with another summand."""
        reasons = []
        for i, term_fails in enumerate(fails):
            others = {b.src for j, rs in enumerate(readings) if j != i for b in rs}
            reasons += [reason for srcs, reason in term_fails if srcs & others]
        return reasons

    @staticmethod
    def _conv(g: Graph, node: Node) -> Branch:
        w, b = node.inputs[1], node.inputs[2] if len(node.inputs) > 2 else ""
        if not g.all_constant(w, b):
            raise Refuse("branch weights are not constant")
        shape, dtype = g.shape(w), g.tensor(w).dtype
        if dtype is None or dtype.kind != "f" or shape is None or len(shape) < 3:
            raise Refuse("branch weights are not a float convolution kernel")
        spatial = spatial_attrs(node.attrs, len(shape) - 2)

        def params():
            weight = np.asarray(g.const(w), np.float64)
            return weight, np.zeros(shape[0]) if not b else np.asarray(g.const(b), np.float64)

        return Branch(node.inputs[0], tuple(shape), params, int(node.attr("group", 1)), *spatial, nodes=[node],
                      dtype=dtype)

    @staticmethod
    def _pool(g: Graph, node: Node) -> Branch:
        kernel = tuple(node.attr("kernel_shape") or ())
        spatial = spatial_attrs(node.attrs, len(kernel))
        if node.attr("ceil_mode", 0):
            raise Refuse("average pool uses ceil_mode")
        if any(spatial[2]) and not node.attr("count_include_pad", 0):
            raise Refuse("average pool excludes padding from its count")
        shape = (1, 1) + kernel
        return Branch(node.inputs[0], shape, lambda: (np.full(shape, 1.0 / np.prod(kernel)), np.zeros(1)), 1,
                      *spatial, nodes=[node], diagonal=True)

    @staticmethod
    def _compose(outer: Branch, inner: Branch, fails: list) -> Branch | None:
        """``outer`` applied to the output of a 1x1, stride-1 ``inner`` (DBB's 1x1 -> KxK), as one dense kernel.

        With zero padding in ``outer``, border taps see 0 where ``inner`` would give its bias:
        exact only when that bias is zero. Pads of ``inner`` add to those of ``outer``.
        """
        if inner.strides and (any(k != 1 for k in inner.kernel) or any(s != 1 for s in inner.strides)):
            return None
        inner = inner.at_rank(len(outer.kernel))
        cin = outer.shape[1] * outer.group  # channels between the two
        if inner.shape[0] not in ((1, cin) if inner.diagonal else (cin,)):
            return None
        if any(outer.pads) and np.any(inner.params()[1]):
            fails.append(({inner.src}, "the 1x1 bias would cross the KxK's zero padding"))
            return None

        def params():
            (w_out, b_out), (w_in, b_in) = outer.params(), inner.params()
            if inner.diagonal:  # BN(x) -> KxK: scale the outer kernel's input channels
                matrix, b_in = np.diag(np.broadcast_to(w_in.reshape(-1), (cin,))), np.broadcast_to(b_in, (cin,))
            else:
                matrix = dense_weight(w_in, inner.group).reshape(cin, -1)
            dense = dense_weight(w_out, outer.group)
            spatial = tuple(range(2, dense.ndim))
            return np.einsum("om...,mc->oc...", dense, matrix), b_out + dense.sum(axis=spatial) @ b_in

        n_in = inner.shape[1] * inner.group if not inner.diagonal else cin
        return replace(outer, src=inner.src, shape=(outer.shape[0], n_in, *outer.kernel), params=params, group=1,
                       pads=tuple(a + b for a, b in zip(outer.pads, inner.pads)), diagonal=False,
                       nodes=[*inner.nodes, *outer.nodes])

    @staticmethod
    def _group(readings: list[list[Branch]]) -> list[list[int]]:
        """Assign each summand its deepest reading whose source another summand shares; groups with a conv."""
        readers: dict[str, set[int]] = {}
        for i, rs in enumerate(readings):
            for b in rs:
                readers.setdefault(b.src, set()).add(i)
        groups: dict[str, list[int]] = {}
        for i, rs in enumerate(readings):
            for j, b in enumerate(rs):
                if len(readers[b.src]) > 1:
                    groups.setdefault(b.src, []).append(i)
                    rs[:] = rs[j:]  # the chosen reading goes first
                    break
        return [m for m in groups.values() if len(m) > 1 and any(not readings[i][0].diagonal for i in m)]

    # ------------------------------------------------------------------ merging
    @staticmethod
    def _merge(branches: list[Branch]) -> Branch:
        """One Branch equal to the sum of ``branches``; refuses when none is exact.

        Per axis the merged kernel is the largest; a smaller kernel sits at the offset its
        pads imply (centered for RepVGG/ACNet), which is exact iff the pad differences are
        whole dilation steps adding up to the size difference on every axis.
        """
        convs = [b for b in branches if not b.diagonal]
        if len({b.group for b in convs}) > 1:
            raise Refuse("branches differ in group")
        if len({(b.shape[0], len(b.kernel)) for b in convs}) > 1:
            raise Refuse("branches differ in output channels or rank")
        group, cout, nd = convs[0].group, convs[0].shape[0], len(convs[0].kernel)
        cin = convs[0].shape[1] * group
        branches = [b.at_rank(nd) for b in branches]
        if any(b.diagonal and (cin != cout or b.shape[0] not in (1, cout) or len(b.kernel) != nd) for b in branches):
            raise Refuse("an identity branch needs as many input as output channels")
        if len({b.strides for b in branches}) > 1:
            raise Refuse("branches differ in stride")
        kernel, dilations, begin, end = [], [], [], []
        for axis in range(nd):
            big = max(b.kernel[axis] for b in branches)
            dil = {b.dilations[axis] for b in branches if b.kernel[axis] > 1} or {1}
            pads = {(b.pads[axis], b.pads[nd + axis]) for b in branches if b.kernel[axis] == big}
            if len(dil) > 1:
                raise Refuse("branches differ in dilation")
            if len(pads) > 1:
                raise Refuse("branch padding is inconsistent")
            kernel.append(big)
            dilations.append(dil.pop())
            (pb, pe), = pads
            begin.append(pb)
            end.append(pe)
        windows = []
        for b in branches:
            at = []
            for axis in range(nd):
                d, k = dilations[axis], b.kernel[axis]
                lo, hi = begin[axis] - b.pads[axis], end[axis] - b.pads[nd + axis]
                if lo < 0 or hi < 0 or lo % d or hi % d or (lo + hi) // d != kernel[axis] - k:
                    raise Refuse("branch padding is inconsistent")
                at.append(slice(lo // d, lo // d + k))
            windows.append(tuple(at))

        def params():
            weight, bias = np.zeros((cout, cin // group, *kernel)), np.zeros(cout)
            for b, at in zip(branches, windows):
                w, bb = b.params()
                if b.diagonal:  # channel o reads its own channel: local index o mod (cin / group)
                    w = np.broadcast_to(w, (cout, 1, *b.kernel))[:, 0]
                    weight[(np.arange(cout), np.arange(cout) % (cin // group), *at)] += w
                else:
                    weight[(slice(None), slice(None), *at)] += w
                bias += bb
            return weight, bias

        return Branch(convs[0].src, (cout, cin // group, *kernel), params, group, branches[0].strides,
                      tuple(dilations), tuple(begin + end), [n for b in branches for n in b.nodes],
                      dtype=convs[0].dtype)

    @staticmethod
    def _price(g: Graph, m: Match, branches: list[Branch], merged: Branch, out: str) -> BranchMerge:
        """The cost-model decision to merge ``branches`` into ``merged`` at ``out``; refuses, with it,
        when it does not pay. Symbolic input dims are pinned to 1: both forms scale alike with them."""
        shapes = m.shapes.pinned
        before = [node_macs(g, n, shapes) for b in branches for n in b.nodes if n.op_type == "Conv"]
        after = conv_macs(g, shapes, merged.src, out, merged.shape)
        macs_before = None if None in before else sum(before)
        applied = after is not None and macs_before is not None and after <= macs_before  # a tie: 1 node is fewer
        decision = BranchMerge(node=m.root.name, branches=len(branches), macs_before=macs_before, macs_after=after,
                               nodes_before=sum(len(b.nodes) for b in branches) + len(branches) - 1, nodes_after=1,
                               applied=applied)
        if after is None or macs_before is None:
            raise Refuse("the cost model cannot price the branches (unknown shapes)", decision=decision)
        if not applied:
            raise Refuse("the merged convolution would cost more MACs", decision=decision)
        return decision

    # ------------------------------------------------------------------ rewriting
    @staticmethod
    def _replacement(g: Graph, root: Node, found: SumTree,
                     accepted: list[tuple[list[int], Branch, BranchMerge]]) -> Replacement:
        """The sum tree and the merged branches replaced; the new sum keeps the root's name and output.

        A merged Conv takes the name of its largest-kernel branch Conv.
        """
        out = root.outputs[0]
        merged_at = {members[0]: merged for members, merged, _ in accepted}
        dropped = {i for members, _, _ in accepted for i in members}
        new_terms = [merged_at.get(i, t) for i, t in enumerate(found.terms) if i in merged_at or i not in dropped]
        names = {}
        for _, merged, _ in accepted:
            convs = [n for n in merged.nodes if n.op_type == "Conv"]
            main = max(convs, key=lambda n: int(np.prod(g.shape(n.inputs[1])[2:])))
            names[id(merged)] = main.name or g.fresh_name("Conv")
        r = Replacement(remove=[*found.tree, *(n for _, merged, _ in accepted for n in merged.nodes)],
                        decision=_total([decision for _, _, decision in accepted]))
        for k, term in enumerate(new_terms):
            if isinstance(term, str):
                continue
            name = names[id(term)]
            w, b = term.params()
            inputs = [term.src, r.add_initializer(g.fresh_name(f"{name}_weight"), w.astype(term.dtype))]
            if np.any(b):
                inputs.append(r.add_initializer(g.fresh_name(f"{name}_bias"), b.astype(term.dtype)))
            target = out if len(new_terms) == 1 else g.fresh_name(f"{name}_out")
            r.add_node("Conv", inputs, [target],
                       {"kernel_shape": list(term.kernel), "pads": list(term.pads), "strides": list(term.strides),
                        "dilations": list(term.dilations), "group": term.group}, name=name)
            new_terms[k] = target
        if len(new_terms) == 1:
            return r
        if root.op_type == "Sum":
            r.add_node("Sum", new_terms, [out], name=root.name)
            return r
        acc = new_terms[0]
        for k, term in enumerate(new_terms[1:], start=2):
            last = k == len(new_terms)
            acc = r.add_node("Add", [acc, term], [out if last else g.fresh_name("Add_out")],
                             name=root.name if last else None).outputs[0]
        return r


def _total(decisions: list[BranchMerge]) -> BranchMerge:
    """One decision for a rewrite that merges several groups of branches (usually there is one)."""
    if len(decisions) == 1:
        return decisions[0]
    return BranchMerge(node=decisions[0].node, branches=sum(d.branches for d in decisions),
                       macs_before=sum(d.macs_before for d in decisions),
                       macs_after=sum(d.macs_after for d in decisions),
                       nodes_before=sum(d.nodes_before for d in decisions), nodes_after=len(decisions), applied=True)
