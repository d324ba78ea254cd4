"""Ops whose meaning changed across opsets, and a broad table of single ops, checked against onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper
from onnx.reference import ReferenceEvaluator

from support import assert_matches_onnxruntime, one_node_model as make_model, run_ours

R = np.random.default_rng(0)
X34 = R.standard_normal((2, 3, 4)).astype(np.float32)
X4 = R.standard_normal((2, 3, 4, 5)).astype(np.float32)


def agree(model, feeds, rtol=1e-5, atol=1e-6):
    return assert_matches_onnxruntime(model, feeds, rtol=rtol, atol=atol)


@pytest.mark.parametrize("op", ["Softmax", "LogSoftmax", "Hardmax"])
@pytest.mark.parametrize("x", [X34, X4], ids=["3d", "4d"])
def test_softmax_family_flattens_before_opset_13_only(op, x):
    old, = agree(make_model(op, {"x": x}, opset=11, axis=1), {"x": x})
    new, = agree(make_model(op, {"x": x}, opset=13, axis=1), {"x": x})
    assert not np.allclose(old, new)  # the versions really differ on this input
    if op == "Softmax":
        np.testing.assert_allclose(old.reshape(x.shape[0], -1).sum(axis=1), 1, rtol=1e-5)
        np.testing.assert_allclose(new.sum(axis=1), 1, rtol=1e-5)


def test_softmax_opset9_on_squeezenet_like_output():
    """onnx.reference's opset-9 Softmax misreads (N, C, 1, 1); the flattened rows must sum to 1."""
    x = R.standard_normal((1, 10, 1, 1)).astype(np.float32)
    y, = agree(make_model("Softmax", {"x": x}, opset=9), {"x": x})
    np.testing.assert_allclose(y.sum(), 1, rtol=1e-6)


def test_clip_bounds_are_attributes_before_11_and_inputs_after():
    old, = agree(make_model("Clip", {"x": X4}, opset=6, min=-0.5, max=0.25), {"x": X4})
    lo, hi = np.array(-0.5, np.float32), np.array(0.25, np.float32)
    new, = agree(make_model("Clip", {"x": X4}, opset=13, initializers={"lo": lo, "hi": hi}), {"x": X4})
    np.testing.assert_array_equal(old, new)
    only_max, = agree(make_model("Clip", {"x": X4}, opset=13, initializers={"hi": hi}, input_names=["x", "", "hi"]),
                      {"x": X4})
    assert only_max.min() < -0.5 and only_max.max() == np.float32(0.25)


@pytest.mark.parametrize("mode", ["constant", "reflect", "edge"])
def test_pad_attributes_before_11_inputs_after(mode):
    old, = agree(make_model("Pad", {"x": X4}, opset=2, pads=[0, 0, 1, 2, 0, 0, 2, 1], mode=mode, value=1.5), {"x": X4})
    inits = {"pads": np.array([0, 0, 1, 2, 0, 0, 2, 1], np.int64), "v": np.array(1.5, np.float32)}
    new, = agree(make_model("Pad", {"x": X4}, opset=11, initializers=inits, mode=mode), {"x": X4})
    np.testing.assert_array_equal(old, new)


def test_pad_negative_pads_crop_and_axes_input():
    inits = {"pads": np.array([-1, 2, 1, -2], np.int64), "v": np.array(0, np.float32), "axes": np.array([2, 3])}
    agree(make_model("Pad", {"x": X4}, opset=18, initializers=inits), {"x": X4})


def test_split_attribute_then_input_then_num_outputs():
    a = agree(make_model("Split", {"x": X4}, n_outputs=2, opset=11, axis=3, split=[2, 3]), {"x": X4})
    b = agree(make_model("Split", {"x": X4}, n_outputs=2, opset=13, axis=3, initializers={"s": np.array([2, 3])}),
              {"x": X4})
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p, q)
    uneven = agree(make_model("Split", {"x": X4}, n_outputs=2, opset=18, axis=3, num_outputs=2), {"x": X4})
    assert [u.shape[3] for u in uneven] == [3, 2]
    equal = agree(make_model("Split", {"x": X4}, n_outputs=3, opset=13, axis=1), {"x": X4})
    assert [u.shape[1] for u in equal] == [1, 1, 1]


