"""What the tests share: the light zoo and fixtures, onnxruntime and executor runners, the model
builder, the rewrite-agreement check (``assert_agrees``: rewritten vs original) and the kernel
check (``assert_matches_onnxruntime``: executor vs onnxruntime on one model), the idempotence
check, seeded weights, and what more than one test module uses. Test modules import from here,
never from each other.

``tests/`` is on ``sys.path`` (pytest puts the root conftest's folder there), so ``from support
import ...`` works in every test folder; ``conftest.py`` turns some of these into fixtures.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

ONNX_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"
LIGHT_ZOO_DIR = str(ONNX_DATA / "light")
#: The 9 light-zoo models (paths into the installed onnx package).
LIGHT_MODELS = sorted(os.path.join(LIGHT_ZOO_DIR, f) for f in os.listdir(LIGHT_ZOO_DIR)
                      if f.startswith("light_") and f.endswith(".onnx")) if os.path.isdir(LIGHT_ZOO_DIR) else []
FIXTURES_DIR = str(Path(__file__).resolve().parent.parent / "fixtures")
INCEPTION = os.path.join(FIXTURES_DIR, "inception_module.onnx")


def light_model_id(path: str) -> str:
    return os.path.basename(path)[len("light_"):-len(".onnx")]


#: Light-zoo model id -> path.
LIGHT = {light_model_id(p): p for p in LIGHT_MODELS}


def light_model(name: str) -> str:
    """The path of one light-zoo model; skips the test when the installed onnx has none."""
    path = os.path.join(LIGHT_ZOO_DIR, f"light_{name}.onnx")
    if not os.path.exists(path):
        pytest.skip(f"the installed onnx package has no light {name}")
    return path


# ---------------------------------------------------------------------- building models
def _value_info(spec, elem_type: int) -> onnx.ValueInfoProto:
    """A ValueInfoProto from itself, a bare name (untyped), or a (name, shape[, elem_type]) tuple."""
    if isinstance(spec, onnx.ValueInfoProto):
        return spec
    if isinstance(spec, str):
        return onnx.ValueInfoProto(name=spec)
    name, shape, *elem = spec
    return helper.make_tensor_value_info(name, elem[0] if elem else elem_type,
                                         None if shape is None else list(shape))


def _initializer(name: str, value) -> onnx.TensorProto:
    value = np.asarray(value)
    return numpy_helper.from_array(value.astype(np.float32) if value.dtype == np.float64 else value, name)


def make_model(nodes: Sequence[onnx.NodeProto], inputs: Iterable, outputs: Iterable,
               initializers: Iterable[onnx.TensorProto] | Mapping[str, Any] = (), *,
               opset: int | Mapping[str, int] = 13, ir_version: int | None = None,
               elem_type: int = onnx.TensorProto.FLOAT, check: bool = True, name: str = "test") -> onnx.ModelProto:
    """A model from onnx.helper pieces.

    ``inputs``/``outputs`` hold ValueInfoProtos, bare names (untyped) or (name, shape[, elem
    type]) tuples, ``elem_type`` being the default. ``initializers`` are TensorProtos or a
    name -> array dict (float64 arrays become float32). ``opset`` is the default domain's
    version or a {domain: version} dict. The IR version defaults to 8, or 3 before opset 7,
    where initializers are graph inputs too. ``check`` runs the full ONNX checker.
    """
    opsets = {"": opset} if isinstance(opset, int) else dict(opset)
    if ir_version is None:
        ir_version = 3 if opsets.get("", 13) < 7 else 8
    inits = [_initializer(k, v) for k, v in initializers.items()] if isinstance(initializers, Mapping) \
        else list(initializers)
    inputs = [_value_info(spec, elem_type) for spec in inputs]
    if ir_version < 4:  # initializers must be graph inputs
        listed = {vi.name for vi in inputs}
        inputs += [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in inits
                   if t.name not in listed]
    graph = helper.make_graph(list(nodes), name, inputs, [_value_info(spec, elem_type) for spec in outputs], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets.items()],
                              ir_version=ir_version)
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def one_node_model(op_type: str, inputs: Mapping[str, np.ndarray], n_outputs: int = 1, *, opset: int = 13,
                   domain: str = "", initializers: Mapping[str, np.ndarray] | None = None, input_names=None,
                   **attrs) -> onnx.ModelProto:
    """A one-node model with untyped outputs y0, y1, ... ``inputs`` are fed (typed from the arrays);
    ``initializers`` are constants; ``input_names`` orders the node's inputs ("" for an omitted one)."""
    initializers = initializers or {}
    names = list(input_names) if input_names is not None else list(inputs) + list(initializers)
    outputs = [f"y{i}" for i in range(n_outputs)]
    node = helper.make_node(op_type, names, outputs, domain=domain, **attrs)
    return make_model([node], [(k, v.shape, helper.np_dtype_to_tensor_dtype(v.dtype)) for k, v in inputs.items()],
                      outputs, [numpy_helper.from_array(v, k) for k, v in initializers.items()],
                      opset={"": opset, domain: 1} if domain else opset, ir_version=8, check=False, name="single")


