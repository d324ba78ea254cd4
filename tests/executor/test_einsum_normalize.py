"""Einsum on random equations, LpNormalization and MeanVarianceNormalization, against onnxruntime.

(Their official node cases run in test_indexing.py with the other ops this work added.)
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support import assert_matches_onnxruntime, one_node_model as make_model, run_ours

SETTINGS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])
LETTER_SIZES = {"a": 2, "b": 3, "c": 1, "d": 4, "i": 3, "j": 2}


def agree(model, feeds, rtol=1e-5, atol=1e-5):
    return assert_matches_onnxruntime(model, feeds, rtol=rtol, atol=atol)


@st.composite
def einsum_problems(draw):
    """(equation, operands): 1-3 operands over a few letters, optional ellipsis, explicit or implicit output."""
    count = draw(st.integers(1, 3))
    terms = [draw(st.lists(st.sampled_from(sorted(LETTER_SIZES)), min_size=1, max_size=3, unique=True))
             for _ in range(count)]
    batch = tuple(draw(st.lists(st.integers(1, 3), max_size=2))) if draw(st.booleans()) else None
    used = sorted({letter for term in terms for letter in term})
    ellipsis = "..." if batch is not None else ""
    equation = ",".join(ellipsis + "".join(term) for term in terms)
    if draw(st.booleans()):
        output = draw(st.permutations(used))[:draw(st.integers(0, len(used)))]
        equation += "->" + ellipsis + "".join(output)
    if draw(st.booleans()):
        equation = equation.replace(",", " , ").replace("->", " -> ")
    dtype = draw(st.sampled_from([np.float32, np.int32, np.int64]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    operands = [rng.integers(-3, 4, (batch or ()) + tuple(LETTER_SIZES[c] for c in term)).astype(dtype)
                for term in terms]
    if dtype == np.float32:
        operands = [o + rng.standard_normal(o.shape).astype(np.float32) for o in operands]
    return equation, operands


@settings(max_examples=50, **SETTINGS)
@given(einsum_problems())
def test_einsum_matches_onnxruntime(problem):
    equation, operands = problem
    feeds = {f"x{i}": x for i, x in enumerate(operands)}
    got, = agree(make_model("Einsum", feeds, opset=12, equation=equation), feeds)
    want = np.einsum(equation.replace(" ", ""), *[x.astype(np.float64) for x in operands])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-4)


def test_einsum_repeated_letter_takes_the_diagonal():
    x = np.arange(9, dtype=np.int64).reshape(3, 3)
    diagonal, = agree(make_model("Einsum", {"x": x}, opset=12, equation="ii->i"), {"x": x})
    trace, = agree(make_model("Einsum", {"x": x}, opset=12, equation="ii"), {"x": x})
    np.testing.assert_array_equal(diagonal, [0, 4, 8])
    assert trace == 12


@pytest.mark.parametrize("p", [1, 2])
@pytest.mark.parametrize("axis", [-1, 0, 1])
@pytest.mark.parametrize("opset", [1, 22])
def test_lp_normalization(p, axis, opset):
    x = np.random.default_rng(p).standard_normal((3, 4, 5)).astype(np.float32)
    x[1, :, 2] = 0
    x[:, 0, :] = 0
    x[2, 3, :] = 0  # a zero vector along every axis tested: zeros come out, not NaN
    y, = agree(make_model("LpNormalization", {"x": x}, opset=opset, axis=axis, p=p), {"x": x}, rtol=1e-6, atol=1e-7)
    norms = np.sum(np.abs(y) ** p, axis=axis) ** (1 / p)
    zero = np.sum(np.abs(x), axis=axis) == 0
    np.testing.assert_allclose(norms[~zero], 1, rtol=1e-6)
    assert not np.isnan(y).any() and (norms[zero] == 0).all()


def test_lp_normalization_refuses_other_norms():
    from optimizer.executor import UnsupportedOpError

    x = np.ones((2, 3), np.float32)
    with pytest.raises(UnsupportedOpError, match="p = 3 is not supported"):
        run_ours(make_model("LpNormalization", {"x": x}, p=3), {"x": x})


@pytest.mark.parametrize("axes", [None, [0, 2, 3], [1], [-1], [0, 1, 2, 3]])
@pytest.mark.parametrize("opset", [9, 13])
def test_mean_variance_normalization(axes, opset):
    x = (np.random.default_rng(0).standard_normal((2, 3, 4, 5)) * 3 + 1).astype(np.float32)
    attrs = {} if axes is None else {"axes": axes}
    y, = agree(make_model("MeanVarianceNormalization", {"x": x}, opset=opset, **attrs), {"x": x},
               rtol=1e-5, atol=1e-6)
    reduced = tuple(axes or (0, 2, 3))
    np.testing.assert_allclose(y.mean(axis=reduced), 0, atol=1e-6)
    np.testing.assert_allclose(y.std(axis=reduced), 1, rtol=1e-5)


def test_mean_variance_normalization_of_a_constant_slice_is_zero():
    """The spec adds 1e-9 to the deviation, so a constant slice gives 0 (onnxruntime divides by 0: NaN)."""
    x = np.random.default_rng(1).standard_normal((2, 3, 4, 5)).astype(np.float32)
    x[:, 1] = 3
    y, = run_ours(make_model("MeanVarianceNormalization", {"x": x}, opset=13), {"x": x})
    np.testing.assert_array_equal(y[:, 1], 0)
    assert np.isfinite(y).all()
