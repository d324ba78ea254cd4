"""The `ninopt` command. Errors a user can cause print one sentence and exit non-zero, never a traceback."""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from optimizer import api
from optimizer.cli_args import build_parser
from optimizer.errors import NinoptError


@contextlib.contextmanager
def _blas_threads(count: int | None):
    """``--blas-threads`` for this command only (the executor's default is back afterwards)."""
    if count is None:
        yield
        return
    from optimizer.executor.threads import DEFAULT_BLAS_THREADS, set_blas_threads

    set_blas_threads(count)
    try:
        yield
    finally:
        set_blas_threads(DEFAULT_BLAS_THREADS)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "max_tensor_bytes", None):
            from optimizer.executor import set_max_tensor_bytes

            set_max_tensor_bytes(args.max_tensor_bytes)
        with _blas_threads(getattr(args, "blas_threads", None)):
            return COMMANDS[args.command](args) or 0
    except NinoptError as exc:
        _error(str(exc))
        return exc.exit_code
    except KeyboardInterrupt:
        _error("interrupted; nothing was written.")
        return 130
    except MemoryError:
        _error("ran out of memory; nothing was written.")
        return 2
    except Exception as exc:  # a bug in ninopt: still one sentence, the traceback only on request
        if os.environ.get("NINOPT_DEBUG"):
            raise
        _error(f"internal error ({type(exc).__name__}: {exc}); set NINOPT_DEBUG=1 for the traceback and please report it.")
        return 3


@contextlib.contextmanager
def _working(args, message: str):
    """A spinner on stderr while long work runs (only on a terminal, never with --quiet or --json)."""
    console = Console(stderr=True)
    if args.quiet or getattr(args, "json", False) or not console.is_terminal:
        yield
        return
    with console.status(message):
        yield


def _console() -> Console:
    """A console as wide as the terminal, or 140 columns when piped, so tables are not squeezed."""
    return Console(width=shutil.get_terminal_size((140, 24)).columns)


def _error(message: str) -> None:
    print(f"ninopt: error: {message}", file=sys.stderr)


def _preprocess_for(spec: str | None, *sources: str | None) -> list[str | None]:
    """The one ``--preprocess`` handed to each data source (``--calibration``, ``--inputs``): every image
    folder gets it; when none is one, the first source given (else the last) gets it, to refuse it."""
    from optimizer.calibration_data import holds_images

    if spec is None:
        return [None] * len(sources)
    images = [source is not None and holds_images(source) for source in sources]
    if any(images):
        return [spec if image else None for image in images]
    target = next((i for i, source in enumerate(sources) if source is not None), len(sources) - 1)
    return [spec if i == target else None for i in range(len(sources))]


def cmd_optimize(args) -> int:
    source, target = Path(args.model), Path(args.output)
    if target.exists() and source.exists() and target.resolve() == source.resolve() and not args.in_place:
        raise NinoptError(f"refusing to overwrite the input {source}; pass --in-place to allow it.")
    passes = api.resolve_passes(args.passes, args.pipeline or ("onnxruntime" if args.target == "onnxruntime"
                                                                and not args.passes else None))
    if args.target == "onnxruntime" and "fuse-conv-activation" not in passes:
        passes.append("fuse-conv-activation")
    calibration = args.calibration if args.bottleneck else None
    calibration_spec, inputs_spec = _preprocess_for(args.preprocess, calibration, args.inputs)
    bottleneck = None
    if args.bottleneck:
        if args.max_error <= 0:
            raise NinoptError("--max-error must be positive.")
        bottleneck = api.BottleneckOptions(args.max_error, calibration, args.relu_bottleneck, calibration_spec,
                                           metric=args.metric, cost=args.cost)
    with _working(args, f"optimizing {source.name}"):
        result = api.optimize(source, passes=passes, verify=not args.no_verify, inputs=args.inputs,
                              preprocess=inputs_spec, shapes=dict(args.shape) or None, tolerance=args.tolerance,
                              verify_each_pass=args.verify_each_pass, bottleneck=bottleneck, oracle=args.oracle)
        external = {"auto": None, "yes": True, "no": False}[args.external_data]
        result.save(target, external_data=external)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    elif not args.quiet:
        _print_optimize(result, target)
    return 0


