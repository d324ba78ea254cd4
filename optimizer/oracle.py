"""onnxruntime as a second, independent oracle for ``optimize``.

The executor both computes folded constants and checks the result, so where its semantics
differ from ONNX's a wrong constant would verify against itself. onnxruntime shares no code
with it: the original and the optimized model are run there too, and the optimized model
must agree with the original by the same criterion. onnxruntime cannot run every model in
float64, so the noise floors are the executor's, or onnxruntime's own where they are larger
(``runtime_noise``).

Before any pass runs, onnxruntime's outputs of the ORIGINAL model are also judged against
the executor's float64 truth. When they disagree, one of the two runtimes is wrong about the
model itself, not about a rewrite: the first node whose outputs diverge is found by
bisection over intermediate outputs and reported.

onnxruntime is imported lazily and stays optional. A model it cannot load (custom domains,
an op it lacks) makes the oracle fall back to the executor, and the report says why.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import numpy as np
import onnx

from optimizer.errors import NinoptError, VerificationError, first_line
from optimizer.inputs import Runs
from optimizer.ir import Graph
from optimizer.verification import Criterion, Reference, VerifyReport, finite_relative_error

ORACLES = ("executor", "onnxruntime", "both")


def onnxruntime_available() -> bool:
    return importlib.util.find_spec("onnxruntime") is not None


def default_oracle() -> str:
    """``both`` when onnxruntime is importable, else ``executor``."""
    return "both" if onnxruntime_available() else "executor"


def check_oracle(name: str | None) -> str:
    """The oracle to use: ``name`` checked, or the default; NinoptError for an unknown or missing one."""
    if name is None:
        return default_oracle()
    if name not in ORACLES:
        raise NinoptError(f"unknown oracle {name!r}; choose from {', '.join(ORACLES)}.")
    return name


class OracleUnavailable(Exception):
    """onnxruntime cannot run this model (the message says why, in one clause)."""


def model_for_runtime(graph: Graph, extra_outputs: list[str] = ()) -> onnx.ModelProto:
    """``graph`` as a self-contained ModelProto (external weights read in), with ``extra_outputs`` exposed."""
    from optimizer import onnx_io

    proto = onnx_io.to_model_proto(graph)
    base = getattr(graph.source, "base_dir", None)
    if base is not None and any(t.data_location == onnx.TensorProto.EXTERNAL for t in proto.graph.initializer):
        onnx.external_data_helper.load_external_data_for_model(proto, str(base))
    listed = {o.name for o in proto.graph.output}
    proto.graph.output.extend(onnx.ValueInfoProto(name=t) for t in extra_outputs if t not in listed)
    return proto


def serialize(graph: Graph, extra_outputs: list[str] = ()) -> bytes:
    """The model as onnxruntime takes it (serialized once, for as many sessions as needed)."""
    try:
        return model_for_runtime(graph, list(extra_outputs)).SerializeToString()
    except ValueError as exc:  # protobuf refuses models over 2 GiB
        raise OracleUnavailable(f"the model cannot be handed to onnxruntime in memory ({exc})") from None


def run_onnxruntime(model: Graph | bytes, feeds: Mapping[str, np.ndarray], extra_outputs: list[str] = (), *,
                    fused: bool = False) -> dict[str, np.ndarray]:
    """Outputs (graph outputs, then ``extra_outputs``) by name, from onnxruntime running the model as
    written (``fused``: with all of onnxruntime's graph rewrites on). ``model``: a Graph, or ``serialize``'s bytes."""
    try:
        import onnxruntime as ort
    except ImportError as exc:
        raise OracleUnavailable(f"onnxruntime is not importable ({exc})") from None
    serialized = model if isinstance(model, bytes) else serialize(model, extra_outputs)
    options = ort.SessionOptions()
    level = ort.GraphOptimizationLevel
    options.graph_optimization_level = level.ORT_ENABLE_ALL if fused else level.ORT_DISABLE_ALL
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(serialized, options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for unloadable models
        raise OracleUnavailable(f"onnxruntime cannot load it ({first_line(exc)})") from None
    names = [o.name for o in session.get_outputs()]
    try:
        values = session.run(names, {k: np.asarray(v) for k, v in feeds.items()})
    except Exception as exc:
        raise OracleUnavailable(f"onnxruntime cannot run it ({first_line(exc)})") from None
    return dict(zip(names, values))


def runtime_noise(serialized: bytes, runs: Runs, plain: Mapping[str, np.ndarray],
                  measure: Callable[[np.ndarray, np.ndarray], float] | None = None) -> dict[str, float]:
    """onnxruntime's own noise floor per output, given its outputs ``plain`` of the model as written, in
    ``measure(plain, fused)`` (default ``finite_relative_error``, the criterion's; or e.g. a bottleneck
    budget's metric).

    onnxruntime cannot run most models in float64, and its kernels round differently from
    the executor's (its Sigmoid is accurate to ~1e-7 absolute, so outputs that are all tiny
    sigmoids carry relative noise near 1e-3). Its noise floor is measured without the
    executor: how far its fused run (Conv+BN, Conv+activation... reorder the rounding) lands
    from the plain one.
    """
    try:
        fused = runs.outputs(lambda feed: run_onnxruntime(serialized, feed, fused=True))
    except OracleUnavailable:
        return {}
    measure = measure or finite_relative_error
    return {name: measure(value, fused[name]) if np.shape(value) == np.shape(fused[name]) else 0.0
            for name, value in plain.items()}


@dataclass
class Divergence:
    """The first node (in topological order) where onnxruntime and the executor part ways."""

    node: str
    op_type: str
    output: str
    message: str  # the judged output's message (error, noise floor, allowed)

    def sentence(self) -> str:
        return (f"onnxruntime and ninopt's executor disagree on the original model, first at {self.op_type} node "
                f"{self.node!r} (output {self.output!r}): {self.message}")

    def to_dict(self) -> dict[str, str]:
        return {"node": self.node, "op_type": self.op_type, "output": self.output, "message": self.message}


def first_divergence(graph: Graph, reference: Reference, criterion: Criterion) -> Divergence | None:
    """Bisect the topological order for the first node whose outputs onnxruntime computes differently.

    Each step exposes the outputs of half the remaining nodes as extra graph outputs (in a copy
    for onnxruntime and the executor) and judges onnxruntime's values against the executor's
    float64 truth (noise floors: the larger of the two runtimes'). "Some node among the first
    i diverges" only grows with i, so the search is exact whatever the graph's branching.
    None when no intermediate diverges (the difference is only at the outputs' comparison).
    """
    live = graph.live_nodes()
    order = [n for n in graph.toposort() if n.id in live and any(n.outputs)]

    def diverging(nodes) -> tuple[Any, Any] | None:
        tensors = list(dict.fromkeys(t for n in nodes for t in n.outputs if t))
        serialized = serialize(graph, tensors)
        runtime = reference.runs.outputs(lambda feed: run_onnxruntime(serialized, feed))
        noise = runtime_noise(serialized, reference.runs, runtime)
        probe = graph.copy()
        probe.outputs = tensors
        local = Reference.measure(probe, reference.runs, reference.seed)
        report = local.judge({t: runtime[t] for t in tensors}, criterion, oracle="onnxruntime",
                             oracle_noise={t: noise[t] for t in tensors if t in noise})
        for node in nodes:
            for t in node.outputs:
                if t and not report[t].passed:
                    return node, report[t]
        return None

    lo, hi = 0, len(order)  # the outputs diverge, so presumably some node in order[lo:hi] does
    while hi - lo > 1:  # ... and none in order[:lo] does
        mid = (lo + hi) // 2
        if diverging(order[lo:mid]) is not None:
            hi = mid
        else:
            lo = mid
    found = diverging(order[lo:hi]) if order else None
    if found is None:  # no single intermediate diverges after all
        return None
    node, output = found
    return Divergence(node.name or output.name, node.op_type, output.name, output.message)


@dataclass
class OracleReport:
    """What onnxruntime said, or why it was not asked (recorded in ``OptimizeResult``)."""

    requested: str
    used: list[str]
    fallback: str | None = None  # why onnxruntime was not used although requested
    divergence: Divergence | None = None  # the runtimes disagree on the original model
    original_agrees: bool | None = None  # onnxruntime's original outputs within the criterion of the truth
    verification: VerifyReport | None = None  # optimized vs original, both in onnxruntime

    def notes(self) -> list[str]:
        """Sentences a user should read even when verification passed."""
        notes = [f"onnxruntime was not used: {self.fallback}."] if self.fallback else []
        if self.divergence is not None:
            notes.append(self.divergence.sentence().rstrip(".") + ".")
        return notes

    def to_dict(self) -> dict[str, Any]:
        return {"requested": self.requested, "used": self.used, "fallback": self.fallback,
                "original_agrees": self.original_agrees,
                "divergence": self.divergence.to_dict() if self.divergence is not None else None,
                "verification": self.verification.to_dict() if self.verification is not None else None}


class RuntimeOracle:
    """onnxruntime's view of the original model, taken before the passes, to judge the optimized one by.

    onnxruntime's own noise floor costs a second session of the original model, so it is
    measured only when a judgment fails on the executor's noise floor alone.
    """

    def __init__(self, original: Graph, reference: Reference, criterion: Criterion, requested: str):
        self.reference = reference
        self.report = OracleReport(requested, ["executor"] if requested == "executor" else [])
        self.baseline: dict[str, np.ndarray] | None = None
        self.noise: dict[str, float] | None = None  # onnxruntime's noise floors, once measured
        self._original: bytes | None = None  # kept until the optimized model is judged
        if requested == "executor":
            return
        try:
            self._original = serialize(original)
            self.baseline = reference.runs.outputs(lambda feed: run_onnxruntime(self._original, feed))
        except OracleUnavailable as exc:
            self.report.fallback = f"{exc}; verified on the executor only"
            self.report.used = ["executor"]
            self._original = None
            return
        self.report.used = ["executor", "onnxruntime"] if requested == "both" else ["onnxruntime"]
        agreement = self._judge(lambda noise: reference.judge(self.baseline, criterion, oracle="onnxruntime",
                                                              oracle_noise=noise))
        self.report.original_agrees = agreement.passed
        if not agreement.passed:
            try:
                found = first_divergence(original, reference, criterion)
            except OracleUnavailable:  # onnxruntime refuses some intermediate as an output
                found = None
            worst = agreement.failures()[0]
            self.report.divergence = found or Divergence("(graph outputs)", "", worst.name, worst.message)

    def _judge(self, judge_with) -> VerifyReport:
        """``judge_with(noise)`` on the executor's noise floors, then, if that fails, on onnxruntime's too."""
        report = judge_with(self.noise or {})
        if report.passed or self.noise is not None:
            return report
        self.noise = runtime_noise(self._original, self.reference.runs, self.baseline)
        return judge_with(self.noise)

    def noise_in(self, measure: Callable[[np.ndarray, np.ndarray], float]) -> dict[str, float]:
        """onnxruntime's own noise floor per output in ``measure`` (see ``runtime_noise``); empty when
        onnxruntime is not used. Call before ``check``, which lets go of the original model."""
        if self.baseline is None or self._original is None:
            return {}
        return runtime_noise(self._original, self.reference.runs, self.baseline, measure)

    @property
    def uses_executor(self) -> bool:
        return "executor" in self.report.used

    def outputs(self, optimized: Graph) -> dict[str, np.ndarray] | None:
        """The optimized model's outputs in onnxruntime on the reference inputs; None when onnxruntime is not used."""
        if self.baseline is None:
            return None
        try:
            serialized = serialize(optimized)
            return self.reference.runs.outputs(lambda feed: run_onnxruntime(serialized, feed))
        except OracleUnavailable as exc:
            raise VerificationError(f"onnxruntime runs the original model but not the optimized one: {exc}; "
                                    f"nothing was written.") from None

    def check(self, optimized: Graph, criterion: Criterion,
              got: dict[str, np.ndarray] | None = None) -> VerifyReport | None:
        """The optimized model against the original, both in onnxruntime (``got``: its outputs, when already
        run); None when onnxruntime is not used."""
        if self.baseline is None:
            return None
        got = self.outputs(optimized) if got is None else got
        self.report.verification = self._judge(lambda noise: self.reference.judge(
            got, criterion, oracle="onnxruntime", baseline=self.baseline, oracle_noise=noise))
        self._original = None
        return self.report.verification