def test_squeeze_unsqueeze_axes_move_to_inputs_at_13():
    x = R.standard_normal((3, 1, 4, 1)).astype(np.float32)
    a, = agree(make_model("Squeeze", {"x": x}, opset=11, axes=[1, -1]), {"x": x})
    b, = agree(make_model("Squeeze", {"x": x}, opset=13, initializers={"a": np.array([1, -1])}), {"x": x})
    assert a.shape == b.shape == (3, 4)
    c, = agree(make_model("Unsqueeze", {"x": X34}, opset=11, axes=[0, -1]), {"x": X34})
    d, = agree(make_model("Unsqueeze", {"x": X34}, opset=13, initializers={"a": np.array([0, -1])}), {"x": X34})
    assert c.shape == d.shape == (1, 2, 3, 4, 1)


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceL2", "ReduceL1",
                                "ReduceProd", "ReduceSumSquare", "ReduceLogSumExp"])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduce_axes_attribute_then_input(op, keepdims):
    old, = agree(make_model(op, {"x": X4}, opset=11, axes=[1, -1], keepdims=keepdims), {"x": X4}, rtol=1e-5)
    new, = agree(make_model(op, {"x": X4}, opset=18, keepdims=keepdims, initializers={"a": np.array([1, -1])}),
                 {"x": X4}, rtol=1e-5)
    np.testing.assert_allclose(old, new, rtol=1e-6)
    everything, = agree(make_model(op, {"x": X4}, opset=18, keepdims=keepdims), {"x": X4}, rtol=1e-5)
    assert everything.size == 1


def test_reduce_noop_with_empty_axes():
    y, = agree(make_model("ReduceSum", {"x": X4}, opset=13, noop_with_empty_axes=1), {"x": X4})
    np.testing.assert_array_equal(y, X4)