def _print_optimize(result: api.OptimizeResult, target: Path) -> None:
    console = _console()
    table = Table(title="passes")
    for col in ("pass", "rewrites", "refusals", "seconds"):
        table.add_column(col, justify="left" if col in ("pass", "refusals") else "right")
    idle = 0
    for stats in result.pipeline.passes:
        if not (stats.matches or stats.rewrites or stats.rollbacks):
            idle += 1
            continue
        refusals = "; ".join(f"{n}x {reason}" for reason, n in stats.refusals.most_common(3))
        table.add_row(stats.name, str(stats.rewrites), refusals, f"{stats.seconds:.3f}")
    console.print(table)
    if idle:
        console.print(f"{idle} other pass run(s) found nothing to match")
    for stats in result.pipeline.passes:
        for rollback in stats.rollbacks:
            console.print(f"rolled back {stats.name} on {', '.join(rollback['nodes'])}: {rollback['problem']}")
    b, a = result.before, result.after
    console.print(f"nodes {b.nodes} -> {a.nodes}, MACs {b.macs:,}{_partial(b.unknown_macs_nodes)} -> "
                  f"{a.macs:,}{_partial(a.unknown_macs_nodes)}, params {b.params:,} -> {a.params:,}")
    if result.shapes is not None and result.shapes.chosen_axes:
        console.print(f"input shapes: {_shapes_clause(result.shapes.shapes, result.shapes.chosen_axes)}")
    if result.bottleneck_cost is not None:
        console.print(_bottleneck_cost_line(result))
    if result.verification is not None:
        worst = max(result.verification.outputs, key=lambda o: o.error or 0.0, default=None)
        oracles = result.oracle.used if result.oracle is not None else ["executor"]
        console.print(f"verified by {' and '.join(oracles)} over {len(result.verification.outputs)} output(s): "
                      + (worst.message[0].lower() + worst.message[1:] if worst is not None else "no outputs"))
        for note in result.oracle.notes() if result.oracle is not None else []:
            console.print(f"note: {note}", markup=False)
    else:
        console.print("not verified (--no-verify)")
    console.print(f"wrote {target}")


def _bottleneck_cost_line(result: api.OptimizeResult) -> str:
    """What bottleneck insertion priced by and, for onnxruntime latency, the model's latency it measured."""
    if result.bottleneck_cost == "macs":
        return "bottlenecks priced by MACs"
    timed = next((d for stats in result.pipeline.passes for d in stats.decisions
                  if getattr(d, "seconds_after", None) is not None), None)
    if timed is None:
        return "bottlenecks priced by onnxruntime latency (no layer factored)"
    return (f"bottlenecks priced by onnxruntime latency (one thread): {timed.seconds_before * 1e3:.3g} ms before, "
            f"{timed.seconds_predicted * 1e3:.3g} ms predicted, {timed.seconds_after * 1e3:.3g} ms measured after")


def cmd_analyze(args) -> int:
    if args.bottlenecks:
        return _analyze_bottlenecks(args)
    if args.html:
        raise NinoptError("--html draws the bottleneck analysis: use it with --bottlenecks.")
    report = api.analyze(args.model, input_shapes=dict(args.shape) or None)
    data = report.to_dict()
    if args.csv:
        _write_csv(Path(args.csv), data["nodes"])
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    if args.quiet:
        return 0
    console = _console()
    table = Table(title=f"costs of {args.model}")
    for col in ("node", "op", "output shapes", "MACs", "params"):
        table.add_column(col, justify="right" if col in ("MACs", "params") else "left")
    for row in data["nodes"]:
        table.add_row(row["name"], row["op_type"], " ".join(_fmt_shape(s) for s in row["output_shapes"]),
                      _count(row["macs"]), _count(row["params"]))
    console.print(table)
    if report.input_shapes:
        console.print(f"priced at {_shapes_clause(report.input_shapes, report.chosen_axes)}")
    total = data["total"]
    console.print(f"total: {total['macs']:,} MACs{_partial(total['unknown_macs_nodes'])}, "
                  f"{total['params']:,} params{_partial(total['unknown_params_nodes'])}")
    return 0


