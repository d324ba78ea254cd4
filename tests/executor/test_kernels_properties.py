"""Property tests: the executor agrees with onnxruntime on random Conv, ConvTranspose, pool, Gemm and Resize nodes.

Hypothesis runs derandomized (the same examples every run, so CI is deterministic) and without an
example database."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from support import assert_matches_onnxruntime, one_node_model as make_model, run_ort, run_ours

SETTINGS = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow], database=None, derandomize=True)


def rand(seed, *shape):
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def assert_agree(model, feeds, rtol=1e-4, atol=1e-5):
    assert_matches_onnxruntime(model, feeds, rtol=rtol, atol=atol)


@st.composite
def conv_configs(draw, transpose=False):
    nd = draw(st.sampled_from([1, 2, 2, 2, 3]))
    depthwise = not transpose and draw(st.booleans())
    if depthwise:
        group = draw(st.integers(2, 4))
        cg, mg = 1, draw(st.integers(1, 2))
    else:
        group = draw(st.sampled_from([1, 1, 2, 3]))
        cg, mg = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    k = [draw(st.integers(1, 3)) for _ in range(nd)]
    s = [draw(st.integers(1, 3)) for _ in range(nd)]
    d = [draw(st.integers(1, 2)) for _ in range(nd)]
    size = [draw(st.integers(1, 7 if nd < 3 else 5)) for _ in range(nd)]
    auto_pad = draw(st.sampled_from(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    pads = [draw(st.integers(0, 2)) for _ in range(2 * nd)]
    attrs = dict(kernel_shape=k, strides=s, dilations=d, group=group)
    if auto_pad == "NOTSET":
        attrs["pads"] = pads
    else:
        attrs["auto_pad"] = auto_pad
        if auto_pad != "VALID":
            attrs["dilations"] = [1] * nd  # onnxruntime refuses dilation with SAME padding
    n = draw(st.integers(1, 2))
    bias = draw(st.booleans())
    seed = draw(st.integers(0, 2**16))
    return nd, n, group, cg, mg, k, size, attrs, bias, seed


@settings(max_examples=120, **SETTINGS)
@given(conv_configs())
def test_conv_matches_onnxruntime(config):
    nd, n, group, cg, mg, k, size, attrs, bias, seed = config
    extent = [(kk - 1) * dd + 1 for kk, dd in zip(k, attrs["dilations"])]
    padded = [sz + (attrs["pads"][i] + attrs["pads"][i + nd] if "pads" in attrs else 0) for i, sz in enumerate(size)]
    assume(attrs.get("auto_pad", "NOTSET") in ("SAME_UPPER", "SAME_LOWER") or all(p >= e for p, e in zip(padded, extent)))
    x = rand(seed, n, group * cg, *size)
    inits = {"w": rand(seed + 1, group * mg, cg, *k)}
    if bias:
        inits["b"] = rand(seed + 2, group * mg)
    assert_agree(make_model("Conv", {"x": x}, initializers=inits, opset=13, **attrs), {"x": x})


@settings(max_examples=60, **SETTINGS)
@given(conv_configs(transpose=True), st.data())
def test_conv_transpose_matches_onnxruntime(config, data):
    nd, n, group, cg, mg, k, size, attrs, bias, seed = config
    if attrs.get("auto_pad") in ("SAME_UPPER", "SAME_LOWER", "VALID"):
        attrs.pop("auto_pad")
        attrs["pads"] = [0] * (2 * nd)
    strides, dilations = attrs["strides"], attrs["dilations"]
    attrs["output_padding"] = [data.draw(st.integers(0, s - 1)) for s in strides]  # onnxruntime: < stride
    full = [s * (i - 1) + (kk - 1) * d + 1 + op for s, i, kk, d, op in zip(strides, size, k, dilations,
                                                                          attrs["output_padding"])]
    assume(all(f - attrs["pads"][i] - attrs["pads"][i + nd] >= 1 for i, f in enumerate(full)))
    x = rand(seed, n, group * cg, *size)
    inits = {"w": rand(seed + 1, group * cg, mg, *k)}
    if bias:
        inits["b"] = rand(seed + 2, group * mg)
    assert_agree(make_model("ConvTranspose", {"x": x}, initializers=inits, opset=13, **attrs), {"x": x})


@st.composite
def pool_configs(draw):
    nd = draw(st.sampled_from([1, 2, 2, 3]))
    op = draw(st.sampled_from(["MaxPool", "AveragePool", "LpPool"]))
    k = [draw(st.integers(1, 3)) for _ in range(nd)]
    s = [draw(st.integers(1, 3)) for _ in range(nd)]
    d = [draw(st.integers(1, 2)) for _ in range(nd)]
    pads = [draw(st.integers(0, kk - 1)) for kk in k] + [draw(st.integers(0, kk - 1)) for kk in k]
    size = [draw(st.integers(1, 7 if nd < 3 else 5)) for _ in range(nd)]
    attrs = dict(kernel_shape=k, strides=s, dilations=d)
    auto_pad = draw(st.sampled_from(["NOTSET", "NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    if auto_pad == "NOTSET":
        attrs["pads"] = pads
        attrs["ceil_mode"] = int(draw(st.booleans()))
    else:
        attrs["auto_pad"] = auto_pad
        if auto_pad != "VALID":
            attrs["dilations"] = [1] * nd  # onnxruntime sizes SAME padding from the undilated kernel
    if op == "AveragePool":
        attrs["count_include_pad"] = int(draw(st.booleans()))
    elif op == "MaxPool":
        attrs["storage_order"] = int(draw(st.booleans()))
    else:
        attrs["p"] = draw(st.integers(1, 3))
    return op, nd, size, attrs, draw(st.integers(0, 2**16))


@settings(max_examples=100, **SETTINGS)
@given(pool_configs())
@example(("AveragePool", 3, [1, 1, 1], dict(kernel_shape=[2, 1, 1], strides=[1, 1, 1], dilations=[2, 1, 1],
                                             pads=[1, 0, 0, 1, 0, 0], count_include_pad=0), 0))  # padding-only window
def test_pool_matches_onnxruntime(config):
    """MaxPool also with its Indices output (flat index into N, C and the spatial axes in storage_order)."""
    op, nd, size, attrs, seed = config
    extent = [(kk - 1) * dd + 1 for kk, dd in zip(attrs["kernel_shape"], attrs["dilations"])]
    pads = attrs.get("pads", [0] * 2 * nd)
    if attrs.get("auto_pad") in ("SAME_UPPER", "SAME_LOWER"):  # onnxruntime fails on negative SAME padding
        assume(all((-(-sz // s) - 1) * s + k >= sz for sz, s, k in zip(size, attrs["strides"], attrs["kernel_shape"])))
    else:
        assume(all(sz + pads[i] + pads[i + nd] >= e for i, (sz, e) in enumerate(zip(size, extent))))
    x = rand(seed, 2, 3, *size)
    assert_agree(make_model(op, {"x": x}, n_outputs=2 if op == "MaxPool" else 1, opset=19, **attrs), {"x": x})


@settings(max_examples=40, **SETTINGS)
@given(st.integers(1, 5), st.integers(1, 5), st.integers(1, 5), st.booleans(), st.booleans(),
       st.sampled_from([None, "scalar", "row", "col", "full"]), st.sampled_from([1.0, 0.5, -2.0]),
       st.sampled_from([1.0, 0.0, 0.25]), st.integers(0, 2**16))
def test_gemm_matches_onnxruntime(m, k, n, trans_a, trans_b, c_kind, alpha, beta, seed):
    a = rand(seed, *((k, m) if trans_a else (m, k)))
    b = rand(seed + 1, *((n, k) if trans_b else (k, n)))
    inits = {"b": b}
    if c_kind:
        shape = {"scalar": (), "row": (n,), "col": (m, 1), "full": (m, n)}[c_kind]
        inits["c"] = rand(seed + 2, *shape)
    model = make_model("Gemm", {"a": a}, initializers=inits, transA=int(trans_a), transB=int(trans_b),
                       alpha=alpha, beta=beta)
    assert_agree(model, {"a": a})


COORDINATE_MODES = ["half_pixel", "asymmetric", "pytorch_half_pixel", "align_corners", "tf_half_pixel_for_nn",
                    "tf_crop_and_resize", "half_pixel_symmetric"]


@settings(max_examples=100, **SETTINGS)
@given(st.sampled_from(["nearest", "linear", "cubic"]), st.sampled_from(COORDINATE_MODES),
       st.sampled_from(["round_prefer_floor", "round_prefer_ceil", "floor", "ceil"]),
       st.integers(1, 6), st.integers(1, 6), st.booleans(),
       st.sampled_from([0.5, 0.6, 1.0, 1.5, 2.0, 2.5, 3.0, 1 / 3]), st.sampled_from([0.5, 0.75, 1.0, 2.0, 3.0]),
       st.booleans(), st.booleans(), st.integers(0, 2**16))
def test_resize_matches_onnxruntime(mode, coord, nearest, h, w, use_sizes, sh, sw, exclude_outside, antialias, seed):
    """antialias=1 stretches linear and cubic filters when downscaling (opset 18)."""
    assume(not (coord == "tf_half_pixel_for_nn" and mode != "nearest"))
    x = rand(seed, 1, 2, h, w)
    out_hw = [max(1, int(h * sh)), max(1, int(w * sw))] if use_sizes else [int(h * sh), int(w * sw)]
    assume(min(out_hw) >= 1)
    # onnxruntime never crops an axis it does not rescale; the spec (and this executor) does, so the
    # comparison crops rescaled axes only (test_opset_semantics checks the rest against onnx.reference)
    crop = [(0.1, 0.9) if out_hw[0] != h else (0, 1), (0.2, 0.7) if out_hw[1] != w else (0, 1)]
    roi = [0, 0, crop[0][0], crop[1][0], 1, 1, crop[0][1], crop[1][1]] if coord == "tf_crop_and_resize" else []
    inits = {"roi": np.array(roi, dtype=np.float32)}
    if use_sizes:
        inits["scales"] = np.array([], dtype=np.float32)
        inits["sizes"] = np.array([1, 2, *out_hw], dtype=np.int64)
    else:
        inits["scales"] = np.array([1, 1, sh, sw], dtype=np.float32)
    attrs = dict(mode=mode, coordinate_transformation_mode=coord, nearest_mode=nearest,
                 exclude_outside=int(exclude_outside and mode == "cubic"), extrapolation_value=-7.0,
                 antialias=int(antialias and mode != "nearest"))
    model = make_model("Resize", {"x": x}, initializers=inits, opset=19, **attrs)
    if mode != "nearest":
        assert_agree(model, {"x": x})
        return
    got, = run_ours(model, {"x": x})
    want, = run_ort(model, {"x": x})
    assert got.shape == want.shape
    # A nearest index is a rounding decision: where the exact source coordinate sits on a rounding
    # boundary, float32 round-off may go either way (onnxruntime's build does not always round as
    # IEEE float32 does). Elsewhere the pick must be identical.
    scales = [out_hw[0] / h, out_hw[1] / w] if use_sizes else [np.float32(sh), np.float32(sw)]
    ties = [_near_tie(coord, nearest, n_out, n_in, float(s), r)
            for n_out, n_in, s, r in zip(out_hw, (h, w), scales, crop)]
    differs = got != want
    assert not (differs & ~(ties[0][:, None] | ties[1][None, :])).any()


def _near_tie(coord, nearest, n_out, n_in, scale, roi):
    """Output indices whose exact source coordinate is (within round-off) a rounding boundary."""
    i = np.arange(n_out, dtype=np.float64)
    exact = {"asymmetric": i / scale, "half_pixel": (i + 0.5) / scale - 0.5,
             "pytorch_half_pixel": (i + 0.5) / scale - 0.5 if n_out > 1 else 0 * i,
             "tf_half_pixel_for_nn": (i + 0.5) / scale,
             "align_corners": i * (n_in - 1) / (n_out - 1) if n_out > 1 else 0 * i,
             "half_pixel_symmetric": n_in / 2 * (1 - n_out / (scale * n_in)) + (i + 0.5) / scale - 0.5,
             "tf_crop_and_resize": roi[0] * (n_in - 1) + i * (roi[1] - roi[0]) * (n_in - 1) / max(n_out - 1, 1)
             if n_out > 1 else 0.5 * (roi[0] + roi[1]) * (n_in - 1) + 0 * i}[coord]
    boundary = exact - 0.5 if nearest.startswith("round") else exact
    return np.abs(boundary - np.round(boundary)) < 1e-5


@settings(max_examples=20, **SETTINGS)
@given(st.sampled_from(["nearest", "linear"]), st.integers(1, 5), st.integers(1, 5),
       st.sampled_from([1.0, 2.0, 3.0, 1.5]), st.sampled_from([1.0, 2.0, 2.5]), st.sampled_from([9, 10]),
       st.integers(0, 2**16))
def test_upsample_and_resize10_match_onnxruntime(mode, h, w, sh, sw, opset, seed):
    x = rand(seed, 1, 2, h, w)
    scales = np.array([1, 1, sh, sw], dtype=np.float32)
    op = "Upsample" if opset == 9 else "Resize"
    assert_agree(make_model(op, {"x": x}, initializers={"scales": scales}, opset=opset, mode=mode), {"x": x})


@settings(max_examples=300, **SETTINGS)
@given(st.lists(st.tuples(st.integers(0, 4), st.integers(0, 5), st.integers(0, 5)), min_size=1, max_size=3),
       st.sampled_from(["constant", "reflect", "edge", "wrap"]), st.integers(0, 2 ** 16))
def test_pad_by_slices_is_numpy_pad(axes, mode, seed):
    """The Pad kernel's slice copies give np.pad's array, or its error, for every mode and width."""
    from optimizer.executor.shape_ops import padded

    x = rand(seed, *(size for size, _, _ in axes))
    widths = [(begin, end) for _, begin, end in axes]
    try:
        want = np.pad(x, widths, mode=mode, **({"constant_values": 2.5} if mode == "constant" else {}))
    except ValueError:
        with pytest.raises(ValueError):
            padded(x, widths, mode, 2.5)
        return
    assert np.array_equal(padded(x, widths, mode, 2.5), want)
