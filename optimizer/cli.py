"""The `ninopt` command. Errors a user can cause print one sentence and exit non-zero, never a traceback."""

from __future__ import annotations

import argparse
import contextlib
import csv
import json
import os
import shutil
import sys
from importlib import metadata
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table

from optimizer import api
from optimizer.errors import NinoptError

EXAMPLES = {
    "optimize": "example: ninopt optimize fixtures/inception_module.onnx -o out.onnx --json",
    "analyze": "example: ninopt analyze fixtures/inception_module.onnx --csv costs.csv",
    "passes": "example: ninopt passes --json",
    "ops": "example: ninopt ops --json",
    "run": "example: ninopt run fixtures/inception_module.onnx --inputs fixtures/inception_module_inputs.npz -o y.npz",
    "zoo": "example: ninopt zoo --builtin light --jobs 2 --html zoo.html --save zoo.json",
    "verify": "example: ninopt verify fixtures/inception_module.onnx out.onnx --atol 1e-5 --atol prob:1e-3",
}


def _version() -> str:
    try:
        return metadata.version("ninopt")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def _shape_arg(text: str) -> tuple[str, tuple[int, ...]]:
    name, sep, dims = text.rpartition(":")
    try:
        shape = tuple(int(d) for d in dims.lower().split("x"))
    except ValueError:
        shape = ()
    if not sep or not name or not shape or any(d <= 0 for d in shape):
        raise argparse.ArgumentTypeError(f"expected NAME:DIMxDIM..., e.g. data:1x3x224x224, got {text!r}")
    return name, shape


