"""Regression runs over a model zoo: optimize + verify every model in its own worker process.

``run_zoo`` finds the models (files, folders searched recursively for ``*.onnx``, and the
onnx package's light zoo with ``builtin="light"``), runs ``run_model`` on each in a process
pool (or on a dask cluster) and gathers one JSON-ready row per model into a ``ZooReport``.
A model that cannot be loaded, run or verified becomes an "error" or "fail" row; it never
stops the others. ``compare_baseline`` diffs a report against an earlier run's JSON.

Verdicts: "pass" when every output meets the verification criterion of ``ninopt optimize``
(relative error against the float64 truth within max(tolerance, k x the original's noise
floor), in every oracle used), "fail" when one does not, "error" when
the model could not be optimized or run (the row's ``message`` says why in one sentence).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from optimizer import api
from optimizer.charts import short_number
from optimizer.cost import analyze_costs
from optimizer.errors import NinoptError
from optimizer.verification import Criterion, json_number

#: Ops whose per-layer MACs the report keeps (the HTML chart plots them).
LAYER_OPS = ("Conv", "Gemm", "MatMul")
BUILTIN_ZOOS = ("light",)
VERDICTS = ("pass", "fail", "error")


# ---------------------------------------------------------------------- one model (runs in a worker)
def run_model(path: str, passes: list[str] | str | None = None, bottleneck_max_error: float | None = None,
              tolerance: float = api.EXACT_TOLERANCE, name: str | None = None,
              bottleneck_metric: str = "max-rel") -> dict[str, Any]:
    """Optimize and verify one model; a JSON-ready row. Never raises for a bad model.

    With ``bottleneck_max_error`` the approximate insert-bottleneck pass runs after the
    pipeline within that budget, and verification allows what ``ninopt optimize --bottleneck``
    allows (``OptimizeResult.budget``).
    """
    start = time.perf_counter()
    row = _error_row(name or Path(path).stem, str(path), None)
    try:
        _optimize_and_verify(path, passes, bottleneck_max_error, tolerance, row, bottleneck_metric)
    except NinoptError as exc:
        row["verdict"], row["message"] = "error", str(exc)
    except Exception as exc:  # a bug in ninopt on this model: reported in the row, the run goes on
        row["verdict"], row["message"] = "error", f"internal error ({type(exc).__name__}: {exc})."
    row["seconds"] = round(time.perf_counter() - start, 3)
    return row


def _optimize_and_verify(path, passes, bottleneck_max_error, tolerance, row, bottleneck_metric="max-rel") -> None:
    """Same pipeline, judge and budget as ``ninopt optimize``; a failed check becomes a "fail" row."""
    original = api.load(path)
    # priced in MACs: a regression run compares against a baseline, and timed decisions follow the machine's load
    bottleneck = api.BottleneckOptions(bottleneck_max_error, metric=bottleneck_metric, cost="macs") \
        if bottleneck_max_error is not None else None
    result = api.optimize(original, passes=passes, tolerance=tolerance, bottleneck=bottleneck, raise_on_failure=False)
    row["before"], row["after"] = result.before.to_dict(), result.after.to_dict()
    for stats in result.pipeline.passes:  # cleanup passes run again after bottleneck insertion: add up
        row["passes"][stats.name] = row["passes"].get(stats.name, 0) + stats.rewrites
    pins = result.shapes.pins if result.shapes is not None else None  # the shapes it was priced and verified at
    row["layers"] = _layer_macs(analyze_costs(original, pins).nodes, analyze_costs(result.graph, pins).nodes)
    report = result.verification
    row["max_error"] = json_number(report.worst_error)
    row["outputs"] = [{key: value for key, value in o.to_dict().items()
                       if key in ("name", "noise_floor", "error", "ratio", "allowed", "max_abs", "max_rel", "min_atol",
                                  "min_rtol", "nonfinite")} for o in report.outputs]
    row["oracles"] = result.oracle.used
    row["verdict"] = "pass" if report.passed else "fail"
    if not report.passed:
        row["message"] = f"{report.worst_failure()}."  # names onnxruntime when it was the one to refuse
    elif result.oracle.notes():
        row["message"] = " ".join(result.oracle.notes())


def _layer_macs(before, after) -> list[dict[str, Any]]:
    """Conv/Gemm/MatMul layers by name, in order: MACs before and after (None where the layer is absent)."""
    rows: dict[str, dict[str, Any]] = {}
    for side, nodes in (("macs_before", before), ("macs_after", after)):
        for i, n in enumerate(x for x in nodes if x.op_type in LAYER_OPS):
            key = n.name or f"{side}#{i}"
            row = rows.setdefault(key, {"name": key, "op_type": n.op_type, "macs_before": None, "macs_after": None})
            row[side] = n.macs
    return list(rows.values())


# ---------------------------------------------------------------------- finding models
def find_models(models: Iterable[str | os.PathLike], builtin: str | None = None) -> list[tuple[str, str]]:
    """(name, path) of every model to run, in the order given (folders sorted); bad arguments raise NinoptError."""
    roots: list[Path] = [Path(m) for m in models]
    if builtin is not None:
        if builtin not in BUILTIN_ZOOS:
            raise NinoptError(f"unknown built-in zoo {builtin!r}; choose from {', '.join(BUILTIN_ZOOS)}.")
        import onnx

        light = Path(os.path.dirname(onnx.__file__)) / "backend" / "test" / "data" / "light"
        if not light.is_dir():
            raise NinoptError("the installed onnx package has no light model zoo.")
        roots.append(light)
    if not roots:
        raise NinoptError("no models given; name .onnx files or folders, or pass --builtin light.")
    found: dict[Path, str] = {}
    for root in roots:
        if root.is_dir():
            for p in sorted(root.rglob("*.onnx")):
                found.setdefault(p.resolve(), p.relative_to(root).with_suffix("").as_posix())
        elif root.is_file():
            found.setdefault(root.resolve(), root.stem)
        else:
            raise NinoptError(f"{root} does not exist.")
    if not found:
        raise NinoptError(f"no .onnx models found in {', '.join(map(str, roots))}.")
    names = list(found.values())
    return [(name if names.count(name) == 1 else str(p), str(p)) for p, name in found.items()]


# ---------------------------------------------------------------------- the report
@dataclass
class ZooReport:
    """One row per model (see ``run_model``), the wall time and the settings of the run (``meta``)."""

    models: list[dict[str, Any]]
    seconds: float = 0.0
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def summary(self) -> dict[str, Any]:
        """Counts by verdict; MACs summed over the models the pipeline ran on."""
        counts = {v: sum(m["verdict"] == v for m in self.models) for v in VERDICTS}
        ran = [m for m in self.models if m["after"] is not None]
        return {"total": len(self.models), "passed": counts["pass"], "failed": counts["fail"],
                "errors": counts["error"], "macs_before": sum(m["before"]["macs"] for m in ran),
                "macs_after": sum(m["after"]["macs"] for m in ran), "seconds": round(self.seconds, 3)}

    @property
    def passed(self) -> bool:
        """Every model passed: an "error" row (a model that would not load or run) is a failure too."""
        return all(m["verdict"] == "pass" for m in self.models)

    @property
    def exit_code(self) -> int:
        """0 when every model passed, else 1 (bad arguments raise NinoptError before a report exists)."""
        return 0 if self.passed else 1

    def to_dict(self) -> dict[str, Any]:
        return {"models": self.models, "summary": self.summary, **({"meta": self.meta} if self.meta else {})}

    def to_json(self, path: str | os.PathLike) -> None:
        from optimizer.model_files import atomic_writer

        with atomic_writer(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2)

    def to_csv(self, path: str | os.PathLike) -> None:
        from optimizer.model_files import atomic_writer

        with atomic_writer(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(CSV_COLUMNS)
            for m in self.models:
                writer.writerow(_flat_row(m))


CSV_COLUMNS = ("name", "path", "verdict", "nodes_before", "nodes_after", "macs_before", "macs_after",
               "params_before", "params_after", "max_error", "seconds", "message")


def _flat_row(m: dict[str, Any]) -> list[Any]:
    b, a = m["before"] or {}, m["after"] or {}
    return [m["name"], m["path"], m["verdict"], b.get("nodes", ""), a.get("nodes", ""), b.get("macs", ""),
            a.get("macs", ""), b.get("params", ""), a.get("params", ""),
            "" if m["max_error"] is None else m["max_error"], m["seconds"], m["message"] or ""]


def render_table(report: ZooReport, console) -> None:
    """The per-model summary as a rich table, then one line of totals."""
    from rich import box
    from rich.table import Table

    table = Table(title="model zoo (before → after; error = relative error vs the float64 truth)", box=box.SIMPLE_HEAD)
    for col in ("model", "nodes", "MACs", "params", "error", "verdict", "time"):
        table.add_column(col, justify="left" if col in ("model", "verdict") else "right",
                         no_wrap=col != "model", overflow="fold", min_width=10 if col == "model" else None)
    style = {"pass": "green", "fail": "red", "error": "yellow"}
    for m in report.models:
        b, a = m["before"], m["after"]
        sizes = [f"{_total(b, k)}→{_total(a, k)}" if a else "" for k in ("nodes", "macs", "params")]
        verdict = f"[{style[m['verdict']]}]{m['verdict']}[/]"
        table.add_row(m["name"], *sizes, format_error(m["max_error"]), verdict, f"{m['seconds']:.1f}s")
    console.print(table)
    s = report.summary
    console.print(f"{s['passed']}/{s['total']} passed, {s['failed']} failed, {s['errors']} errors; "
                  f"MACs {s['macs_before']:,} -> {s['macs_after']:,}; {s['seconds']:.1f} s")
    for m in report.models:
        if m["message"]:
            console.print(f"{m['name']}: {m['message']}", markup=False)


def format_error(value: float | str | None) -> str:
    """A row's max_error for people: 3 significant digits, "inf" as is, blank when not measured."""
    if value is None:
        return ""
    return f"{value:.3g}" if isinstance(value, (int, float)) else str(value)


