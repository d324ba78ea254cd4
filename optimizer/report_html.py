"""A self-contained HTML page for a zoo run: the summary table and, per model, per-layer MACs before/after.

Charts are PNGs drawn with matplotlib's Agg canvas (no pyplot, no global backend switch) and
embedded as base64 ``data:`` URIs, so the page needs nothing but itself. matplotlib is the
optional ``html`` extra.
"""

from __future__ import annotations

import base64
import html
import io
import os

from optimizer.errors import NinoptError
from optimizer.model_files import atomic_writer
from optimizer.zoo_runner import ZooReport, format_error, short_number

_STYLE = """
body { font-family: sans-serif; margin: 2em; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child, td.verdict { text-align: left; }
.pass { color: #1a7f37; } .fail { color: #cf222e; } .error { color: #9a6700; }
section { margin-top: 2em; }
"""


def require_matplotlib():
    """matplotlib's (Figure, FigureCanvasAgg); NinoptError naming the extra when it is not installed.

    The CLI calls this before a zoo run, so a missing extra does not cost the whole run.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise NinoptError("--html needs matplotlib: pip install 'ninopt[html]'") from None
    return Figure, FigureCanvasAgg


def write_html(report: ZooReport, path: str | os.PathLike) -> None:
    """Write the page atomically; raises NinoptError when matplotlib is missing."""
    Figure, FigureCanvasAgg = require_matplotlib()
    s = report.summary
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8"><title>ninopt zoo report</title>',
             f"<style>{_STYLE}</style></head><body>", "<h1>ninopt zoo report</h1>",
             f"<p>{s['passed']}/{s['total']} passed, {s['failed']} failed, {s['errors']} errors; "
             f"MACs {s['macs_before']:,} &rarr; {s['macs_after']:,}; {s['seconds']:.1f} s.</p>",
             _summary_table(report)]
    for i, m in enumerate(report.models):
        parts.append(f'<section id="model-{i}"><h2>{html.escape(m["name"])}</h2>')
        if m["message"]:
            parts.append(f"<p class=\"{m['verdict']}\">{html.escape(m['message'])}</p>")
        if m["layers"]:
            png = _layer_chart(m, Figure, FigureCanvasAgg)
            parts.append(f'<img src="data:image/png;base64,{png}" alt="per-layer MACs of {html.escape(m["name"])}">')
        parts.append("</section>")
    parts.append("</body></html>")
    with atomic_writer(path, "w", encoding="utf-8") as f:
        f.write("\n".join(parts))


def _summary_table(report: ZooReport) -> str:
    head = "".join(f"<th>{h}</th>" for h in ("model", "nodes", "MACs", "params", "max error", "verdict", "seconds"))
    rows = []
    for i, m in enumerate(report.models):
        b, a = m["before"], m["after"]
        sizes = "".join(f"<td>{b[k]:,} &rarr; {a[k]:,}</td>" if a else "<td></td>" for k in ("nodes", "macs", "params"))
        rows.append(f'<tr class="model"><td><a href="#model-{i}">{html.escape(m["name"])}</a></td>{sizes}'
                    f'<td>{html.escape(format_error(m["max_error"]))}</td>'
                    f'<td class="verdict {m["verdict"]}">{m["verdict"]}</td>'
                    f'<td>{m["seconds"]:.2f}</td></tr>')
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def _layer_chart(model: dict, Figure, FigureCanvasAgg) -> str:
    """Grouped bars, one pair per Conv/Gemm/MatMul layer (absent on one side = no bar); base64 PNG."""
    layers = model["layers"]
    xs = range(len(layers))
    fig = Figure(figsize=(max(6.0, min(16.0, 0.25 * len(layers))), 3.2), dpi=80)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    width = 0.4
    for offset, key, label in ((-width / 2, "macs_before", "before"), (width / 2, "macs_after", "after")):
        ax.bar([x + offset for x in xs], [layer[key] or 0 for layer in layers], width, label=label)
    if len(layers) <= 40:
        ax.set_xticks(list(xs), [layer["name"] for layer in layers], rotation=90, fontsize=7)
    else:
        ax.set_xlabel(f"{len(layers)} layers in graph order")
    ax.set_ylabel("MACs")
    ax.yaxis.set_major_formatter(lambda v, _: short_number(int(v)))
    ax.set_title(f"per-layer MACs of {model['name']}", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")
