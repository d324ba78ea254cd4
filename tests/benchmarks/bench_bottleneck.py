"""Benchmark: insert-bottleneck on the fixtures and the light zoo — MACs, onnxruntime latency and error.

Run on demand (not part of the test suite):

    python tests/benchmarks/bench_bottleneck.py [--max-error 1e-2] [--samples 2] [--zoo all|none|NAME,...]
    python tests/benchmarks/bench_bottleneck.py --trained DIR [--metric cosine] [--trained-error 1e-3] [--models det,...]

``--trained DIR`` (a folder holding scikit-image's ``skimage/data`` PNGs, e.g. unpacked from
``pip download scikit-image==0.24.0 --no-deps``; needs Pillow) runs the trained models in
~/.cache/ninopt/wild instead: PP-OCRv4 det, YOLOv8n (320n.onnx) and the ddddocr detector, calibrated
on CALIBRATION_IMAGES and verified on the held-apart VERIFICATION_IMAGES in ``--metric``, with a
per-layer table (rank, solo end-to-end error, share of the predicted error, MACs saved, reason).

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
           "inserted": stats.rewrites, "layers": stats.matches, "calib_error": max((d.model_error for d in stats.decisions), default=0.0),
           "fresh_error": err, "seconds": seconds}
    print(f"{name:32s} MACs {row['macs_before'] / 1e6:9.1f}M -> {row['macs_after'] / 1e6:9.1f}M "
          f"({row['macs_before'] / max(row['macs_after'], 1):5.2f}x)  ORT {row['ms_before']:8.2f} -> {row['ms_after']:8.2f} ms "
          f"({row['ms_before'] / row['ms_after']:4.2f}x)  inserted {row['inserted']:3d}/{row['layers']:3d}  "
          f"err calib {row['calib_error']:.2e} fresh {row['fresh_error']:.2e}  [{seconds:.1f}s]", flush=True)
    return row


WILD = os.path.expanduser("~/.cache/ninopt/wild")
#: (model id, file, preprocess spec) of the trained models
TRAINED = (("det", "ch_PP-OCRv4_det_infer.onnx", "size=320x320,scale=1/255,mean=0.485,0.456,0.406,std=0.229,0.224,0.225"),
           ("yolov8n", "320n.onnx", "size=320x320,scale=1/255"),
           ("ddddocr-det", "common_det.onnx", "size=416x416,scale=1/255"))
CALIBRATION_IMAGES = ("page", "text", "astronaut", "coffee", "chelsea", "camera", "motorcycle_left", "horse")
VERIFICATION_IMAGES = ("brick", "coins", "motorcycle_right", "clock_motion")


def image_set(folder: str, names, graph, spec: str) -> dict:
    import shutil
    import tempfile

    from optimizer.calibration_data import load_calibration

    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            shutil.copy(os.path.join(folder, f"{name}.png"), tmp)
        return load_calibration(tmp, graph, spec)


def bench_trained(images: str, metric: str, max_error: float, wanted) -> None:
    from optimizer.bottleneck import metric_error

    print(f"trained models: --metric {metric} --max-error {max_error:g}; calibration {', '.join(CALIBRATION_IMAGES)}; "
          f"verification (held apart) {', '.join(VERIFICATION_IMAGES)}")
    for mid, file, spec in TRAINED:
        if wanted and mid not in wanted:
            continue
        graph = onnx_io.load(os.path.join(WILD, file))
        PassManager([get_pass("fold-constants").create()]).run(graph)
        calibration = image_set(images, CALIBRATION_IMAGES, graph, spec)
        verification = image_set(images, VERIFICATION_IMAGES, graph, spec)
        name = graph.feed_inputs()[0]
        pins = {name: (1, *calibration[name].shape[1:])}
        original = graph.copy()
        start = time.perf_counter()
        stats = PassManager([get_pass("insert-bottleneck").cls(max_error=max_error, calibration=calibration,
                                                               metric=metric)]).run(graph).passes[0]
        seconds = time.perf_counter() - start
        feeds = [{name: verification[name][i:i + 1]} for i in range(len(verification[name]))]
        outs = [(o, [run(original, f)[o] for f in feeds], [run(graph, f)[o] for f in feeds]) for o in original.outputs]
        held = max(metric_error(metric, ref, got) for _, ref, got in outs)
        held_max_rel = max(metric_error("max-rel", ref, got) for _, ref, got in outs)
        before, after = analyze_costs(original, pins).total_macs, analyze_costs(graph, pins).total_macs
        ms_before, ms_after = ort_latencies([original, graph], feeds[0])
        decisions = stats.decisions
        calib = max((d.model_error for d in decisions), default=0.0)
        predicted = max((d.predicted_model_error or 0.0 for d in decisions), default=0.0)
        print(f"\n{mid} ({file}, {pins[name]}): MACs {before / 1e6:.1f}M -> {after / 1e6:.1f}M "
              f"(-{100 * (1 - after / before):.1f}%)  ORT {ms_before:.2f} -> {ms_after:.2f} ms "
              f"(-{100 * (1 - ms_after / ms_before):.1f}%)  inserted {stats.rewrites}/{stats.matches}  "
              f"{metric}: predicted {predicted:.2e} calibration {calib:.2e} held-apart {held:.2e} "
              f"(max-rel there {held_max_rel:.2e})  [{seconds:.0f}s]")
        print(f"  {'layer':40s} {'shape':>16s} {'struct':>7s} {'rank':>5s} {'MACs before':>12s} {'saved':>11s} "
              f"{'solo err':>9s} {'share':>6s}  reason")
        for d in sorted(decisions, key=lambda d: -(d.macs_before or 0)):
            shape = "x".join(map(str, d.shape or []))
            print(f"  {d.node[:40]:40s} {shape:>16s} {d.structure or '':>7s} {str(d.rank or ''):>5s} "
                  f"{d.macs_before or 0:12,d} {d.macs_saved or 0:11,d} "
                  f"{'' if d.solo_error is None else f'{d.solo_error:.1e}':>9s} "
                  f"{'' if d.error_share is None else f'{d.error_share:.2f}':>6s}  {d.reason}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--max-error", type=float, default=1e-2)
    parser.add_argument("--samples", type=int, default=2, help="calibration samples for the light zoo (fixtures: 8)")
    parser.add_argument("--zoo", default="all", help="all, none, or comma-separated ids (alexnet, resnet50, ...)")
    parser.add_argument("--trained", metavar="DIR", help="folder of scikit-image's data PNGs: run the trained models")
    parser.add_argument("--metric", default="cosine", help="the budget's metric for --trained")
    parser.add_argument("--trained-error", type=float, default=1e-3, help="the budget for --trained")
    parser.add_argument("--models", default="", help="comma-separated trained model ids (det, yolov8n, ddddocr-det)")
    args = parser.parse_args()
    if args.trained:
        bench_trained(args.trained, args.metric, args.trained_error, set(filter(None, args.models.split(","))))
        return
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
