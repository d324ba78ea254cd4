"""The library API; the CLI is a thin layer over these functions."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from optimizer import graphsurgeon, onnx_io
from optimizer.calibration_data import resolve_calibration, resolve_inputs
from optimizer.errors import NinoptError, VerificationError
from optimizer.ir import Graph
from optimizer.onnx_checks import schema_problem
from optimizer.pipeline import PassManager, PipelineReport
from optimizer.registry import DEFAULT_PIPELINE, get_pass, pipeline_passes
from optimizer.verification import EXACT_TOLERANCE  # noqa: F401  (the CLI's default --tolerance)

ModelLike = str | os.PathLike | Graph | Any  # a path, an onnx.ModelProto, a Graph or an onnx_graphsurgeon Graph


def load(model: ModelLike) -> Graph:
    """A Graph from a path, a ModelProto, an onnx_graphsurgeon Graph (left unchanged) or a Graph (returned as is)."""
    if graphsurgeon.is_graphsurgeon_graph(model):
        return graphsurgeon.from_graphsurgeon(model)
    return onnx_io.load(model)


def save(graph: Graph, path: str | os.PathLike, **options) -> Path:
    """Write a Graph atomically (see ``onnx_io.save`` for the external-data options)."""
    return onnx_io.save(graph, path, **options)


@dataclass
class GraphSummary:
    nodes: int
    macs: int  # of the nodes whose MACs are known; partial when unknown_macs_nodes > 0
    params: int
    unknown_macs_nodes: int = 0

    @classmethod
    def of(cls, graph: Graph, input_shapes: dict | None = None) -> GraphSummary:
        from optimizer.cost import analyze_costs

        costs = analyze_costs(graph, input_shapes=input_shapes)
        return cls(len(graph), costs.total_macs, costs.total_params, len(costs.unknown_nodes("macs")))

    def to_dict(self) -> dict[str, int]:
        return {"nodes": self.nodes, "macs": self.macs, "params": self.params,
                "macs_partial": self.unknown_macs_nodes > 0, "unknown_macs_nodes": self.unknown_macs_nodes}


@dataclass
class OptimizeResult:
    """The optimized graph and everything the pipeline recorded about getting there."""

    graph: Graph
    pipeline: PipelineReport
    before: GraphSummary
    after: GraphSummary
    verification: Any = None  # VerifyReport: the first oracle's that failed, else the executor's (None: not verified)
    passes: list[str] = field(default_factory=list)
    budget: float = EXACT_TOLERANCE  # the criterion's floor: relative error vs the truth always allowed
    oracle: Any = None  # optimizer.oracle.OracleReport: which oracles judged the result, and what onnxruntime said
    shapes: Any = None  # optimizer.inputs.ShapeChoice: the input shapes verified (and priced) at
    bottleneck_cost: str | None = None  # what bottleneck insertion priced by: "macs" or "onnxruntime" (None: not run)

    def save(self, path: str | os.PathLike, **options) -> Path:
        return onnx_io.save(self.graph, path, **options)

    @property
    def model(self):
        """The optimized model as an onnx.ModelProto (weights embedded)."""
        return onnx_io.to_model_proto(self.graph)

    def to_graphsurgeon(self):
        """The optimized model as a new onnx_graphsurgeon.Graph, to continue a graphsurgeon script with."""
        return graphsurgeon.to_graphsurgeon(self.graph)

    def to_dict(self) -> dict[str, Any]:
        return {
            "passes": self.passes,
            "before": self.before.to_dict(),
            "after": self.after.to_dict(),
            "pipeline": self.pipeline.to_dict(),
            "verification": self.verification.to_dict() if self.verification is not None else None,
            "budget": self.budget,
            "oracle": self.oracle.to_dict() if self.oracle is not None else None,
            **(self.shapes.to_dict() if self.shapes is not None else {}),
            **({"bottleneck_cost": self.bottleneck_cost} if self.bottleneck_cost is not None else {}),
        }


def resolve_passes(passes: Iterable[str] | str | None = None, pipeline: str | None = None) -> list[str]:
    """Pass names to run: the given names (comma-separated string or list), else the named pipeline
    (default: ``default``); ``ninopt passes`` lists both."""
    if passes is not None and pipeline is not None:
        raise NinoptError("give either passes or a pipeline, not both.")
    if passes is None:
        return pipeline_passes(pipeline or DEFAULT_PIPELINE)
    if isinstance(passes, str):
        passes = [p.strip() for p in passes.split(",") if p.strip()]
    names = list(passes)
    if not names:
        raise NinoptError("no passes given; name at least one (see `ninopt passes`).")
    for name in names:
        get_pass(name)
    return names


@dataclass
class BottleneckOptions:
    """Approximate 1x1 bottleneck insertion, run after the exact pipeline (``--bottleneck``)."""

    max_error: float
    #: input name -> samples along the leading axis, or a path (``optimizer.calibration_data``)
    calibration: dict[str, np.ndarray] | str | os.PathLike | None = None
    relu_bottleneck: bool = False
    preprocess: str | None = None  # with an image folder: the spec, e.g. "size=640x640,scale=1/255"
    metric: str = "max-rel"  # what max_error is read in: max-rel, rms, cosine or top1 (optimizer.bottleneck.metrics)
    #: what a factorization must save: "macs", or "onnxruntime" latency measured per layer; None: the
    #: default, onnxruntime when importable, else MACs (``optimizer.bottleneck.latency.cost_in_use``)
    cost: str | None = None

    def create_pass(self, calibration: dict[str, np.ndarray] | None,
                    held_apart: list[dict[str, np.ndarray]] | None = None, held_apart_budget: float | None = None):
        """The pass, with ``calibration`` resolved for the model (``resolve_calibration``) and the inputs the
        result will be verified on as ``held_apart`` (vetoing layers over ``held_apart_budget`` there)."""
        return get_pass("insert-bottleneck").cls(max_error=self.max_error, calibration=calibration,
                                                 relu_bottleneck=self.relu_bottleneck, metric=self.metric,
                                                 cost=self.cost, held_apart=held_apart,
                                                 held_apart_budget=held_apart_budget)


def optimize(model: ModelLike, passes: Iterable[str] | str | None = None, verify: bool = True, *,
             pipeline: str | None = None, inputs: dict[str, np.ndarray] | str | os.PathLike | None = None,
             preprocess: str | None = None, shapes: dict[str, tuple[int, ...]] | None = None,
             tolerance: float = EXACT_TOLERANCE, seed: int = 0, verify_each_pass: bool = False,
             bottleneck: BottleneckOptions | None = None, raise_on_failure: bool = True,
             oracle: str | None = None) -> OptimizeResult:
    """Run passes to a fixpoint and, unless ``verify=False``, prove the result.

    The passes are ``passes`` (names), else the named ``pipeline`` (``default``, ``onnxruntime``,
    ...; ``ninopt passes`` lists them).

    The input is never changed: a Graph argument is copied first; a path or ModelProto is
    loaded fresh. Verification runs the model before the passes on the executor, in its own
    precision and in float64 (the truth), on the same inputs as the result (``inputs``: a dict,
    or a path read as calibration data is, images preprocessed by ``preprocess``; else seeded
    random ones), and raises VerificationError, naming the output and its error, when
    any output of the result is further from the truth than ``max(tolerance, k x noise
    floor)`` (see ``optimizer.verification``). ``oracle`` says who runs the models:
    ``"executor"``, ``"onnxruntime"`` or ``"both"`` (default: both when onnxruntime is
    importable); onnxruntime must then also find the result within the criterion of the
    original, and a model it cannot load falls back to the executor (``result.oracle`` says
    so). With ``verify_each_pass`` every single rewrite is checked on the executor; one that
    breaks the numbers is rolled back and listed in the report
    (``pipeline.passes[i].rollbacks``) with the pass and the nodes it matched.

    ``bottleneck`` adds approximate bottleneck insertion after the exact passes; the final
    check then allows its ``max_error``, doubled when the verification inputs are not the
    calibration inputs (the report says which budget was applied). The bottleneck pass is never
    fitted to the verification inputs, but they veto its layers: one that fails there is rolled
    back (its decision says so), so a budget met on the calibration data alone is not enough. With
    ``raise_on_failure=False`` a failed verification is returned in the result instead
    (``result.verification.passed`` is False), for callers that report rather than stop.
    """
    from optimizer.bottleneck.latency import cost_in_use
    from optimizer.executor import Executor
    from optimizer.oracle import RuntimeOracle, check_oracle
    from optimizer.inputs import input_shape_choice, prepare_runs
    from optimizer.verification import Criterion, Reference

    oracle = check_oracle(oracle)
    graph = load(model)
    if graph is model:
        graph = graph.copy()
    names = resolve_passes(passes, pipeline)
    calibration = resolve_calibration(bottleneck.calibration, graph, bottleneck.preprocess) if bottleneck else None
    seen_in_calibration = bottleneck is not None and _same_source(inputs, bottleneck.calibration)
    inputs = resolve_inputs(inputs, graph, preprocess)
    # dynamic dims: verified (and priced) at the shapes chosen here, reported in the result
    shape_choice = input_shape_choice(graph, inputs.first if inputs else None, shapes, seed,
                                      confirm=verify or verify_each_pass)
    checker = None
    if verify or verify_each_pass:
        runs, used_seed = prepare_runs(graph, inputs, shape_choice.shapes, seed)
        reference = Reference.measure(graph, runs, used_seed)
    before = GraphSummary.of(graph, shape_choice.pins)
    runtime = RuntimeOracle(graph, reference, Criterion(tolerance), oracle) if verify else None
    if verify_each_pass:
        def checker(candidate: Graph) -> str | None:
            outcome = reference.judge(runs.outputs(Executor(candidate).run), Criterion(tolerance))
            return None if outcome.passed else outcome.failures()[0].message
    report = PassManager([get_pass(n).create() for n in names], checker=checker).run(graph)
    budget = tolerance
    if bottleneck is not None:
        cleanup = pipeline_passes("after-bottleneck")
        budget = max(tolerance, bottleneck.max_error * (1 if seen_in_calibration else 2))
        # the verification inputs veto layers that fail there (when verifying: else nothing would check it)
        held_apart = list(runs.feeds) if verify else None
        approximate = PassManager([bottleneck.create_pass(calibration, held_apart, budget)]
                                  + [get_pass(n).create() for n in cleanup])
        extra = approximate.run(graph)
        report = PipelineReport(report.passes + extra.passes, report.iterations + extra.iterations,
                                report.converged and extra.converged)
        names = names + ["insert-bottleneck", *cleanup]
    after = GraphSummary.of(graph, shape_choice.pins)
    verification = None
    if verify and (problem := schema_problem(graph)) is not None:
        raise VerificationError(f"the optimized model is not valid ONNX ({problem}); nothing was written.")
    if verify:
        criterion = Criterion(budget)
        if bottleneck is not None and bottleneck.metric != "max-rel":
            checks = _metric_checks(graph, reference, runtime, bottleneck.metric, budget)
        else:
            checks = [reference.judge(runs.outputs(Executor(graph).run), criterion)] if runtime.uses_executor else []
            checks += [c for c in [runtime.check(graph, criterion)] if c is not None]
        verification = next((c for c in checks if not c.passed), checks[0])
        if not verification.passed and raise_on_failure:
            raise VerificationError(_failure_sentence(verification, runtime))
    return OptimizeResult(graph, report, before, after, verification, names, budget,
                          runtime.report if runtime is not None else None, shape_choice,
                          cost_in_use(bottleneck.cost) if bottleneck is not None else None)


def _same_source(inputs, calibration) -> bool:
    """Whether the verification inputs are the calibration inputs: the same dict, or the same file or folder."""
    if inputs is None or calibration is None:
        return False
    if isinstance(inputs, (str, os.PathLike)) and isinstance(calibration, (str, os.PathLike)):
        return Path(inputs).resolve() == Path(calibration).resolve()
    return inputs is calibration


def _metric_checks(graph: Graph, reference, runtime, metric: str, budget: float) -> list:
    """The approximate result judged in the bottleneck's metric against the original, on the verification
    inputs, by each oracle in use (shapes and inf/NaN positions must still agree exactly), each allowing
    for its own rounding noise in the metric: the executor's is its run against the float64 truth,
    onnxruntime's the larger of that and its plain run against its fused one (``runtime_noise``)."""
    from optimizer.bottleneck.metrics import judge_in_metric, metric_error
    from optimizer.executor import Executor
    from optimizer.verification import Criterion

    def measure(ref, got):
        return metric_error(metric, [ref], [got])

    floors = reference.noise_floors(measure)
    anything = Criterion(float("inf"))
    checks = []
    if runtime.uses_executor:
        got = reference.runs.outputs(Executor(graph).run)
        checks.append(judge_in_metric(reference.judge(got, anything), metric, budget, reference.outputs, got, floors))
    got = runtime.outputs(graph)
    if got is not None:
        runtime_floors = runtime.noise_in(measure)
        runtime_floors = {name: max(floor, runtime_floors.get(name, 0.0)) for name, floor in floors.items()}
        checks.append(judge_in_metric(runtime.check(graph, anything, got), metric, budget, runtime.baseline, got,
                                      runtime_floors))
    return checks


