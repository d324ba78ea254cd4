"""fold-pad: a zero constant Pad read only by a Conv (or an AveragePool counting its pads) moves into ``pads``.

Fires on every Pad form (attribute before opset 11, inputs from 11, the ``axes`` input of
opset 18), refuses where zero padding is not what the reader does (MaxPool, count_include_pad=0,
reflect/edge, non-zero values) or cannot be expressed (batch/channel pads, crops, SAME),
changes nothing on a second run, and the numbers agree in the executor and onnxruntime.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import passes.fold_pad  # noqa: F401  (registers the pass)
from optimizer import onnx_io
from optimizer.ir import Graph
from optimizer.pipeline import PassManager
from optimizer.registry import get_pass
from support import assert_agrees, make_model

PASS = "fold-pad"
X_SHAPE = (1, 3, 7, 6)


def pad_model(pads, *, opset=13, mode="constant", value=None, axes=None, reader="Conv", reader_attrs=None,
              extra_output=False, pads_as_input=False) -> onnx.ModelProto:
    """x -> Pad -> reader -> y. ``pads`` is in ONNX order (all begins, then all ends) over ``axes`` or all axes."""
    rng = np.random.default_rng(0)
    inits, inputs = [], [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(X_SHAPE))]
    attrs = {} if mode == "constant" else {"mode": mode}
    if opset < 11:
        attrs["pads"] = list(pads)
        if value is not None:
            attrs["value"] = float(value)
        pad_inputs = ["x"]
    else:
        pad_inputs = ["x", "pads"]
        if pads_as_input:
            inputs.append(helper.make_tensor_value_info("pads", TensorProto.INT64, [len(pads)]))
        else:
            inits.append(numpy_helper.from_array(np.array(pads, np.int64), "pads"))
        if value is not None or axes is not None:
            pad_inputs.append("" if value is None else "value")
            if value is not None:
                inits.append(numpy_helper.from_array(np.array(value, np.float32), "value"))
        if axes is not None:
            pad_inputs.append("axes")
            inits.append(numpy_helper.from_array(np.array(axes, np.int64), "axes"))
    nodes = [helper.make_node("Pad", pad_inputs, ["padded"], name="pad", **attrs)]
    reader_attrs = dict(reader_attrs or {})
    if reader == "Conv":
        inits.append(numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w"))
        inits.append(numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b"))
        nodes.append(helper.make_node("Conv", ["padded", "w", "b"], ["y"], name="reader", **reader_attrs))
    else:
        reader_attrs.setdefault("kernel_shape", [3, 3])
        nodes.append(helper.make_node(reader, ["padded"], ["y"], name="reader", **reader_attrs))
    outputs = ["y", "padded"] if extra_output else ["y"]
    return make_model(nodes, inputs, [(o, [None] * 4) for o in outputs], inits, opset=opset, ir_version=8, name="pad")


def run_pass(g: Graph):
    return PassManager([get_pass(PASS).create()]).run(g).passes[0]


def reader(g: Graph):
    return next(n for n in g.nodes if n.name == "reader")


def assert_folds(model: onnx.ModelProto, expected_pads, *, auto_pad_gone=True) -> Graph:
    g = onnx_io.load(model)
    stats = run_pass(g)
    assert (stats.rewrites, dict(stats.refusals)) == (1, {})
    assert [n.op_type for n in g.nodes] == [model.graph.node[1].op_type]
    node = reader(g)
    assert node.inputs[0] == "x" and node.attr("pads") == expected_pads
    if auto_pad_gone:
        assert "auto_pad" not in node.attrs
    assert_agrees(model, g, seed=1)
    version = g.version
    assert run_pass(g).rewrites == 0 and g.version == version
    return g


# ---------------------------------------------------------------------- fires
@pytest.mark.parametrize("opset", [10, 11, 13])
def test_zero_pad_folds_into_conv(opset):
    assert_folds(pad_model([0, 0, 1, 2, 0, 0, 3, 0], opset=opset), [1, 2, 3, 0])


@pytest.mark.parametrize("axes", [[2, 3], [-2, -1], [3, 2]])
def test_opset18_axes_input_folds(axes):
    pads = [1, 2, 2, 0] if axes != [3, 2] else [2, 1, 0, 2]  # same padding, axes listed either way
    assert_folds(pad_model(pads, opset=18, axes=axes), [1, 2, 2, 0])


def test_explicit_zero_value_folds():
    assert_folds(pad_model([0, 0, 1, 1, 0, 0, 1, 1], value=0.0), [1, 1, 1, 1])


def test_pads_add_to_the_conv_pads_and_strides_stay():
    model = pad_model([0, 0, 2, 0, 0, 0, 0, 1], reader_attrs={"pads": [1, 1, 1, 1], "strides": [2, 2]})
    assert_folds(model, [3, 1, 1, 2])


def test_valid_conv_takes_the_pads_and_drops_auto_pad():
    model = pad_model([0, 0, 1, 1, 0, 0, 1, 1], reader_attrs={"auto_pad": "VALID"})
    assert_folds(model, [1, 1, 1, 1])


def test_average_pool_counting_pads_folds():
    model = pad_model([0, 0, 1, 0, 0, 0, 2, 1], reader="AveragePool",
                      reader_attrs={"count_include_pad": 1, "pads": [0, 1, 0, 0]})
    assert_folds(model, [1, 1, 2, 1])


# ---------------------------------------------------------------------- refuses
@pytest.mark.parametrize("kwargs,reason", [
    (dict(reader="MaxPool"), "MaxPool pads with -inf, so a zero Pad cannot move into it"),
    (dict(reader="AveragePool"), "AveragePool leaves its pads out of the average (count_include_pad=0)"),
    (dict(reader="AveragePool", reader_attrs={"count_include_pad": 1, "ceil_mode": 1, "strides": [2, 2]}),
     "ceil_mode pooling: moving the pad could change the output size"),
    (dict(mode="reflect"), "the Pad's mode is reflect, not constant zeros"),
    (dict(mode="edge"), "the Pad's mode is edge, not constant zeros"),
    (dict(value=0.5), "the Pad's value is 0.5, not zero"),
    (dict(opset=10, value=-1.0), "the Pad's value is -1, not zero"),
    (dict(reader_attrs={"auto_pad": "SAME_UPPER"}), "the Conv uses auto_pad SAME_UPPER"),
    (dict(extra_output=True), "the Pad's output 'padded' is a graph output"),
    (dict(pads_as_input=True), "the pads, pad value or axes are not constant"),
])
def test_refusals(kwargs, reason):
    model = pad_model([0, 0, 1, 1, 0, 0, 1, 1], **kwargs)
    g = onnx_io.load(model)
    version = g.version
    stats = run_pass(g)
    assert dict(stats.refusals) == {reason: 1}
    assert stats.rewrites == 0 and g.version == version and len(g) == 2


@pytest.mark.parametrize("pads,reason", [
    ([0, 1, 1, 1, 0, 0, 1, 1], "the Pad pads the batch or channel axis"),
    ([1, 0, 0, 0, 0, 0, 0, 0], "the Pad pads the batch or channel axis"),
    ([0, 0, -1, 1, 0, 0, 1, 1], "the Pad crops (negative pads)"),
])
def test_pads_it_cannot_express_are_refused(pads, reason):
    """An AveragePool reader: unlike a Conv's weights, it accepts any channel count."""
    g = onnx_io.load(pad_model(pads, reader="AveragePool", reader_attrs={"count_include_pad": 1}))
    stats = run_pass(g)
    assert dict(stats.refusals) == {reason: 1}
