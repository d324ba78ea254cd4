"""The bottleneck page (`ninopt analyze --bottlenecks --html FILE`), read back as HTML and SVG.

The page is parsed, not eyeballed: one section per analyzed layer, its ranks written out, and
in its SVG the four spectra and the break-even and chosen marks, each mark at the pixel the
spectrum line puts that rank on; the cost bars are as tall as the MACs they stand for.
"""

from __future__ import annotations

import base64
import json
import re
import sys
import time
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from fixtures import wild
from optimizer.bottleneck import BottleneckReport, LayerAnalysis
from optimizer.cli import main
from optimizer.errors import NinoptError

pytest.importorskip("matplotlib")

SEED = Path(__file__).resolve().parent.parent / "fixtures" / "seed_bottleneck.onnx"
PPOCR_DET = wild.cache_dir() / "ch_PP-OCRv4_det_infer.onnx"
SVG = "{http://www.w3.org/2000/svg}"
SIDE_OF = {"input": "in", "svd": "in", "output": "out"}


# ---------------------------------------------------------------------- reading the page back
class _Page(HTMLParser):
    """Sections (id -> text and images) and the figures outside them."""

    def __init__(self):
        super().__init__()
        self.sections: dict[str, dict] = {}
        self.figures: dict[str, list[str]] = {}
        self._section: str | None = None
        self._figure: str | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section" and attrs.get("class") == "layer":
            self._section = attrs["id"]
            self.sections[self._section] = {"text": "", "images": []}
        elif tag == "figure":
            self._figure = attrs["id"]
            self.figures[self._figure] = []
        elif tag == "img":
            assert attrs["src"].startswith("data:image/svg+xml;base64,")
            image = base64.b64decode(attrs["src"].split(",", 1)[1]).decode("utf-8")
            (self.sections[self._section]["images"] if self._section else self.figures[self._figure]).append(image)

    def handle_endtag(self, tag):
        if tag == "section":
            self._section = None
        elif tag == "figure":
            self._figure = None

    def handle_data(self, data):
        if self._section:
            self.sections[self._section]["text"] += data


def read_page(path: Path) -> _Page:
    text = path.read_text(encoding="utf-8")
    assert "<script" not in text and "<link" not in text and "src=\"http" not in text  # self-contained
    page = _Page()
    page.feed(text)
    return page


def _groups(svg: str) -> dict[str, list[list[tuple[float, float]]]]:
    """SVG group id -> the vertices of each path inside it."""
    found = {}
    for group in ET.fromstring(svg).iter(f"{SVG}g"):
        paths = [[(float(x), float(y)) for x, y in re.findall(r"(-?[\d.]+) (-?[\d.]+)", p.get("d", ""))]
                 for p in group.iter(f"{SVG}path")]
        if group.get("id"):
            found[group.get("id")] = paths
    return found


def _rank_at(curve: list[tuple[float, float]], length: int, x: float) -> float:
    """The rank a pixel column stands for, from a spectrum line drawn at ranks 1..length."""
    (x0, _), (xn, _) = curve[0], curve[-1]
    return 1 + (x - x0) * (length - 1) / (xn - x0)


def expected_marks(layer: LayerAnalysis) -> dict[tuple[str, str], int]:
    """(kind, side) -> rank, from the analysis itself (not from the page module)."""
    marks = {("break-even", SIDE_OF[s]): r for s, r in layer.break_even.items() if r > 0}
    if layer.structure == "tucker2":
        marks["chosen", "in"], marks["chosen", "out"] = layer.rank
    elif layer.structure is not None:
        marks["chosen", SIDE_OF[layer.structure]] = layer.rank
    return marks


