"""Instructions one executor run takes, counted by valgrind's callgrind (run on demand, not by pytest).

    python tests/benchmarks/bench_instructions.py [--models silero_vad chain] [--against REV]

Wall time on a shared VM moved by up to 2x between runs of the same code; an instruction count
does not move with the machine's load, so it measures a change to the executor's own work (its
fixed cost per node above all). It is not time: a BLAS call's instructions count as much as the
interpreter's, and cache misses count for nothing. Use it beside ``bench_executor.py``.

Each model runs in a subprocess under callgrind twice, for FEW and for MANY runs after planning;
the difference divided by MANY - FEW is one run's count, with loading, planning and the first
run's constants left out. ``chain`` is bench_executor's chain of 1,000 four-float Adds, reported
per node. ``--against REV`` counts the same in a git worktree of REV, for a before/after table.
Needs valgrind (Debian's ``valgrind`` package).
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(Path(__file__).resolve().parent)]

from bench_executor import _add_chain, _model_paths  # noqa: E402

CHAIN_NODES = 1000

_RUNS = """
import sys
from optimizer import load
from optimizer.executor import Executor
from optimizer.inputs import random_inputs
graph = load(sys.argv[1])
executor = Executor(graph)
feeds = dict(random_inputs(graph, seed=0))
for _ in range(int(sys.argv[2])):
    executor.run(feeds)
"""


def _callgrind(tree: Path, model: str, runs: int) -> subprocess.Popen:
    """callgrind counting the loading of ``model``, its planning and ``runs`` runs with ``tree``'s code.
    A fixed hash seed: with a random one, start-up alone varied by more than a small model's run."""
    return subprocess.Popen(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", sys.executable, "-c", _RUNS, model,
         str(runs)], env=dict(os.environ, PYTHONPATH=str(tree), PYTHONHASHSEED="0"), stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, text=True, cwd=tempfile.gettempdir())


def _collected(process: subprocess.Popen, model: str) -> int:
    _, stderr = process.communicate()
    found = re.search(r"Collected : (\d+)", stderr)
    if process.returncode or not found:
        raise SystemExit(f"callgrind failed on {model}: {stderr.strip().splitlines()[-1:]}")
    return int(found.group(1))


def per_run(tree: Path, model: str, few: int, many: int) -> float:
    """One run's instructions: the two counts run side by side, one per core."""
    short, long = _callgrind(tree, model, few), _callgrind(tree, model, many)
    return (_collected(long, model) - _collected(short, model)) / (many - few)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["chain", "wild"],
                        help="light zoo names, 'wild', a wild model's file stem, or 'chain'")
    parser.add_argument("--runs", nargs=2, type=int, default=[2, 22], metavar=("FEW", "MANY"))
    parser.add_argument("--against", metavar="REV", help="also count with this git revision's code")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt-get install valgrind).")
    few, many = args.runs
    with tempfile.TemporaryDirectory() as workdir:
        trees = {"this tree": ROOT}
        if args.against:
            base = Path(workdir) / "against"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "-q", str(base), args.against],
                           check=True)
            trees[args.against] = base
        try:
            names = [n for n in args.models if n != "chain"]
            models = [(Path(p).stem, p, 1) for p in _model_paths(names, workdir)] if names else []
            if "chain" in args.models:
                chain = os.path.join(workdir, "add_chain.onnx")
                _add_chain(chain, CHAIN_NODES)
                models.insert(0, ("chain (per node)", chain, CHAIN_NODES))
            print(f"{'model':<34}" + "".join(f"{label[:14]:>16}" for label in trees) + "   instructions per run")
            for name, path, nodes in models:
                counts = [per_run(tree, path, few, many) / nodes for tree in trees.values()]
                line = f"{name:<34}" + "".join(f"{count / 1e3:15,.1f}K" for count in counts)
                if len(counts) == 2:
                    line += f"   x{counts[0] / counts[1]:.2f}"
                print(line, flush=True)
        finally:
            if args.against:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(trees[args.against])],
                               check=False)


if __name__ == "__main__":
    main()