def _total(summary: dict[str, Any], key: str) -> str:
    """A short total, marked ≥ where some nodes' cost is unknown (the total is then a lower bound)."""
    partial = summary.get(f"{key}_partial", False)
    return ("≥" if partial else "") + short_number(summary[key])


# ---------------------------------------------------------------------- running
def zoo(models: Iterable[str | os.PathLike] = (), **options) -> ZooReport:
    """Optimize and verify many models in parallel (``ninopt zoo``): the library entry, ``optimizer.zoo``.

    Options are those of ``run_zoo`` (``builtin="light"``, ``jobs``, ``passes`` or ``pipeline``,
    ``bottleneck_max_error``, ``tolerance``, ``progress``, ``dask_address``). It lives here,
    above ``optimizer.api`` whose ``optimize`` and ``verify`` each row runs, not in it.
    """
    return run_zoo(list(models), **options)


def run_zoo(models: list[str | Path], *, builtin: str | None = None, jobs: int = 1, passes=None,
            pipeline: str | None = None, bottleneck_max_error: float | None = None, tolerance: float = api.EXACT_TOLERANCE, progress: bool = True,
            dask_address: str | None = None, bottleneck_metric: str = "max-rel") -> ZooReport:
    """Optimize and verify every model, ``jobs`` worker processes at a time (or on the dask scheduler at
    ``dask_address``). Raises NinoptError for bad arguments only; per-model trouble lands in the rows.
    """
    if jobs < 1:
        raise NinoptError(f"--jobs must be at least 1, got {jobs}.")
    if passes is not None or pipeline is not None:  # a typo in a name is a bad argument, not nine error rows
        passes = api.resolve_passes(passes, pipeline)
    found = find_models(models, builtin)
    options = {"passes": passes, "bottleneck_max_error": bottleneck_max_error, "tolerance": tolerance,
               "bottleneck_metric": bottleneck_metric}
    start = time.perf_counter()
    with _Progress(len(found), progress) as bar:
        if dask_address is not None:
            rows = _run_dask(found, options, dask_address, bar)
        else:
            rows = _run_pool(found, options, jobs, bar)
    meta = {"tolerance": tolerance, "passes": passes, "pipeline": pipeline, "bottleneck_max_error": bottleneck_max_error,
            "bottleneck_metric": bottleneck_metric,
            "criterion": Criterion(tolerance).to_dict()}
    return ZooReport([rows[path] for _, path in found], time.perf_counter() - start, meta)