def _size_arg(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
    number, unit = text.strip().upper().rstrip("B"), ""
    if number and number[-1] in units:
        number, unit = number[:-1], number[-1]
    try:
        value = int(float(number) * units[unit])
    except ValueError:
        value = 0
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive size such as 2G, 512M or 1048576, got {text!r}")
    return value


def _tolerance_arg(text: str) -> tuple[str | None, float]:
    name, sep, value = text.rpartition(":")
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected VALUE or OUTPUT:VALUE, e.g. 1e-5 or logits:1e-3, got {text!r}")
    if number < 0:
        raise argparse.ArgumentTypeError(f"a tolerance cannot be negative, got {text!r}")
    return (name if sep else None), number


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ninopt",
        description="Optimize ONNX convolutional networks around 1x1 convolutions; every rewrite is verified.",
        epilog="example: ninopt optimize fixtures/repvgg_stage.onnx -o out.onnx (see `ninopt COMMAND --help`)",
    )
    parser.add_argument("--version", action="version", version=f"ninopt {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true",
                        help="print nothing but errors (and --json output); no progress display")
    common.add_argument("--max-tensor-bytes", type=_size_arg, metavar="SIZE",
                        help="refuse, before allocating, any tensor larger than SIZE (e.g. 2G, 512M; "
                             "default: half the machine's memory)")

    p = sub.add_parser("optimize", parents=[common], help="rewrite a model and verify the result", epilog=EXAMPLES["optimize"])
    p.add_argument("model", help="input .onnx file (never modified)")
    p.add_argument("-o", "--output", required=True, help="where to write the optimized model")
    p.add_argument("--passes", help="comma-separated pass names instead of the default pipeline")
    p.add_argument("--no-verify", action="store_true", help="skip verification against the input")
    p.add_argument("--inputs", help="a .npz of inputs to verify with (default: seeded random inputs)")
    p.add_argument("--shape", action="append", type=_shape_arg, default=[], metavar="NAME:1x3x224x224",
                   help="pin the dims of an input (repeatable)")
    p.add_argument("--target", choices=("generic", "onnxruntime"), default="generic",
                   help="onnxruntime: also fuse Conv + activation into com.microsoft FusedConv")
    p.add_argument("--bottleneck", action="store_true",
                   help="also insert 1x1 channel bottlenecks (approximate, within --max-error)")
    p.add_argument("--max-error", type=float, default=1e-2,
                   help="with --bottleneck: largest relative error at any output (default %(default)g)")
    p.add_argument("--calibration", help="with --bottleneck: a .npz of calibration inputs (samples on axis 0)")
    p.add_argument("--relu-bottleneck", action="store_true",
                   help="with --bottleneck: put a ReLU after every inserted 1x1 even where not exact")
    p.add_argument("--verify-each-pass", action="store_true",
                   help="check every rewrite; roll back (and report) any that breaks the numbers")
    p.add_argument("--tolerance", type=float, default=api.EXACT_TOLERANCE,
                   help="relative error against the float64 truth (max|d|/max|y|) always allowed per output; "
                        "more is allowed up to 16x the original's own rounding error (default %(default)g)")
    p.add_argument("--oracle", choices=("executor", "onnxruntime", "both"),
                   help="who runs the models for verification (default: both when onnxruntime is installed, "
                        "else executor)")
    p.add_argument("--external-data", choices=("auto", "yes", "no"), default="auto",
                   help="write weights to OUTPUT.data (auto: when the input had external data or is over 2 GiB)")
    p.add_argument("--in-place", action="store_true", help="allow OUTPUT to be the input file")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_optimize)

    p = sub.add_parser("analyze", parents=[common], help="per-node shapes, MACs and parameters", epilog=EXAMPLES["analyze"])
    p.add_argument("model")
    p.add_argument("--shape", action="append", type=_shape_arg, default=[], metavar="NAME:1x3x224x224")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.add_argument("--csv", metavar="FILE", help="also write the table as CSV")
    p.add_argument("--bottlenecks", action="store_true",
                   help="rank channel-bottleneck opportunities (weight and activation spectra, break-even ranks)")
    p.add_argument("--calibration", help="with --bottlenecks: a .npz of calibration inputs (else seeded random)")
    p.add_argument("--max-error", type=float, default=1e-2,
                   help="with --bottlenecks: the error target that picks each proposed rank (default %(default)g)")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("run", parents=[common], help="run a model on the reference executor", epilog=EXAMPLES["run"])
    p.add_argument("model")
    p.add_argument("--inputs", help="a .npz of inputs keyed by input name (default: seeded random inputs)")
    p.add_argument("--shape", action="append", type=_shape_arg, default=[], metavar="NAME:1x3x224x224")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default %(default)s)")
    p.add_argument("-o", "--output", help="write the outputs to this .npz, keyed by output name")
    p.add_argument("--json", action="store_true", help="print a summary of each output as JSON")
    p.add_argument("--profile", action="store_true",
                   help="time every node: seconds per op type and the 10 slowest nodes with shapes, MACs, GFLOP/s")
    p.add_argument("--runs", type=int, default=3, help="with --profile: timed runs after a warm-up (default %(default)s)")
    p.set_defaults(func=cmd_run)

    p = sub.add_parser("verify", parents=[common], help="compare two models on the same inputs", epilog=EXAMPLES["verify"])
    p.add_argument("reference", help="the reference model (usually the original)")
    p.add_argument("candidate", help="the model to check against it")
    p.add_argument("--inputs", help="a .npz of inputs (default: seeded random inputs that respect dtypes)")
    p.add_argument("--shape", action="append", type=_shape_arg, default=[], metavar="NAME:1x3x224x224")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tolerance", type=float, default=api.EXACT_TOLERANCE,
                   help="relative error against REFERENCE in float64 always allowed per output; more is allowed "
                        "up to 16x REFERENCE's own rounding error (default %(default)g)")
    p.add_argument("--atol", action="append", type=_tolerance_arg, default=[], metavar="[OUTPUT:]VALUE",
                   help="judge by |d| <= atol + rtol*|reference| instead, for all outputs or one (repeatable; "
                        "the one of atol/rtol not given is 0)")
    p.add_argument("--rtol", action="append", type=_tolerance_arg, default=[], metavar="[OUTPUT:]VALUE",
                   help="relative tolerance of that rule, for all outputs or one (repeatable)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("zoo", parents=[common], help="optimize and verify many models; a regression report", epilog=EXAMPLES["zoo"])
    p.add_argument("models", nargs="*", help=".onnx files or folders (searched recursively)")
    p.add_argument("--builtin", choices=("light",), help="add the onnx package's light model zoo")
    p.add_argument("-j", "--jobs", type=int, default=1, help="worker processes (default %(default)s)")
    p.add_argument("--passes", help="comma-separated pass names instead of the default pipeline")
    p.add_argument("--bottleneck", action="store_true", help="also insert bottlenecks within --max-error")
    p.add_argument("--max-error", type=float, default=1e-2, help="with --bottleneck (default %(default)g)")
    p.add_argument("--tolerance", type=float, default=api.EXACT_TOLERANCE,
                   help="relative error against the float64 truth always allowed per output, as for optimize "
                        "(default %(default)g)")
    p.add_argument("--baseline", metavar="FILE", help="an earlier run's JSON report: exit 1 on any regression")
    p.add_argument("--save", metavar="FILE", help="write the JSON report to FILE (a later --baseline)")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("--csv", metavar="FILE", help="write the summary table as CSV")
    p.add_argument("--html", metavar="FILE", help="a self-contained HTML page with per-layer MAC charts")
    p.add_argument("--dask", metavar="ADDRESS", help="run the jobs on the Dask scheduler at ADDRESS")
    p.set_defaults(func=cmd_zoo)

    p = sub.add_parser("passes", help="list the available passes", epilog=EXAMPLES["passes"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_passes)

    p = sub.add_parser("ops", parents=[common], help="the executor's ops and its score on onnx's node test cases",
                       epilog=EXAMPLES["ops"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_ops)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if getattr(args, "max_tensor_bytes", None):
            from optimizer.executor import set_max_tensor_bytes

            set_max_tensor_bytes(args.max_tensor_bytes)
        return args.func(args) or 0
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


def _load_inputs(path: str | None):
    if path is None:
        return None
    if not Path(path).is_file():
        raise NinoptError(f"inputs file {path} does not exist.")
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (ValueError, OSError, EOFError) as exc:
        raise NinoptError(f"{path} is not a readable .npz file ({exc}).") from None


def cmd_optimize(args) -> int:
    source, target = Path(args.model), Path(args.output)
    if target.exists() and source.exists() and target.resolve() == source.resolve() and not args.in_place:
        raise NinoptError(f"refusing to overwrite the input {source}; pass --in-place to allow it.")
    passes = api.resolve_passes(args.passes)
    if args.target == "onnxruntime":
        passes.append("fuse-conv-activation")
    bottleneck = None
    if args.bottleneck:
        if args.max_error <= 0:
            raise NinoptError("--max-error must be positive.")
        bottleneck = api.BottleneckOptions(args.max_error, _load_inputs(args.calibration), args.relu_bottleneck)
    with _working(args, f"optimizing {source.name}"):
        result = api.optimize(source, passes=passes, verify=not args.no_verify, inputs=_load_inputs(args.inputs),
                              shapes=dict(args.shape) or None, tolerance=args.tolerance,
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


def cmd_analyze(args) -> int:
    if args.bottlenecks:
        return _analyze_bottlenecks(args)
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
    with _working(args, "measuring weight and activation spectra"):
        report = api.analyze_bottlenecks(args.model, calibration=_load_inputs(args.calibration),
                                         max_error=args.max_error)
    rows = report.rows()
    if args.csv:
        _write_rows(Path(args.csv), BOTTLENECK_COLUMNS, [[row.get(c, "") for c in BOTTLENECK_COLUMNS] for row in rows])
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
    from optimizer.onnx_io import atomic_writer

    with atomic_writer(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def cmd_run(args) -> int:
    from optimizer.executor import Executor
    from optimizer.verification import json_number, prepare_feeds

    graph = api.load(args.model)
    executor = Executor(graph)  # plans first: every unsupported op is named before anything runs
    feeds, _ = prepare_feeds(graph, _load_inputs(args.inputs), dict(args.shape) or None, args.seed)
    if args.profile:
        return _print_profile(args, graph, feeds)
    with _working(args, f"running {Path(args.model).name}"):
        outputs = executor.run(feeds)
    if args.output:
        from optimizer.onnx_io import atomic_writer

        with atomic_writer(args.output) as f:
            np.savez(f, **outputs)
    summary = [{"name": name, "shape": list(value.shape), "dtype": str(value.dtype),
                "min": json_number(float(value.min())) if value.size else None,
                "max": json_number(float(value.max())) if value.size else None}
               for name, value in outputs.items()]
    if args.json:
        print(json.dumps({"inputs": {k: list(np.shape(v)) for k, v in feeds.items()}, "outputs": summary,
                          "written": args.output}, indent=2))
        return 0
    if args.quiet:
        return 0
    table = Table(title=f"outputs of {args.model}")
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
        report = api.verify(args.reference, args.candidate, inputs=_load_inputs(args.inputs),
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
    report = zoo.run_zoo(args.models, builtin=args.builtin, jobs=args.jobs, passes=args.passes,
                         bottleneck_max_error=args.max_error if args.bottleneck else None, tolerance=args.tolerance,
                         progress=not args.quiet, dask_address=args.dask)
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
    from optimizer.registry import all_passes

    infos = all_passes()
    if args.json:
        print(json.dumps([{"name": p.name, "exact": p.exact, "default": p.default, "doc": p.doc} for p in infos],
                         indent=2))
        return 0
    table = Table(title="passes (default ones run in this order)")
    for col in ("name", "exact", "default", "what it does"):
        table.add_column(col)
    for p in infos:
        table.add_row(p.name, "yes" if p.exact else "no", "yes" if p.default else "no", p.doc)
    _console().print(table)
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


if __name__ == "__main__":
    sys.exit(main())
