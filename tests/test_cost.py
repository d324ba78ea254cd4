"""Cost model tests: shapes checked against onnxruntime, MACs against the textbook formulas."""

from __future__ import annotations

import json
import math
import os
from functools import lru_cache

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer import onnx_io
from optimizer.cost import analyze_costs, node_macs
from optimizer.errors import NinoptError
from optimizer.shape_inference import infer_shapes

ort = pytest.importorskip("onnxruntime")

LIGHT = os.path.join(os.path.dirname(onnx.__file__), "backend/test/data/light")
LIGHT_MODELS = sorted(f for f in os.listdir(LIGHT) if f.endswith(".onnx"))


def _session(model: onnx.ModelProto):
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])


@lru_cache(maxsize=None)
def ort_shapes(path: str) -> dict[str, tuple[int, ...]]:
    """Actual shape of every node output, from running onnxruntime on zero inputs."""
    model = onnx.load(path)
    listed = {o.name for o in model.graph.output}
    for node in model.graph.node:
        for out in node.output:
            if out and out not in listed:
                model.graph.output.append(helper.make_empty_tensor_value_info(out))
                listed.add(out)
    initializers = {t.name for t in model.graph.initializer}  # IR v3: also graph inputs, not fed
    feeds = {vi.name: np.zeros([d.dim_value for d in vi.type.tensor_type.shape.dim],
                               helper.tensor_dtype_to_np_dtype(vi.type.tensor_type.elem_type))
             for vi in model.graph.input if vi.name not in initializers}
    session = _session(model)
    names = [o.name for o in session.get_outputs()]
    shapes = {name: tuple(value.shape) for name, value in zip(names, session.run(names, feeds))}
    shapes.update({t.name: tuple(t.dims) for t in model.graph.initializer})
    shapes.update({name: value.shape for name, value in feeds.items()})
    return shapes