def to_float16(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model with float32 weights, inputs and outputs made float16."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    for i, t in enumerate(model.graph.initializer):
        if t.data_type == onnx.TensorProto.FLOAT:
            model.graph.initializer[i].CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float16),
                                                                        t.name))
    for v in list(model.graph.input) + list(model.graph.output) + list(model.graph.value_info):
        if v.type.tensor_type.elem_type == onnx.TensorProto.FLOAT:
            v.type.tensor_type.elem_type = onnx.TensorProto.FLOAT16
    return model


# ---------------------------------------------------------------------- running models
def _as_model_proto(model: Any) -> tuple[onnx.ModelProto | None, str | None]:
    """(proto, None) for in-memory models, (None, path) for files (so ORT resolves external data)."""
    if isinstance(model, (str, os.PathLike)):
        return None, os.fspath(model)
    if isinstance(model, onnx.ModelProto):
        return model, None
    from optimizer.ir import Graph
    from optimizer.oracle import model_for_runtime  # external weights read in, as onnxruntime needs them

    if isinstance(model, Graph):
        return model_for_runtime(model), None
    raise TypeError(f"expected a path, an onnx.ModelProto or a Graph, got {type(model).__name__}")


def ort_session(model: Any, threads: int = 1, optimize: bool = False):
    """An onnxruntime CPU session. Without ``optimize``, ORT's own graph rewrites stay off so the
    graph runs as written."""
    import onnxruntime as ort

    proto, path = _as_model_proto(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(path if path is not None else proto.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def ort_run(model: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a model (path, ModelProto or Graph) in onnxruntime on CPU with one thread, as written; all outputs."""
    return ort_session(model).run(None, feeds)


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray], threads: int = 1) -> list[np.ndarray]:
    """Run a model in onnxruntime with its default graph optimizations (as a deployment would)."""
    return ort_session(model, threads, optimize=True).run(None, feeds)


def run_ours(model: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a model (path, ModelProto or Graph) in ninopt's executor; all outputs, in order."""
    from optimizer import onnx_io
    from optimizer.executor import Executor
    from optimizer.ir import Graph

    graph = model if isinstance(model, Graph) else onnx_io.load(model)
    result = Executor(graph).run(feeds)
    return [result[name] for name in graph.outputs]


def _load_proto(model: Any) -> onnx.ModelProto:
    proto, path = _as_model_proto(model)
    return proto if proto is not None else onnx.load(path, load_external_data=False)


_NP_OF = {
    onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.DOUBLE: np.float64, onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.INT64: np.int64, onnx.TensorProto.INT32: np.int32, onnx.TensorProto.INT8: np.int8,
    onnx.TensorProto.UINT8: np.uint8, onnx.TensorProto.BOOL: np.bool_,
}


def random_feeds(model: Any, seed: int = 0, dims: dict[str, int] | None = None) -> dict[str, np.ndarray]:
    """Seeded random values for every graph input that is not an initializer.

    Symbolic or unknown dimensions become ``dims[name]`` (default 1). Floats are standard
    normal, integers in [0, 3), booleans fair coin flips.
    """
    proto = _load_proto(model)
    inits = {t.name for t in proto.graph.initializer}
    rng = np.random.default_rng(seed)
    feeds = {}
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        shape = [d.dim_value if d.HasField("dim_value") else (dims or {}).get(d.dim_param, 1) for d in tt.shape.dim]
        dtype = np.dtype(_NP_OF.get(tt.elem_type, np.float32))
        if dtype.kind == "f":
            value = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            value = rng.random(shape) < 0.5
        else:
            value = rng.integers(0, 3, shape).astype(dtype)
        feeds[vi.name] = np.asarray(value)
    return feeds


_RUNNERS = {"onnxruntime": ort_run, "executor": run_ours}


# ---------------------------------------------------------------------- checking rewrites
def assert_agrees(original: Any, rewritten: Any, *, rtol: float = 1e-5, oracle: str | None = "onnxruntime",
                  runners: Sequence[str] = ("onnxruntime", "executor"), feeds: dict | None = None,
                  seed: int = 0) -> onnx.ModelProto:
    """The rewritten model (Graph or ModelProto) computes what the original (path, ModelProto or
    Graph) computes, on ``feeds`` or seeded random inputs; returns the rewritten ModelProto.

    Each of ``runners`` ("onnxruntime", "executor") runs the rewritten model and is compared,
    output by output, with ``oracle`` run on the original (``None``: with the same runner run
    on the original). Shapes must match and max|got - want| <= rtol * max|want|; ``rtol=0``
    means bit for bit. Whenever onnxruntime runs it, the rewritten model must pass the full
    ONNX checker.
    """
    from optimizer import onnx_io
    from optimizer.ir import Graph

    proto = onnx_io.to_model_proto(rewritten) if isinstance(rewritten, Graph) else rewritten
    if "onnxruntime" in runners or oracle == "onnxruntime":
        onnx.checker.check_model(proto, full_check=True)
    feeds = feeds if feeds is not None else random_feeds(original, seed=seed)
    expected = {oracle: _RUNNERS[oracle](original, feeds)} if oracle else \
        {runner: _RUNNERS[runner](original, feeds) for runner in runners}
    for runner in runners:
        want_all = expected[oracle or runner]
        got_all = _RUNNERS[runner](rewritten if runner == "executor" else proto, feeds)
        assert len(got_all) == len(want_all), runner
        for index, (want, got) in enumerate(zip(want_all, got_all)):
            where = f"{runner}, output {index}"
            assert got.shape == want.shape, where
            if rtol == 0:
                np.testing.assert_array_equal(got, want, err_msg=where)
            else:
                scale = float(np.abs(want).max()) if want.size else 0.0
                error = float(np.abs(got.astype(np.float64) - want).max()) if want.size else 0.0
                assert error <= rtol * scale, f"{where}: max|d| {error:.3g} > {rtol} * max|y| {scale:.3g}"
    return proto


def assert_matches_onnxruntime(model: Any, feeds: dict[str, np.ndarray], *, rtol: float = 0.0, atol: float = 0.0,
                               ort_optimized: bool = True) -> list[np.ndarray]:
    """ninopt's executor on ``model`` gives onnxruntime's outputs on it (with its default graph
    optimizations unless ``ort_optimized`` is False): as many outputs, each of the same dtype and
    shape, values within ``assert_allclose(rtol, atol)`` (both 0: equal, NaN matching NaN).
    Returns the executor's outputs.
    """
    got = run_ours(model, feeds)
    want = run_ort(model, feeds) if ort_optimized else ort_run(model, feeds)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, (g.dtype, g.shape, w.dtype, w.shape)
        if rtol == atol == 0:
            np.testing.assert_array_equal(g, w)
        else:
            np.testing.assert_allclose(g, w, rtol=rtol, atol=atol)
    return got


def run_passes(graph, *names: str, max_iterations: int | None = None) -> dict:
    """Run the named passes to a fixpoint; {pass name: PassStats}."""
    return run_pipeline(graph, *names, max_iterations=max_iterations)[1]


def run_pipeline(graph, *names: str, max_iterations: int | None = None):
    """Run the named passes to a fixpoint; (report, {pass name: PassStats})."""
    from optimizer.pipeline import PassManager
    from optimizer.registry import get_pass

    limits = {} if max_iterations is None else {"max_iterations": max_iterations}
    report = PassManager([get_pass(n).create() for n in names], **limits).run(graph)
    return report, {s.name: s for s in report.passes}


def chain_graph(*ops: str):
    """A ninopt Graph x -> ops[0] -> ops[1] -> ... -> y, node names n0, n1, ..., tensors t0, t1, ..."""
    from optimizer.ir import Graph

    g = Graph({"": 13})
    g.inputs = ["x"]
    prev = "x"
    for i, op in enumerate(ops):
        out = "y" if i == len(ops) - 1 else f"t{i}"
        g.add_node(op, [prev], [out], name=f"n{i}")
        prev = out
    g.outputs = ["y"]
    return g


def node_named(graph, name: str):
    """The node called ``name``, or None."""
    return next((n for n in graph.nodes if n.name == name), None)


def op_counts(graph) -> Counter:
    return Counter(n.op_type for n in graph.nodes)


def assert_second_run_changes_nothing(graph, *names: str) -> None:
    """Running the passes again converges at once, rewrites nothing and leaves the graph as it was."""
    version = graph.version
    nodes, inits = sorted(n.name for n in graph.nodes), list(graph.initializers)
    report, stats = run_pipeline(graph, *names)
    assert report.converged and report.iterations == 1
    assert all(s.rewrites == 0 for s in stats.values()), {n: s.rewrites for n, s in stats.items()}
    assert graph.version == version
    assert sorted(n.name for n in graph.nodes) == nodes and list(graph.initializers) == inits


# ---------------------------------------------------------------------- seeded weights
def random_initializer(name: str, shape, seed: int, dtype=np.float32) -> onnx.TensorProto:
    """A standard-normal initializer from its own seed."""
    return numpy_helper.from_array(np.random.default_rng(seed).standard_normal(shape).astype(dtype), name)


def randomize_conv_weights(graph, seed: int = 0) -> None:
    """Seeded He-scaled Conv and Gemm weights and biases, in place.

    The light zoo's constant 0.02 weights make every channel alike (its softmax output is
    uniform), which would hide a wrong channel order.
    """
    rng = np.random.default_rng(seed)
    for node in graph.toposort():
        if node.op_type not in ("Conv", "Gemm"):
            continue
        for name in node.inputs[1:3]:
            value = graph.const(name) if name else None
            if value is not None:
                fan_in = max(1, int(np.prod(value.shape[1:])))
                graph.set_const(name, (rng.standard_normal(value.shape) * np.sqrt(2 / fan_in)).astype(value.dtype))


def randomize_parameters(graph, seed: int = 0) -> None:
    """Seeded random values, by role, for every float parameter a Conv, Gemm, BN, Mul or Add reads, in place.

    Scaled so activations stay O(1) through deep nets; BN variances stay positive (|N| + 0.1).
    """
    rng = np.random.default_rng(seed)
    done: set[str] = set()
    for node in graph.toposort():
        for index, name in enumerate(node.inputs):
            value = graph.const(name) if name in graph.initializers and name not in done else None
            if value is None or value.dtype.kind != "f" or (node.op_type in ("Conv", "Gemm") and index == 0):
                continue
            if node.op_type == "BatchNormalization" and index:
                new = [None, rng.uniform(0.5, 1.5, value.shape), rng.standard_normal(value.shape) * 0.1,
                       rng.standard_normal(value.shape) * 0.1, np.abs(rng.standard_normal(value.shape)) + 0.1][index]
            elif node.op_type in ("Conv", "Gemm") and index == 1:
                fan_in = value.shape[0] if node.op_type == "Gemm" and not node.attr("transB", 0) \
                    else int(np.prod(value.shape[1:]))
                new = rng.standard_normal(value.shape) * np.sqrt(2.0 / fan_in)
            elif node.op_type == "Mul":
                new = rng.uniform(0.5, 1.5, value.shape)
            elif node.op_type in ("Conv", "Gemm", "Add"):
                new = rng.standard_normal(value.shape) * 0.1
            else:
                continue
            graph.set_const(name, new.astype(value.dtype))
            done.add(name)


def randomize_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """A copy of the model with every ConstantOfShape-made weight replaced by a seeded random initializer.

    Light zoo models build weights with ConstantOfShape (all equal), which makes outputs
    trivial. Conv and Gemm weights get He-scaled normals, BatchNormalization gets a
    positive variance and scales near 1, other per-channel parameters small values
    (multipliers near 1), so activations keep a realistic range through deep models.
    """
    rng = np.random.default_rng(seed)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, i))
    kept = []
    for node in graph.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in consts:
            kept.append(node)
            continue
        shape = tuple(int(d) for d in consts[node.input[0]])
        value = _weight(rng, shape, _final_use(node.output[0], readers))
        graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
    del graph.node[:]
    graph.node.extend(kept)
    return model


def _final_use(name: str, readers) -> tuple[str, int]:
    """(op, input index) of the first real reader, looking through Unsqueeze/Reshape."""
    node, index = (readers.get(name) or [(None, -1)])[0]
    if node is None:
        return "", -1
    if node.op_type in ("Unsqueeze", "Reshape") and index == 0:
        return _final_use(node.output[0], readers)
    return node.op_type, index


def _weight(rng, shape, use) -> np.ndarray:
    op, index = use
    if len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    if op == "BatchNormalization" and index == 4:
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if (op == "BatchNormalization" and index == 1) or op == "Mul":
        return (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    return (0.1 * rng.standard_normal(shape)).astype(np.float32)


# ---------------------------------------------------------------------- fold-batchnorm and fold-affine
#: The passes around the affine folds, as the fold-batchnorm and fold-affine tests run them.
FOLD_PIPELINE = ["fold-constants", "fold-batchnorm", "fold-affine", "eliminate-dead-nodes",
                 "eliminate-unused-initializers"]
#: (fold-batchnorm, fold-affine) rewrites per light-zoo model (the others have no BN and no per-channel Mul/Add).
FOLD_ZOO_REWRITES = {"densenet121": (59, 242), "inception_v2": (69, 138), "resnet50": (53, 0), "shufflenet": (49, 0)}


def he_weights(rng, *shape):
    """He-scaled normal weights (fan-in: every axis after the first)."""
    return rng.standard_normal(shape) * np.sqrt(2.0 / max(1, int(np.prod(shape[1:]))))


def bn_params(rng, prefix: str, c: int) -> dict[str, np.ndarray]:
    return {f"{prefix}_scale": rng.uniform(0.5, 1.5, c), f"{prefix}_bias": rng.standard_normal(c) * 0.1,
            f"{prefix}_mean": rng.standard_normal(c) * 0.1, f"{prefix}_var": np.abs(rng.standard_normal(c)) + 0.1}


def bn_node(x: str, prefix: str, out: str, **attrs) -> onnx.NodeProto:
    """A BatchNormalization reading the ``bn_params`` of ``prefix``."""
    return helper.make_node("BatchNormalization", [x] + [f"{prefix}_{p}" for p in ("scale", "bias", "mean", "var")],
                            [out], name=prefix, **attrs)


def assert_random_weights_agree(path: str, expected_rewrites: dict[str, int], seed: int = 0) -> None:
    """The zoo model with random weights: FOLD_PIPELINE fires as expected and the executor agrees within 1e-5.

    Random weights saturate the final Softmax (one-hot outputs would hide any error), so its
    input, the logits, is compared too.
    """
    from optimizer import onnx_io

    graph = onnx_io.load(path)
    run_passes(graph, "fold-constants")
    randomize_parameters(graph, seed)
    graph.outputs += [n.inputs[0] for n in graph.nodes if n.op_type == "Softmax"]
    original = graph.copy()
    stats = run_passes(graph, *FOLD_PIPELINE)
    assert {name: stats[name].rewrites for name in expected_rewrites} == expected_rewrites
    assert_agrees(original, graph, oracle=None, runners=("executor",), feeds=random_feeds(path, seed=seed))
