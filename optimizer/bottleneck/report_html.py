"""The bottleneck analysis as a self-contained HTML page: spectra, ranks and costs per layer.

Per layer, two panels of normalized spectra, one per channel mode: the input channels (the
weights' singular values along Cin, and the input activations' singular values, the square roots
of the eigenvalues of E[x x^T]) and the output channels (along Cout, and the centred output
activations). A spectrum that falls fast before the break-even rank is a bottleneck that pays;
the break-even rank and the proposed rank are drawn as vertical lines on the side the structure
cuts. Above the sections, the MACs of every layer before and after its proposal.

Figures are SVG (text kept as text) so every mark carries an id a test can find: ``weight-in``,
``activation-in``, ``break-even-in``, ``chosen-in`` and the same with ``out``; bars are
``before-i`` / ``after-i``.
"""

from __future__ import annotations

import html
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from optimizer.charts import PAGE_STYLE, cost_bars, figure_img, new_figure, require_matplotlib, short_number
from optimizer.model_files import atomic_writer, check_destination

if TYPE_CHECKING:
    from optimizer.bottleneck.detection import BottleneckReport, LayerAnalysis

#: Normalized values below this are drawn at it, so a zero singular value stays on a log axis.
SPECTRUM_FLOOR = 1e-7
#: Which channel mode each structure's rank cuts (tucker2 cuts both: its rank is [input, output]).
_SIDE_OF_STRUCTURE = {"input": "in", "svd": "in", "output": "out"}

_STYLE = PAGE_STYLE + """
td.reason, p.reason { text-align: left; color: #57606a; }
.ranks { font-family: monospace; }
"""


def write_html(report: BottleneckReport, path: str | os.PathLike, title: str = "") -> None:
    """Write the page atomically (all of it or nothing); NinoptError when matplotlib is missing
    or ``path`` cannot be written. ``title`` names the model in the heading."""
    require_matplotlib()
    check_destination(Path(path))  # a bad path is one sentence before the drawing, not after it
    heading = "ninopt bottleneck analysis" + (f" of {title}" if title else "")
    parts = ["<!DOCTYPE html>", f'<html lang="en"><head><meta charset="utf-8"><title>{html.escape(heading)}</title>',
             f"<style>{_STYLE}</style></head><body>", f"<h1>{html.escape(heading)}</h1>", _summary(report)]
    priced = [layer for layer in report.layers if layer.macs is not None]
    if priced:
        fig = cost_bars([layer.node for layer in priced], [layer.macs for layer in priced],
                        [_macs_after(layer) for layer in priced], "MACs per layer, before and after its proposal",
                        order="order of saving")
        parts.append(f'<figure id="costs">{figure_img(fig, "MACs per layer before and after", "svg")}</figure>')
    parts.append(_table(report))
    for i, layer in enumerate(report.layers):
        parts.append(_section(i, layer, report.max_error))
    parts.append("</body></html>")
    with atomic_writer(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))


def _macs_after(layer: LayerAnalysis) -> int | None:
    return layer.macs_after if layer.macs_after is not None else layer.macs


def _summary(report: BottleneckReport) -> str:
    before = sum(layer.macs or 0 for layer in report.layers)
    after = sum(_macs_after(layer) or 0 for layer in report.layers)
    proposed = sum(layer.structure is not None for layer in report.layers)
    evidence = ("calibration inputs" if report.evidence == "calibration"
                else "seeded random inputs (weaker evidence: the data may not look like them)")
    return (f"<p>{len(report.layers)} Conv/Gemm layers, {proposed} with a proposal at predicted relative error "
            f"&le; {report.max_error:g}; activations from {evidence}. "
            f"MACs of these layers {before:,} &rarr; {after:,} ({short_number(before - after)} fewer, predicted).</p>")


def _ranks(layer: LayerAnalysis) -> str:
    """``input 66, output 23`` (break-even ranks: the largest rank that still costs fewer MACs)."""
    return ", ".join(f"{structure} {rank}" for structure, rank in layer.break_even.items()) or "none"


def _chosen(layer: LayerAnalysis) -> str:
    if layer.structure is None:
        return "none"
    rank = "x".join(map(str, layer.rank)) if isinstance(layer.rank, (list, tuple)) else str(layer.rank)
    return f"{layer.structure} {rank}"


