"""The executor against onnx's own test cases: per-case verdicts and the coverage figures `ninopt ops` prints.

Two sources, both shipped with the installed onnx package: the node test cases onnx builds
in memory (``collect_testcases()``: one small model per op variant, with inputs and expected
outputs, compared at the suite's rtol/atol as onnx's backend runner compares them), and the
``pytorch-converted`` / ``pytorch-operator`` folders of single-op models on disk.

A case is *eligible* when the executor plans it, i.e. every node (subgraph bodies included)
has a kernel for its opset and variant; the others are counted with the ops they lack, so a
new kernel makes its cases eligible without any edit here.
"""

from __future__ import annotations

import functools
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from optimizer import onnx_io
from optimizer.executor.core import Executor
from optimizer.executor.errors import UnsupportedOpError
from optimizer.executor.registry import lookup, registered_ops

ONNX_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
FOLDER_SUITES = ("pytorch-converted", "pytorch-operator")
#: The folder suites are checked tighter than onnx's runner (rtol 1e-3, atol 1e-7): they are float32 CNN layers.
FOLDER_RTOL, FOLDER_ATOL = 1e-5, 1e-6

_SEQUENCES = "sequence and optional values: the executor runs tensors only (Identity is its only op here)"
_TRAINING_DROPOUT = ("training-mode Dropout draws a random mask; the expected one comes from numpy's global seed, "
                     "which no runtime reproduces")
_FRACTIONAL_ALIGN_CORNERS = ("onnx computes the expected values with the fractional output length (scale x input "
                             "length, onnx#2462); the spec's formula and onnxruntime use the integer output length, "
                             "and ninopt follows onnxruntime")
#: Eligible cases not compared, with the reason. Keep it short: every entry hides a difference.
EXCLUDED: dict[str, str] = {
    "test_resize_downsample_scales_linear_align_corners": _FRACTIONAL_ALIGN_CORNERS,
    "test_resize_downsample_scales_cubic_align_corners": _FRACTIONAL_ALIGN_CORNERS,
    "test_attention_4d_causal_fp16_expanded": (
        "2 of 192 float16 outputs are one ulp (4.9e-4) off, below the suite's rtol 1e-3 near 0.5: float16 MatMul "
        "sums in float32 and rounds once, and BLAS sums in another order than onnxruntime (which also differs "
        "from the expected values, on other elements)"),
    "test_identity_sequence": _SEQUENCES,
    "test_identity_opt": _SEQUENCES,
    "test_training_dropout": _TRAINING_DROPOUT,
    "test_training_dropout_default": _TRAINING_DROPOUT,
    "test_training_dropout_default_mask": _TRAINING_DROPOUT,
    "test_training_dropout_mask": _TRAINING_DROPOUT,
}

PASSED, FAILED, EXCLUDED_STATUS, UNSUPPORTED = "passed", "failed", "excluded", "unsupported"


@dataclass(frozen=True)
class Case:
    """One model with its data sets: [(inputs, expected outputs)], positional as the graph lists them."""

    name: str
    suite: str
    model: Any  # onnx.ModelProto (node cases) or the path of model.onnx (folder cases)
    data_sets: list
    rtol: float
    atol: float


@dataclass(frozen=True)
class CaseResult:
    name: str
    suite: str
    status: str  # PASSED, FAILED, EXCLUDED_STATUS or UNSUPPORTED
    detail: str = ""  # the mismatch, the exclusion reason, or the unsupported ops
    missing_ops: tuple[str, ...] = ()  # op types without any kernel (domain-qualified outside ai.onnx)


@functools.cache
def node_cases() -> tuple[Case, ...]:
    """onnx's node test cases (generating them takes ~20 s: onnx's pure-Python pooling references)."""
    from onnx.backend.test.case.node import collect_testcases

    with warnings.catch_warnings(), np.errstate(all="ignore"):  # the generators overflow on purpose
        warnings.simplefilter("ignore")
        cases = collect_testcases()
    return tuple(Case(c.name, "node", c.model, list(c.data_sets), c.rtol, c.atol) for c in cases)


def folder_cases() -> tuple[Case, ...]:
    """The pytorch-converted and pytorch-operator cases (model.onnx and test_data_set_*/ per folder)."""
    cases = []
    for suite in FOLDER_SUITES:
        for folder in sorted((ONNX_DATA / suite).iterdir()):
            if (folder / "model.onnx").exists():
                data_sets = [(_load_tensors(d, "input"), _load_tensors(d, "output"))
                             for d in sorted(folder.glob("test_data_set_*"))]
                cases.append(Case(folder.name, suite, folder / "model.onnx", data_sets, FOLDER_RTOL, FOLDER_ATOL))
    return tuple(cases)


def _load_tensors(folder: Path, prefix: str) -> list[np.ndarray]:
    files = sorted(folder.glob(f"{prefix}_*.pb"), key=lambda p: int(p.stem.split("_")[1]))
    return [numpy_helper.to_array(onnx.load_tensor(str(p))) for p in files]


def _array(value) -> np.ndarray:
    """A case value as numpy: generators store some as TensorProto (float8, int4, ...) or numpy scalars."""
    return numpy_helper.to_array(value) if isinstance(value, onnx.TensorProto) else np.asarray(value)