def independent_macs(path: str) -> int:
    """Conv: N·Cout·Hout·Wout·(Cin/groups)·kh·kw and Gemm: M·N·K, from onnxruntime's shapes."""
    shapes = ort_shapes(path)
    total = 0
    for node in onnx.load(path).graph.node:
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            n, cout, *spatial_out = shapes[node.output[0]]
            cin = shapes[node.input[0]][1]
            kernel = shapes[node.input[1]][2:]
            total += n * cout * math.prod(spatial_out) * (cin // attrs.get("group", 1)) * math.prod(kernel)
        elif node.op_type == "Gemm":
            a, b = shapes[node.input[0]], shapes[node.input[1]]
            m, k = (a[1], a[0]) if attrs.get("transA") else a
            n = b[0] if attrs.get("transB") else b[1]
            total += m * n * k
        else:
            assert node.op_type not in ("ConvTranspose", "MatMul")  # would need counting here too
    return total


# ---------------------------------------------------------------------- light zoo
@pytest.mark.parametrize("name, approx", [("light_inception_v1.onnx", 1.43e9), ("light_resnet50.onnx", 4.09e9)])
def test_total_macs_match_independent_count(name, approx):
    path = os.path.join(LIGHT, name)
    graph = onnx_io.load(path)
    (data,) = graph.feed_inputs()
    report = analyze_costs(graph, input_shapes={data: (1, 3, 224, 224)})
    assert report.total_macs == independent_macs(path)
    assert report.total_macs == pytest.approx(approx, rel=0.005)


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_zoo_shapes_match_onnxruntime(name):
    """Every tensor onnxruntime produced has the shape our rules infer (onnx inference is not needed)."""
    path = os.path.join(LIGHT, name)
    graph = onnx_io.load(path)
    shapes = infer_shapes(graph, use_onnx=False)
    actual = ort_shapes(path)
    wrong = {t: (shapes.get(t), s) for t, s in actual.items() if shapes.get(t) != s}
    assert not wrong
    report = analyze_costs(graph)
    assert report.total_macs == independent_macs(path)
    assert not report.unknown


def test_constant_of_shape_weights_resolved_without_touching_the_graph():
    path = os.path.join(LIGHT, "light_bvlc_alexnet.onnx")
    graph = onnx_io.load(path)
    table = {name: t.shape for name, t in graph.tensors.items()}
    assert table["conv1_w_0"] is None  # the model itself does not say
    shapes = infer_shapes(graph, use_onnx=False)
    assert shapes["conv1_w_0"] == (96, 3, 11, 11)
    assert shapes["fc6_w_0"] == (4096, 9216)
    report = analyze_costs(graph, input_shapes={"data_0": (1, 3, 224, 224)})
    conv1 = next(n for n in report.nodes if n.op_type == "Conv")
    assert conv1.params == 96 * 3 * 11 * 11 + 96
    assert conv1.activation_bytes == 1 * 96 * 54 * 54 * 4
    weights = next(n for n in report.nodes if n.name == "conv1_w_0")  # unnamed node: named for its output
    assert weights.op_type == "ConstantOfShape" and weights.activation_bytes == 0 and weights.params == 0
    assert {name: t.shape for name, t in graph.tensors.items()} == table
    with open(path, "rb") as f:
        assert onnx_io.to_model_proto(graph).SerializeToString() == f.read()


def test_report_json_shape_and_totals():
    graph = onnx_io.load(os.path.join(LIGHT, "light_squeezenet.onnx"))
    data = json.loads(json.dumps(analyze_costs(graph).to_dict()))
    assert set(data) == {"total", "nodes", "input_shapes", "chosen_by_default"}
    assert set(data["total"]) == {"macs", "params", "activation_bytes", "macs_partial", "unknown_macs_nodes",
                                  "params_partial", "unknown_params_nodes", "activation_bytes_partial",
                                  "unknown_activation_bytes_nodes"}
    assert not any(data["total"][f"{key}_partial"] for key in ("macs", "params", "activation_bytes"))
    assert {k for n in data["nodes"] for k in n} == {"name", "op_type", "macs", "params", "output_shapes",
                                                     "activation_bytes"}
    for key in ("macs", "params", "activation_bytes"):
        assert data["total"][key] == sum(n[key] for n in data["nodes"]) > 0
    assert all(n["macs"] == 0 for n in data["nodes"] if n["op_type"] not in ("Conv", "Gemm"))
    first_conv = next(n for n in data["nodes"] if n["op_type"] == "Conv")
    assert first_conv["output_shapes"] == [[1, 64, 111, 111]]


# ---------------------------------------------------------------------- single-node models vs onnxruntime
def _single(op, inputs, weights=(), outputs=1, opset=17, **attrs):
    """A one-node model: ``inputs`` are (name, shape) graph inputs, ``weights`` (name, shape) initializers."""
    out_names = [f"y{i}" for i in range(outputs)]
    node = helper.make_node(op, [n for n, _ in inputs] + [n for n, _ in weights], out_names, **attrs)
    graph = helper.make_graph(
        [node], "g", [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs],
        [helper.make_empty_tensor_value_info(n) for n in out_names],
        [numpy_helper.from_array(np.zeros(s, np.float32), n) for n, s in weights])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def check_against_ort(model, **pins):
    """Our shapes (rules alone and with onnx) equal onnxruntime's; returns the graph and its node."""
    feeds = {vi.name: np.zeros(pins.get(vi.name) or [d.dim_value for d in vi.type.tensor_type.shape.dim], np.float32)
             for vi in model.graph.input}
    session = _session(model)
    actual = {o.name: v.shape for o, v in zip(session.get_outputs(), session.run(None, feeds))}
    graph = onnx_io.load(model)
    for use_onnx in (False, True):
        shapes = infer_shapes(graph, pins or None, use_onnx=use_onnx)
        assert {name: shapes[name] for name in actual} == actual, f"use_onnx={use_onnx}"
    return graph, graph.nodes[0]


CONV_CASES = [
    dict(x=(1, 4, 15, 17), w=(6, 2, 3, 3), group=2, strides=[2, 1], dilations=[2, 1], pads=[1, 0, 2, 1]),
    dict(x=(1, 3, 15, 16), w=(5, 3, 5, 4), strides=[2, 3], auto_pad="SAME_UPPER"),
    dict(x=(2, 3, 14, 10), w=(4, 3, 2, 3), strides=[3, 3], auto_pad="SAME_LOWER"),
    dict(x=(1, 3, 19, 20), w=(4, 3, 3, 3), strides=[2, 2], dilations=[2, 3], auto_pad="VALID"),
    dict(x=(2, 8, 9, 9), w=(8, 1, 3, 3), group=8, pads=[1, 1, 1, 1]),  # depthwise
    dict(x=(1, 3, 20), w=(4, 3, 5), strides=[3]),  # 1-D
]


@pytest.mark.parametrize("case", CONV_CASES)
def test_conv(case):
    x, w = case.pop("x"), case.pop("w")
    graph, node = check_against_ort(_single("Conv", [("x", x)], [("w", w)], **case))
    y = infer_shapes(graph)["y0"]
    textbook = y[0] * y[1] * math.prod(y[2:]) * (x[1] // case.get("group", 1)) * math.prod(w[2:])
    assert node_macs(graph, node, infer_shapes(graph)) == textbook
    assert analyze_costs(graph).nodes[0].params == math.prod(w)


CONV_TRANSPOSE_CASES = [
    dict(x=(1, 4, 5, 6), w=(4, 3, 3, 3), strides=[2, 3], pads=[1, 0, 1, 1], output_padding=[1, 2]),
    dict(x=(1, 4, 5, 6), w=(4, 3, 3, 3), group=2, strides=[2, 2], output_shape=[11, 13]),
    dict(x=(2, 2, 4, 5), w=(2, 3, 3, 2), strides=[2, 2], dilations=[2, 1], auto_pad="SAME_UPPER"),
    dict(x=(1, 2, 7), w=(2, 5, 4), strides=[3], auto_pad="VALID"),
]


@pytest.mark.parametrize("case", CONV_TRANSPOSE_CASES)
def test_conv_transpose(case):
    x, w = case.pop("x"), case.pop("w")
    graph, node = check_against_ort(_single("ConvTranspose", [("x", x)], [("w", w)], **case))
    # each input element is multiplied by its group's (Cout/groups)·kh·kw weights; w is (Cin, Cout/groups, kh, kw)
    assert node_macs(graph, node, infer_shapes(graph)) == math.prod(x) * w[1] * math.prod(w[2:])


def test_gemm_transposed_operands():
    graph, node = check_against_ort(_single("Gemm", [("a", (5, 3))], [("b", (4, 5)), ("c", (4,))],
                                            transA=1, transB=1))
    assert infer_shapes(graph)["y0"] == (3, 4)
    assert node_macs(graph, node, infer_shapes(graph)) == 3 * 4 * 5
    assert analyze_costs(graph).nodes[0].params == 4 * 5 + 4


@pytest.mark.parametrize("a, b, out", [((2, 1, 3, 4), (5, 4, 6), (2, 5, 3, 6)), ((4,), (2, 4, 6), (2, 6)),
                                       ((2, 3, 4), (4,), (2, 3)), ((4,), (4,), ())])
def test_matmul_batched_and_vectors(a, b, out):
    graph, node = check_against_ort(_single("MatMul", [("a", a), ("b", b)]))
    assert infer_shapes(graph)["y0"] == out
    assert node_macs(graph, node, infer_shapes(graph)) == math.prod(out) * a[-1]


POOL_CASES = [
    ("MaxPool", (1, 2, 10, 11), dict(kernel_shape=[3, 2], strides=[2, 3], pads=[1, 0, 1, 0], dilations=[2, 1],
                                     ceil_mode=1)),
    ("MaxPool", (1, 1, 5), dict(kernel_shape=[2], strides=[2], pads=[1, 1], ceil_mode=1)),  # window in padding
    ("AveragePool", (1, 1, 5), dict(kernel_shape=[2], strides=[2], pads=[1, 1], ceil_mode=1)),
    ("AveragePool", (1, 2, 10, 11), dict(kernel_shape=[3, 3], strides=[2, 2], pads=[0, 0, 1, 1], ceil_mode=1)),
    ("MaxPool", (1, 3, 9, 10), dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_UPPER")),
    ("AveragePool", (1, 3, 9, 10), dict(kernel_shape=[2, 3], strides=[2, 2], auto_pad="SAME_LOWER")),
    ("MaxPool", (1, 3, 9, 10), dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="VALID")),
    ("GlobalAveragePool", (2, 3, 7, 5), {}),
    ("GlobalMaxPool", (2, 3, 7), {}),
]


@pytest.mark.parametrize("op, x, attrs", POOL_CASES)
def test_pooling(op, x, attrs):
    graph, node = check_against_ort(_single(op, [("x", x)], opset=19, **attrs))
    assert node_macs(graph, node) == 0  # pooling is not multiply-accumulate work by our convention


def test_maxpool_indices_output_has_output_shape():
    graph, _ = check_against_ort(_single("MaxPool", [("x", (1, 2, 7, 7))], outputs=2, kernel_shape=[2, 2],
                                         strides=[2, 2]))
    assert infer_shapes(graph, use_onnx=False)["y1"] == (1, 2, 3, 3)


@pytest.mark.parametrize("opset", [11, 17])  # Unsqueeze/Squeeze axes: attribute before 13, input from 13
def test_shape_ops(opset):
    def axes(name, values):
        return {"axes": values} if opset < 13 else {"inputs": [name]}

    consts = {"sq_axes": [2], "unsq_axes": [0, -1], "target": [0, -1, 2]}
    specs = [("Flatten", ["x"], {"axis": -2}), ("Squeeze", ["x"], {}),
             ("Squeeze", ["x"], axes("sq_axes", [2])), ("Unsqueeze", ["x"], axes("unsq_axes", [0, -1])),
             ("Transpose", ["x"], {}), ("Concat", ["x", "x"], {"axis": -1}), ("Reshape", ["x", "target"], {}),
             ("Sum", ["x", "b"], {}), ("Where", ["cond", "x", "b"], {}), ("Shape", ["x"], {})]
    nodes = []
    for i, (op, inputs, attrs) in enumerate(specs):
        attrs = dict(attrs)
        nodes.append(helper.make_node(op, inputs + attrs.pop("inputs", []), [f"y{i}"], **attrs))
    nodes.append(helper.make_node("ConstantOfShape", [f"y{len(specs) - 1}"], ["filled"]))
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 1, 4])],
        [helper.make_empty_tensor_value_info(n.output[0]) for n in nodes],
        [numpy_helper.from_array(np.array(v, np.int64), k) for k, v in consts.items()]
        + [numpy_helper.from_array(np.zeros((3, 1, 1), np.float32), "b"),
           numpy_helper.from_array(np.zeros((1, 1, 1), bool), "cond")])
    check_against_ort(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))