def _table(report: BottleneckReport) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("layer", "op", "shape", "MACs before", "MACs after", "chosen rank",
                                             "break-even rank", "predicted error", "reason"))
    rows = []
    for i, layer in enumerate(report.layers):
        error = "" if layer.predicted_error is None else f"{layer.predicted_error:.3g}"
        macs = "?" if layer.macs is None else f"{layer.macs:,}"
        after = "?" if _macs_after(layer) is None else f"{_macs_after(layer):,}"
        rows.append(f'<tr><td><a href="#layer-{i}">{html.escape(layer.node)}</a></td><td>{layer.op}</td>'
                    f'<td>{"x".join(map(str, layer.shape or []))}</td><td>{macs}</td><td>{after}</td>'
                    f'<td class="ranks">{_chosen(layer)}</td><td class="ranks">{_ranks(layer)}</td>'
                    f'<td>{error}</td><td class="reason">{html.escape(layer.reason)}</td></tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _section(i: int, layer: LayerAnalysis, max_error: float) -> str:
    name = html.escape(layer.node)
    parts = [f'<section class="layer" id="layer-{i}"><h2>{name} <small>{layer.op} '
             f'{"x".join(map(str, layer.shape or []))}</small></h2>']
    if layer.reason:
        parts.append(f'<p class="reason">not a candidate: {html.escape(layer.reason)}</p>')
    else:
        if layer.structure is None:
            outcome = f"no rank below break-even is predicted within {max_error:g}"
        else:
            outcome = (f"MACs {layer.macs:,} &rarr; {layer.macs_after:,} at predicted relative error "
                       f"{layer.predicted_error:.3g}")
        parts.append(f'<p>chosen rank: <span class="ranks chosen">{_chosen(layer)}</span>; break-even rank: '
                     f'<span class="ranks break-even">{_ranks(layer)}</span>; {outcome}.</p>')
        parts.append(figure_img(_spectra_figure(layer), f"normalized spectra of {name}", "svg"))
    parts.append("</section>")
    return "\n".join(parts)


def _marks(layer: LayerAnalysis) -> dict[str, dict[str, int]]:
    """Per side (``in``/``out``): the ranks to draw, ``break-even`` and ``chosen`` (0 = none)."""
    marks: dict[str, dict[str, int]] = {"in": {}, "out": {}}
    for structure, rank in layer.break_even.items():
        if rank > 0:
            marks[_SIDE_OF_STRUCTURE[structure]]["break-even"] = rank
    if layer.structure == "tucker2":
        marks["in"]["chosen"], marks["out"]["chosen"] = layer.rank
    elif layer.structure is not None:
        marks[_SIDE_OF_STRUCTURE[layer.structure]]["chosen"] = layer.rank
    return marks


def _normalized(values, root: bool = False) -> np.ndarray:
    """Largest first, divided by the largest; ``root`` turns covariance eigenvalues into singular values."""
    v = np.sqrt(np.clip(values, 0, None)) if root else np.asarray(values, dtype=np.float64)
    top = float(v.max()) if v.size else 0.0
    return np.maximum(v / top if top > 0 else v, SPECTRUM_FLOOR)


def _spectra_figure(layer: LayerAnalysis):
    """Two log-scale panels, input and output channels: weight and activation spectra with the marks."""
    from matplotlib.ticker import LogLocator, NullLocator

    fig = new_figure(9.0, 3.0)
    # fixed margins and major ticks only: tight_layout and minor log ticks cost seconds a figure
    axes = fig.subplots(1, 2, gridspec_kw={"left": 0.07, "right": 0.99, "bottom": 0.16, "top": 0.9, "wspace": 0.15})
    marks = _marks(layer)
    sides = (("in", "input channels (Cin)", layer.weight_spectrum_in, layer.input_spectrum),
             ("out", "output channels (Cout)", layer.weight_spectrum_out, layer.output_spectrum))
    lowest = 1.0
    for ax, (side, label, weights, activations) in zip(axes, sides):
        for values, name, root in ((weights, "weight", False), (activations, "activation", True)):
            if len(values):
                v = _normalized(values, root)
                lowest = min(lowest, float(v.min()))
                ax.plot(np.arange(1, len(v) + 1), v, label=f"{name}s", gid=f"{name}-{side}",
                        marker="." if len(v) <= 32 else None)
        for kind, color, style in (("break-even", "#cf222e", "--"), ("chosen", "#1a7f37", "-")):
            if kind in marks[side]:
                rank = marks[side][kind]
                ax.axvline(rank, color=color, linestyle=style, gid=f"{kind}-{side}", label=f"{kind} rank {rank}")
        ax.set_yscale("log")
        ax.yaxis.set_major_locator(LogLocator(numticks=5))
        ax.yaxis.set_minor_locator(NullLocator())
        ax.set_xlabel(f"rank, {label}", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.legend(fontsize=7, loc="lower left")
    for ax in axes:
        ax.set_ylim(lowest / 2, 2.0)
    axes[0].set_ylabel("value / largest", fontsize=8)
    fig.suptitle(f"{layer.node}: normalized singular values", fontsize=9)
    return fig