def assert_outputs_match(got: np.ndarray, want: np.ndarray, rtol: float, atol: float, name: str = "") -> None:
    """onnx's backend-runner comparison: same shape and dtype; floats within rtol/atol (NaN equal to NaN),
    everything else exact. Types numpy lacks (bfloat16, float8, int4) compare as float32, bfloat16 at
    two of its ulps as onnx's runner allows."""
    assert got.shape == want.shape, f"{name}: shape {got.shape}, expected {want.shape}"
    assert got.dtype == want.dtype, f"{name}: dtype {got.dtype}, expected {want.dtype}"
    if want.dtype.kind == "V":
        if want.dtype.name == "bfloat16":
            rtol = max(rtol, 2**-6)
        got, want = got.astype(np.float32), want.astype(np.float32)
    if want.dtype.kind in "fc":
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, equal_nan=True, err_msg=name)
    else:
        np.testing.assert_array_equal(got, want, err_msg=name)


def check_case(case: Case) -> CaseResult:
    """Plan and run one case; a failure carries the first line of the mismatch or error."""
    if case.name in EXCLUDED:
        return CaseResult(case.name, case.suite, EXCLUDED_STATUS, EXCLUDED[case.name])
    try:
        graph = onnx_io.load(case.model)
        executor = Executor(graph)
    except UnsupportedOpError as exc:
        missing = sorted({_qualified(op.op_type, op.domain) for op in exc.ops
                          if lookup(op.domain, op.op_type, op.opset) is None})
        return CaseResult(case.name, case.suite, UNSUPPORTED, "; ".join(op.describe() for op in exc.ops),
                          tuple(missing))
    try:
        for inputs, expected in case.data_sets:
            outputs = executor.run(dict(zip(graph.feed_inputs(), (_array(v) for v in inputs))))
            assert len(expected) == len(graph.outputs), f"{len(graph.outputs)} outputs, expected {len(expected)}"
            for name, want in zip(graph.outputs, expected):
                assert_outputs_match(outputs[name], _array(want), case.rtol, case.atol, name)
    except Exception as exc:  # a mismatch or a kernel error: both are this case failing
        return CaseResult(case.name, case.suite, FAILED, f"{type(exc).__name__}: {str(exc).strip()}")
    return CaseResult(case.name, case.suite, PASSED)


def _qualified(op_type: str, domain: str) -> str:
    return op_type if domain in ("", "ai.onnx") else f"{domain}.{op_type}"


@dataclass(frozen=True)
class MissingOp:
    """An ai.onnx op with no kernel at any opset, and what a kernel for it would bring."""

    op_type: str
    blocked_cases: int  # node cases that use it
    unlocks: int  # node cases it is the only missing op of


@dataclass
class Coverage:
    registered: dict[str, list[str]]  # domain ("ai.onnx" for the default one) -> op types with a kernel
    results: list[CaseResult]  # one per node test case
    missing: list[MissingOp] = field(default_factory=list)

    def count(self, status: str) -> int:
        return sum(r.status == status for r in self.results)

    @property
    def eligible(self) -> int:
        return len(self.results) - self.count(UNSUPPORTED)

    def to_dict(self) -> dict:
        return {
            "registered_ops": {"count": sum(len(v) for v in self.registered.values()), "by_domain": self.registered},
            "node_cases": {"total": len(self.results), "eligible": self.eligible, "passed": self.count(PASSED),
                           "failed": self.count(FAILED), "excluded": self.count(EXCLUDED_STATUS),
                           "unsupported": self.count(UNSUPPORTED)},
            "failed_cases": {r.name: r.detail.splitlines()[0] for r in self.results if r.status == FAILED},
            "excluded_cases": {r.name: r.detail for r in self.results if r.status == EXCLUDED_STATUS},
            "missing_ops": [{"op": m.op_type, "blocked_cases": m.blocked_cases, "unlocks": m.unlocks}
                            for m in self.missing],
        }


@functools.cache
def coverage() -> Coverage:
    """Every node test case checked once per process (kernels cannot change while it runs)."""
    registered: dict[str, set[str]] = {}
    for domain, op_type, _since, _until in registered_ops():
        registered.setdefault(domain or "ai.onnx", set()).add(op_type)
    results = [check_case(case) for case in node_cases()]
    blocked = Counter(op for r in results for op in r.missing_ops)
    unlocks = Counter(r.missing_ops[0] for r in results if len(r.missing_ops) == 1)
    default_ops = {s.name for s in onnx.defs.get_all_schemas() if s.domain in ("", "ai.onnx")}
    missing = [MissingOp(op, blocked[op], unlocks[op]) for op in default_ops - registered.get("ai.onnx", set())]
    missing.sort(key=lambda m: (-m.unlocks, -m.blocked_cases, m.op_type))
    return Coverage({d: sorted(ops) for d, ops in sorted(registered.items())}, results, missing)


def render(cov: Coverage, console) -> None:
    """The human-readable report of `ninopt ops`: supported ops, case figures, missing ops."""
    from rich.table import Table

    data = cov.to_dict()
    console.print(f"ops with a kernel: {data['registered_ops']['count']}")
    for domain, ops in cov.registered.items():
        console.print(f"  {domain} ({len(ops)}): {', '.join(ops)}", markup=False, highlight=False)
    cases = data["node_cases"]
    console.print(f"onnx node test cases: {cases['passed']} passed / {cases['eligible']} eligible / {cases['total']} "
                  f"total ({cases['failed']} failed, {cases['excluded']} excluded, {cases['unsupported']} need ops "
                  f"without a kernel)")
    for name, detail in data["failed_cases"].items():
        console.print(f"  failed: {name}: {detail}", markup=False, style="red")
    table = Table(title=f"{len(cov.missing)} ai.onnx ops without a kernel")
    for col in ("op", "node cases it would unlock alone", "node cases needing it"):
        table.add_column(col)
    for m in cov.missing:
        table.add_row(m.op_type, str(m.unlocks), str(m.blocked_cases))
    console.print(table)
