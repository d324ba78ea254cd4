"""Benchmark ninopt's executor against onnxruntime and onnx.reference (run on demand, not by pytest).

    python tests/benchmarks/bench_executor.py [--runs 5] [--models squeezenet inception_v1 resnet50 wild]

Light zoo models at batch 1, 224x224, with their ConstantOfShape weights replaced by seeded
He-scaled random weights (so outputs are meaningful and checked), and with ``wild`` every
trained model that ``fixtures/wild.py`` fetches (or name one by its file stem), fed seeded
random inputs at the shapes ``ninopt run`` would choose. Each engine runs in its own
subprocess so that peak memory is measured per engine:

* time: median wall time of ``--runs`` runs after one warm-up (onnx.reference: a single run);
* peak RSS: ``VmHWM`` of that subprocess (whole process:
  interpreter, libraries, model and weights included), and its growth during inference
  (peak after the runs minus peak just before the first run);
* for ninopt also the tracemalloc peak of one run (numpy-side allocations only).

onnxruntime uses ``--ort-threads`` intra-op threads (default 2) and ORT_ENABLE_ALL; ninopt runs
BLAS on ``--blas-threads`` threads (default 1, as the executor does unless told otherwise).

Last, the executor's fixed cost per node: a chain of 1,000 Adds of two 4-element tensors,
timed in both engines (total time / 1,000).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

from support import ONNX_DATA, randomize_weights  # noqa: E402

ENGINES = ("ninopt", "onnxruntime", "reference")


def _maxrss_bytes() -> int:
    """The process's peak RSS. Not ``ru_maxrss``: Linux carries that across exec, so the subprocess
    would report the benchmark's own peak (it holds every model's random weights) for every engine."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024  # kB
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def _milliseconds(seconds: float) -> str:
    """Three decimals below 10 ms (silero-vad runs in 0.2 ms in onnxruntime), one above."""
    return f"{seconds * 1e3:.3f}" if seconds < 0.01 else f"{seconds * 1e3:.1f}"


def _feed(path: str) -> dict[str, np.ndarray]:
    from optimizer import load
    from optimizer.inputs import random_inputs

    return random_inputs(load(path), seed=0)


def _model_paths(names: list[str], workdir: str) -> list[str]:
    """Light zoo names become seeded random-weight copies in ``workdir``; ``wild`` or a wild
    model's file stem resolves to the fetched trained model."""
    from fixtures import wild

    wild_paths = {p.stem: p for p in wild.fetch()}
    paths = []
    for name in names:
        if name == "wild":
            paths.extend(str(p) for p in wild_paths.values())
        elif name in wild_paths:
            paths.append(str(wild_paths[name]))
        else:
            path = os.path.join(workdir, f"{name}.onnx")
            onnx.save(randomize_weights(onnx.load(str(ONNX_DATA / "light" / f"light_{name}.onnx")), seed=1), path)
            paths.append(path)
    return paths


def _add_chain(path: str, length: int = 1000) -> None:
    """A chain of ``length`` Adds of 4-element tensors: run time / length is the cost per node."""
    from onnx import TensorProto, helper

    nodes = [helper.make_node("Add", [f"t{i}", "one"], [f"t{i + 1}"]) for i in range(length)]
    graph = helper.make_graph(
        nodes, "add_chain", [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info(f"t{length}", TensorProto.FLOAT, [4])],
        [helper.make_tensor("one", TensorProto.FLOAT, [4], [1.0] * 4)])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), path)


def _measure(engine: str, path: str, runs: int, out_path: str) -> None:
    """Subprocess body: load, warm up, time, report JSON (and the first output for cross-checks)."""
    model = onnx.load(path)
    feeds = _feed(path)
    if engine == "ninopt":
        from optimizer import onnx_io
        from optimizer.executor import Executor, set_blas_threads

        set_blas_threads(int(os.environ["NINOPT_BENCH_BLAS_THREADS"]))

        executor = Executor(onnx_io.load(path))
        call = lambda: list(executor.run(feeds).values())  # noqa: E731
    elif engine == "onnxruntime":
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = int(os.environ["NINOPT_BENCH_ORT_THREADS"])
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.log_severity_level = 3
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        call = lambda: session.run(None, feeds)  # noqa: E731
    else:
        from onnx.reference import ReferenceEvaluator

        evaluator = ReferenceEvaluator(model)
        call = lambda: evaluator.run(None, feeds)  # noqa: E731
        runs = 0  # slow: the timed run is the only run
    before = _maxrss_bytes()
    times = []
    outputs = None
    for _ in range(runs + 1):
        start = time.perf_counter()
        outputs = call()
        times.append(time.perf_counter() - start)
    result = {"time": statistics.median(times[1:] or times), "peak_rss": _maxrss_bytes(),
              "rss_growth": _maxrss_bytes() - before}
    if engine == "ninopt":
        import tracemalloc

        tracemalloc.start()
        call()
        result["tracemalloc_peak"] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        result["nodes_run"] = _nodes_run(executor, call)
    np.save(out_path + ".npy", np.asarray(outputs[0]))
    Path(out_path).write_text(json.dumps(result))


