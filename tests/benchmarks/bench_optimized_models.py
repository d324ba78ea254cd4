"""Benchmark: onnxruntime latency of each model as given, after onnxsim and after ninopt.

Run on demand (not part of the test suite):

    python tests/benchmarks/bench_optimized_models.py [--models inception,resnet] [--runs 15] [--warmup 3]
                                                      [--passes a,b] [--extra-pass merge-sibling-conv1x1]

Models: every fixture in fixtures/*.onnx that onnxruntime runs, and the 9 light-zoo models as
random-weight variants. The zoo builds every weight with ConstantOfShape as the constant 0.02;
the variant folds those into seeded random initializers (He-scaled Conv/Gemm weights), so no
tool profits from identical weights and outputs differ per class. Latency does not depend on
the values.

Per model, every variant runs in the same process under one onnxruntime configuration (CPU,
intra_op_num_threads=2 unless ``--threads``, ORT_ENABLE_ALL): the input, onnxsim's output (when onnxsim is
installed), ninopt's output (``optimizer.optimize(path, verify=False)``, default passes or
``--passes``) and, per ``--extra-pass``, ninopt with that pass appended. After a warm-up the
variants run round-robin, so drift hits all alike; the table shows the median latency (and
the minimum, steadier on a busy machine), nodes and MACs (``optimizer.analyze``) and each variant's max relative output error against the
input. A summary prints the ratios ninopt/onnxsim and ninopt+extra/ninopt.
"""

from __future__ import annotations

import argparse
import glob
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

import optimizer
import passes.fuse_conv_activation  # noqa: F401  (registered even while no pipeline lists them)
import passes.merge_sibling_conv1x1  # noqa: F401

# Only now: with tests/ on sys.path first, `import passes` would find the namespace package tests/passes.
TESTS = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(TESTS)]

from optimizer import onnx_io  # noqa: E402
from optimizer.api import resolve_passes  # noqa: E402
from optimizer.pipeline import PassManager  # noqa: E402
from optimizer.registry import get_pass  # noqa: E402
from support import FIXTURES_DIR, LIGHT_MODELS, light_model_id, random_feeds, randomize_conv_weights  # noqa: E402

try:
    import onnxsim  # a benchmark peer only, never a dependency
except ImportError:
    onnxsim = None

console = Console(width=150)


@dataclass
class Variant:
    name: str
    model: onnx.ModelProto | str  # a path keeps external data resolvable
    nodes: int = 0
    macs: int = 0
    session: ort.InferenceSession | None = None
    times: list[float] = field(default_factory=list)
    error: float = 0.0

    @property
    def median_ms(self) -> float:
        return statistics.median(self.times) * 1e3

    @property
    def min_ms(self) -> float:
        return min(self.times) * 1e3


def session(model: onnx.ModelProto | str, threads: int = 2) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def zoo_variant(path: str, folder: str) -> str:
    """The light-zoo model with its ConstantOfShape weights folded into seeded random initializers."""
    graph = optimizer.load(path)
    PassManager([get_pass("fold-constants").create()]).run(graph)
    randomize_conv_weights(graph, seed=0)
    out = os.path.join(folder, f"{light_model_id(path)}.onnx")
    optimizer.save(graph, out)
    return out


def variants(path: str, passes: list[str], extra: list[str]) -> list[Variant]:
    """Input, onnxsim (if installed) and ninopt outputs of one model; a tool that fails is reported and left out."""
    found = [Variant("input", path)]
    if onnxsim is not None:
        try:
            simplified, _ = onnxsim.simplify(onnx.load(path))
            found.append(Variant("onnxsim", simplified))
        except Exception as exc:  # report any tool failure and go on with the others
            console.print(f"  onnxsim failed on {os.path.basename(path)}: {str(exc).splitlines()[0]}")
    for name, names in [("ninopt", passes)] + [(f"ninopt+{p}", passes + [p]) for p in extra]:
        try:
            found.append(Variant(name, optimizer.optimize(path, passes=names, verify=False).model))
        except Exception as exc:
            console.print(f"  {name} failed on {os.path.basename(path)}: {exc}")
    return found


def measure(found: list[Variant], feeds: dict, runs: int, warmup: int, threads: int) -> None:
    """Warm up, then time the variants round-robin; errors are against the input's outputs."""
    for v in found:
        costs = optimizer.analyze(v.model)
        v.nodes, v.macs = len(costs.nodes), costs.total_macs
        v.session = session(v.model, threads)
    reference = None
    for v in found:
        for _ in range(warmup):
            outputs = v.session.run(None, feeds)
        reference = outputs if reference is None else reference
        v.error = max(float(np.abs(o - r).max()) / max(float(np.abs(r).max()), 1e-30)
                      for o, r in zip(outputs, reference))
    for _ in range(runs):
        for v in found:
            start = time.perf_counter()
            v.session.run(None, feeds)
            v.times.append(time.perf_counter() - start)