def test_batchnorm_versions_inference_and_outputs():
    c = X4.shape[1]
    params = {"s": R.uniform(0.5, 1.5, c).astype(np.float32), "b": R.standard_normal(c).astype(np.float32),
              "m": R.standard_normal(c).astype(np.float32), "v": R.uniform(0.5, 1.5, c).astype(np.float32)}
    # onnxruntime has no BatchNormalization-6 kernel: that version is checked against the later ones
    y6, = run_ours(make_model("BatchNormalization", {"x": X4}, opset=6, initializers=params, is_test=1), {"x": X4})
    y9, = agree(make_model("BatchNormalization", {"x": X4}, opset=9, initializers=params), {"x": X4})
    y15, = agree(make_model("BatchNormalization", {"x": X4}, opset=15, initializers=params), {"x": X4})
    np.testing.assert_array_equal(y6, y9)
    np.testing.assert_array_equal(y9, y15)
    y, mean, var = run_ours(make_model("BatchNormalization", {"x": X4}, n_outputs=3, opset=15, initializers=params,
                                       training_mode=1, momentum=0.8), {"x": X4})
    batch_mean = X4.mean(axis=(0, 2, 3))
    np.testing.assert_allclose(mean, params["m"] * 0.8 + batch_mean * 0.2, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(y.mean(axis=(0, 2, 3)), params["b"], atol=1e-5)


def test_dropout_versions_pass_through_with_mask():
    y7, mask7 = run_ours(make_model("Dropout", {"x": X4}, n_outputs=2, opset=7, ratio=0.3), {"x": X4})
    assert mask7.dtype == np.float32 and mask7.all()
    # the spec (and onnx.reference) keep every element: an all-True mask; onnxruntime returns all False
    model10 = make_model("Dropout", {"x": X4}, n_outputs=2, opset=10, ratio=0.3)
    y10, mask10 = run_ours(model10, {"x": X4})
    np.testing.assert_array_equal(mask10, ReferenceEvaluator(model10).run(None, {"x": X4})[1])
    assert mask10.dtype == np.bool_ and mask10.all()
    y13, = agree(make_model("Dropout", {"x": X4}, opset=13, initializers={"r": np.array(0.3, np.float32)}), {"x": X4})
    for y in (y7, y10, y13):
        np.testing.assert_array_equal(y, X4)
    train = make_model("Dropout", {"x": X4}, n_outputs=2, opset=13, seed=3,
                       initializers={"r": np.array(0.5, np.float32), "t": np.array(True)})
    y, keep = run_ours(train, {"x": X4})
    np.testing.assert_allclose(y, np.where(keep, X4 * 2, 0))
    assert 0 < keep.mean() < 1


def test_legacy_broadcast_with_axis():
    b = R.standard_normal(3).astype(np.float32)
    for op, fn in (("Add", np.add), ("Mul", np.multiply), ("Sub", np.subtract), ("Div", np.divide)):
        # onnxruntime has no opset-6 kernels for these; the legacy rule is B aligned at `axis`
        y, = run_ours(make_model(op, {"x": X4}, opset=6, initializers={"b": b}, broadcast=1, axis=1), {"x": X4})
        np.testing.assert_array_equal(y, fn(X4, b[:, None, None]))


def test_upsample_opset7_scales_attribute():
    x = R.standard_normal((1, 2, 3, 4)).astype(np.float32)
    y, = agree(make_model("Upsample", {"x": x}, opset=7, scales=[1.0, 1.0, 2.0, 3.0], mode="nearest"), {"x": x})
    np.testing.assert_array_equal(y, x.repeat(2, axis=2).repeat(3, axis=3))


def test_resize_crops_unscaled_axes_as_the_spec_says():
    """onnxruntime skips the crop on an axis whose scale is 1; onnx.reference follows the spec, as we do."""
    x = np.arange(12, dtype=np.float32).reshape(1, 1, 6, 2)
    inits = {"roi": np.array([0, 0, 0.1, 0.2, 1, 1, 0.9, 0.7], np.float32),
             "scales": np.array([1, 1, 2, 1], np.float32)}
    model = make_model("Resize", {"x": x}, opset=19, initializers=inits, mode="linear",
                       coordinate_transformation_mode="tf_crop_and_resize")
    got, = run_ours(model, {"x": x})
    want, = ReferenceEvaluator(model).run(None, {"x": x})
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_resize_keep_aspect_ratio_and_axes():
    x = R.standard_normal((1, 2, 4, 6)).astype(np.float32)
    for policy in ("not_larger", "not_smaller"):
        model = make_model("Resize", {"x": x}, opset=18, initializers={"roi": np.array([], np.float32),
                           "scales": np.array([], np.float32), "sizes": np.array([6, 6])}, axes=[2, 3],
                           keep_aspect_ratio_policy=policy, mode="linear")
        agree(model, {"x": x})


def test_fused_conv_matches_onnxruntime_contrib_op():
    x = R.standard_normal((1, 3, 6, 6)).astype(np.float32)
    w = R.standard_normal((4, 3, 3, 3)).astype(np.float32)
    for activation, params in [("Relu", []), ("LeakyRelu", [0.2]), ("Clip", [-0.5, 0.5]), ("Sigmoid", []),
                               ("HardSigmoid", [0.3, 0.4]), ("Tanh", [])]:
        extra = {"activation_params": params} if params else {}
        model = make_model("FusedConv", {"x": x}, domain="com.microsoft", initializers={"w": w}, pads=[1, 1, 1, 1],
                           activation=activation, **extra)
        agree(model, {"x": x}, rtol=1e-5, atol=1e-5)


def _if_model():
    def branch(name, op):
        out = helper.make_tensor_value_info(f"{name}_y", onnx.TensorProto.FLOAT, None)
        return helper.make_graph([helper.make_node(op, ["x", "x"], [f"{name}_y"])], name, [], [out])
    node = helper.make_node("If", ["c"], ["y"], then_branch=branch("then", "Add"), else_branch=branch("else", "Mul"))
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("c", onnx.TensorProto.BOOL, []),
                                            helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [3])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)


def test_if_runs_the_chosen_branch_reading_outer_scope():
    x = np.array([1, 2, 3], np.float32)
    model = _if_model()
    for cond, expected in ((True, x + x), (False, x * x)):
        y, = agree(model, {"c": np.array(cond), "x": x})
        np.testing.assert_array_equal(y, expected)


