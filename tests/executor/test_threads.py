"""BLAS thread count during runs, and the per-node cache of work done on weights."""

from __future__ import annotations

import numpy as np
import pytest
from threadpoolctl import threadpool_info

from optimizer import onnx_io
from optimizer.errors import NinoptError
from optimizer.executor import Executor, registry, run_node, set_blas_threads
from optimizer.ir import Node
from support import one_node_model

PROBE = ("test.ninopt", "BlasThreadsProbe")


def _blas_threads() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


@pytest.fixture
def probe(monkeypatch):
    """A kernel that records BLAS's thread count while it runs and passes its input through."""
    seen: list[list[int]] = []

    def record(ctx, x):
        seen.append(_blas_threads())
        return x

    monkeypatch.setitem(registry._KERNELS, PROBE, [registry.KernelSpec(PROBE[1], PROBE[0], 1, None, record)])
    return seen


@pytest.fixture
def default_counts():
    """BLAS's own thread counts, which runs must leave as they found them."""
    counts = _blas_threads()
    if not counts or min(counts) < 2:
        pytest.skip("needs a BLAS that threadpoolctl controls, running several threads by default")
    yield counts
    set_blas_threads(1)


def _probe_graph():
    x = np.ones((2, 2), np.float32)
    return onnx_io.load(one_node_model(PROBE[1], {"x": x}, domain=PROBE[0])), {"x": x}


def test_runs_hold_blas_at_one_thread_and_restore_it(probe, default_counts):
    graph, feeds = _probe_graph()
    Executor(graph).run(feeds)
    run_node(Node(PROBE[1], ["x"], ["y"], domain=PROBE[0]), [feeds["x"]], 1)
    assert probe == [[1] * len(default_counts)] * 2
    assert _blas_threads() == default_counts


def test_set_blas_threads_none_leaves_blas_alone(probe, default_counts):
    graph, feeds = _probe_graph()
    set_blas_threads(None)
    Executor(graph).run(feeds)
    set_blas_threads(3)
    Executor(graph).run(feeds)
    assert probe == [default_counts, [3] * len(default_counts)]
    assert _blas_threads() == default_counts
    with pytest.raises(NinoptError, match="at least 1"):
        set_blas_threads(0)


def test_a_run_inside_another_keeps_the_limit_until_the_outer_one_ends(monkeypatch, default_counts):
    """The limit is process-wide and counted: a run ending while another is in flight (a kernel folding
    a node, another Python thread) must not lift it early."""
    seen = []

    def nested(ctx, x):
        run_node(Node("Relu", ["x"], ["y"]), [x], 13)
        seen.append(_blas_threads())
        return x

    monkeypatch.setitem(registry._KERNELS, PROBE, [registry.KernelSpec(PROBE[1], PROBE[0], 1, None, nested)])
    graph, feeds = _probe_graph()
    Executor(graph).run(feeds)
    assert seen == [[1] * len(default_counts)]
    assert _blas_threads() == default_counts


def test_derived_work_is_kept_for_weights_only(monkeypatch):
    """Work on an initializer is done once per executor; a fed array is never remembered, since its
    owner may change it between runs."""
    made = []

    def transpose_once(ctx, x, w):
        return x @ ctx.derived("wt", w, lambda w: made.append(1) or w.T.copy())

    monkeypatch.setitem(registry._KERNELS, PROBE, [registry.KernelSpec(PROBE[1], PROBE[0], 1, None, transpose_once)])
    x, w = np.eye(2, dtype=np.float32), np.array([[1, 2], [3, 4]], np.float32)
    weights = Executor(onnx_io.load(one_node_model(PROBE[1], {"x": x}, domain=PROBE[0], initializers={"w": w})))
    assert all(np.array_equal(weights.run({"x": x})["y0"], w.T) for _ in range(3))
    assert len(made) == 1
    fed = Executor(onnx_io.load(one_node_model(PROBE[1], {"x": x, "w": w}, domain=PROBE[0])))
    assert np.array_equal(fed.run({"x": x, "w": w})["y0"], w.T)
    w[0, 0] = 9  # the caller changes its array in place: the next run must see it
    assert fed.run({"x": x, "w": w})["y0"][0, 0] == 9
    assert len(made) == 3


def test_derived_work_on_several_arrays_is_kept_only_when_all_are_weights():
    """A batch norm's fold reads four arrays: with all of them initializers it is made once; with the
    mean fed, a caller changing the mean in place changes the next run's output."""
    x = np.arange(8, dtype=np.float32).reshape(1, 2, 2, 2)
    params = {name: np.array([1.5, 0.5], np.float32) for name in ("scale", "bias", "mean", "var")}
    names = ["x", "scale", "bias", "mean", "var"]
    kept = Executor(onnx_io.load(one_node_model("BatchNormalization", {"x": x}, initializers=params,
                                                input_names=names)))
    step = kept._steps[0]
    first = kept.run({"x": x})["y0"]
    fold = step.ctx._derived[next(iter(step.ctx._derived))][1]
    assert np.array_equal(kept.run({"x": x})["y0"], first)
    assert step.ctx._derived[next(iter(step.ctx._derived))][1] is fold  # the second run reused the first's fold
    mean = params.pop("mean")
    fed = Executor(onnx_io.load(one_node_model("BatchNormalization", {"x": x, "mean": mean}, initializers=params,
                                               input_names=names)))
    assert np.array_equal(fed.run({"x": x, "mean": mean})["y0"], first)
    mean += 1  # in place: the next run must see it
    second = fed.run({"x": x, "mean": mean})["y0"]
    a = params["scale"] / np.sqrt(params["var"] + np.float32(1e-5))
    assert np.allclose(first - second, a.reshape(1, 2, 1, 1))
    assert fed._steps[0].ctx._derived == {}