def check_page(path: Path, report: BottleneckReport) -> _Page:
    """Everything the page promises, layer by layer; AssertionError on the first thing missing."""
    page = read_page(path)
    assert len(page.sections) == len(report.layers)
    for i, layer in enumerate(report.layers):
        section = page.sections[f"layer-{i}"]
        assert layer.node in section["text"]
        if layer.reason:
            assert layer.reason in section["text"] and not section["images"]
            continue
        for structure, rank in layer.break_even.items():
            assert re.search(rf"break-even rank: [^;]*\b{structure} {rank}\b", section["text"])
        if layer.structure is not None:
            rank = "x".join(map(str, layer.rank)) if isinstance(layer.rank, list) else layer.rank
            assert f"chosen rank: {layer.structure} {rank};" in section["text"]
            assert f"{layer.macs:,} → {layer.macs_after:,}" in section["text"]
        (svg,) = section["images"]
        groups = _groups(svg)
        spectra = {"in": (layer.weight_spectrum_in, layer.input_spectrum),
                   "out": (layer.weight_spectrum_out, layer.output_spectrum)}
        for side, (weights, activations) in spectra.items():
            assert len(groups[f"weight-{side}"][0]) >= 2 and len(groups[f"activation-{side}"][0]) >= 2
        drawn = {tuple(gid.rsplit("-", 1)) for gid in groups if gid.startswith(("break-even-", "chosen-"))}
        assert drawn == set(expected_marks(layer)), layer.node
        for (kind, side), rank in expected_marks(layer).items():
            (line,) = groups[f"{kind}-{side}"]
            assert line[0][0] == line[-1][0]  # vertical
            weights = spectra[side][0]
            at = _rank_at(groups[f"weight-{side}"][0], len(weights), line[0][0])
            assert at == pytest.approx(rank, abs=1e-3), (layer.node, kind, side)
    (bars,) = page.figures["costs"]
    groups = _groups(bars)
    priced = [layer for layer in report.layers if layer.macs is not None]
    heights = {gid: max(y for _, y in paths[0]) - min(y for _, y in paths[0])
               for gid, paths in groups.items() if re.fullmatch(r"(before|after)-\d+", gid)}
    assert len(heights) == 2 * len(priced)
    tallest = max(layer.macs for layer in priced)
    scale = max(heights.values()) / tallest
    for i, layer in enumerate(priced):
        after = layer.macs_after if layer.macs_after is not None else layer.macs
        assert heights[f"before-{i}"] == pytest.approx(layer.macs * scale, abs=1e-3)
        assert heights[f"after-{i}"] == pytest.approx(after * scale, abs=1e-3)
    return page


def _report_of(data: dict) -> BottleneckReport:
    """A report back from its ``--json`` form."""
    layers = [LayerAnalysis(d["layer"], d["op"], [int(v) for v in d["shape"].split("x")] if d["shape"] else None,
                            d["macs"], d["reason"] or "", d["weight_spectrum_in"], d["weight_spectrum_out"],
                            d["input_spectrum"], d["output_spectrum"], d["break_even"], d["structure"], d["rank"],
                            d["macs_after"], d["predicted_error"]) for d in data["layers"]]
    return BottleneckReport(layers, data["evidence"], data["max_error"])


# ---------------------------------------------------------------------- a report with every kind of layer
def _decay(n: int, rate: float) -> list[float]:
    return [float(v) for v in np.exp(-rate * np.arange(n))]


def _layer(node, shape, structure, rank, break_even, macs, macs_after, reason=""):
    cout, cin = shape[:2]
    kk = int(np.prod(shape[2:]))
    return LayerAnalysis(node, "Conv", shape, macs, reason,
                         _decay(min(cin, cout * kk), 0.3), _decay(min(cout, cin * kk), 0.2),
                         _decay(cin, 0.5), _decay(cout, 0.4), break_even, structure, rank, macs_after,
                         None if structure is None else 1e-3)


@pytest.fixture
def report() -> BottleneckReport:
    layers = [
        _layer("wide 3x3 <in>", [16, 40, 3, 3], "input", 6, {"input": 12, "output": 11}, 900_000, 400_000),
        _layer("late 3x3", [24, 12, 3, 3], "output", 5, {"input": 9, "output": 8}, 500_000, 300_000),
        _layer("both sides", [32, 32, 3, 3], "tucker2", [7, 9], {"input": 28, "output": 28}, 800_000, 250_000),
        _layer("pointwise", [48, 48, 1, 1], "svd", 10, {"svd": 23}, 200_000, 90_000),
        _layer("full rank", [8, 8, 3, 3], None, None, {"input": 7, "output": 7}, 100_000, None),
        LayerAnalysis("depthwise", "Conv", None, None, "depthwise and grouped convolutions are left alone"),
    ]
    return BottleneckReport(layers, "random", 1e-2)


def test_page_shows_every_layer_its_spectra_ranks_and_costs(report, tmp_path):
    report.write_html(tmp_path / "page.html", title="synthetic")
    page = check_page(tmp_path / "page.html", report)
    assert "&lt;in&gt;" in (tmp_path / "page.html").read_text(encoding="utf-8")  # names are escaped
    assert "no rank below break-even is predicted within 0.01" in page.sections["layer-4"]["text"]


def test_the_check_fails_when_the_marks_are_not_drawn(report, tmp_path, monkeypatch):
    from optimizer.bottleneck import report_html

    monkeypatch.setattr(report_html, "_marks", lambda layer: {"in": {}, "out": {}})
    report.write_html(tmp_path / "page.html")
    with pytest.raises(AssertionError):
        check_page(tmp_path / "page.html", report)