# ---------------------------------------------------------------------- symbolic dims and pins
def _symbolic_flatten_model():
    """Conv on a symbolic batch, then the PyTorch-style Shape/Gather/Unsqueeze/Concat/Reshape flatten."""
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Shape", ["c"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["c", "target"], ["flat"]),
        helper.make_node("Gemm", ["flat", "fc"], ["y"], transB=1),
    ]
    inits = [numpy_helper.from_array(np.zeros((8, 3, 3, 3), np.float32), "w"),
             numpy_helper.from_array(np.array(0, np.int64), "zero"),
             numpy_helper.from_array(np.array([0], np.int64), "axes"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus_one"),
             numpy_helper.from_array(np.zeros((10, 8 * 6 * 6), np.float32), "fc")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_symbolic_batch_is_kept_and_unknown_costs_are_reported():
    graph = onnx_io.load(_symbolic_flatten_model())
    for use_onnx in (False, True):
        shapes = infer_shapes(graph, use_onnx=use_onnx)
        assert shapes["c"] == ("N", 8, 6, 6)
        assert shapes["y"][1] == 10
    assert infer_shapes(graph, use_onnx=False)["flat"] == ("N", 288)  # the symbol cancels in Reshape's -1
    report = analyze_costs(graph)
    conv = report.nodes[0]
    assert conv.macs is None and conv.params == 8 * 3 * 3 * 3 and conv.activation_bytes is None
    assert conv.name in report.unknown and report.total_macs == 0


def test_pinned_batch_resolves_shape_computations():
    model = _symbolic_flatten_model()
    graph, _ = check_against_ort(model, x=(2, 3, 6, 6))
    for use_onnx in (False, True):
        report = analyze_costs(graph, {"x": (2, 3, 6, 6)}, use_onnx=use_onnx)
        assert report.unknown == []
        assert report.total_macs == 2 * 8 * 36 * 27 + 2 * 10 * 288
        assert infer_shapes(graph, {"x": (2, 3, 6, 6)}, use_onnx=use_onnx)["target"] == (2,)
    assert infer_shapes(graph)["c"] == ("N", 8, 6, 6)  # pins do not stick


def _pad_conv_model(value_info=()):
    """Pad then Conv, with symbolic batch."""
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"]),
             helper.make_node("Conv", ["p", "w"], ["y"], strides=[2, 2])]
    inits = [numpy_helper.from_array(np.array([0, 0, 1, 2, 0, 0, 3, 4], np.int64), "pads"),
             numpy_helper.from_array(np.zeros((16, 8, 3, 3), np.float32), "w")]  # large: a typed input for onnx
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 9, 9])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16, "H", "W"])], inits,
                              value_info=list(value_info))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_onnx_inference_fills_what_the_rules_leave_open():
    """SpaceToDepth has no rule of ours, so the Conv after it needs onnx shape inference."""
    nodes = [helper.make_node("SpaceToDepth", ["x"], ["p"], blocksize=2),
             helper.make_node("Conv", ["p", "w"], ["y"], strides=[2, 2])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 18, 22])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16, "H", "W"])],
                              [numpy_helper.from_array(np.zeros((16, 32, 3, 3), np.float32), "w")])
    graph = onnx_io.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert infer_shapes(graph, use_onnx=False)["p"] is None
    assert infer_shapes(graph, use_onnx=False)["y"] == ("N", 16, "H", "W")  # the declared output
    assert infer_shapes(graph)["p"] == ("N", 32, 9, 11)
    assert infer_shapes(graph)["y"] == ("N", 16, 4, 5)