def _nodes_run(executor, call) -> int:
    """Nodes one run computes, those in If/Loop bodies included (each time a body runs)."""
    from optimizer.executor import Executor

    count = 0
    execute = Executor._execute

    def counting(self, env, steps, timings=None):
        nonlocal count
        count += len(steps)
        return execute(self, env, steps, timings)

    Executor._execute = counting
    try:
        call()
    finally:
        Executor._execute = execute
    return count


def _run_engine(engine: str, path: str, runs: int, workdir: str, blas_threads: int, ort_threads: int) -> dict:
    out_path = os.path.join(workdir, f"{Path(path).stem}.{engine}.json")
    env = dict(os.environ, NINOPT_BENCH_BLAS_THREADS=str(blas_threads), NINOPT_BENCH_ORT_THREADS=str(ort_threads))
    subprocess.run([sys.executable, __file__, "--measure", engine, path, str(runs), out_path], check=True, env=env)
    result = json.loads(Path(out_path).read_text())
    result["output"] = np.load(out_path + ".npy")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--models", nargs="+", default=["squeezenet", "inception_v1", "resnet50", "wild"],
                        help="light zoo names, 'wild' (every fetched trained model) or a wild model's file stem")
    parser.add_argument("--skip-reference", action="store_true", help="do not time onnx.reference (slow)")
    parser.add_argument("--blas-threads", type=int, default=1, help="BLAS threads during ninopt's runs "
                        "(default 1, the executor's own default)")
    parser.add_argument("--ort-threads", type=int, default=2, help="onnxruntime's intra-op threads (default 2, "
                        "as the issue's target; 1 compares single-threaded engines)")
    parser.add_argument("--measure", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        engine, path, runs, out_path = args.measure
        _measure(engine, path, int(runs), out_path)
        return
    engines = [e for e in ENGINES if not (args.skip_reference and e == "reference")]
    mb = 1 << 20
    ratios_ort, ratios_ref, memory_ratios = [], [], []
    print(f"load average before: {' '.join(f'{v:.2f}' for v in os.getloadavg())} on {os.cpu_count()} CPUs; "
          f"BLAS threads for ninopt: {args.blas_threads}; onnxruntime threads: {args.ort_threads}")
    floors = []  # (model, nodes run, onnxruntime's time)
    with tempfile.TemporaryDirectory() as workdir:
        print(f"{'model':<32}{'engine':<13}{'time ms':>10}{'peak RSS MB':>13}{'RSS growth MB':>15}"
              f"{'numpy peak MB':>15}  max|diff| vs ort")
        for path in _model_paths(args.models, workdir):
            name = Path(path).stem
            results = {engine: _run_engine(engine, path, args.runs, workdir, args.blas_threads, args.ort_threads) for engine in engines}
            for engine, r in results.items():
                diff = float(np.abs(r["output"] - results["onnxruntime"]["output"]).max())
                numpy_peak = f"{r['tracemalloc_peak'] / mb:15.1f}" if "tracemalloc_peak" in r else f"{'-':>15}"
                print(f"{name:<32}{engine:<13}{_milliseconds(r['time']):>10}{r['peak_rss'] / mb:13.1f}"
                      f"{r['rss_growth'] / mb:15.1f}{numpy_peak}  {diff:.2e}")
            ours, ort_r = results["ninopt"], results["onnxruntime"]
            ratios_ort.append(ours["time"] / ort_r["time"])
            floors.append((name, ours["nodes_run"], ort_r["time"]))
            memory_ratios.append(ours["peak_rss"] / ort_r["peak_rss"])
            line = f"  -> ninopt/onnxruntime time x{ratios_ort[-1]:.2f}, peak RSS x{memory_ratios[-1]:.2f}"
            if "reference" in results:
                ratios_ref.append(results["reference"]["time"] / ours["time"])
                line += f"; ninopt is {ratios_ref[-1]:.0f}x faster than onnx.reference"
            print(line, flush=True)
        chain = os.path.join(workdir, "add_chain.onnx")
        _add_chain(chain)
        per_node = {engine: _run_engine(engine, chain, args.runs, workdir, args.blas_threads, args.ort_threads)["time"]
                    for engine in ("ninopt", "onnxruntime")}
    print(f"load average after: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")
    geo = math.exp(sum(map(math.log, ratios_ort)) / len(ratios_ort))
    print(f"\ngeometric mean time ratio ninopt/onnxruntime: {geo:.2f} (target <= 1.5)")
    print(f"worst time ratio: {max(ratios_ort):.2f} (target <= 2)")
    print(f"fixed cost per node (1,000 chained Adds of 4 floats): ninopt {per_node['ninopt'] * 1e3:.1f} us, "
          f"onnxruntime {per_node['onnxruntime'] * 1e3:.1f} us")
    print(f"peak RSS ratio ninopt/onnxruntime: max {max(memory_ratios):.2f} (target <= 2)")
    print("\nthe fixed cost alone (nodes run x ninopt's cost per node), against onnxruntime's whole run:")
    for name, nodes, ort_time in floors:
        floor = nodes * per_node["ninopt"] / 1000
        print(f"  {name:<32}{nodes:6d} nodes  {_milliseconds(floor):>8} ms  x{floor / ort_time:.2f}")
    if ratios_ref:
        print(f"speed-up over onnx.reference: min {min(ratios_ref):.0f}x (target >= 50x)")


if __name__ == "__main__":
    main()