def _run_pool(found, options, jobs, bar) -> dict[str, dict]:
    """Rows by path from a spawn-context process pool; models whose worker died are retried alone."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    context = multiprocessing.get_context("spawn")  # no fork of a process that may run threads
    rows: dict[str, dict] = {}
    crashed: list[tuple[str, str]] = []
    with _blas_threads(max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else None), \
            ProcessPoolExecutor(max_workers=min(jobs, len(found)), mp_context=context) as pool:
        futures = {pool.submit(run_model, path, name=name, **options): (name, path) for name, path in found}
        bar.watch(futures, limit=jobs)  # the pool marks one queued call as running too
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_COMPLETED)
            for future in done:
                name, path = futures[future]
                try:
                    rows[path] = future.result()
                except BrokenProcessPool:
                    crashed.append((name, path))
                    continue
                bar.done(future)
            bar.show()  # the models in flight change as workers pick up the next ones
    for name, path in crashed:  # the pool broke: find out which model killed its worker (with all threads)
        with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
            try:
                rows[path] = pool.submit(run_model, path, name=name, **options).result()
            except BrokenProcessPool:
                rows[path] = _error_row(name, path, "the worker process died on this model (a crash or out of memory).")
        bar.advance(name)
    return rows


@contextlib.contextmanager
def _blas_threads(n: int | None):
    """Workers spawned in this block use ``n`` BLAS/OpenMP threads unless the user chose a number.

    ``jobs`` workers each running as many BLAS threads as there are cores oversubscribe the
    machine (light zoo, 2 jobs on 2 busy cores: 71 s with default threads, 29 s with one each).
    Spawned children inherit the environment; the parent's BLAS is already set up and unaffected.
    """
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
    unset = [k for k in names if k not in os.environ] if n is not None else []
    os.environ.update({k: str(n) for k in unset})
    try:
        yield
    finally:
        for k in unset:
            os.environ.pop(k, None)


def _run_dask(found, options, address, bar) -> dict[str, dict]:
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise NinoptError("--dask needs dask.distributed: pip install 'ninopt[dask]'") from None
    try:
        client = Client(address, timeout="10s")
    except (OSError, TimeoutError) as exc:
        raise NinoptError(f"could not connect to the dask scheduler at {address} ({exc}).") from None
    rows: dict[str, dict] = {}
    with client:
        futures = {client.submit(run_model, path, name=name, pure=False, **options): (name, path)
                   for name, path in found}
        bar.watch(futures)
        for future in as_completed(list(futures)):
            name, path = futures[future]
            try:
                rows[path] = future.result()
            except Exception as exc:  # e.g. KilledWorker: the model took its worker down
                rows[path] = _error_row(name, path, f"the dask worker failed ({type(exc).__name__}: {exc}).")
            bar.done(future)
    return rows


def _error_row(name: str, path: str, message: str | None) -> dict[str, Any]:
    """A row with nothing measured yet (``run_model`` fills it in as it gets further)."""
    return {"name": name, "path": path, "verdict": "error", "message": message, "before": None, "after": None,
            "max_error": None, "outputs": [], "oracles": [], "passes": {}, "layers": [], "seconds": 0.0}


class _Progress:
    """A rich progress bar on stderr (models done / total, models in flight); silent off a terminal."""

    def __init__(self, total: int, enabled: bool):
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        console = Console(stderr=True)
        self._bar = Progress(TextColumn("zoo"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                             TextColumn("{task.description}"), console=console,
                             disable=not (enabled and console.is_terminal), transient=False)
        self._task = self._bar.add_task("", total=total)
        self._futures: dict[Any, tuple[str, str]] = {}
        self._last: str | None = None
        self._limit: int | None = None

    def __enter__(self) -> _Progress:
        self._bar.start()
        return self

    def __exit__(self, *exc) -> None:
        self._bar.stop()

    def watch(self, futures: dict[Any, tuple[str, str]], limit: int | None = None) -> None:
        self._futures, self._limit = dict(futures), limit
        self.show()

    def done(self, future) -> None:
        name, _ = self._futures.pop(future)
        self.advance(name)

    def advance(self, name: str) -> None:
        self._bar.advance(self._task)
        self._last = name
        self.show()

    def show(self) -> None:
        """Name the models in flight (or, when that is unknown, the last one finished)."""
        running = [n for f, (n, _) in self._futures.items() if _is_running(f)][:self._limit]
        text = ("running " + ", ".join(running[:3]) + (" ..." if len(running) > 3 else "")) if running else ""
        self._bar.update(self._task, description=text or (f"finished {self._last}" if self._last else ""))


def _is_running(future) -> bool:
    """concurrent.futures knows which calls a worker holds; a dask future does not say, so it never shows."""
    running = getattr(future, "running", None)
    return bool(running and running())


# ---------------------------------------------------------------------- baselines
@dataclass
class BaselineComparison:
    """``regressions`` make a run fail; ``notes`` (models only on one side) are information only."""

    regressions: list[str]
    notes: list[str]

    def __bool__(self) -> bool:
        return bool(self.regressions)


def compare_baseline(report: ZooReport, baseline_json_path: str | os.PathLike, *, error_growth: float = 10.0,
                     abs_error_floor: float = 1e-7) -> BaselineComparison:
    """Regressions of ``report`` against an earlier run's JSON, one sentence each.

    A regression: a model that passed now fails or errors; its max relative error grew more
    than ``error_growth`` times and above ``abs_error_floor``; MACs or node count after
    optimization grew; a pass that rewrote the model stopped firing. Models present on one
    side only are notes, not regressions: adding or retiring a model is a deliberate change.
    """
    base = {m["name"]: m for m in load_baseline(baseline_json_path)}
    now = {m["name"]: m for m in report.models}
    regressions: list[str] = []
    for name, cur in now.items():
        old = base.get(name)
        if old is not None:
            regressions += _regressions(name, old, cur, error_growth, abs_error_floor)
    notes = [f"{n} is in the baseline but was not run." for n in base if n not in now]
    notes += [f"{n} is new (not in the baseline)." for n in now if n not in base]
    return BaselineComparison(regressions, notes)


def load_baseline(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The model rows of an earlier run's JSON; NinoptError when it cannot be read (check it before a long run)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        models = data["models"]
        if not all(isinstance(m, dict) and "name" in m and "verdict" in m for m in models):
            raise TypeError("rows without name/verdict")
        return models
    except OSError as exc:
        raise NinoptError(f"cannot read the baseline {path} ({exc.strerror or exc}).") from None
    except (ValueError, KeyError, TypeError) as exc:
        raise NinoptError(f"{path} is not a zoo report JSON ({type(exc).__name__}: {exc}).") from None


def _regressions(name, old, cur, growth, floor) -> list[str]:
    if old["verdict"] == "pass" and cur["verdict"] != "pass":
        how = "fails verification" if cur["verdict"] == "fail" else "errors"
        return [f"{name} passed in the baseline but now {how}: {cur['message']}"]
    found = []
    e_old, e_cur = _float(old.get("max_error")), _float(cur.get("max_error"))
    if e_old is not None and e_cur is not None and e_cur > growth * e_old and e_cur > floor:
        found.append(f"{name}: max relative error grew from {e_old:.3g} to {e_cur:.3g} (more than {growth:g}x).")
    if old.get("after") and cur.get("after"):
        for key, label in (("macs", "MACs"), ("nodes", "node count")):
            if cur["after"][key] > old["after"][key]:
                found.append(f"{name}: {label} after optimization grew from {old['after'][key]:,} "
                             f"to {cur['after'][key]:,}.")
    if cur["verdict"] != "error":
        for pass_name, n in (old.get("passes") or {}).items():
            if n > 0 and cur["passes"].get(pass_name, 0) == 0:
                found.append(f"{name}: pass {pass_name} rewrote it {n} time(s) in the baseline but no longer fires.")
    return found


def _float(value) -> float | None:
    """A JSON max_error (number, or "inf"/"nan" strings) as a float; None when absent."""
    if value is None:
        return None
    x = float(value)
    return math.inf if math.isnan(x) else x
