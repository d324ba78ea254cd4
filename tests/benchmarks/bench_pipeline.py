"""Benchmark: load + default pipeline + save on synthetic conv networks of 1k, 10k and 100k nodes.

Run on demand (not part of the test suite):

    python tests/benchmarks/bench_pipeline.py [--sizes 1000,10000,100000]

Each size runs in a fresh subprocess so its peak memory (ru_maxrss) is its own. Prints time
and peak memory per size, the 100k/10k time ratio (target: at most 12x, i.e. near-linear),
and, when onnxslim is installed, the time ratio of ninopt to onnxslim on the 10k-node model
(goal: under 1/3).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

CHANNELS = 8


def synthetic_model(n_nodes: int, seed: int = 0) -> onnx.ModelProto:
    """A chain of blocks Conv1x1 -> Identity -> Relu -> Dropout (4 nodes each) with a residual Add every
    8 blocks, so the cleanup passes have real work at every size."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    x = "x"
    block = 0
    while len(nodes) + 4 <= n_nodes:
        w = f"w{block}"
        inits.append(numpy_helper.from_array(rng.standard_normal((CHANNELS, CHANNELS, 1, 1)).astype(np.float32), w))
        nodes += [
            helper.make_node("Conv", [x, w], [f"c{block}"], name=f"conv{block}"),
            helper.make_node("Identity", [f"c{block}"], [f"i{block}"], name=f"id{block}"),
            helper.make_node("Relu", [f"i{block}"], [f"r{block}"], name=f"relu{block}"),
            helper.make_node("Dropout", [f"r{block}"], [f"d{block}"], name=f"drop{block}"),
        ]
        x = f"d{block}"
        if block % 8 == 7 and len(nodes) < n_nodes:
            nodes.append(helper.make_node("Add", [x, f"d{block - 7}"], [f"a{block}"], name=f"add{block}"))
            x = f"a{block}"
        block += 1
    graph = helper.make_graph(nodes, "synthetic", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                   [1, CHANNELS, 4, 4])],
                              [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, CHANNELS, 4, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def _measure_ninopt(path: str) -> dict:
    import optimizer

    start = time.perf_counter()
    result = optimizer.optimize(path, verify=False)
    result.save(path + ".out.onnx")
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "nodes_before": result.before.nodes, "nodes_after": result.after.nodes,
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _measure_onnxslim(path: str) -> dict:
    import onnxslim

    start = time.perf_counter()
    onnxslim.slim(path, path + ".slim.onnx")
    return {"seconds": time.perf_counter() - start,
            "peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _in_subprocess(engine: str, path: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", engine, path], capture_output=True, text=True)
    if out.returncode:
        sys.exit(f"{engine} failed on {path}:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        engine, path = args.child
        print(json.dumps(_measure_ninopt(path) if engine == "ninopt" else _measure_onnxslim(path)))
        return
    try:
        import onnxslim  # noqa: F401
        have_slim = True
    except ImportError:
        have_slim = False
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            path = os.path.join(tmp, f"synthetic_{size}.onnx")
            onnx.save(synthetic_model(size), path)
            results[size] = r = _in_subprocess("ninopt", path)
            print(f"{size:>7} nodes: {r['seconds']:8.2f} s  peak {r['peak_mib']:8.1f} MiB  "
                  f"nodes {r['nodes_before']} -> {r['nodes_after']}")
            if have_slim and size == 10000:
                s = _in_subprocess("onnxslim", path)
                print(f"         onnxslim: {s['seconds']:8.2f} s  peak {s['peak_mib']:8.1f} MiB  "
                      f"ninopt/onnxslim time ratio {r['seconds'] / s['seconds']:.2f} (goal < 0.33)")
    if 10000 in results and 100000 in results:
        ratio = results[100000]["seconds"] / results[10000]["seconds"]
        print(f"time(100k) / time(10k) = {ratio:.2f} (target <= 12)")
    if not have_slim:
        print("onnxslim is not installed; `pip install onnxslim` to print the ratio against it")


if __name__ == "__main__":
    main()