def test_loop_carries_state_and_stacks_scan_outputs():
    body = helper.make_graph(
        [helper.make_node("Add", ["acc", "step"], ["acc_out"]),
         helper.make_node("Cast", ["i"], ["i_f"], to=onnx.TensorProto.FLOAT),
         helper.make_node("Mul", ["acc_out", "i_f"], ["scan"]),
         helper.make_node("Less", ["i_f", "limit"], ["cond_out"])],
        "body",
        [helper.make_tensor_value_info("i", onnx.TensorProto.INT64, []),
         helper.make_tensor_value_info("cond", onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc", onnx.TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("cond_out", onnx.TensorProto.BOOL, []),
         helper.make_tensor_value_info("acc_out", onnx.TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("scan", onnx.TensorProto.FLOAT, [2])])
    node = helper.make_node("Loop", ["M", "", "acc0"], ["acc_final", "scans"], body=body)
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info("acc0", onnx.TensorProto.FLOAT, [2]),
         helper.make_tensor_value_info("step", onnx.TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("acc_final", onnx.TensorProto.FLOAT, None),
         helper.make_tensor_value_info("scans", onnx.TensorProto.FLOAT, None)],
        [numpy_helper.from_array(np.array(10, np.int64), "M"), numpy_helper.from_array(np.array(3.0, np.float32), "limit")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=8)
    feeds = {"acc0": np.zeros(2, np.float32), "step": np.array([1, 2], np.float32)}
    final, scans = agree(model, feeds)
    assert scans.shape == (4, 2)  # i = 0..3: the body's condition turns false at i = limit = 3
    np.testing.assert_array_equal(final, [4, 8])


# ---------------------------------------------------------------------- a broad table of single ops
POS = np.abs(X4) + 0.1
I64 = np.array([[0, 2], [1, 1]], dtype=np.int64)
CASES = [
    ("Relu", {"x": X4}, {}), ("LeakyRelu", {"x": X4}, {"alpha": 0.3}), ("Sigmoid", {"x": X4 * 20}, {}),
    ("HardSigmoid", {"x": X4}, {"alpha": 0.3, "beta": 0.4}), ("HardSwish", {"x": X4 * 4}, {}), ("Tanh", {"x": X4}, {}),
    ("Elu", {"x": X4}, {"alpha": 0.7}), ("Selu", {"x": X4}, {}), ("Softplus", {"x": X4 * 30}, {}),
    ("Softsign", {"x": X4}, {}), ("Erf", {"x": X4 * 2}, {}), ("Celu", {"x": X4}, {"alpha": 0.5}),
    ("ThresholdedRelu", {"x": X4}, {"alpha": 0.2}), ("Mish", {"x": X4}, {}),
    ("Gelu", {"x": X4 * 3}, {}), ("Gelu", {"x": X4 * 3}, {"approximate": "tanh"}),
    ("PRelu", {"x": X4, "s": R.standard_normal((3, 1, 1)).astype(np.float32)}, {}),
    ("Sqrt", {"x": POS}, {}), ("Exp", {"x": X4}, {}), ("Log", {"x": POS}, {}), ("Neg", {"x": X4}, {}),
    ("Abs", {"x": X4}, {}), ("Reciprocal", {"x": POS}, {}), ("Floor", {"x": X4 * 3}, {}), ("Ceil", {"x": X4 * 3}, {}),
    ("Round", {"x": np.array([0.5, 1.5, -0.5, 2.4, -2.6], np.float32)}, {}), ("Sign", {"x": X4}, {}),
    ("Add", {"a": X4, "b": X4[0, :, :1]}, {}), ("Sub", {"a": X4, "b": X4[:, :, :, :1]}, {}),
    ("Mul", {"a": X4, "b": X34[:1, :, :, None]}, {}), ("Div", {"a": X4, "b": POS}, {}),
    ("Div", {"a": np.array([7, -7, 7, -7], np.int64), "b": np.array([2, 2, -2, -2], np.int64)}, {}),
    ("Pow", {"a": POS, "b": X4}, {}), ("Pow", {"a": X4, "b": np.array(2, np.int64)}, {}),
    ("Max", {"a": X4, "b": X4[:, :1], "c": X4[:1]}, {}), ("Min", {"a": X4, "b": X4[:, :1]}, {}),
    ("Sum", {"a": X4, "b": X4[:1], "c": X4}, {}), ("Mean", {"a": X4, "b": X4[:, :, :1]}, {}),
    ("Equal", {"a": I64, "b": I64.T}, {}), ("Less", {"a": X4, "b": X4[:1]}, {}), ("Greater", {"a": X4, "b": X4[:1]}, {}),
    ("Not", {"a": X4 > 0}, {}), ("Where", {"c": X4 > 0, "a": X4, "b": X4[:1] * 2}, {}),
    ("MatMul", {"a": X4, "b": X4.transpose(0, 1, 3, 2)}, {}), ("MatMul", {"a": X34, "b": X34[0, 0]}, {}),
    ("Gemm", {"a": X34[0], "b": X34[1], "c": X34[0, 0, :3]}, {"alpha": 0.5, "beta": 2.0, "transB": 1}),
    ("Concat", {"a": X4, "b": X4[:, :2]}, {"axis": 1}), ("Transpose", {"x": X4}, {"perm": [0, 2, 3, 1]}),
    ("Flatten", {"x": X4}, {"axis": 2}), ("Flatten", {"x": X4}, {"axis": -1}),
    ("Reshape", {"x": X4, "s": np.array([0, -1, 5], np.int64)}, {}),
    ("Reshape", {"x": np.zeros((0, 3), np.float32), "s": np.array([3, 0], np.int64)}, {"allowzero": 1}),
    ("Slice", {"x": X4, "s": np.array([1, -1]), "e": np.array([3, -100]), "a": np.array([1, 3]),
               "st": np.array([1, -2])}, {}),
    ("Gather", {"x": X4, "i": np.array([[0, -1], [2, 1]], np.int64)}, {"axis": 1}),
    ("GatherElements", {"x": X34, "i": np.array([[[0, 1, 2, -1]]] * 2, np.int64)}, {"axis": 2}),
    ("Expand", {"x": X4[:, :1], "s": np.array([3, 1, 1], np.int64)}, {}),
    ("Tile", {"x": X34, "r": np.array([1, 2, 3], np.int64)}, {}), ("Shape", {"x": X4}, {}),
    ("Shape", {"x": X4}, {"start": 1, "end": -1}), ("Size", {"x": X4}, {}),
    ("Cast", {"x": X4 * 10}, {"to": onnx.TensorProto.INT32}), ("Cast", {"x": I64}, {"to": onnx.TensorProto.FLOAT}),
    ("ConstantOfShape", {"s": np.array([2, 3], np.int64)}, {"value": numpy_helper.from_array(np.array([4], np.int32))}),
    ("Range", {"a": np.array(1, np.int64), "b": np.array(10, np.int64), "d": np.array(3, np.int64)}, {}),
    ("Range", {"a": np.array(1, np.float32), "b": np.array(-2, np.float32), "d": np.array(-0.5, np.float32)}, {}),
    ("ArgMax", {"x": X4}, {"axis": 1}), ("ArgMax", {"x": np.array([[1, 3, 3]], np.float32)},
                                         {"axis": 1, "keepdims": 0, "select_last_index": 1}),
    ("ArgMin", {"x": X4}, {"axis": -1}),
    ("InstanceNormalization", {"x": X4, "s": POS[0, :, 0, 0], "b": X4[0, :, 0, 0]}, {"epsilon": 1e-3}),
    ("LRN", {"x": X4}, {"size": 3, "alpha": 1e-2, "beta": 0.6, "bias": 2.0}),
    ("LayerNormalization", {"x": X4, "s": POS[0, 0, 0], "b": X4[0, 0, 0]}, {"axis": -1}),
    ("GlobalAveragePool", {"x": X4}, {}), ("GlobalMaxPool", {"x": X4}, {}),
    ("DepthToSpace", {"x": R.standard_normal((1, 8, 2, 3)).astype(np.float32)}, {"blocksize": 2}),
    ("DepthToSpace", {"x": R.standard_normal((1, 8, 2, 3)).astype(np.float32)}, {"blocksize": 2, "mode": "CRD"}),
    ("SpaceToDepth", {"x": R.standard_normal((1, 2, 4, 6)).astype(np.float32)}, {"blocksize": 2}),
    ("Einsum", {"a": X34, "b": X34}, {"equation": "bij,bkj->bik"}), ("Identity", {"x": X4}, {}),
    ("NonZero", {"x": X34 > 0}, {}), ("Mod", {"a": np.array([5, -5, 7], np.int64), "b": np.array([3, 3, -4], np.int64)}, {}),
]


@pytest.mark.parametrize("op,inputs,attrs", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_single_op_matches_onnxruntime(op, inputs, attrs):
    agree(make_model(op, inputs, opset=20 if op == "Gelu" else 18, **attrs), inputs)
