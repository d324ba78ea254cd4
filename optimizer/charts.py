"""What the HTML reports share: matplotlib as an optional extra, figures as data URIs, per-layer cost bars.

Figures are drawn on matplotlib's Agg canvas (no pyplot, no global backend switch) and embedded
as base64 ``data:`` URIs, so a page needs nothing but itself. Kept below the reports (the zoo
page, the bottleneck page) so both use one way of drawing and neither imports the other.
"""

from __future__ import annotations

import base64
import io
from typing import Sequence

from optimizer.errors import NinoptError

#: The CSS every report page starts from.
PAGE_STYLE = """
body { font-family: sans-serif; margin: 2em; }
table { border-collapse: collapse; }
th, td { border: 1px solid #ccc; padding: 4px 8px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
section { margin-top: 2em; }
"""


def require_matplotlib():
    """matplotlib's (Figure, FigureCanvasAgg); NinoptError naming the extra when it is not installed.

    The CLI calls this before long work, so a missing extra does not cost the whole run.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise NinoptError("--html needs matplotlib: pip install 'ninopt[html]'") from None
    return Figure, FigureCanvasAgg


def new_figure(width: float, height: float):
    """A Figure attached to an Agg canvas (so it can be saved without pyplot)."""
    Figure, FigureCanvasAgg = require_matplotlib()
    fig = Figure(figsize=(width, height), dpi=80)
    FigureCanvasAgg(fig)
    return fig


def figure_base64(fig, fmt: str = "png") -> str:
    """The figure as base64 text (``png`` or ``svg``; SVG keeps text as text and is deterministic)."""
    import matplotlib

    buf = io.BytesIO()
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "ninopt"}):
        fig.savefig(buf, format=fmt, metadata={"Date": None} if fmt == "svg" else None)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def figure_img(fig, alt: str, fmt: str = "png") -> str:
    """An ``<img>`` holding the figure as a data URI; ``alt`` must already be HTML-escaped."""
    mime = "image/svg+xml" if fmt == "svg" else "image/png"
    return f'<img src="data:{mime};base64,{figure_base64(fig, fmt)}" alt="{alt}">'


def short_number(n: int) -> str:
    """4089184256 -> "4.09G": short enough for a terminal table or an axis."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= scale:
            return f"{n / scale:.3g}{suffix}"
    return str(n)


def cost_bars(names: Sequence[str], before: Sequence[int | None], after: Sequence[int | None], title: str,
              order: str = "graph order"):
    """A figure of grouped bars, one before/after pair per layer (None = no bar).

    Every bar gets the SVG id ``before-i`` / ``after-i`` (i the layer's position), so a page's
    chart can be checked without reading pixels.
    """
    xs = range(len(names))
    fig = new_figure(max(6.0, min(16.0, 0.25 * len(names))), 3.2)
    ax = fig.add_subplot()
    width = 0.4
    for offset, values, label in ((-width / 2, before, "before"), (width / 2, after, "after")):
        bars = ax.bar([x + offset for x in xs], [v or 0 for v in values], width, label=label)
        for i, bar in enumerate(bars):
            bar.set_gid(f"{label}-{i}")
    if len(names) <= 40:
        ax.set_xticks(list(xs), list(names), rotation=90, fontsize=7)
    else:
        ax.set_xlabel(f"{len(names)} layers in {order}")
    ax.set_ylabel("MACs")
    ax.yaxis.set_major_formatter(lambda v, _: short_number(int(v)))
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig
