"""Benchmark: node counts after ninopt's default pipeline vs onnxsim and onnxslim.

Run on demand (not part of the test suite); onnxsim and onnxslim are peers, never dependencies:

    pip install onnxsim onnxslim
    python tests/benchmarks/bench_simplify.py /tmp/wild [--shape NAME:1x3x64x64 ...]

For every ``*.onnx`` in the folder: main-graph node count of the input, of ninopt's output
(``optimizer.optimize``, verified), of onnxsim's and of onnxslim's (both with their default
settings and no input-shape overrides, like ninopt's passes, which never see ``--shape``: it
only pins the verification inputs). Where ``optimize`` fails before the passes (a missing
executor kernel, say), the default pipeline runs unverified and the note says so; onnxruntime
still checks the result. Each output is then run in onnxruntime on the same
inputs as the original; a peer whose outputs differ in names, shapes or values (max |d| above
1e-4 x max |y| + 1e-6: the floor keeps float32 rounding of a saturated probability map, like
PP-OCR det's ~1e-7 sigmoid outputs on random inputs, from counting as a difference) is
flagged ``WRONG`` with what differs, and a tool that fails says ``error``.

Verification inputs: ``--shape`` if given, else symbolic dims become 1 for the first axis and
``--dim`` (default 64) elsewhere; a few models need specific sizes (``MODEL_SHAPES``).
"""

from __future__ import annotations

import argparse
import glob
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
from rich.console import Console
from rich.table import Table

import optimizer
import passes  # noqa: F401  (before tests/ joins sys.path, where `passes` would find tests/passes)
from optimizer import onnx_io
from optimizer.api import resolve_passes
from optimizer.pipeline import PassManager
from optimizer.registry import get_pass

TESTS = Path(__file__).resolve().parent.parent
sys.path.append(str(TESTS))
from support import ort_run  # noqa: E402

#: Inputs the models only accept at particular sizes (PP-OCR rec needs height 48, silero 512 samples at 16 kHz).
MODEL_SHAPES = {
    "ch_PP-OCRv4_rec_infer.onnx": {"x": (1, 3, 48, 320)},
    "ch_ppocr_mobile_v2.0_cls_infer.onnx": {"x": (1, 3, 48, 48)},  # H and W share the dim name '?': equal
    "silero_vad.onnx": {"input": (1, 512), "state": (2, 1, 128)},
    "silero_vad_half.onnx": {"input": (1, 512), "state": (2, 1, 128)},
    "silero_vad_16k_op15.onnx": {"input": (1, 512), "state": (2, 1, 128)},
    "silero_vad_op18_ifless.onnx": {"input": (1, 512), "state": (2, 1, 128)},
    "silero_vad_16k_sequence.onnx": {"input": (4, 576)},
    "320n.onnx": {"images": (1, 3, 320, 320)},
}


def verification_shapes(model: onnx.ModelProto, path: str, pinned: dict, dim: int) -> dict[str, tuple[int, ...]]:
    inits = {t.name for t in model.graph.initializer}
    shapes = {}
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        known = pinned.get(vi.name) or MODEL_SHAPES.get(os.path.basename(path), {}).get(vi.name)
        if known is None:
            dims = vi.type.tensor_type.shape.dim
            known = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else (1 if i == 0 else dim)
                          for i, d in enumerate(dims))
        shapes[vi.name] = tuple(known)
    return shapes


def feeds_for(model: onnx.ModelProto, shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in model.graph.input:
        if vi.name not in shapes:
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type)
        if vi.name == "sr":  # silero's sample rate
            feeds[vi.name] = np.array(16000, dtype)
        elif np.dtype(dtype).kind == "f":  # image-like: normal noise drives PP-OCR det's map to ~1e-6
            feeds[vi.name] = rng.random(shapes[vi.name]).astype(dtype)
        else:
            feeds[vi.name] = rng.integers(0, 3, shapes[vi.name]).astype(dtype)
    return feeds


