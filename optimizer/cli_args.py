"""The `ninopt` command line's grammar: subcommands, options, argument types and examples.

Kept apart from ``optimizer.cli``, which carries the commands out and renders their results,
so each reads on its own: this module says what can be asked, that one what is done.
"""

from __future__ import annotations

import argparse
from importlib import metadata

from optimizer.bottleneck.latency import COSTS as BOTTLENECK_COSTS
from optimizer.bottleneck.metrics import METRICS as BOTTLENECK_METRICS
from optimizer.verification import EXACT_TOLERANCE

EXAMPLES = {
    "optimize": "example: ninopt optimize fixtures/inception_module.onnx -o out.onnx --json",
    "analyze": "example: ninopt analyze fixtures/inception_module.onnx --csv costs.csv",
    "passes": "example: ninopt passes --json",
    "ops": "example: ninopt ops --json",
    "run": "example: ninopt run fixtures/inception_module.onnx --inputs fixtures/inception_module_inputs.npz -o y.npz",
    "zoo": "example: ninopt zoo --builtin light --jobs 2 --html zoo.html --save zoo.json",
    "verify": "example: ninopt verify fixtures/inception_module.onnx out.onnx --atol 1e-5 --atol prob:1e-3",
}
PREPROCESS_HELP = ("with --calibration or --inputs FOLDER of images (each one that is): how a pixel becomes an input "
                   "value, e.g. 'size=640x640,scale=1/255,mean=0.485,0.456,0.406,std=0.229,0.224,0.225,layout=NCHW,"
                   "channels=RGB' (every key optional; defaults from the model's input)")
INPUTS_HELP = ("the inputs to {use}: a .npz keyed by input name, or a folder of .npy/.npz files or of images "
               "(png, jpg, bmp, tif; see --preprocess) (default: seeded random inputs)")