def runs_in_ort(path: str) -> bool:
    try:
        session(path)
        return True
    except Exception as exc:
        console.print(f"skipping {os.path.basename(path)}: onnxruntime cannot run it ({str(exc).splitlines()[0]})")
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="", help="comma-separated substrings of model names to keep")
    parser.add_argument("--runs", type=int, default=15, help="timed runs per variant (the median is reported)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed runs per variant first (at least 1)")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime intra-op threads")
    parser.add_argument("--passes", default=None, help="ninopt's pass list (default: the default pipeline)")
    parser.add_argument("--extra-pass", default="",
                        help="comma-separated passes; each adds a variant: ninopt's passes plus that one")
    args = parser.parse_args()
    passes = resolve_passes(args.passes)
    args.warmup = max(1, args.warmup)
    extra = [p.strip() for p in args.extra_pass.split(",") if p.strip()]
    for name in extra:
        get_pass(name)  # unknown names fail before any work
    keep = [k.strip() for k in args.models.split(",") if k.strip()]
    if onnxsim is None:
        console.print("onnxsim not installed")

    table = Table(title=f"onnxruntime latency (CPU, {args.threads} intra-op threads, ORT_ENABLE_ALL)")
    for column in ("model", "variant", "nodes", "MACs (M)", "median ms", "min ms", "vs input", "max rel err"):
        table.add_column(column, justify="left" if column in ("model", "variant") else "right")
    summary = Table(title="ratios")
    summary.add_column("model")
    summary.add_column("ninopt/onnxsim latency", justify="right")
    summary.add_column("ninopt/onnxsim nodes", justify="right")
    for p in extra:
        summary.add_column(f"+{p}/ninopt latency", justify="right")
    ratios: dict[str, list[float]] = {}

    with tempfile.TemporaryDirectory() as tmp:
        models = [(Path(p).stem, p) for p in sorted(glob.glob(os.path.join(FIXTURES_DIR, "*.onnx")))]
        models += [(f"light {light_model_id(p)}", p) for p in LIGHT_MODELS]
        for label, path in models:
            if keep and not any(k in label for k in keep):
                continue
            if label.startswith("light "):
                path = zoo_variant(path, tmp)
            if not runs_in_ort(path):
                continue
            console.print(f"measuring {label} ...")
            found = variants(path, passes, extra)
            measure(found, random_feeds(path, seed=0), args.runs, args.warmup, args.threads)
            by_name = {v.name: v for v in found}
            base = by_name["input"].median_ms
            for v in found:
                table.add_row(label if v is found[0] else "", v.name, str(v.nodes), f"{v.macs / 1e6:.1f}",
                              f"{v.median_ms:.3f}", f"{v.min_ms:.3f}", f"{v.median_ms / base:.3f}", f"{v.error:.1e}")
            table.add_section()
            row = [label]
            for key, num, den in [("ninopt/onnxsim latency", "ninopt", "onnxsim")] + \
                                 [(f"+{p}", f"ninopt+{p}", "ninopt") for p in extra]:
                if num in by_name and den in by_name:
                    ratio = by_name[num].median_ms / by_name[den].median_ms
                    ratios.setdefault(key, []).append(ratio)
                    row.append(f"{ratio:.3f}")
                else:
                    row.append("-")
                if key == "ninopt/onnxsim latency":
                    row.append(f"{by_name['ninopt'].nodes / by_name['onnxsim'].nodes:.3f}"
                               if {"ninopt", "onnxsim"} <= by_name.keys() else "-")
            summary.add_row(*row)
    if ratios:
        summary.add_section()
        row = ["geometric mean"]
        for key in ["ninopt/onnxsim latency"] + [f"+{p}" for p in extra]:
            values = ratios.get(key)
            row.append(f"{float(np.exp(np.mean(np.log(values)))):.3f}" if values else "-")
            if key == "ninopt/onnxsim latency":
                row.append("")
        summary.add_row(*row)
    console.print(table)
    console.print(summary)
    console.print("load average (1, 5, 15 min): " + ", ".join(f"{x:.2f}" for x in os.getloadavg())
                  + f" on {os.cpu_count()} CPUs; a busy machine inflates medians, the minimum suffers least")


if __name__ == "__main__":
    main()
