"""Benchmark: the public real-model zoo end to end (run on demand, not by pytest).

    python tests/benchmarks/bench_wild.py [--runs 5]

For each model fetched by ``fixtures/wild.py``, with no flags, as a newcomer runs it: nodes
before and after ``ninopt optimize``, the input shapes ninopt chose, the optimize time
(load, passes, verification with both oracles, save), how far the optimized model is from
the original in onnxruntime (max |d| / max |y|), and the executor's run time over
onnxruntime's (2 threads, all graph optimizations on; medians after a warm-up).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT)]

from fixtures import wild  # noqa: E402
from optimizer import cli, load  # noqa: E402
from optimizer.executor import Executor  # noqa: E402
from optimizer.inputs import random_inputs  # noqa: E402


def _session(path: Path, threads: int = 2):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _median_seconds(fn, runs: int) -> float:
    fn()
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(path: Path, runs: int, folder: Path) -> dict:
    out = folder / path.name
    printed = io.StringIO()
    start = time.perf_counter()
    with contextlib.redirect_stdout(printed):
        code = cli.main(["optimize", str(path), "-o", str(out), "--json", "--quiet"])
    seconds = time.perf_counter() - start
    if code != 0:
        return {"model": path.name, "error": f"ninopt optimize exited {code}"}
    report = json.loads(printed.getvalue())
    shapes = {name: tuple(dims) for name, dims in report["input_shapes"].items()}
    feeds = random_inputs(load(path), shapes, seed=0)
    original, optimized = _session(path), _session(out)
    agreement = max(float(np.abs(a - b).max() / max(np.abs(a).max(), 1e-30))
                    for a, b in zip(original.run(None, feeds), optimized.run(None, feeds)))
    executor = Executor(load(path))
    ratio = _median_seconds(lambda: executor.run(feeds), runs) / _median_seconds(lambda: original.run(None, feeds), runs)
    return {"model": path.name, "nodes_before": report["before"]["nodes"], "nodes_after": report["after"]["nodes"],
            "shapes": shapes, "optimize_seconds": seconds, "onnxruntime_agreement": agreement,
            "executor_over_onnxruntime": ratio}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    print("| model | nodes | input shapes | optimize | onnxruntime agreement | executor / onnxruntime |")
    print("|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for path in wild.fetch():
            row = measure(path, args.runs, Path(tmp))
            if "error" in row:
                print(f"| {row['model']} | {row['error']} | | | | |")
                continue
            shapes = ", ".join("x".join(map(str, s)) or "scalar" for s in row["shapes"].values())
            print(f"| {row['model']} | {row['nodes_before']} -> {row['nodes_after']} | {shapes} | "
                  f"{row['optimize_seconds']:.2f} s | {row['onnxruntime_agreement']:.2g} | "
                  f"{row['executor_over_onnxruntime']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
