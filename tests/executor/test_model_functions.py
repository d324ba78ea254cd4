"""Model-local functions run as their bodies (the executor inlines them), matching onnxruntime."""

from pathlib import Path

import numpy as np

from optimizer import onnx_io
from optimizer.executor import Executor, unsupported_ops
from support import ort_run, random_feeds

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "control_flow.onnx"


def test_model_local_function_runs_and_matches_onnxruntime():
    graph = onnx_io.load(FIXTURE)
    assert any(n.domain == "ninopt.test" for n in graph.nodes), "fixture lost its function call"
    assert unsupported_ops(graph) == []
    feeds = random_feeds(FIXTURE)
    ours = Executor(graph).run(feeds)
    theirs = ort_run(FIXTURE, feeds)
    for name, expected in zip(graph.outputs, theirs, strict=True):
        np.testing.assert_allclose(ours[name], expected, rtol=1e-5, atol=1e-6)


def test_inlining_leaves_the_graph_itself_untouched():
    graph = onnx_io.load(FIXTURE)
    before = onnx_io.to_model_proto(graph).SerializeToString()
    Executor(graph)
    assert onnx_io.to_model_proto(graph).SerializeToString() == before
