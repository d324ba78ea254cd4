"""Fold a zero Pad into the Conv or AveragePool that reads it."""

from __future__ import annotations

from optimizer.pattern import P
from optimizer.pipeline import RewritePass, register_pass
from optimizer.rewrite import Refuse, Replacement


def pad_amounts(g, pad, rank: int) -> tuple[list[int], float]:
    """(pads over all ``rank`` axes as begins + ends, pad value) of a constant-mode Pad; refuses when unknown.

    Before opset 11 pads and value are attributes (``paddings`` in opset 1); from 11 they are
    inputs, and opset 18 adds an optional ``axes`` input naming the padded axes.
    """
    opset = g.opset(pad.domain)
    if opset < 11:
        amounts = pad.attr("paddings" if opset < 2 else "pads")
        return [int(p) for p in amounts], float(pad.attr("value", 0.0))
    inputs = list(pad.inputs) + [""] * (4 - len(pad.inputs))
    if not g.all_constant(*inputs[1:]):
        raise Refuse("the pads, pad value or axes are not constant")
    amounts = [int(p) for p in g.const(inputs[1]).reshape(-1)]
    value = g.const(inputs[2]) if inputs[2] else None
    value = 0.0 if value is None or value.size == 0 else float(value.reshape(-1)[0])
    if not inputs[3]:
        return amounts, value
    axes = [int(a) % rank for a in g.const(inputs[3]).reshape(-1)]
    full = [0] * (2 * rank)
    for i, axis in enumerate(axes):
        full[axis], full[rank + axis] = amounts[i], amounts[len(axes) + i]
    return full, value


@register_pass("fold-pad", exact=True)
class FoldPad(RewritePass):
    """Pad(constant 0) -> Conv/AveragePool: the padding moves into the reader's pads attribute.

    Exact because Conv pads with zeros and AveragePool with ``count_include_pad=1`` counts
    its pads as zeros in the average, just as the explicit Pad did. MaxPool pads with -inf,
    so a zero Pad is refused there; so are non-zero values, reflect/edge/wrap modes, crops
    (negative pads), batch/channel pads, auto_pad SAME (no explicit pads to add to),
    ceil_mode pooling (a window may start in the Pad's end zeros but not in pads) and
    AveragePool pads that would reach the kernel size (onnxruntime refuses such a pool).
    """

    pattern = P.op("Conv|AveragePool|MaxPool", P.Pad("x", ..., out="padded", node="pad"), ..., node="reader")

    def check(self, g, m):
        pad, reader = m.node("pad"), m.node("reader")
        if reader.op_type == "MaxPool":
            raise Refuse("MaxPool pads with -inf, so a zero Pad cannot move into it")
        mode = pad.attr("mode", "constant")
        if mode != "constant":
            raise Refuse(f"the Pad's mode is {mode}, not constant zeros")
        if reader.op_type == "AveragePool" and not reader.attr("count_include_pad", 0):
            raise Refuse("AveragePool leaves its pads out of the average (count_include_pad=0)")
        if reader.attr("ceil_mode", 0):
            raise Refuse("ceil_mode pooling: moving the pad could change the output size")
        if reader.attr("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
            raise Refuse(f"the {reader.op_type} uses auto_pad {reader.attr('auto_pad')}")
        rank = self._rank(g, reader)
        if rank is None:
            raise Refuse(f"the {reader.op_type}'s rank is unknown")
        pads, value = pad_amounts(g, pad, rank)
        if value != 0.0:
            raise Refuse(f"the Pad's value is {value:g}, not zero")
        if len(pads) != 2 * rank:
            raise Refuse("the Pad's rank does not match its reader's")
        if pads[0] or pads[1] or pads[rank] or pads[rank + 1]:
            raise Refuse("the Pad pads the batch or channel axis")
        if min(pads) < 0:
            raise Refuse("the Pad crops (negative pads)")
        if reader.op_type == "AveragePool":
            kernel = reader.attr("kernel_shape")
            if any(p >= kernel[i % len(kernel)] for i, p in enumerate(self._merged_pads(reader, pads, rank))):
                raise Refuse("the AveragePool's pads would reach its kernel size, which runtimes refuse")

    @staticmethod
    def _merged_pads(reader, added: list[int], rank: int) -> list[int]:
        """The reader's spatial pads (begins + ends) plus the Pad's (``added`` covers all ``rank`` axes)."""
        n = rank - 2
        old = [0] * (2 * n) if reader.attr("auto_pad", "NOTSET") == "VALID" else reader.attr("pads") or [0] * (2 * n)
        spatial = added[2:rank] + added[rank + 2:]
        return [int(a) + int(b) for a, b in zip(old, spatial)]

    @staticmethod
    def _rank(g, reader) -> int | None:
        if reader.op_type == "Conv":
            w = g.shape(reader.inputs[1])
            return None if w is None else len(w)
        return len(reader.attr("kernel_shape")) + 2

    def rewrite(self, g, m):
        pad, reader = m.node("pad"), m.node("reader")
        rank = self._rank(g, reader)
        added, _ = pad_amounts(g, pad, rank)
        pads = self._merged_pads(reader, added, rank)
        changes = {"pads": pads}
        if reader.attr("auto_pad", "NOTSET") == "VALID":  # VALID ignores any pads attribute
            changes["auto_pad"] = None
        replacement = Replacement(remove=[pad])
        replacement.replace(reader, inputs=[m["x"], *reader.inputs[1:]], attrs=changes)
        return replacement