def _count(value: int | None) -> str:
    """A cost cell: ``?`` when the cost model does not know it."""
    return "?" if value is None else f"{value:,}"


def _partial(unknown_nodes: int) -> str:
    return f" (partial: {unknown_nodes} node(s) unknown, shown as ?)" if unknown_nodes else ""


def _shapes_clause(shapes: dict, chosen_axes: dict) -> str:
    """``images 1x3x320x320 (axes 0, 2, 3 chosen by default)``, per input."""
    def chosen(axes: list[int]) -> str:
        return f" ({'axis' if len(axes) == 1 else 'axes'} {', '.join(map(str, axes))} chosen by default)" if axes else ""

    return ", ".join(f"{name} {_fmt_shape(shape) or 'scalar'}{chosen(chosen_axes.get(name, []))}"
                     for name, shape in shapes.items())


BOTTLENECK_COLUMNS = ("layer", "op", "shape", "macs", "structure", "rank", "macs_after", "predicted_error", "reason")


def _analyze_bottlenecks(args) -> int:
    if args.html:  # a missing extra or a bad path is found before the analysis, not after it
        from optimizer.charts import require_matplotlib
        from optimizer.model_files import check_destination

        require_matplotlib()
        check_destination(Path(args.html))
    with _working(args, "measuring weight and activation spectra"):
        report = api.analyze_bottlenecks(args.model, calibration=args.calibration, preprocess=args.preprocess,
                                         max_error=args.max_error, metric=args.metric)
    rows = report.rows()
    if args.csv:
        _write_rows(Path(args.csv), BOTTLENECK_COLUMNS, [[row.get(c, "") for c in BOTTLENECK_COLUMNS] for row in rows])
    if args.html:
        with _working(args, f"drawing {args.html}"):
            report.write_html(args.html, title=Path(args.model).name)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2, default=float))
        return 0
    if args.quiet:
        return 0
    evidence = "calibration inputs" if report.evidence == "calibration" else "seeded random inputs (weaker evidence)"
    table = Table(title=f"bottleneck opportunities in {args.model}, activations from {evidence}")
    for col in BOTTLENECK_COLUMNS:
        table.add_column(col, justify="right" if col in ("macs", "rank", "macs_after", "predicted_error") else "left")
    for row in rows:
        table.add_row(*[_cell(row.get(c)) for c in BOTTLENECK_COLUMNS])
    _console().print(table)
    if args.html:
        _console().print(f"wrote {args.html}")
    return 0


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, (list, tuple)):
        return "x".join(str(v) for v in value)
    return str(value)


def _fmt_shape(shape) -> str:
    return "?" if shape is None else "x".join("?" if d is None else str(d) for d in shape)


def _write_csv(path: Path, rows: list[dict]) -> None:
    _write_rows(path, ("name", "op_type", "output_shapes", "macs", "params", "activation_bytes"),
                [[row["name"], row["op_type"], " ".join(_fmt_shape(s) for s in row["output_shapes"]), row["macs"],
                  row["params"], row.get("activation_bytes", "")] for row in rows])