def test_rules_beat_onnx_inference_where_it_disagrees_with_onnxruntime():
    """onnx keeps a ceil_mode window that would start in the end padding; onnxruntime (and PyTorch) drop it."""
    nodes = [helper.make_node("Pad", ["x", "pads"], ["p"]),  # no rule: onnx inference runs
             helper.make_node("MaxPool", ["p"], ["y"], kernel_shape=[2], strides=[2], pads=[1, 1], ceil_mode=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 3])],
                              [helper.make_empty_tensor_value_info("y")],
                              [numpy_helper.from_array(np.array([0, 0, 1, 0, 0, 1], np.int64), "pads")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    (y,) = _session(model).run(["y"], {"x": np.zeros((1, 1, 3), np.float32)})
    assert infer_shapes(onnx_io.load(model))["y"] == y.shape == (1, 1, 3)


def test_pins_reach_onnx_inference_and_override_stale_value_info():
    stale = helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 8, 13, 15])  # exported at batch 1
    model = _pad_conv_model([stale])
    graph = onnx_io.load(model)
    assert infer_shapes(graph)["p"] == (1, 8, 13, 15)  # unpinned, the model's word stands
    session = _session(model)
    actual = dict(zip(["y"], session.run(["y"], {"x": np.zeros((3, 8, 9, 9), np.float32)})))
    pinned = infer_shapes(graph, {"x": (3, 8, 9, 9)})
    assert pinned["p"] == (3, 8, 13, 15) and pinned["y"] == actual["y"].shape == (3, 16, 6, 7)
    assert analyze_costs(graph, {"x": (3, 8, 9, 9)}).total_macs == 3 * 16 * 6 * 7 * 8 * 9
    assert infer_shapes(graph, {"x": (3, 8, 9, 9)}, use_onnx=False)["p"] == (3, 8, 13, 15)  # stale table not trusted
    assert infer_shapes(graph)["p"] == (1, 8, 13, 15)  # and the pins did not stick
    assert onnx_io.to_model_proto(graph).SerializeToString() == model.SerializeToString()


