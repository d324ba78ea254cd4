"""Detection and its report: per layer, weight and activation spectra, break-even ranks and a proposal.

Nothing is fitted or inserted here: activations are captured once per sample, and each
structure's rank is predicted from the spectra alone, so the table is cheap enough to read
before deciding on a budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from optimizer.bottleneck.calibration import calibration_feeds
from optimizer.bottleneck.layers import Layer, as_matrix, break_even_rank, conv_macs, layer_of, \
    linear_bottleneck_blocker, structure_macs
from optimizer.bottleneck.spectra import InputError, LayerStats, input_bases, smallest_rank
from optimizer.cost import node_macs
from optimizer.executor import Executor
from optimizer.ir import Graph


@dataclass
class LayerAnalysis:
    """Spectra, break-even ranks and the best proposal for one Conv/Gemm."""

    node: str
    op: str
    shape: list[int] | None
    macs: int | None
    reason: str = ""  # why it is not a candidate ("" when it is)
    weight_spectrum_in: list[float] = field(default_factory=list)  # singular values, (Cout·k·k) x Cin unfolding
    weight_spectrum_out: list[float] = field(default_factory=list)  # Cout x (Cin·k·k) unfolding
    input_spectrum: list[float] = field(default_factory=list)  # eigenvalues of E[x x^T] (uncentred)
    output_spectrum: list[float] = field(default_factory=list)  # eigenvalues of the centred output covariance
    break_even: dict[str, int] = field(default_factory=dict)
    structure: str | None = None
    rank: Any = None
    macs_after: int | None = None
    predicted_error: float | None = None

    @property
    def saving(self) -> int:
        return (self.macs or 0) - (self.macs_after if self.macs_after is not None else (self.macs or 0))

    def row(self) -> dict[str, Any]:
        return {"layer": self.node, "op": self.op, "shape": "x".join(map(str, self.shape or [])), "macs": self.macs,
                "structure": self.structure, "rank": self.rank, "macs_after": self.macs_after,
                "predicted_error": self.predicted_error, "reason": self.reason}


@dataclass
class BottleneckReport:
    """The ranked table of bottleneck opportunities (largest MAC saving first)."""

    layers: list[LayerAnalysis]
    evidence: str  # "calibration" or "random" (weaker evidence: the data may not look like random inputs)
    max_error: float

    def rows(self) -> list[dict[str, Any]]:
        return [layer.row() for layer in self.layers]

    def to_dict(self) -> dict[str, Any]:
        return {"evidence": self.evidence, "max_error": self.max_error,
                "layers": [{**layer.row(), "break_even": layer.break_even,
                            "weight_spectrum_in": layer.weight_spectrum_in,
                            "weight_spectrum_out": layer.weight_spectrum_out,
                            "input_spectrum": layer.input_spectrum, "output_spectrum": layer.output_spectrum}
                           for layer in self.layers]}

    def write_html(self, path, title: str = "") -> None:
        """A self-contained page: per layer the normalized spectra with the ranks marked, and the MACs
        before/after (needs the ``html`` extra, matplotlib); written atomically."""
        from optimizer.bottleneck.report_html import write_html

        write_html(self, path, title)


def _floats(values) -> list[float]:
    return [float(f"{v:.6g}") for v in values]


def analyze_bottlenecks(graph: Graph, calibration: Mapping[str, np.ndarray] | None = None, *, samples: int = 8,
                        seed: int = 0, max_error: float = 1e-2) -> BottleneckReport:
    """Rank every Conv/Gemm by the MACs a bottleneck would save at ``max_error`` predicted relative error.

    The executor captures the layers' inputs and outputs; moments accumulate per sample, so memory
    stays one sample's worth.
    """
    feeds, evidence = calibration_feeds(graph, calibration, samples, seed)
    nodes = [n for n in graph.toposort() if n.op_type in ("Conv", "Gemm") and n.domain in ("", "ai.onnx")]
    layers = {n.id: layer_of(graph, n) for n in nodes}
    executor = Executor(graph, outputs=[t for n in nodes for t in (n.inputs[0], n.outputs[0])])
    moments: dict[int, list] = {}
    shapes: dict[str, tuple] = {}
    for feed in feeds:
        values = executor.run(feed)
        shapes.update((k, v.shape) for k, v in values.items())
        for n in nodes:
            layer = layers[n.id][0]
            if layer is None:
                continue
            x = as_matrix(layer, values[n.inputs[0]]).astype(np.float64)
            y = as_matrix(layer, values[n.outputs[0]]).astype(np.float64)
            acc = moments.setdefault(n.id, [0.0, 0.0, 0.0, 0.0, 0])
            for i, v in enumerate((x @ x.T, y @ y.T, y.sum(axis=1), float(np.sum(y * y)))):
                acc[i] = acc[i] + v
            acc[4] += y.shape[1]
    table = []
    for n in nodes:
        layer, reason = layers[n.id]
        reason = reason or linear_bottleneck_blocker(graph, n) or ""
        name = n.name or n.outputs[0]
        if layer is None or reason:
            table.append(LayerAnalysis(name, n.op_type, None, node_macs(graph, n, shapes), reason))
            continue
        c_xx, c_yy, s_y, s_y2, count = moments[n.id]
        px_in = int(np.prod(as_matrix(layer, np.empty(shapes[n.inputs[0]])).shape[1:]))
        px_out = count // len(feeds)
        c_xx = c_xx / (px_in * len(feeds))
        m_y = s_y / count
        out_eig = np.clip(np.linalg.eigvalsh(c_yy / count - np.outer(m_y, m_y))[::-1], 0, None)
        st = LayerStats(c_xx, c_xx, c_xx, s_y2 / count)
        info = LayerAnalysis(name, n.op_type, [layer.cout, layer.cin, *layer.w.shape[2:]],
                             conv_macs(layer.cout, layer.cin, layer.kk, px_out), reason,
                             _floats(np.linalg.svd(layer.unfold_in(), compute_uv=False)),
                             _floats(np.linalg.svd(layer.unfold_out(), compute_uv=False)),
                             _floats(np.clip(np.linalg.eigvalsh(c_xx)[::-1], 0, None)), _floats(out_eig))
        _propose(info, layer, st, out_eig, px_in, px_out, max_error)
        table.append(info)
    table.sort(key=lambda a: (a.structure is None, -a.saving))
    return BottleneckReport(table, evidence, max_error)


def _propose(info: LayerAnalysis, layer: Layer, st: LayerStats, out_eig: np.ndarray, px_in: int, px_out: int,
             tol: float) -> None:
    """Fill in break-even ranks and the cheapest structure whose predicted error is within ``tol``."""
    in_structure = "svd" if layer.kk == 1 else "input"
    wi = layer.unfold_in()
    gram = wi.T @ wi
    q = input_bases(gram, st)["data"]
    predict = InputError(gram, st)
    hi_in = min(break_even_rank(layer, in_structure, px_in, px_out), q.shape[1], layer.cin - 1)
    info.break_even = {in_structure: break_even_rank(layer, in_structure, px_in, px_out)}

    def pred_in(r):
        return predict(q[:, :r])

    def pred_out(r):
        return math.sqrt(float(np.sum(out_eig[r:])) / st.ey2) if st.ey2 > 0 else 0.0

    options = []
    r = smallest_rank(pred_in, hi_in, tol)
    if r is not None:
        options.append((structure_macs(layer, in_structure, r, px_in, px_out), in_structure, r, pred_in(r)))
    if layer.kk > 1:
        info.break_even["output"] = break_even_rank(layer, "output", px_in, px_out)
        hi_out = min(info.break_even["output"], layer.cout - 1)
        r = smallest_rank(pred_out, hi_out, tol)
        if r is not None:
            options.append((structure_macs(layer, "output", r, px_in, px_out), "output", r, pred_out(r)))
        r1 = smallest_rank(pred_in, hi_in, tol / math.sqrt(2))
        r2 = smallest_rank(pred_out, hi_out, tol / math.sqrt(2))
        if r1 is not None and r2 is not None:
            macs = structure_macs(layer, "tucker2", (r1, r2), px_in, px_out)
            options.append((macs, "tucker2", [r1, r2], math.hypot(pred_in(r1), pred_out(r2))))
    options = [o for o in options if o[0] < info.macs]
    if options:
        info.macs_after, info.structure, info.rank, err = min(options, key=lambda o: o[0])
        info.predicted_error = float(f"{err:.6g}")
