"""Shared test fixtures: the light model zoo, the fixtures folder and an onnxruntime oracle.

The light zoo comes from the installed ``onnx`` package (``onnx/backend/test/data/light``);
it is never copied into this repository. Helpers are exposed both as plain functions
(``ort_run``, ``random_feeds``) and as pytest fixtures of the same name, so test modules
in sub-folders need no import path tricks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

LIGHT_ZOO_DIR = os.path.join(os.path.dirname(onnx.__file__), "backend", "test", "data", "light")
#: The 9 light-zoo models (paths into the installed onnx package).
LIGHT_MODELS = sorted(os.path.join(LIGHT_ZOO_DIR, f) for f in os.listdir(LIGHT_ZOO_DIR)
                      if f.startswith("light_") and f.endswith(".onnx")) if os.path.isdir(LIGHT_ZOO_DIR) else []
FIXTURES_DIR = str(Path(__file__).resolve().parent.parent / "fixtures")


def light_model_id(path: str) -> str:
    return os.path.basename(path)[len("light_"):-len(".onnx")]


def parametrize_light_models(argname: str = "light_model_path"):
    """``@parametrize_light_models()`` runs a test once per light-zoo model (ids: alexnet, resnet50, ...)."""
    return pytest.mark.parametrize(argname, LIGHT_MODELS, ids=[light_model_id(p) for p in LIGHT_MODELS])


# ---------------------------------------------------------------------- onnxruntime oracle
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


def ort_session(model: Any):
    import onnxruntime as ort

    proto, path = _as_model_proto(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    # ORT's own graph rewrites would blur what is being compared: run the graph as written.
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(path if path is not None else proto.SerializeToString(), options,
                                providers=["CPUExecutionProvider"])


def ort_run(model: Any, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run a model (path, ModelProto or Graph) in onnxruntime on CPU with one thread; all outputs, in order."""
    return ort_session(model).run(None, feeds)


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


# ---------------------------------------------------------------------- pytest fixtures
@pytest.fixture(scope="session")
def light_zoo_dir() -> str:
    if not os.path.isdir(LIGHT_ZOO_DIR):
        pytest.skip("the installed onnx package has no light model zoo")
    return LIGHT_ZOO_DIR


@pytest.fixture(scope="session")
def light_models(light_zoo_dir) -> list[str]:
    assert len(LIGHT_MODELS) == 9, f"expected the 9 light-zoo models, found {len(LIGHT_MODELS)}"
    return list(LIGHT_MODELS)


@pytest.fixture(params=LIGHT_MODELS, ids=[light_model_id(p) for p in LIGHT_MODELS])
def light_model(request) -> str:
    """Parametrized: one light-zoo model path per test instance."""
    return request.param


@pytest.fixture(scope="session")
def fixtures_dir() -> str:
    return FIXTURES_DIR


@pytest.fixture(name="ort_run", scope="session")
def _ort_run_fixture():
    return ort_run


@pytest.fixture(name="random_feeds", scope="session")
def _random_feeds_fixture():
    return random_feeds


def assert_rewrite_agrees(original: onnx.ModelProto, graph: Any, output: str = "y", seed: int = 0) -> None:
    """The rewritten graph is checker-valid and, in onnxruntime and in ninopt's executor, matches
    the original (run in onnxruntime) within relative 1e-5 on seeded random inputs."""
    from optimizer import onnx_io
    from optimizer.executor import run as execute

    feeds = random_feeds(original, seed=seed)
    (expected,) = ort_run(original, feeds)
    rewritten = onnx_io.to_model_proto(graph)
    onnx.checker.check_model(rewritten, full_check=True)
    (by_ort,) = ort_run(rewritten, feeds)
    by_executor = execute(graph, feeds)[output]
    scale = np.max(np.abs(expected))
    assert by_ort.shape == by_executor.shape == expected.shape
    assert np.max(np.abs(by_ort - expected)) <= 1e-5 * scale
    assert np.max(np.abs(by_executor - expected)) <= 1e-5 * scale
