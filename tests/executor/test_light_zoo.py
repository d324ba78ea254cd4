"""The 9 light zoo models reproduce the outputs onnx ships for them, and agree with onnxruntime on real weights."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from optimizer import onnx_io
from optimizer.executor import run
from support import ONNX_DATA, randomize_weights, run_ort, run_ours

LIGHT = ONNX_DATA / "light"
MODELS = sorted(p.stem.removeprefix("light_") for p in LIGHT.glob("light_*.onnx"))


def dummy_input(value_info: onnx.ValueInfoProto) -> np.ndarray:
    """onnx's backend runner input for light models: generate_dummy_data(x, seed=0, random=False)."""
    shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in value_info.type.tensor_type.shape.dim)
    n = np.prod(shape)
    return (np.arange(n).reshape(shape) / n).astype(np.float32)


def runner_feeds(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    inits = {i.name for i in model.graph.initializer}
    return {vi.name: dummy_input(vi) for vi in model.graph.input if vi.name not in inits}


def test_all_nine_light_models_are_present():
    assert MODELS == ["bvlc_alexnet", "densenet121", "inception_v1", "inception_v2", "resnet50", "shufflenet",
                      "squeezenet", "vgg19", "zfnet512"]


@pytest.mark.parametrize("name", MODELS)
def test_light_model_matches_shipped_output(name):
    """The float32 run reproduces the shipped output, unless that output is a softmax of logits so
    large that float32 cannot resolve them (a step of 1 or more between neighbouring values): then
    the softmax is decided by rounding (squeezenet: the constant weights drive all 1,000 logits to
    9.5e9, where float32 values are 1,024 apart; BLAS's summation order, which depends on its thread
    count, picks a winner). There the float64 truth must reproduce the shipped output and the
    float32 logits must agree with the truth's to the suite's own tolerance (six of the nine models'
    logits are that large: 262,144 apart in alexnet, 2.4e24 in vgg19)."""
    path = LIGHT / f"light_{name}.onnx"
    tolerance = json.loads((ONNX_DATA / "real" / f"test_{name}" / "data.json").read_text())
    graph = onnx_io.load(path)
    feeds = runner_feeds(onnx.load(str(path)))
    expected = numpy_helper.to_array(onnx.load_tensor(str(LIGHT / f"light_{name}_output_0.pb")))
    final = graph.producer(graph.outputs[0])
    watched = [graph.outputs[0]] + ([final.inputs[0]] if final.op_type == "Softmax" else [])
    outputs = run(graph, feeds, outputs=watched)
    got = outputs[graph.outputs[0]]
    assert got.dtype == expected.dtype and got.shape == expected.shape
    logits = outputs.get(final.inputs[0])
    if logits is not None and np.spacing(np.abs(logits).max()) >= 1:
        truth = run(graph, feeds, outputs=watched, compute_dtype=np.float64)
        np.testing.assert_allclose(logits, truth[final.inputs[0]], rtol=tolerance["rtol"], atol=tolerance["atol"])
        got = truth[graph.outputs[0]]
    np.testing.assert_allclose(got, expected, rtol=tolerance["rtol"], atol=tolerance["atol"])


@pytest.mark.parametrize("name", ["squeezenet", "inception_v1", "inception_v2", "densenet121"])
def test_light_model_with_random_weights_matches_onnxruntime(name):
    """Shipped weights are constant (outputs near uniform); random He-scaled weights make the check bite."""
    model = randomize_weights(onnx.load(str(LIGHT / f"light_{name}.onnx")), seed=1)
    feeds = {k: np.random.default_rng(0).standard_normal(v.shape).astype(np.float32)
             for k, v in runner_feeds(model).items()}
    got, = run_ours(model, feeds)
    want, = run_ort(model, feeds, threads=2)
    assert np.abs(want).max() > 1e-3  # not a trivially flat output
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-6 * np.abs(want).max())
    assert got.reshape(-1).argmax() == want.reshape(-1).argmax()