def test_the_check_fails_when_a_mark_is_at_the_wrong_rank(report, tmp_path):
    report.write_html(tmp_path / "page.html")
    report.layers[0].rank += 1  # the page now disagrees with the report by one rank
    with pytest.raises(AssertionError):
        check_page(tmp_path / "page.html", report)


def test_the_same_report_writes_the_same_bytes(report, tmp_path):
    report.layers[1:] = []  # one layer shows it; every figure goes through the same writer
    report.write_html(tmp_path / "a.html")
    report.write_html(tmp_path / "b.html")
    assert (tmp_path / "a.html").read_bytes() == (tmp_path / "b.html").read_bytes()


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(report, tmp_path, monkeypatch):
    from optimizer.bottleneck import report_html

    target = tmp_path / "page.html"
    target.write_text("old page")

    def broken(*_):
        raise RuntimeError("drawing failed")

    monkeypatch.setattr(report_html, "_spectra_figure", broken)
    with pytest.raises(RuntimeError):
        report.write_html(target)
    assert target.read_text() == "old page" and sorted(tmp_path.iterdir()) == [target]


def test_a_bad_path_is_one_sentence_before_anything_is_drawn(report, tmp_path, monkeypatch):
    from optimizer.bottleneck import report_html

    monkeypatch.setattr(report_html, "_spectra_figure", lambda layer: pytest.fail("drew before checking the path"))
    with pytest.raises(NinoptError, match="does not exist"):
        report.write_html(tmp_path / "missing" / "page.html")
    with pytest.raises(NinoptError, match="is a directory"):
        report.write_html(tmp_path)


def test_without_matplotlib_the_cli_names_the_extra_before_analyzing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    monkeypatch.setattr("optimizer.api.analyze_bottlenecks", lambda *a, **k: pytest.fail("analyzed anyway"))
    assert main(["analyze", "--bottlenecks", str(SEED), "--html", str(tmp_path / "p.html")]) == 2
    assert "pip install 'ninopt[html]'" in capsys.readouterr().err
    assert not (tmp_path / "p.html").exists()


# ---------------------------------------------------------------------- the command line, end to end
def test_cli_draws_the_seed_layer(tmp_path, capsys):
    import optimizer

    out = tmp_path / "seed.html"
    assert main(["analyze", "--bottlenecks", str(SEED), "--html", str(out), "-q"]) == 0
    report = optimizer.analyze_bottlenecks(str(SEED))
    page = check_page(out, report)
    (layer,) = report.layers
    assert (layer.structure, layer.rank) == ("input", 16)  # the planted rank, marked on the input side
    assert "chosen rank: input 16;" in page.sections["layer-0"]["text"]
    assert capsys.readouterr().out == ""


@pytest.mark.parametrize("argv, message", [
    (["--html", "{tmp}/missing/p.html"], "output folder .* does not exist"),
    (["--html", "{tmp}"], "output path .* is a directory"),
])
def test_cli_bad_path_is_one_sentence_and_exit_2(argv, message, tmp_path, capsys):
    args = ["analyze", "--bottlenecks", str(SEED), *(a.format(tmp=tmp_path) for a in argv)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert re.fullmatch(rf"ninopt: error: {message}\.\n", err)


def test_cli_html_without_bottlenecks_is_refused(tmp_path, capsys):
    assert main(["analyze", str(SEED), "--html", str(tmp_path / "p.html")]) == 2
    assert "--bottlenecks" in capsys.readouterr().err and not (tmp_path / "p.html").exists()


@pytest.mark.skipif(not PPOCR_DET.is_file(), reason="PP-OCRv4 det is not in the wild-model cache")
def test_cli_draws_ppocr_det(tmp_path, capsys):
    out = tmp_path / "det.html"
    start = time.perf_counter()
    assert main(["analyze", "--bottlenecks", str(PPOCR_DET), "--html", str(out), "--json"]) == 0
    seconds = time.perf_counter() - start
    report = _report_of(json.loads(capsys.readouterr().out))  # the analysis the page was drawn from
    page = check_page(out, report)
    drawn = sum(bool(s["images"]) for s in page.sections.values())
    assert drawn == sum(not layer.reason for layer in report.layers) > 20
    print(f"PP-OCRv4 det page: {out.stat().st_size:,} bytes, {len(page.sections)} sections, {drawn} drawn, "
          f"analysis + page {seconds:.1f} s")