METRIC_HELP = ("with --bottleneck: what --max-error is read in at the model outputs, against the original: max-rel "
               "(max|d|/max|y|), rms (||d||/||y||), cosine (1 - cos over the flattened samples) or top1 (fraction "
               "of arg-max disagreements over the last axis, for classifiers) (default %(default)s)")


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
    common.add_argument("--blas-threads", type=int, metavar="N",
                        help="threads BLAS may use while the executor runs (default 1: steady on a busy "
                             "machine, and the same sums on every machine)")

    p = sub.add_parser("optimize", parents=[common], help="rewrite a model and verify the result", epilog=EXAMPLES["optimize"])
    p.add_argument("model", help="input .onnx file (never modified)")
    p.add_argument("-o", "--output", required=True, help="where to write the optimized model")
    choice = p.add_mutually_exclusive_group()
    choice.add_argument("--passes", help="comma-separated pass names instead of the default pipeline")
    choice.add_argument("--pipeline", metavar="NAME", help="a named pipeline (default: default; `ninopt passes` lists them)")
    p.add_argument("--no-verify", action="store_true", help="skip verification against the input")
    p.add_argument("--inputs", metavar="PATH", help=INPUTS_HELP.format(use="verify with"))
    p.add_argument("--shape", action="append", type=_shape_arg, default=[], metavar="NAME:1x3x224x224",
                   help="pin the dims of an input (repeatable)")
    p.add_argument("--target", choices=("generic", "onnxruntime"), default="generic",
                   help="onnxruntime: also fuse Conv + activation into com.microsoft FusedConv")
    p.add_argument("--bottleneck", action="store_true",
                   help="also insert 1x1 channel bottlenecks (approximate, within --max-error)")
    p.add_argument("--max-error", type=float, default=1e-2,
                   help="with --bottleneck: largest error at any output, in --metric (default %(default)g)")
    p.add_argument("--metric", choices=BOTTLENECK_METRICS, default="max-rel", help=METRIC_HELP)
    p.add_argument("--calibration", metavar="PATH",
                   help="with --bottleneck: calibration inputs: a .npz (samples on axis 0), or a folder of "
                        ".npy/.npz files or of images (png, jpg, bmp, tif)")
    p.add_argument("--preprocess", metavar="SPEC", help=PREPROCESS_HELP)
    p.add_argument("--relu-bottleneck", action="store_true",
                   help="with --bottleneck: put a ReLU after every inserted 1x1 even where not exact")
    p.add_argument("--cost", choices=BOTTLENECK_COSTS,
                   help="with --bottleneck: keep a factorization where it saves onnxruntime latency, timed layer by "
                        "layer, or MACs (default: onnxruntime when installed, else macs; macs gives decisions that "
                        "do not depend on the machine's load)")
    p.add_argument("--verify-each-pass", action="store_true",
                   help="check every rewrite; roll back (and report) any that breaks the numbers")
    p.add_argument("--tolerance", type=float, default=EXACT_TOLERANCE,
                   help="relative error against the float64 truth (max|d|/max|y|) always allowed per output; "
                        "more is allowed up to 16x the original's own rounding error (default %(default)g)")
    p.add_argument("--oracle", choices=("executor", "onnxruntime", "both"),
                   help="who runs the models for verification (default: both when onnxruntime is installed, "
                        "else executor)")
    p.add_argument("--external-data", choices=("auto", "yes", "no"), default="auto",
                   help="write weights to OUTPUT.data (auto: when the input had external data or is over 2 GiB)")
    p.add_argument("--in-place", action="store_true", help="allow OUTPUT to be the input file")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(command="optimize")

    p = sub.add_parser("analyze", parents=[common], help="per-node shapes, MACs and parameters", epilog=EXAMPLES["analyze"])
    p.add_argument("model")
    p.add_argument("--shape", action="append", type=_shape_arg, default=[], metavar="NAME:1x3x224x224")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.add_argument("--csv", metavar="FILE", help="also write the table as CSV")
    p.add_argument("--bottlenecks", action="store_true",
                   help="rank channel-bottleneck opportunities (weight and activation spectra, break-even ranks)")
    p.add_argument("--calibration", metavar="PATH",
                   help="with --bottlenecks: calibration inputs (else seeded random): a .npz (samples on axis 0), "
                        "or a folder of .npy/.npz files or of images (png, jpg, bmp, tif)")
    p.add_argument("--preprocess", metavar="SPEC", help=PREPROCESS_HELP)
    p.add_argument("--max-error", type=float, default=1e-2,
                   help="with --bottlenecks: the error target that picks each proposed rank (default %(default)g)")
    p.add_argument("--metric", choices=BOTTLENECK_METRICS[:3], default="max-rel",
                   help="with --bottlenecks: what --max-error is read in (max-rel, rms or cosine; a rank's "
                        "predicted error is a relative RMS error, so top1 cannot be predicted) (default %(default)s)")
    p.add_argument("--html", metavar="FILE",
                   help="with --bottlenecks: a self-contained HTML page of each layer's spectra, its break-even and "
                        "chosen ranks, and MACs before/after (needs matplotlib)")
    p.set_defaults(command="analyze")

    p = sub.add_parser("run", parents=[common], help="run a model on the reference executor", epilog=EXAMPLES["run"])
    p.add_argument("model")
    p.add_argument("--inputs", metavar="PATH", help=INPUTS_HELP.format(use="run on"))
    p.add_argument("--preprocess", metavar="SPEC", help=PREPROCESS_HELP)
    p.add_argument("--shape", action="append", type=_shape_arg, default=[], metavar="NAME:1x3x224x224")
    p.add_argument("--seed", type=int, default=0, help="seed of the random inputs (default %(default)s)")
    p.add_argument("-o", "--output", help="write the outputs to this .npz, keyed by output name")
    p.add_argument("--json", action="store_true", help="print a summary of each output as JSON")
    p.add_argument("--profile", action="store_true",
                   help="time every node: seconds per op type and the 10 slowest nodes with shapes, MACs, GFLOP/s")
    p.add_argument("--runs", type=int, default=3, help="with --profile: timed runs after a warm-up (default %(default)s)")
    p.set_defaults(command="run")

    p = sub.add_parser("verify", parents=[common], help="compare two models on the same inputs", epilog=EXAMPLES["verify"])
    p.add_argument("reference", help="the reference model (usually the original)")
    p.add_argument("candidate", help="the model to check against it")
    p.add_argument("--inputs", metavar="PATH", help=INPUTS_HELP.format(use="compare on"))
    p.add_argument("--preprocess", metavar="SPEC", help=PREPROCESS_HELP)
    p.add_argument("--shape", action="append", type=_shape_arg, default=[], metavar="NAME:1x3x224x224")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tolerance", type=float, default=EXACT_TOLERANCE,
                   help="relative error against REFERENCE in float64 always allowed per output; more is allowed "
                        "up to 16x REFERENCE's own rounding error (default %(default)g)")
    p.add_argument("--atol", action="append", type=_tolerance_arg, default=[], metavar="[OUTPUT:]VALUE",
                   help="judge by |d| <= atol + rtol*|reference| instead, for all outputs or one (repeatable; "
                        "the one of atol/rtol not given is 0)")
    p.add_argument("--rtol", action="append", type=_tolerance_arg, default=[], metavar="[OUTPUT:]VALUE",
                   help="relative tolerance of that rule, for all outputs or one (repeatable)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(command="verify")

    p = sub.add_parser("zoo", parents=[common], help="optimize and verify many models; a regression report", epilog=EXAMPLES["zoo"])
    p.add_argument("models", nargs="*", help=".onnx files or folders (searched recursively)")
    p.add_argument("--builtin", choices=("light",), help="add the onnx package's light model zoo")
    p.add_argument("-j", "--jobs", type=int, default=1, help="worker processes (default %(default)s)")
    choice = p.add_mutually_exclusive_group()
    choice.add_argument("--passes", help="comma-separated pass names instead of the default pipeline")
    choice.add_argument("--pipeline", metavar="NAME", help="a named pipeline (`ninopt passes` lists them)")
    p.add_argument("--bottleneck", action="store_true", help="also insert bottlenecks within --max-error")
    p.add_argument("--max-error", type=float, default=1e-2, help="with --bottleneck, in --metric (default %(default)g)")
    p.add_argument("--metric", choices=BOTTLENECK_METRICS, default="max-rel", help=METRIC_HELP)
    p.add_argument("--tolerance", type=float, default=EXACT_TOLERANCE,
                   help="relative error against the float64 truth always allowed per output, as for optimize "
                        "(default %(default)g)")
    p.add_argument("--baseline", metavar="FILE", help="an earlier run's JSON report: exit 1 on any regression")
    p.add_argument("--save", metavar="FILE", help="write the JSON report to FILE (a later --baseline)")
    p.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    p.add_argument("--csv", metavar="FILE", help="write the summary table as CSV")
    p.add_argument("--html", metavar="FILE", help="a self-contained HTML page with per-layer MAC charts")
    p.add_argument("--dask", metavar="ADDRESS", help="run the jobs on the Dask scheduler at ADDRESS")
    p.set_defaults(command="zoo")

    p = sub.add_parser("passes", help="list the available passes", epilog=EXAMPLES["passes"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(command="passes")

    p = sub.add_parser("ops", parents=[common], help="the executor's ops and its score on onnx's node test cases",
                       epilog=EXAMPLES["ops"])
    p.add_argument("--json", action="store_true")
    p.set_defaults(command="ops")
    return parser