def _write_rows(path: Path, header, rows) -> None:
    from optimizer.model_files import atomic_writer

    with atomic_writer(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def cmd_run(args) -> int:
    from optimizer.calibration_data import resolve_inputs
    from optimizer.executor import Executor
    from optimizer.inputs import prepare_runs
    from optimizer.verification import json_number

    graph = api.load(args.model)
    executor = Executor(graph)  # plans first: every unsupported op is named before anything runs
    inputs = resolve_inputs(args.inputs, graph, args.preprocess)
    runs, _ = prepare_runs(graph, inputs, dict(args.shape) or None, args.seed)
    feeds = runs.first
    if args.profile:
        return _print_profile(args, graph, feeds)
    with _working(args, f"running {Path(args.model).name}"):
        outputs = runs.outputs(executor.run)
    if args.output:
        from optimizer.model_files import atomic_writer

        with atomic_writer(args.output) as f:
            np.savez(f, **outputs)
    summary = [{"name": name, "shape": list(value.shape), "dtype": str(value.dtype),
                "min": json_number(float(value.min())) if value.size else None,
                "max": json_number(float(value.max())) if value.size else None}
               for name, value in outputs.items()]
    if args.json:
        print(json.dumps({"inputs": {k: list(np.shape(v)) for k, v in feeds.items()}, "runs": len(runs.feeds),
                          "outputs": summary, "written": args.output}, indent=2))
        return 0
    if args.quiet:
        return 0
    stacked = f", {len(runs.feeds)} runs stacked on a new first axis" if len(runs.feeds) > 1 else ""
    table = Table(title=f"outputs of {args.model}{stacked}")
    for col in ("output", "shape", "dtype", "min", "max"):
        table.add_column(col)
    for row in summary:
        table.add_row(row["name"], _fmt_shape(row["shape"]), row["dtype"], _cell(row["min"]), _cell(row["max"]))
    _console().print(table)
    if args.output:
        _console().print(f"wrote {args.output}")
    return 0


def _print_profile(args, graph, feeds) -> int:
    from optimizer.profiling import profile

    with _working(args, f"profiling {Path(args.model).name}"):
        result = profile(graph, feeds, args.runs)
    if args.json:
        print(json.dumps({"inputs": {k: list(np.shape(v)) for k, v in feeds.items()}, "profile": result.to_dict()},
                         indent=2))
        return 0
    if args.quiet:
        return 0
    console = _console()
    table = Table(title=f"time per op type ({Path(args.model).name}, median of {result.runs} runs)")
    for col in ("op type", "nodes", "ms", "share", "MACs"):
        table.add_column(col, justify="left" if col == "op type" else "right")
    for row in result.by_op_type():
        table.add_row(row.op_type, str(row.nodes), f"{row.seconds * 1e3:.2f}", f"{row.share:.1%}",
                      _count(row.macs))
    console.print(table)
    table = Table(title="slowest nodes")
    for col in ("node", "op type", "output shape", "MACs", "ms", "GFLOP/s"):
        table.add_column(col, justify="left" if col in ("node", "op type") else "right")
    for n in result.slowest():
        table.add_row(n.name, n.op_type, _fmt_shape(n.output_shapes[0]) if n.output_shapes else "",
                      _count(n.macs), f"{n.seconds * 1e3:.2f}",
                      "-" if n.macs == 0 else "?" if n.gflops is None else f"{n.gflops:.2f}")
    console.print(table)
    console.print(f"nodes {result.node_seconds * 1e3:.2f} ms of {result.total_seconds * 1e3:.2f} ms measured "
                  f"({result.node_seconds / result.total_seconds:.1%}); the rest is the executor's own overhead")
    return 0


def cmd_verify(args) -> int:
    defaults: dict[str, float | None] = {"atol": None, "rtol": None}
    per_output: dict[str, dict[str, float]] = {"atol": {}, "rtol": {}}
    for kind in ("atol", "rtol"):
        for name, value in getattr(args, kind):
            if name is None:
                defaults[kind] = value
            else:
                per_output[kind][name] = value
    with _working(args, "running both models"):
        report = api.verify(args.reference, args.candidate, inputs=args.inputs, preprocess=args.preprocess,
                            shapes=dict(args.shape) or None, seed=args.seed, tolerance=args.tolerance,
                            atol=defaults["atol"],
                            rtol=defaults["rtol"], per_output_atol=per_output["atol"],
                            per_output_rtol=per_output["rtol"])
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    elif not args.quiet:
        table = Table(title=f"{args.candidate} against {args.reference} (oracle: {report.oracle})")
        for col in ("output", "verdict", "noise floor", "error", "ratio", "allowed", "max |d|", "max rel d", "cosine",
                    "argmax agree", "min atol", "min rtol", "inf/NaN"):
            table.add_column(col)
        for o in report.outputs:
            allowed = f"{o.allowed:.3g}" if o.allowed is not None else f"atol {o.atol:g} rtol {o.rtol:g}"
            table.add_row(o.name, "pass" if o.passed else "FAIL", *(_short(x) for x in (o.noise_floor, o.error, o.ratio)),
                          allowed, f"{o.max_abs:.3g}", f"{o.max_rel:.3g}",
                          f"{o.cosine:.6f}", "" if o.argmax_agreement is None else f"{o.argmax_agreement:.3f}",
                          f"{o.min_atol:.3g}", f"{o.min_rtol:.3g}",
                          f"{o.nonfinite}, {o.nonfinite_mismatches} differ" if o.nonfinite_mismatches else str(o.nonfinite))
        console = _console()
        console.print(table)
        if report.criterion is not None:
            c = report.criterion
            console.print(f"criterion: error against the reference run in float64 <= max({c.tolerance:g}, "
                          f"{c.factor:g} x noise floor); noise floor: the reference's own error", markup=False)
    if not report.passed:
        _error(report.failures()[0].message)
        return 1
    return 0


def _short(value: float | None) -> str:
    """3 significant digits; blank when not measured."""
    return "" if value is None else f"{value:.3g}"


def cmd_zoo(args) -> int:
    from optimizer import zoo_runner as zoo

    if args.html:
        from optimizer.report_html import require_matplotlib, write_html

        require_matplotlib()  # before the run, not after it
    if args.baseline:
        zoo.load_baseline(args.baseline)  # a bad baseline is bad input: exit 2 before any work
    report = zoo.run_zoo(args.models, builtin=args.builtin, jobs=args.jobs, passes=args.passes, pipeline=args.pipeline,
                         bottleneck_max_error=args.max_error if args.bottleneck else None, tolerance=args.tolerance,
                         progress=not args.quiet, dask_address=args.dask,
                         bottleneck_metric=args.metric)
    comparison = zoo.compare_baseline(report, args.baseline) if args.baseline else None
    if args.save:
        report.to_json(args.save)
    if args.csv:
        report.to_csv(args.csv)
    if args.html:
        write_html(report, args.html)
    if args.json:
        data = report.to_dict()
        if comparison is not None:
            data["baseline"] = {"regressions": comparison.regressions, "notes": comparison.notes}
        print(json.dumps(data, indent=2))
    elif not args.quiet:
        console = _console()
        zoo.render_table(report, console)
        for line in comparison.notes if comparison else []:
            console.print(f"note: {line}", markup=False)
        for line in comparison.regressions if comparison else []:
            console.print(f"regression: {line}", markup=False, style="red")
    return 1 if report.exit_code or (comparison is not None and comparison.regressions) else 0


def cmd_passes(args) -> int:
    from optimizer.registry import all_passes, pipelines

    infos, table_of = all_passes(), pipelines()
    if args.json:
        print(json.dumps({"passes": [{"name": p.name, "exact": p.exact, "default": p.default, "doc": p.doc,
                                      "pipelines": list(p.pipelines)} for p in infos],
                          "pipelines": {name: list(names) for name, names in table_of.items()}}, indent=2))
        return 0
    table = Table(title="passes (default ones first, in the order they run)")
    for col in ("name", "exact", "pipelines", "what it does"):
        table.add_column(col)
    for p in infos:
        table.add_row(p.name, "yes" if p.exact else "no", ", ".join(p.pipelines) or "(by name only)", p.doc)
    console = _console()
    console.print(table)
    for name, names in table_of.items():
        console.print(f"[bold]{name}[/bold]: {' -> '.join(names)}")
    return 0


def cmd_ops(args) -> int:
    from optimizer.executor import conformance

    with _working(args, "running onnx's node test cases on the executor"):
        coverage = conformance.coverage()
    if args.json:
        print(json.dumps(coverage.to_dict(), indent=2))
    elif not args.quiet:
        conformance.render(coverage, _console())
    return 0


COMMANDS = {"optimize": cmd_optimize, "analyze": cmd_analyze, "run": cmd_run, "verify": cmd_verify, "zoo": cmd_zoo,
            "passes": cmd_passes, "ops": cmd_ops}

if __name__ == "__main__":
    sys.exit(main())
