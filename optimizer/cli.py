"""The `ninopt` command. Errors a user can cause print one sentence and exit non-zero, never a traceback."""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from importlib import metadata
from pathlib import Path

from rich.console import Console
from rich.table import Table

from optimizer import api
from optimizer.errors import NinoptError

EXAMPLES = {
    "optimize": "example: ninopt optimize fixtures/inception_module.onnx -o out.onnx --json",
    "analyze": "example: ninopt analyze fixtures/inception_module.onnx --csv costs.csv",
    "passes": "example: ninopt passes --json",
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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ninopt",
        description="Optimize ONNX convolutional networks around 1x1 convolutions; every rewrite is verified.",
        epilog="example: ninopt optimize model.onnx -o model.opt.onnx",
    )
    parser.add_argument("--version", action="version", version=f"ninopt {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = sub.add_parser("optimize", help="rewrite a model and verify the result", epilog=EXAMPLES["optimize"])
    p.add_argument("model", help="input .onnx file (never modified)")
    p.add_argument("-o", "--output", required=True, help="where to write the optimized model")
    p.add_argument("--passes", help="comma-separated pass names instead of the default pipeline")
    p.add_argument("--no-verify", action="store_true", help="skip verification against the input")
    p.add_argument("--inputs", help="a .npz of inputs to verify with (default: seeded random inputs)")
    p.add_argument("--shape", action="append", type=_shape_arg, default=[], metavar="NAME:1x3x224x224",
                   help="pin the dims of an input (repeatable)")
    p.add_argument("--tolerance", type=float, default=api.EXACT_TOLERANCE,
                   help="largest relative error (max|d|/max|y|) allowed per output (default %(default)g)")
    p.add_argument("--external-data", choices=("auto", "yes", "no"), default="auto",
                   help="write weights to OUTPUT.data (auto: when the input had external data or is over 2 GiB)")
    p.add_argument("--in-place", action="store_true", help="allow OUTPUT to be the input file")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_optimize)

    p = sub.add_parser("analyze", help="per-node shapes, MACs and parameters", epilog=EXAMPLES["analyze"])
    p.add_argument("model")
    p.add_argument("--shape", action="append", type=_shape_arg, default=[], metavar="NAME:1x3x224x224")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.add_argument("--csv", metavar="FILE", help="also write the table as CSV")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("passes", help="list the available passes", epilog=EXAMPLES["passes"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_passes)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
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


def _error(message: str) -> None:
    print(f"ninopt: error: {message}", file=sys.stderr)


def _load_inputs(path: str | None):
    if path is None:
        return None
    import numpy as np

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
    result = api.optimize(source, passes=args.passes, verify=not args.no_verify, inputs=_load_inputs(args.inputs),
                          shapes=dict(args.shape) or None, tolerance=args.tolerance)
    external = {"auto": None, "yes": True, "no": False}[args.external_data]
    result.save(target, external_data=external)
    if args.json:
        print(json.dumps(result.to_dict(), indent=2))
    else:
        _print_optimize(result, target)
    return 0


def _print_optimize(result: api.OptimizeResult, target: Path) -> None:
    console = Console()
    table = Table(title="passes")
    for col in ("pass", "rewrites", "refusals", "seconds"):
        table.add_column(col, justify="left" if col in ("pass", "refusals") else "right")
    for stats in result.pipeline.passes:
        refusals = "; ".join(f"{n}x {reason}" for reason, n in stats.refusals.most_common(3))
        table.add_row(stats.name, str(stats.rewrites), refusals, f"{stats.seconds:.3f}")
    console.print(table)
    b, a = result.before, result.after
    console.print(f"nodes {b.nodes} -> {a.nodes}, MACs {b.macs:,} -> {a.macs:,}, params {b.params:,} -> {a.params:,}")
    if result.verification is not None:
        worst = max((o.max_relative for o in result.verification.outputs), default=0.0)
        console.print(f"verified: largest relative error {worst:.3g} over {len(result.verification.outputs)} output(s)")
    else:
        console.print("not verified (--no-verify)")
    console.print(f"wrote {target}")


def cmd_analyze(args) -> int:
    report = api.analyze(args.model, input_shapes=dict(args.shape) or None)
    data = report.to_dict()
    if args.csv:
        _write_csv(Path(args.csv), data["nodes"])
    if args.json:
        print(json.dumps(data, indent=2))
        return 0
    console = Console()
    table = Table(title=f"costs of {args.model}")
    for col in ("node", "op", "output shapes", "MACs", "params"):
        table.add_column(col, justify="right" if col in ("MACs", "params") else "left")
    for row in data["nodes"]:
        table.add_row(row["name"], row["op_type"], " ".join(_fmt_shape(s) for s in row["output_shapes"]),
                      f"{row['macs']:,}", f"{row['params']:,}")
    console.print(table)
    console.print(f"total: {data['total']['macs']:,} MACs, {data['total']['params']:,} params")
    return 0


def _fmt_shape(shape) -> str:
    return "?" if shape is None else "x".join(str(d) for d in shape)


def _write_csv(path: Path, rows: list[dict]) -> None:
    from optimizer.onnx_io import atomic_writer

    with atomic_writer(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["name", "op_type", "output_shapes", "macs", "params", "activation_bytes"])
        for row in rows:
            writer.writerow([row["name"], row["op_type"], " ".join(_fmt_shape(s) for s in row["output_shapes"]),
                             row["macs"], row["params"], row.get("activation_bytes", "")])


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
    Console().print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
