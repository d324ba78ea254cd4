"""Benchmark: insert-bottleneck on the fixtures and the light zoo — MACs, onnxruntime latency and error.

Run on demand (not part of the test suite):

    python tests/benchmarks/bench_bottleneck.py [--max-error 1e-2] [--samples 2] [--zoo all|none|NAME,...]

Per model, in one run: MACs before/after (``optimizer.cost``), onnxruntime latency before/after
(CPU, 2 intra-op threads, ORT_ENABLE_ALL, median of repeated runs) and the relative error
max|d|/max|y| on fresh random inputs (a seed the calibration never saw).

The light zoo's weights are all the constant 0.02 (ConstantOfShape), i.e. rank 1: a bottleneck
there is exact and huge, which says nothing about real models. So each zoo model also runs as a
seeded random-weight variant (He-normal weights, constant-folded first): full-rank weights, the
honest worst case. ``planted inception`` is the inception fixture with each conv's weights cut to
rank Cin/8 over input channels plus 0.1% noise.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]  # the repo first: `passes` is the package, not tests/passes

import passes.insert_bottleneck  # noqa: E402,F401
from optimizer import onnx_io  # noqa: E402
from optimizer.bottleneck import random_feeds, relative_error  # noqa: E402
from optimizer.cost import analyze_costs  # noqa: E402
from optimizer.executor import run  # noqa: E402
from optimizer.pipeline import PassManager  # noqa: E402
from optimizer.registry import get_pass  # noqa: E402
from support import FIXTURES_DIR, LIGHT_MODELS, light_model_id  # noqa: E402


def ort_latencies(graphs, feeds, repeats: int = 60, warmup: int = 10) -> list[float]:
    """Median onnxruntime latency (ms) of each graph, runs interleaved after a warm-up, so none is
    measured while BLAS threads of the numpy work before it still spin."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # idle sessions must not spin
    sessions = [ort.InferenceSession(onnx_io.to_model_proto(g).SerializeToString(), options,
                                     providers=["CPUExecutionProvider"]) for g in graphs]
    for _ in range(warmup):
        for session in sessions:
            session.run(None, feeds)
    times = [[] for _ in sessions]
    for _ in range(repeats):
        for session, samples in zip(sessions, times):
            start = time.perf_counter()
            session.run(None, feeds)
            samples.append(time.perf_counter() - start)
    return [float(np.median(t)) * 1e3 for t in times]


def randomize_weights(graph, seed: int):
    """Constant-fold (the zoo builds weights with ConstantOfShape), then He-normal Conv/Gemm weights."""
    PassManager([get_pass("fold-constants").create()]).run(graph)
    rng = np.random.default_rng(seed)
    for node in graph.toposort():
        if node.op_type in ("Conv", "Gemm") and node.inputs[1] in graph.initializers:
            w = graph.const(node.inputs[1])
            fan_in = int(np.prod(w.shape[1:])) if node.op_type == "Conv" else w.shape[0 if not node.attr("transB", 0) else 1]
            graph.set_const(node.inputs[1], (rng.standard_normal(w.shape) * np.sqrt(2.0 / fan_in)).astype(np.float32))
    return graph


def planted_inception():
    from test_bottleneck import planted_inception as make

    return make()


def bench(name: str, graph, max_error: float, samples: int) -> dict:
    original = graph.copy()
    start = time.perf_counter()
    report = PassManager([get_pass("insert-bottleneck").cls(max_error=max_error, samples=samples)]).run(graph)
    seconds = time.perf_counter() - start
    stats = report.passes[0]
    feeds = random_feeds(original, 2, 9999)
    err = max(relative_error([run(original, f)[o] for f in feeds], [run(graph, f)[o] for f in feeds])
              for o in original.outputs)
    ms_before, ms_after = ort_latencies([original, graph], feeds[0])
    row = {"model": name, "macs_before": analyze_costs(original).total_macs, "macs_after": analyze_costs(graph).total_macs,
           "ms_before": ms_before, "ms_after": ms_after,
           "inserted": stats.rewrites, "layers": stats.matches, "calib_error": max((d["model_error"] for d in stats.decisions), default=0.0),
           "fresh_error": err, "seconds": seconds}
    print(f"{name:32s} MACs {row['macs_before'] / 1e6:9.1f}M -> {row['macs_after'] / 1e6:9.1f}M "
          f"({row['macs_before'] / max(row['macs_after'], 1):5.2f}x)  ORT {row['ms_before']:8.2f} -> {row['ms_after']:8.2f} ms "
          f"({row['ms_before'] / row['ms_after']:4.2f}x)  inserted {row['inserted']:3d}/{row['layers']:3d}  "
          f"err calib {row['calib_error']:.2e} fresh {row['fresh_error']:.2e}  [{seconds:.1f}s]", flush=True)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-error", type=float, default=1e-2)
    parser.add_argument("--samples", type=int, default=2, help="calibration samples for the light zoo (fixtures: 8)")
    parser.add_argument("--zoo", default="all", help="all, none, or comma-separated ids (alexnet, resnet50, ...)")
    args = parser.parse_args()
    print(f"max_error {args.max_error:g}; error = max|d|/max|y| on fresh random inputs; ORT: 2 threads, ORT_ENABLE_ALL")
    for fixture, budget in (("seed_bottleneck", 1e-4), ("seed_bottleneck_noisy", args.max_error),
                            ("inception_module", args.max_error)):
        bench(f"{fixture} @{budget:g}", onnx_io.load(os.path.join(FIXTURES_DIR, f"{fixture}.onnx")), budget, 8)
    bench(f"planted inception @{args.max_error:g}", planted_inception(), args.max_error, 8)
    wanted = None if args.zoo == "all" else set(args.zoo.split(",")) if args.zoo != "none" else set()
    for path in LIGHT_MODELS:
        mid = light_model_id(path)
        if wanted is not None and mid not in wanted:
            continue
        g = onnx_io.load(path)
        PassManager([get_pass("fold-constants").create()]).run(g)
        bench(f"zoo {mid} (constant 0.02)", g, args.max_error, args.samples)
        bench(f"zoo {mid} (random weights)", randomize_weights(onnx_io.load(path), seed=0), args.max_error, args.samples)


if __name__ == "__main__":
    main()