def _failure_sentence(verification, runtime) -> str:
    """Which oracle refused, what, and (when the runtimes already disagree on the input) that it may not be a pass."""
    sentence = f"the optimized model fails verification in {verification.oracle}: {verification.worst_failure()}"
    if runtime.report.divergence is not None:
        sentence += f"; note that {runtime.report.divergence.sentence()}"
    return sentence.rstrip(".") + "; nothing was written."


def run(model: ModelLike, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a model on the reference executor: graph outputs by name."""
    from optimizer.executor import run as run_graph

    return run_graph(load(model), feeds)


def profile(model: ModelLike, feeds: dict[str, np.ndarray] | None = None, *, runs: int = 3, seed: int = 0):
    """Where the executor's time goes on this model (an ``optimizer.profiling.Profile``): seconds per node and
    op type, with output shapes, MACs and achieved GFLOP/s. ``feeds`` default to seeded random inputs at the
    shapes verification chooses."""
    from optimizer.profiling import profile as profile_graph
    from optimizer.inputs import prepare_feeds

    graph = load(model)
    feeds, _ = prepare_feeds(graph, feeds, None, seed)
    return profile_graph(graph, feeds, runs)


def verify(reference: ModelLike, candidate: ModelLike, *, inputs: dict[str, np.ndarray] | str | os.PathLike | None = None,
           preprocess: str | None = None, **options):
    """Compare two models on the same inputs (see ``optimizer.verification.verify`` for the options);
    ``inputs`` may be a path, read as ``optimize`` reads it."""
    from optimizer.verification import verify as verify_graphs

    graph = load(reference)
    return verify_graphs(graph, load(candidate), inputs=resolve_inputs(inputs, graph, preprocess), **options)


def analyze(model: ModelLike, *, input_shapes: dict[str, tuple[int, ...]] | None = None):
    """Per-node shapes, MACs, parameters and activation bytes (an ``optimizer.cost.CostReport``).

    Dynamic input dims are priced at the shapes verification would run at
    (``optimizer.inputs.choose_input_shapes``: batch 1, others from ``input_shapes``
    or the model's hints or defaults), which the report names; when no such shape runs, the
    dims stay symbolic and the numbers depending on them unknown.
    """
    from optimizer.cost import analyze_costs
    from optimizer.inputs import input_shape_choice

    graph = load(model)
    try:
        choice = input_shape_choice(graph, shapes=input_shapes)
    except NinoptError:
        if input_shapes:
            raise
        return analyze_costs(graph)
    report = analyze_costs(graph, input_shapes=choice.pins)
    report.input_shapes, report.chosen_axes = choice.shapes, choice.chosen_axes
    return report


def analyze_bottlenecks(model: ModelLike, *, calibration: dict[str, np.ndarray] | str | os.PathLike | None = None,
                        max_error: float = 1e-2, seed: int = 0, preprocess: str | None = None,
                        metric: str = "max-rel"):
    """Channel-bottleneck opportunities, ranked (an ``optimizer.bottleneck.BottleneckReport``).

    Weight spectra along both channel modes, activation spectra on ``calibration`` inputs (or
    seeded random ones, flagged as weaker evidence), break-even ranks and predicted errors.
    ``calibration`` may be a path: an .npz, or a folder of arrays or of images preprocessed by
    ``preprocess`` (see ``optimizer.calibration_data``). Ranks are picked where a layer's predicted
    relative RMS error meets ``max_error`` read in ``metric`` (``layer_rms_target``).
    """
    from optimizer.bottleneck import analyze_bottlenecks as analyze_graph
    from optimizer.bottleneck.metrics import layer_rms_target

    graph = load(model)
    if graph is model:
        graph = graph.copy()
    PassManager([get_pass(n).create() for n in pipeline_passes("constant-folding")]).run(graph)
    calibration = resolve_calibration(calibration, graph, preprocess)
    return analyze_graph(graph, calibration, seed=seed, max_error=layer_rms_target(metric, max_error))