def disagreement(original: onnx.ModelProto, candidate: onnx.ModelProto, feeds: dict) -> str | None:
    """Why ``candidate`` is not the same function as ``original`` on ``feeds`` (None when it is)."""
    names = [o.name for o in original.graph.output]
    if [o.name for o in candidate.graph.output] != names:
        return f"outputs {[o.name for o in candidate.graph.output]} instead of {names}"
    try:
        got = ort_run(candidate, feeds)
    except Exception as exc:  # noqa: BLE001  (a peer's model onnxruntime rejects is a finding)
        return f"onnxruntime rejects it ({str(exc).splitlines()[0][:80]})"
    for name, e, a in zip(names, ort_run(original, feeds), got):
        if np.shape(e) != np.shape(a):
            return f"output {name} has shape {np.shape(a)} instead of {np.shape(e)}"
        scale = float(np.abs(np.asarray(e, np.float64)).max(initial=0.0)) or 1.0
        if np.asarray(e).size and float(np.abs(np.asarray(a, np.float64) - e).max()) > 1e-4 * scale + 1e-6:
            return f"output {name} differs"
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder")
    parser.add_argument("--shape", action="append", default=[], metavar="NAME:1x3x64x64")
    parser.add_argument("--dim", type=int, default=64)
    args = parser.parse_args()
    pinned = {s.split(":")[0]: tuple(int(d) for d in s.split(":")[1].split("x")) for s in args.shape}
    try:
        import onnxsim
    except ImportError:
        onnxsim = None
    try:
        import onnxslim
    except ImportError:
        onnxslim = None

    table = Table(title=f"main-graph nodes after simplification ({args.folder})")
    for col in ("model", "input", "ninopt", "onnxsim", "onnxslim", "notes"):
        table.add_column(col, justify="left" if col in ("model", "notes") else "right")
    wins = 0
    rows = 0
    for path in sorted(glob.glob(os.path.join(args.folder, "*.onnx"))):
        original = onnx.load(path)
        shapes = verification_shapes(original, path, pinned, args.dim)
        feeds = feeds_for(original, shapes)
        counts: dict[str, int | None] = {}
        notes = []
        try:
            optimized = optimizer.optimize(path, shapes=shapes).model
        except Exception as exc:  # noqa: BLE001  (e.g. no executor kernel yet: run the passes unverified)
            notes.append(f"ninopt unverified ({str(exc).splitlines()[0][:60]})")
            graph = onnx_io.load(path)
            PassManager([get_pass(name).create() for name in resolve_passes(None)]).run(graph)
            optimized = onnx_io.to_model_proto(graph)
        counts["ninopt"] = len(optimized.graph.node)
        problem = disagreement(original, optimized, feeds)
        if problem:
            notes.append(f"ninopt WRONG: {problem}")
        peers = {"onnxsim": onnxsim and (lambda m: onnxsim.simplify(m)[0]),
                 "onnxslim": onnxslim and (lambda m: onnxslim.slim(m))}
        for name, simplify in peers.items():
            if simplify is None:
                counts[name] = None
                notes.append(f"{name} not installed")
                continue
            try:
                with tempfile.TemporaryDirectory():
                    simplified = simplify(onnx.load(path))
                counts[name] = len(simplified.graph.node)
                problem = disagreement(original, simplified, feeds)
                if problem:
                    notes.append(f"{name} WRONG: {problem}")
            except Exception as exc:  # noqa: BLE001
                counts[name] = None
                notes.append(f"{name} error: {str(exc).splitlines()[0][:90]}")
        peer_counts = [c for k, c in counts.items()
                       if k != "ninopt" and c is not None and not any(n.startswith(f"{k} WRONG") for n in notes)]
        rows += 1
        if counts["ninopt"] is not None and all(counts["ninopt"] <= c for c in peer_counts):
            wins += 1
        table.add_row(os.path.basename(path), str(len(original.graph.node)),
                      *("-" if counts[k] is None else str(counts[k]) for k in ("ninopt", "onnxsim", "onnxslim")),
                      "; ".join(notes))
    Console(width=200).print(table)
    print(f"ninopt <= every correct peer on {wins} of {rows} models")


if __name__ == "__main__":
    main()
