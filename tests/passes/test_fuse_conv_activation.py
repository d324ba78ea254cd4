"""fuse-conv-activation: Conv + activation -> com.microsoft FusedConv.

onnxruntime implements FusedConv on CPU and ninopt's executor has a kernel for it, so both
check the fused models.
"""

from __future__ import annotations

import numpy as np
import pytest
from onnx import helper, numpy_helper

import passes.fuse_conv_activation  # noqa: F401  (registers the pass; not in the default pipeline)
from optimizer import onnx_io
from optimizer.executor import lookup
from support import (INCEPTION, assert_agrees, assert_second_run_changes_nothing, light_model, make_model, op_counts,
                     random_initializer, randomize_conv_weights, run_passes)

PASS = "fuse-conv-activation"
FLOAT_MAX = float(np.finfo(np.float32).max)


def conv_act_model(op: str, attrs=None, *, opset: int = 13, act_inputs=(), extra=(), extra_inputs=(),
                   extra_reader: bool = False, elem_type: int = 1):
    """x(1x3x7x7) -> Conv 3x3 (pads 1, stride 2, bias) -> ``op`` -> y.

    ``act_inputs`` follow the conv output (initializers "lo" = -0.5 and "hi" = 0.75 exist
    unless the ``extra`` nodes, placed first, or ``extra_inputs`` provide them).
    """
    dtype = np.float64 if elem_type == 11 else np.float32
    nodes = [*extra,
             helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1],
                              strides=[2, 2]),
             helper.make_node(op, ["c", *act_inputs], ["y"], name="act", **(attrs or {}))]
    outputs = [("y", [1, 5, 4, 4])] + ([("c", [1, 5, 4, 4])] if extra_reader else [])
    provided = {o for n in extra for o in n.output} | {name for name, _ in extra_inputs}
    inits = [random_initializer("w", (5, 3, 3, 3), seed=0, dtype=dtype),
             random_initializer("b", (5,), seed=1, dtype=dtype)]
    inits += [numpy_helper.from_array(np.asarray(v, np.float32), name) for name, v in (("lo", -0.5), ("hi", 0.75))
              if name in act_inputs and name not in provided]
    return make_model(nodes, [("x", [1, 3, 7, 7]), *extra_inputs], outputs, inits, opset=opset, elem_type=elem_type)


def test_executor_has_a_fusedconv_kernel():
    assert lookup("com.microsoft", "FusedConv", 1) is not None


CASES = {
    "relu": (dict(op="Relu"), []),
    "tanh": (dict(op="Tanh"), []),
    "sigmoid": (dict(op="Sigmoid"), []),
    "leaky_relu": (dict(op="LeakyRelu", attrs={"alpha": 0.1}), [0.1]),
    "leaky_relu_default": (dict(op="LeakyRelu"), [0.01]),
    "hard_sigmoid": (dict(op="HardSigmoid", attrs={"alpha": 0.3, "beta": 0.4}), [0.3, 0.4]),
    "clip_opset9_attrs": (dict(op="Clip", attrs={"min": -0.5, "max": 0.5}, opset=9), [-0.5, 0.5]),
    "clip_opset9_max_only": (dict(op="Clip", attrs={"max": 6.0}, opset=9), [-FLOAT_MAX, 6.0]),
    "clip_opset13_inputs": (dict(op="Clip", act_inputs=("lo", "hi")), [-0.5, 0.75]),
    "clip_opset13_max_only": (dict(op="Clip", act_inputs=("", "hi")), [-FLOAT_MAX, 0.75]),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_fires_on_each_activation(case):
    kwargs, params = CASES[case]
    model = conv_act_model(**kwargs)
    graph = onnx_io.load(model)
    assert run_passes(graph, PASS)[PASS].rewrites == 1
    (fused,) = graph.nodes
    assert (fused.op_type, fused.domain, fused.name, fused.inputs, fused.outputs) == \
           ("FusedConv", "com.microsoft", "conv", ["x", "w", "b"], ["y"])
    assert fused.attrs["activation"] == kwargs["op"]
    assert fused.attrs.get("activation_params", []) == pytest.approx(params)
    assert (fused.attrs["strides"], fused.attrs["pads"]) == ([2, 2], [1, 1, 1, 1])
    assert graph.opsets["com.microsoft"] == 1
    assert_agrees(model, graph, seed=1)


def test_clip_bounds_from_a_constant_node():
    model = conv_act_model("Clip", act_inputs=("lo", "hi"),
                           extra=[helper.make_node("Constant", [], ["lo"], value_float=0.0),
                                  helper.make_node("Constant", [], ["hi"], value_float=6.0)])
    graph = onnx_io.load(model)
    assert run_passes(graph, PASS)[PASS].rewrites == 1
    fused = graph.producer("y")
    assert fused.op_type == "FusedConv" and fused.attrs["activation_params"] == [0.0, 6.0]
    assert_agrees(model, graph, seed=1)


def test_fires_on_inception_module_and_keeps_an_existing_opset():
    graph = onnx_io.load(INCEPTION)
    graph.opsets["com.microsoft"] = 1
    assert run_passes(graph, PASS)[PASS].rewrites == 6
    assert op_counts(graph) == {"FusedConv": 6, "MaxPool": 1, "Concat": 1}
    assert graph.opsets == {"": 13, "com.microsoft": 1}
    assert_agrees(INCEPTION, graph, seed=1)


# ---------------------------------------------------------------------- refuses
def test_refuses_clip_with_non_constant_bounds():
    model = conv_act_model("Clip", act_inputs=("lo",), extra_inputs=[("lo", [])])
    graph = onnx_io.load(model)
    version = graph.version
    stats = run_passes(graph, PASS)[PASS]
    assert stats.refusals["Clip bounds are not constant"] == 1 and stats.rewrites == 0
    assert graph.version == version


def test_refuses_a_conv_output_read_twice():
    graph = onnx_io.load(conv_act_model("Relu", extra_reader=True))
    stats = run_passes(graph, PASS)[PASS]
    assert stats.refusals["the Conv's output 'c' is a graph output"] == 1
    assert op_counts(graph) == {"Conv": 1, "Relu": 1} and "com.microsoft" not in graph.opsets


def test_refuses_float64():
    graph = onnx_io.load(conv_act_model("Relu", elem_type=11))
    stats = run_passes(graph, PASS)[PASS]
    assert stats.refusals["FusedConv runs float32 only and the conv's element type is float64"] == 1


# ---------------------------------------------------------------------- idempotent
def test_second_run_changes_nothing():
    graph = onnx_io.load(INCEPTION)
    assert run_passes(graph, PASS)[PASS].rewrites == 6
    assert_second_run_changes_nothing(graph, PASS)


# ---------------------------------------------------------------------- light zoo
def test_light_squeezenet():
    """Every Conv + Relu of SqueezeNet fuses (opset 9); numbers hold with random weights."""
    graph = onnx_io.load(light_model("squeezenet"))
    run_passes(graph, "fold-constants")
    randomize_conv_weights(graph)
    reference = onnx_io.to_model_proto(graph)
    assert run_passes(graph, PASS)[PASS].rewrites == 26
    assert op_counts(graph)["FusedConv"] == 26 and "Conv" not in op_counts(graph)
    assert_agrees(reference, graph, seed=1)
