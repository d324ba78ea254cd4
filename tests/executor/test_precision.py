"""Precision modes of the executor: the float64 truth run, float16 and bfloat16 models.

Oracles: onnx's ReferenceEvaluator on the model retyped to double (an independent float64
run), onnxruntime on float16 models, and onnxruntime on the float32 model with a
Cast(narrow) -> Cast(float) pair after every op, which is exactly "compute in float32,
round once per op" made explicit (onnxruntime's CPU provider itself computes float16
Conv/BatchNormalization/Add/Relu chains in float32 and rounds only where a float16 kernel
or a graph output follows, so it is compared loosely).
"""

from __future__ import annotations

from pathlib import Path

import ml_dtypes
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from optimizer import onnx_io
from optimizer.errors import NinoptError
from optimizer.executor import Executor, run
from support import ONNX_DATA, one_node_model as make_model, randomize_weights, run_ort, run_ours

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.BFLOAT16, TensorProto.DOUBLE)
BF16 = np.dtype(ml_dtypes.bfloat16)


# ---------------------------------------------------------------------- model rewriting for oracles
def retyped(model: onnx.ModelProto, elem_type: int) -> onnx.ModelProto:
    """The model with every float tensor (initializers, declared types, Cast targets, attribute tensors) in
    ``elem_type``; values are rounded to it."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    dtype = helper.tensor_dtype_to_np_dtype(elem_type)

    def retype_tensor(tensor: onnx.TensorProto) -> None:
        if tensor.data_type in FLOAT_TYPES:
            tensor.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(tensor).astype(dtype), tensor.name))

    def retype_graph(graph: onnx.GraphProto) -> None:
        for tensor in graph.initializer:
            retype_tensor(tensor)
        for info in list(graph.input) + list(graph.output) + list(graph.value_info):
            if info.type.tensor_type.elem_type in FLOAT_TYPES:
                info.type.tensor_type.elem_type = elem_type
        for node in graph.node:
            for attr in node.attribute:
                if attr.name == "to" and attr.i in FLOAT_TYPES:
                    attr.i = elem_type
                elif attr.type == onnx.AttributeProto.TENSOR:
                    retype_tensor(attr.t)
                elif attr.type == onnx.AttributeProto.GRAPH:
                    retype_graph(attr.g)

    retype_graph(model.graph)
    return model


def rounded_per_op(model: onnx.ModelProto, elem_type: int) -> onnx.ModelProto:
    """A float32 model whose every op output passes through Cast(elem_type) -> Cast(float)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    nodes = []
    for node in model.graph.node:
        outputs = list(node.output)
        for i, name in enumerate(outputs):
            node.output[i] = f"{name}_unrounded"
        nodes.append(node)
        for name in outputs:
            nodes.append(helper.make_node("Cast", [f"{name}_unrounded"], [f"{name}_narrow"], to=elem_type))
            nodes.append(helper.make_node("Cast", [f"{name}_narrow"], [name], to=TensorProto.FLOAT))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    del model.graph.value_info[:]
    return model


