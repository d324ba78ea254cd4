"""Benchmark: the verification criterion's numbers, and what the float64 truth and onnxruntime cost.

Run on demand (not part of the test suite):

    python tests/benchmarks/bench_verification.py [--zoo light,fixtures,fp16,wild] [--fuzz 500]

Per model: the original's noise floor (its float32/float16 error against its own float64 run,
worst output), the optimized model's error ratio (error / noise floor, worst output) on the
executor and in onnxruntime, and the seconds of the verification runs: the executor in the
model's precision (what verification cost before), the float64 truth, and onnxruntime (plain
and fused run of the original, one run of the optimized model). ``--fuzz N`` also runs the
pipeline fuzzer's generator for N networks and prints the distribution of ratios: ``k``
(``optimizer.verification.NOISE_FACTOR``) must sit well above every exact rewrite's ratio.
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import time

import numpy as np
import onnx

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

import optimizer  # noqa: E402
from optimizer.executor import Executor  # noqa: E402
from optimizer.oracle import RuntimeOracle  # noqa: E402
from optimizer.inputs import prepare_runs  # noqa: E402
from optimizer.verification import Criterion, Reference  # noqa: E402

WILD_SHAPES = {"ch_PP-OCRv4_det_infer": {"x": (1, 3, 320, 320)}}


def timed(fn):
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


def measure(name: str, model, shapes=None) -> dict:
    """Optimize unverified, then verify piece by piece, timing each piece."""
    graph = optimizer.load(model)
    original = graph.copy()
    runs, _ = prepare_runs(graph, None, shapes, 0)
    result = optimizer.optimize(graph, shapes=shapes, verify=False)
    _, t32 = timed(lambda: Executor(original).run(runs.first))
    _, t64 = timed(lambda: Executor(original, compute_dtype=np.float64).run(runs.first))
    reference = Reference.measure(original, runs, 0)
    report = reference.judge(Executor(result.graph).run(runs.first), Criterion())
    oracle, t_ort = timed(lambda: RuntimeOracle(original, reference, Criterion(), "both"))
    runtime, t_check = timed(lambda: oracle.check(result.graph, Criterion()))
    worst = max(report.outputs, key=lambda o: o.ratio)
    row = {"model": name, "passed": report.passed and (runtime is None or runtime.passed),
           "noise": max(o.noise_floor for o in report.outputs), "error": worst.error, "ratio": worst.ratio,
           "ort_ratio": max(o.ratio for o in runtime.outputs) if runtime is not None else float("nan"),
           "oracles": "+".join(oracle.report.used), "t32": t32, "t64": t64, "t_ort": t_ort + t_check}
    notes = " ".join(oracle.report.notes())
    print(f"{name:<34} {'pass' if row['passed'] else 'FAIL'} noise {row['noise']:9.3g} error {row['error']:9.3g} "
          f"ratio {row['ratio']:6.3g} ort-ratio {row['ort_ratio']:6.3g} [{row['oracles']}]  "
          f"exec {t32:6.3f}s float64 {t64:6.3f}s onnxruntime {row['t_ort']:6.3f}s {notes}", flush=True)
    return row


def with_logits(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with the input of each output Softmax as an extra output: a saturated Softmax hides errors."""
    inferred = onnx.shape_inference.infer_shapes(model)
    known = {vi.name: vi for vi in inferred.graph.value_info}
    outputs = {o.name for o in model.graph.output}
    for node in model.graph.node:
        if node.op_type == "Softmax" and node.output[0] in outputs and node.input[0] in known:
            model.graph.output.append(known[node.input[0]])
    return model


def models(zoos: list[str]):
    from support import FIXTURES_DIR, LIGHT_MODELS, light_model_id, randomize_weights, to_float16

    if "light" in zoos:
        for path in LIGHT_MODELS:
            yield f"light/{light_model_id(path)}", with_logits(randomize_weights(onnx.load(path))), None
    fixtures = sorted(glob.glob(os.path.join(FIXTURES_DIR, "*.onnx")))
    if "fixtures" in zoos:
        for path in fixtures:
            yield f"fixture/{os.path.basename(path)[:-5]}", path, None
    if "fp16" in zoos:
        for stem in ("resnet_bottleneck_bn", "bottleneck_64_8_64", "repvgg_stage", "mobileone_block", "densenet_bn_relu_conv"):
            yield f"fp16/{stem}", to_float16(onnx.load(os.path.join(FIXTURES_DIR, f"{stem}.onnx"))), None
    if "wild" in zoos:
        for path in sorted(glob.glob("/tmp/wild/*.onnx")):
            stem = os.path.basename(path)[:-5]
            yield f"wild/{stem}", path, WILD_SHAPES.get(stem)


def fuzz(count: int) -> list[tuple[float, float, float, bool]]:
    """(noise floor, error, ratio, passed) of every output check over ``count`` fuzzer networks."""
    from hypothesis import HealthCheck, given, settings
    from test_fuzz_pipeline import networks

    checks: list[tuple[float, float, float, bool]] = []

    @settings(max_examples=count, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    @given(model=networks())
    def one(model):
        result = optimizer.optimize(model, raise_on_failure=False)
        for report in filter(None, [result.verification, result.oracle.verification]):
            checks.extend((o.noise_floor, o.error, o.ratio, o.passed) for o in report.outputs)

    one()
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--zoo", default="light,fixtures,fp16,wild")
    parser.add_argument("--fuzz", type=int, default=0)
    args = parser.parse_args()
    rows = []
    for name, model, shapes in models(args.zoo.split(",")):
        try:
            rows.append(measure(name, model, shapes))
        except Exception as exc:  # a model ninopt cannot optimize or run is not this benchmark's subject
            print(f"{name:<34} skipped: {type(exc).__name__}: {exc}", flush=True)
    if rows:
        t32, t64 = sum(r["t32"] for r in rows), sum(r["t64"] for r in rows)
        t_ort = sum(r["t_ort"] for r in rows if r["t_ort"] == r["t_ort"])
        print(f"\n{len(rows)} models; worst executor ratio {max(r['ratio'] for r in rows):.3g}, worst onnxruntime "
              f"ratio {max((r['ort_ratio'] for r in rows if r['ort_ratio'] == r['ort_ratio']), default=0):.3g}")
        print(f"verification runs, summed: executor {t32:.2f}s per run (verification made 2 before the float64 "
              f"truth); float64 truth {t64:.2f}s (+{t64 / (2 * t32):.0%}); onnxruntime oracle {t_ort:.2f}s "
              f"(+{t_ort / (2 * t32):.0%})")
    if args.fuzz:
        checks = fuzz(args.fuzz)
        ratios = np.array([c[2] for c in checks])
        finite = ratios[np.isfinite(ratios)]
        print(f"\nfuzzer: {args.fuzz} networks, {len(checks)} output checks, {sum(not c[3] for c in checks)} failed; "
              f"ratio median {np.median(finite):.3g}, 99th percentile {np.percentile(finite, 99):.3g}, "
              f"max {finite.max():.3g}")
        above = [c for c in checks if c[1] > 1e-6]  # errors the floor alone would not hide
        print(f"checks with an error above 1e-6: {len(above)}, largest ratio among them "
              f"{max((c[2] for c in above), default=0):.3g}")
        for noise, error, ratio, passed in sorted(checks, key=lambda c: -c[2])[:5]:
            print(f"  noise {noise:.3g} error {error:.3g} ratio {ratio:.3g} {'pass' if passed else 'FAIL'}")


if __name__ == "__main__":
    main()