def test_pinning_something_that_is_not_a_fed_input_is_refused():
    graph = onnx_io.load(os.path.join(LIGHT, "light_bvlc_alexnet.onnx"))
    with pytest.raises(NinoptError, match="conv1_w_0__SHAPE"):
        analyze_costs(graph, {"conv1_w_0__SHAPE": (4,)})


def test_shared_weight_counts_once():
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("MatMul", ["h", "w"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [3, 5])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(np.zeros((5, 5), np.float32), "w")])
    report = analyze_costs(onnx_io.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])))
    assert [n.params for n in report.nodes] == [25, 0]
    assert report.total_params == 25 and report.total_macs == 2 * 3 * 5 * 5


def test_unknown_op_does_not_stop_the_analysis():
    nodes = [helper.make_node("Mystery", ["x"], ["m"], domain="custom.ops"),
             helper.make_node("Relu", ["m"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("custom.ops", 1)])
    report = analyze_costs(onnx_io.load(model))
    assert report.nodes[0].output_shapes == [None] and report.nodes[0].name in report.unknown
    assert report.nodes[1].output_shapes == [(1, 4)]  # from the declared graph output


def test_long_chain_is_analyzed():
    """A deep chain: no recursion limit in the way, every node priced."""
    n = 5000
    nodes = [helper.make_node("Relu", [f"t{i}"], [f"t{i + 1}"]) for i in range(n)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("t0", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info(f"t{n}", TensorProto.FLOAT, None)])
    report = analyze_costs(onnx_io.load(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])))
    assert len(report.nodes) == n and report.total_activation_bytes == n * 8 * 4


