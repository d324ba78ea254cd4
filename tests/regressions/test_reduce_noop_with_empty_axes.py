"""Regression: Reduce ops with ``noop_with_empty_axes=1`` and no axes skipped their element-wise part.

ONNX (and onnxruntime) reduce nothing then but still map each element: ReduceSumSquare gave
x instead of x², ReduceL1 and ReduceL2 x instead of |x|, ReduceLogSum x instead of log(x).
Reductions over an empty set also failed (ReduceMax/Min/LogSumExp raised numpy's "zero-size
array" error) or differed (ReduceMean gave NaN where onnxruntime gives 0). Every Reduce op is
swept against onnxruntime: noop_with_empty_axes 0/1 x axes given/empty/absent x keepdims.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from onnx import helper

import optimizer
from support import make_model, ort_run

REDUCE_OPS = ["ReduceSum", "ReduceMean", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceL1", "ReduceL2",
              "ReduceSumSquare", "ReduceLogSum", "ReduceLogSumExp"]
RNG = np.random.default_rng(0)
SIGNED = RNG.uniform(-2, 2, (2, 3, 4)).astype(np.float32)
INPUTS = {"signed": SIGNED, "positive": np.abs(SIGNED), "empty": np.zeros((2, 0, 4), np.float32),
          "int32": RNG.integers(-5, 6, (2, 3, 4)).astype(np.int32), "empty int32": np.zeros((2, 0, 4), np.int32)}


def reduce_model(op: str, x: np.ndarray, axes: list[int] | None, opset: int = 18, **attrs):
    """One Reduce node; ``axes`` None leaves the optional axes input out."""
    inits = {} if axes is None else {"axes": np.array(axes, np.int64)}
    node = helper.make_node(op, ["x", *inits], ["y"], **attrs)
    return make_model([node], [("x", x.shape, helper.np_dtype_to_tensor_dtype(x.dtype))], ["y"], inits, opset=opset,
                      check=False, name="reduce")


def assert_same_as_onnxruntime(model, x: np.ndarray) -> np.ndarray:
    (want,) = ort_run(model, {"x": x})
    got = optimizer.run(model, {"x": x})["y"]
    assert got.dtype == want.dtype and got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6, equal_nan=True)
    return got


@pytest.mark.parametrize("noop", [0, 1])
@pytest.mark.parametrize("op", REDUCE_OPS)
def test_reduce_matches_onnxruntime_for_every_axes_form(op: str, noop: int) -> None:
    for axes, keepdims, data in itertools.product([[1], [], None], [0, 1], INPUTS):
        x = INPUTS[data]
        if x.dtype == np.int32 and op in ("ReduceLogSum", "ReduceLogSumExp"):
            continue  # onnxruntime has no int32 kernels for these
        model = reduce_model(op, x, axes, keepdims=keepdims, noop_with_empty_axes=noop)
        assert_same_as_onnxruntime(model, x)


@pytest.mark.parametrize("op, expected", [("ReduceSumSquare", np.square(SIGNED)), ("ReduceL1", np.abs(SIGNED)),
                                          ("ReduceL2", np.abs(SIGNED)), ("ReduceLogSum", np.log(np.abs(SIGNED))),
                                          ("ReduceLogSumExp", SIGNED), ("ReduceMax", SIGNED)])
def test_noop_applies_the_element_wise_part(op: str, expected: np.ndarray) -> None:
    x = np.abs(SIGNED) if op == "ReduceLogSum" else SIGNED
    y = assert_same_as_onnxruntime(reduce_model(op, x, [], noop_with_empty_axes=1), x)
    np.testing.assert_allclose(y, expected, rtol=1e-6)


@pytest.mark.parametrize("op, identity", [("ReduceMax", -np.inf), ("ReduceMin", np.inf), ("ReduceLogSumExp", -np.inf),
                                          ("ReduceMean", 0.0), ("ReduceProd", 1.0), ("ReduceL2", 0.0)])
def test_reduction_over_an_empty_set_is_the_identity(op: str, identity: float) -> None:
    x = INPUTS["empty"]
    y = assert_same_as_onnxruntime(reduce_model(op, x, [1], keepdims=0), x)
    assert y.shape == (2, 4) and (y == identity).all()


def test_reduce_sum_opset13_noop_and_older_attribute_axes() -> None:
    x = SIGNED
    assert_same_as_onnxruntime(reduce_model("ReduceSum", x, [], opset=13, noop_with_empty_axes=1), x)
    for op in REDUCE_OPS[1:]:  # before opset 18 axes are an attribute, and absent means all
        node_model = reduce_model(op, np.abs(x), None, opset=13, keepdims=0)
        assert assert_same_as_onnxruntime(node_model, np.abs(x)).shape == ()
