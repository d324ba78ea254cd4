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
    path = LIGHT / f"light_{name}.onnx"
    tolerance = json.loads((ONNX_DATA / "real" / f"test_{name}" / "data.json").read_text())
    graph = onnx_io.load(path)
    outputs = run(graph, runner_feeds(onnx.load(str(path))))
    expected = numpy_helper.to_array(onnx.load_tensor(str(LIGHT / f"light_{name}_output_0.pb")))
    got = outputs[graph.outputs[0]]
    assert got.dtype == expected.dtype and got.shape == expected.shape
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