def test_fused_conv_is_priced_and_shaped_like_its_conv():
    """After fuse-conv-activation the MACs and shapes must not vanish from the report."""
    import optimizer
    from optimizer.api import resolve_passes

    path = os.path.join(os.path.dirname(__file__), "..", "fixtures", "resnet_bottleneck_bn.onnx")
    result = optimizer.optimize(path, passes=resolve_passes(None) + ["fuse-conv-activation"])
    assert any(n.op_type == "FusedConv" for n in result.graph.nodes)
    assert result.after.macs == result.before.macs > 0
    report = analyze_costs(result.graph)
    assert not report.unknown
    fused = [row for row in report.nodes if row.op_type == "FusedConv"]
    assert fused and all(row.macs > 0 and row.output_shapes[0] is not None for row in fused)


# ---------------------------------------------------------------------- shape-operand ops vs onnxruntime
def _with_operands(op, x, operands, opset=17, outputs=1, **attrs):
    """x (float input of shape ``x``, or none) -> ``op`` reading ``operands`` (name -> constant, None: absent)."""
    inputs = [] if x is None else [helper.make_tensor_value_info("x", TensorProto.FLOAT, x)]
    names = ([] if x is None else ["x"]) + [n if v is not None else "" for n, v in operands.items()]
    out_names = [f"y{i}" for i in range(outputs)]
    graph = helper.make_graph([helper.make_node(op, names, out_names, **attrs)], "g", inputs,
                              [helper.make_empty_tensor_value_info(n) for n in out_names],
                              [numpy_helper.from_array(np.asarray(v), n) for n, v in operands.items() if v is not None])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def I64(*values):  # noqa: N802 (reads like a dtype in the case table)
    return np.array(values, np.int64)

