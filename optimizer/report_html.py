"""A self-contained HTML page for a zoo run: the summary table and, per model, per-layer MACs before/after.

Charts are PNGs drawn with the helpers of ``optimizer.charts`` (shared with the bottleneck
page) and embedded as base64 ``data:`` URIs, so the page needs nothing but itself. matplotlib
is the optional ``html`` extra.
"""

from __future__ import annotations

import html
import os

from optimizer.charts import PAGE_STYLE, cost_bars, figure_img, require_matplotlib
from optimizer.model_files import atomic_writer
from optimizer.zoo_runner import ZooReport, format_error

__all__ = ["require_matplotlib", "write_html"]

_STYLE = PAGE_STYLE + """
td.verdict { text-align: left; }
.pass { color: #1a7f37; } .fail { color: #cf222e; } .error { color: #9a6700; }
"""


def write_html(report: ZooReport, path: str | os.PathLike) -> None:
    """Write the page atomically; raises NinoptError when matplotlib is missing."""
    require_matplotlib()
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
            layers = m["layers"]
            fig = cost_bars([layer["name"] for layer in layers], [layer["macs_before"] for layer in layers],
                            [layer["macs_after"] for layer in layers], f"per-layer MACs of {m['name']}")
            parts.append(figure_img(fig, f"per-layer MACs of {html.escape(m['name'])}"))
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