def run_ort_unoptimized(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """onnxruntime without graph rewrites, which would move the rounding points (e.g. folding BN into Conv)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def random_feeds(model: onnx.ModelProto, dtype, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    inits = {t.name for t in model.graph.initializer}
    return {i.name: rng.standard_normal([d.dim_value or 1 for d in i.type.tensor_type.shape.dim]).astype(dtype)
            for i in model.graph.input if i.name not in inits}


def rel_error(got: np.ndarray, want: np.ndarray) -> float:
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    return float(np.abs(got - want).max() / np.abs(want).max())


def one_node(nodes, inputs, outputs, initializers=(), opset=17) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, list(initializers))
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=8)


def tensor_info(name, elem_type, shape=None):
    return helper.make_tensor_value_info(name, elem_type, shape)


# ---------------------------------------------------------------------- float64 mode
def test_float64_mode_widens_every_float_tensor_and_float_cast_targets():
    """Casts to float16 and float32, a float16 weight, float ConstantOfShape and Constant values are all
    float64; a Cast to int is not."""
    x = np.array([[0.1, 1.7, -2.3, 3.9]], dtype=np.float32)
    weight = np.array([1 / 3], dtype=np.float16)
    third = numpy_helper.from_array(np.array([1 / 3], dtype=np.float32), "v")
    model = one_node([
        helper.make_node("Cast", ["x"], ["half"], to=TensorProto.FLOAT16),
        helper.make_node("Mul", ["half", "w"], ["scaled"]),
        helper.make_node("Cast", ["scaled"], ["wide"], to=TensorProto.FLOAT),
        helper.make_node("ConstantOfShape", ["shape"], ["c"], value=third),
        helper.make_node("Add", ["wide", "c"], ["sum"]),
        helper.make_node("Constant", [], ["k"], value_float=0.1),  # its kernel makes it float32
        helper.make_node("Add", ["sum", "k"], ["y"]),
        helper.make_node("Cast", ["scaled"], ["z"], to=TensorProto.INT32),
    ], [tensor_info("x", TensorProto.FLOAT, [1, 4])],
        [tensor_info("y", TensorProto.FLOAT), tensor_info("z", TensorProto.INT32), tensor_info("k", TensorProto.FLOAT)],
        [numpy_helper.from_array(weight, "w"), numpy_helper.from_array(np.array([1, 4], np.int64), "shape")])
    graph = onnx_io.load(model)
    truth = Executor(graph, compute_dtype=np.float64).run({"x": x})
    exact = x.astype(np.float64) * np.float64(weight[0]) + np.float64(np.float32(1 / 3)) + np.float64(np.float32(0.1))
    assert truth["y"].dtype == np.float64 and np.array_equal(truth["y"], exact)
    assert truth["k"].dtype == np.float64
    assert truth["z"].dtype == np.int32 and truth["z"].tolist() == [[0, 0, 0, 1]]
    default = run(graph, {"x": x})
    assert default["y"].dtype == np.float32 and default["z"].tolist() == truth["z"].tolist()
    assert np.abs(default["y"] - exact).max() > 1e-5  # the default run really goes through float16


def test_float64_mode_runs_if_bodies_in_float64_and_takes_float64_feeds():
    third = numpy_helper.from_array(np.array(1 / 3, dtype=np.float32), "third")

    def branch(name, op):
        return helper.make_graph([helper.make_node(op, ["x", "third"], ["t"]),
                                  helper.make_node("Cast", ["t"], ["out"], to=TensorProto.FLOAT)],
                                 name, [], [tensor_info("out", TensorProto.FLOAT)], [third])

    model = one_node([helper.make_node("If", ["flag"], ["y"], then_branch=branch("then", "Mul"),
                                       else_branch=branch("else", "Sub"))],
                     [tensor_info("x", TensorProto.FLOAT, [3]), tensor_info("flag", TensorProto.BOOL, [])],
                     [tensor_info("y", TensorProto.FLOAT)])
    x64 = np.array([0.1, 2.0, -7.3], dtype=np.float64)
    executor = Executor(onnx_io.load(model), compute_dtype=np.float64)
    for flag, expected in ((True, x64 * np.float64(np.float32(1 / 3))), (False, x64 - np.float64(np.float32(1 / 3)))):
        y = executor.run({"x": x64, "flag": np.array(flag)})["y"]
        assert y.dtype == np.float64 and np.array_equal(y, expected)
    with pytest.raises(NinoptError, match="expects float32"):
        Executor(onnx_io.load(model)).run({"x": x64, "flag": np.array(True)})  # the default mode stays strict


def test_float64_mode_runs_loops_and_functions():
    """The control-flow fixture (If, a 3-trip Loop reading the outer scope, a model-local function)."""
    model = onnx.load(str(FIXTURES / "control_flow.onnx"))
    graph = onnx_io.load(model)
    feeds = {**random_feeds(model, np.float32), "flag": np.array(True)}
    single, double = run(graph, feeds), run(graph, feeds, compute_dtype=np.float64)
    for name in graph.outputs:
        assert double[name].dtype == np.float64
        assert 0 < rel_error(single[name], double[name]) < 1e-6


@pytest.mark.parametrize("name", ["external_weights", "caffe2_bn"])
def test_float64_run_matches_an_independent_float64_evaluation(name):
    """onnx's ReferenceEvaluator on the model retyped to double agrees to round-off of float64, not float32."""
    from onnx.reference import ReferenceEvaluator

    model = onnx.load(str(FIXTURES / f"{name}.onnx"))
    feeds = random_feeds(model, np.float32)
    want = ReferenceEvaluator(retyped(model, TensorProto.DOUBLE)).run(None, {k: v.astype(np.float64)
                                                                             for k, v in feeds.items()})[0]
    graph = onnx_io.load(model)
    truth = run(graph, feeds, compute_dtype=np.float64)[graph.outputs[0]]
    single = run(graph, feeds)[graph.outputs[0]]
    assert truth.dtype == np.float64 and rel_error(truth, want) < 1e-13
    assert rel_error(single, want) > 1e-9


def test_float64_run_of_a_deep_random_model_sits_at_float32_round_off_from_both_float32_runs():
    """Randomized light-zoo ShuffleNet (203 nodes), pre-softmax logits: our float32 run and onnxruntime's
    differ from the float64 run by float32 round-off (4e-7 and 7e-7 measured), by about as much as they
    differ from each other (4e-7); a float64 run that were secretly float32 would (nearly) equal ours."""
    model = randomize_weights(onnx.load(str(ONNX_DATA / "light" / "light_shufflenet.onnx")), seed=1)
    softmax = next(n for n in model.graph.node if n.op_type == "Softmax")
    model.graph.output.append(onnx.ValueInfoProto(name=softmax.input[0]))
    feeds = random_feeds(model, np.float32)
    graph = onnx_io.load(model)
    single = run(graph, feeds)[softmax.input[0]]
    truth = run(graph, feeds, compute_dtype=np.float64)[softmax.input[0]]
    theirs = run_ort(model, feeds, threads=1)[-1]
    ours_error, their_error, between = rel_error(single, truth), rel_error(theirs, truth), rel_error(single, theirs)
    assert truth.dtype == np.float64
    assert 3e-8 < ours_error < 5e-6 and 3e-8 < their_error < 5e-6
    assert 1 / 10 < ours_error / their_error < 10
    assert max(ours_error, their_error) / 10 < between < 10 * max(ours_error, their_error)


def test_compute_dtype_other_than_float64_is_refused():
    with pytest.raises(NinoptError, match="compute_dtype"):
        Executor(onnx_io.load(make_model("Relu", {"x": np.zeros(2, np.float32)})), compute_dtype=np.float16)


# ---------------------------------------------------------------------- float16
ELEMENTWISE_F16 = [
    ("Add", 2, {}), ("Mul", 2, {}), ("Div", 2, {}), ("Sigmoid", 1, {}), ("Tanh", 1, {}), ("Exp", 1, {}),
    ("HardSwish", 1, {}), ("Softmax", 1, {}), ("ReduceMean", 1, {"axes": [2, 3]}), ("GlobalAveragePool", 1, {}),
    ("AveragePool", 1, {"kernel_shape": [3, 3]}), ("BatchNormalization", 1, {}),
]


@pytest.mark.parametrize("op_type,arity,attrs", ELEMENTWISE_F16, ids=[case[0] for case in ELEMENTWISE_F16])
def test_float16_ops_match_onnxruntime_bit_for_bit(op_type, arity, attrs):
    rng = np.random.default_rng(0)
    inputs = {f"x{i}": rng.standard_normal((1, 8, 6, 6)).astype(np.float16) for i in range(arity)}
    initializers = {}
    if op_type == "BatchNormalization":
        initializers = {"s": rng.uniform(0.5, 1.5, 8), "b": rng.standard_normal(8) * 0.1,
                        "m": rng.standard_normal(8) * 0.1, "v": rng.uniform(0.5, 1.5, 8)}
        initializers = {k: v.astype(np.float16) for k, v in initializers.items()}
    model = make_model(op_type, inputs, opset=14 if op_type == "HardSwish" else 13, initializers=initializers,
                       **attrs)
    got, = run_ours(model, inputs)
    want, = run_ort(model, inputs)
    assert got.dtype == np.float16 and np.array_equal(got, want)


@pytest.mark.parametrize("kernel_size,channels", [(3, 64), (1, 64), (3, 144)])
def test_float16_conv_accumulates_in_float32_and_rounds_once(kernel_size, channels):
    """Only summation order differs from onnxruntime: at most one float16 step at the output's scale, rarely."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((1, channels, 10, 10)).astype(np.float16)
    w = (rng.standard_normal((32, channels, kernel_size, kernel_size)) / np.sqrt(channels * kernel_size ** 2))
    model = make_model("Conv", {"x": x}, initializers={"w": w.astype(np.float16),
                                                      "b": (rng.standard_normal(32) * 0.1).astype(np.float16)},
                       pads=[kernel_size // 2] * 4)
    got, = run_ours(model, {"x": x})
    want, = run_ort(model, {"x": x})
    step = np.spacing(np.abs(want).max())
    assert got.dtype == np.float16
    assert np.abs(got.astype(np.float32) - want).max() <= step and np.mean(got != want) < 0.01


def conv_bn_model() -> onnx.ModelProto:
    rng = np.random.default_rng(2)
    params = {"w": rng.standard_normal((16, 8, 3, 3)) / np.sqrt(72), "s": rng.uniform(0.5, 1.5, 16),
              "b": rng.standard_normal(16) * 0.1, "m": rng.standard_normal(16) * 0.1, "v": rng.uniform(0.5, 1.5, 16)}
    return one_node([helper.make_node("Conv", ["data", "w"], ["c"], pads=[1] * 4),
                     helper.make_node("BatchNormalization", ["c", "s", "b", "m", "v"], ["y"])],
                    [tensor_info("data", TensorProto.FLOAT, [1, 8, 12, 12])], [tensor_info("y", TensorProto.FLOAT)],
                    [numpy_helper.from_array(v.astype(np.float32), k) for k, v in params.items()], opset=13)


FLOAT16_MODELS = {"conv_bn": conv_bn_model,
                  "conv1x1_chain": lambda: onnx.load(str(FIXTURES / "bottleneck_64_8_64.onnx")),
                  "repvgg_stage": lambda: onnx.load(str(FIXTURES / "repvgg_stage.onnx"))}


@pytest.mark.parametrize("name", FLOAT16_MODELS)
def test_float16_models_round_once_per_op(name):
    """Measured (relative to max |y|): vs per-op-rounded onnxruntime 0-0.8% of elements differ, by <= 1.7e-4;
    vs onnxruntime's own float16 run 4e-4..9e-4, one float16 epsilon."""
    model16 = retyped(FLOAT16_MODELS[name](), TensorProto.FLOAT16)
    feeds = random_feeds(model16, np.float16)
    got, = run_ours(model16, feeds)
    assert got.dtype == np.float16
    per_op, = run_ort_unoptimized(rounded_per_op(retyped(model16, TensorProto.FLOAT), TensorProto.FLOAT16),
                                  {k: v.astype(np.float32) for k, v in feeds.items()})
    assert np.mean(got != per_op) < 0.02 and rel_error(got, per_op) < 5e-4
    theirs, = run_ort_unoptimized(model16, feeds)
    assert rel_error(got, theirs) < 2e-3


def test_float16_if_bodies_keep_float16_through_the_branch():
    """If passes values through as held; the body's own ops widen and round."""
    step = numpy_helper.from_array(np.array(1 / 3, dtype=np.float16), "step")
    then = helper.make_graph([helper.make_node("Add", ["x", "step"], ["out"])], "then", [],
                             [tensor_info("out", TensorProto.FLOAT16)], [step])
    other = helper.make_graph([helper.make_node("Identity", ["x"], ["out"])], "else", [],
                              [tensor_info("out", TensorProto.FLOAT16)])
    model = one_node([helper.make_node("If", ["flag"], ["y"], then_branch=then, else_branch=other)],
                     [tensor_info("x", TensorProto.FLOAT16, [3]), tensor_info("flag", TensorProto.BOOL, [])],
                     [tensor_info("y", TensorProto.FLOAT16)])
    x = np.array([0.1, 1000.0, -2.0], dtype=np.float16)
    executor = Executor(onnx_io.load(model))
    added = executor.run({"x": x, "flag": np.array(True)})["y"]
    assert added.dtype == np.float16
    assert np.array_equal(added, (x.astype(np.float32) + np.float32(np.float16(1 / 3))).astype(np.float16))
    assert np.array_equal(added, run_ort(model, {"x": x, "flag": np.array(True)})[0])
    assert executor.run({"x": x, "flag": np.array(False)})["y"].dtype == np.float16


# ---------------------------------------------------------------------- bfloat16
def test_bfloat16_initializers_and_feeds_keep_their_type():
    weight = np.array([0.1, -3.7, 1e-3], dtype=BF16)
    model = make_model("Mul", {"x": np.zeros(3, BF16)}, initializers={"w": weight})
    graph = onnx_io.load(model)
    assert graph.initializer_value("w").dtype == BF16 and np.array_equal(graph.initializer_value("w"), weight)
    x = np.array([2.0, 0.5, 3.0], dtype=BF16)
    y = run(graph, {"x": x})["y0"]
    assert y.dtype == BF16
    assert np.array_equal(y, (x.astype(np.float32) * weight.astype(np.float32)).astype(BF16))
    truth = run(graph, {"x": x}, compute_dtype=np.float64)["y0"]
    assert truth.dtype == np.float64 and np.array_equal(truth, x.astype(np.float64) * weight.astype(np.float64))


def test_bfloat16_rounds_to_nearest_even():
    """1 + 2^-8 lies halfway between 1 and the next bfloat16 (1 + 2^-7): ties go to the even neighbour."""
    x = np.array([1.0, 1 + 2 ** -7, -1.0, -(1 + 2 ** -7)], dtype=BF16)
    tie = np.array([2 ** -8, 2 ** -8, -(2 ** -8), -(2 ** -8)], dtype=BF16)
    y = run(onnx_io.load(make_model("Add", {"x": x, "t": tie})), {"x": x, "t": tie})["y0"]
    assert y.dtype == BF16 and y.astype(np.float32).tolist() == [1.0, 1 + 2 ** -6, -1.0, -(1 + 2 ** -6)]


def test_cast_and_castlike_follow_their_target_type():
    x = np.array([1 + 2 ** -8 + 2 ** -12, 3.14159, -2.5e-3], dtype=np.float32)
    like16 = np.zeros(1, BF16)
    model = one_node([helper.make_node("CastLike", ["x", "like16"], ["narrow"]),
                      helper.make_node("CastLike", ["narrow", "x"], ["wide"]),
                      helper.make_node("Cast", ["narrow"], ["cast_wide"], to=TensorProto.FLOAT)],
                     [tensor_info("x", TensorProto.FLOAT, [3])],
                     [tensor_info(n, TensorProto.UNDEFINED) for n in ("narrow", "wide", "cast_wide")],
                     [numpy_helper.from_array(like16, "like16")])
    out = run(onnx_io.load(model), {"x": x})
    assert out["narrow"].dtype == BF16 and np.array_equal(out["narrow"], x.astype(BF16))
    assert out["wide"].dtype == np.float32 and out["cast_wide"].dtype == np.float32
    assert np.array_equal(out["wide"], x.astype(BF16).astype(np.float32))


def test_bfloat16_layer_normalization_matches_onnxruntime():
    """One of the few ops onnxruntime runs in bfloat16; its Mean output stays float32 (stash_type)."""
    rng = np.random.default_rng(3)
    model = one_node([helper.make_node("Cast", ["x"], ["xb"], to=TensorProto.BFLOAT16),
                      helper.make_node("LayerNormalization", ["xb", "s", "b"], ["yb", "mean"]),
                      helper.make_node("Cast", ["yb"], ["y"], to=TensorProto.FLOAT)],
                     [tensor_info("x", TensorProto.FLOAT, [4, 32])],
                     [tensor_info("y", TensorProto.FLOAT), tensor_info("mean", TensorProto.FLOAT)],
                     [numpy_helper.from_array(rng.standard_normal(32).astype(BF16), "s"),
                      numpy_helper.from_array(rng.standard_normal(32).astype(BF16), "b")])
    x = rng.standard_normal((4, 32)).astype(np.float32)
    graph = onnx_io.load(model)
    got = run(graph, {"x": x})
    want = dict(zip(graph.outputs, run_ort(model, {"x": x})))
    assert np.array_equal(got["y"], want["y"])
    assert got["mean"].dtype == np.float32 and np.allclose(got["mean"], want["mean"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("name", ["repvgg_stage", "resnet_bottleneck_bn"])
def test_bfloat16_models_match_float32_rounded_per_op(name):
    model = onnx.load(str(FIXTURES / f"{name}.onnx"))
    model16 = retyped(model, TensorProto.BFLOAT16)
    feeds = random_feeds(model16, BF16)
    got, = run_ours(model16, feeds)
    want, = run_ort_unoptimized(rounded_per_op(retyped(model16, TensorProto.FLOAT), TensorProto.BFLOAT16),
                                {k: v.astype(np.float32) for k, v in feeds.items()})
    assert got.dtype == BF16 and np.mean(got.astype(np.float32) != want) < 0.001