OPERAND_CASES = {
    "pad_crop": ("Pad", (1, 2, 5, 6), {"pads": I64(0, 0, 1, 2, 0, 0, 3, -1)}, 17, {}),
    "pad_axes": ("Pad", (1, 2, 5, 6), {"pads": I64(1, 2, 3, 4), "no_value": None, "axes": I64(-1, 2)}, 19, {}),
    "pad_attribute": ("Pad", (1, 2, 5, 6), {}, 9, {"pads": [0, 1, 2, 0, 0, 3, 0, 1]}),
    "slice_steps": ("Slice", (1, 2, 9, 10), {"starts": I64(1, -1), "ends": I64(100, -5), "axes": I64(2, 3),
                                             "steps": I64(2, -1)}, 13, {}),
    "slice_attributes": ("Slice", (3, 9, 10), {}, 9, {"starts": [1, 2], "ends": [3, -2], "axes": [0, 2]}),
    "expand": ("Expand", (3, 1), {"shape": I64(2, 1, 4)}, 13, {}),
    "tile": ("Tile", (2, 3, 4), {"reps": I64(1, 2, 3)}, 13, {}),
    "split_input": ("Split", (2, 5, 3), {"split": I64(2, 3)}, 13, {"axis": 1, "outputs": 2}),
    "split_uneven": ("Split", (2, 7), {}, 18, {"axis": 1, "num_outputs": 3, "outputs": 3}),
    "split_attribute": ("Split", (6, 2), {}, 11, {"split": [1, 5], "outputs": 2}),
    "range": ("Range", None, {"start": np.array(1, np.int64), "limit": np.array(10, np.int64),
                              "delta": np.array(3, np.int64)}, 13, {}),
    "resize_scales": ("Resize", (1, 2, 5, 7), {"roi": np.zeros(0, np.float32),
                                               "scales": np.array([1, 1, 2, 1.5], np.float32)}, 13, {}),
    "resize_sizes": ("Resize", (1, 2, 5, 7), {"no_roi": None, "no_scales": None, "sizes": I64(1, 2, 3, 11)}, 13, {}),
    "reduce_attribute": ("ReduceMean", (2, 3, 4), {}, 13, {"axes": [-1, 0], "keepdims": 0}),
    "reduce_input": ("ReduceMax", (2, 3, 4), {"axes": I64(1)}, 18, {}),
    "reduce_sum_all": ("ReduceSum", (2, 3, 4), {}, 13, {"keepdims": 0}),
    "argmax": ("ArgMax", (2, 3, 4), {}, 13, {"axis": -2, "keepdims": 0}),
}


@pytest.mark.parametrize("case", OPERAND_CASES, ids=list(OPERAND_CASES))
def test_shape_operand_ops(case):
    op, x, operands, opset, attrs = OPERAND_CASES[case]
    attrs = dict(attrs)
    outputs = attrs.pop("outputs", 1)
    graph, _ = check_against_ort(_with_operands(op, x, operands, opset, outputs, **attrs))
    assert all(d is not None for s in infer_shapes(graph, use_onnx=False).values() if s for d in s)


def test_recurrent_shapes_and_macs():
    graph, node = check_against_ort(_single("LSTM", [("x", (5, 2, 6))], [("w", (2, 12, 6)), ("r", (2, 12, 3))],
                                            outputs=3, hidden_size=3, direction="bidirectional"))
    assert infer_shapes(graph, use_onnx=False)["y0"] == (5, 2, 2, 3)
    assert node_macs(graph, node, infer_shapes(graph)) == 5 * 2 * 2 * 4 * 3 * (6 + 3)
    assert analyze_costs(graph).nodes[0].params == 2 * 12 * 6 + 2 * 12 * 3
