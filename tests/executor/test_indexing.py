"""Index, scatter, sampling (GridSample, DeformConv, RoiAlign), detection and spectral kernels: the official
ONNX node cases, and agreement with onnxruntime."""

from __future__ import annotations

import importlib
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optimizer.executor.conformance import PASSED, Case, check_case
from support import assert_matches_onnxruntime, one_node_model as make_model, run_ort, run_ours

#: The ops these kernels added, and the onnx modules whose import generates their node cases.
OPS = {
    "TopK": "topk", "CumSum": "cumsum", "CumProd": "cumprod", "Trilu": "trilu", "OneHot": "onehot",
    "EyeLike": "eyelike", "GatherND": "gathernd", "Compress": "compress", "Unique": "unique",
    "ReverseSequence": "reversesequence", "Scatter": "scatter", "ScatterElements": "scatterelements",
    "ScatterND": "scatternd", "GridSample": "gridsample", "RoiAlign": "roialign",
    "NonMaxSuppression": "nonmaxsuppression", "BitShift": "bitshift", "BitwiseAnd": "bitwiseand",
    "BitwiseOr": "bitwiseor", "BitwiseXor": "bitwisexor", "BitwiseNot": "bitwisenot", "Shrink": "shrink",
    "Swish": "swish", "SpaceToDepth": "spacetodepth", "Einsum": "einsum", "LpNormalization": "lpnormalization",
    "MeanVarianceNormalization": "meanvariancenormalization", "DFT": "dft", "STFT": "stft",
    "HannWindow": "hannwindow", "HammingWindow": "hammingwindow", "BlackmanWindow": "blackmanwindow",
    "AffineGrid": "affinegrid", "CenterCropPad": "center_crop_pad", "SwiGLU": "swiglu", "BitCast": "bitcast",
    "MelWeightMatrix": "melweightmatrix", "DeformConv": "deformconv",
}


def _node_cases():
    """Importing a case module runs its exports (collect_testcases() would build all ~1900 cases: 25 s)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for module in OPS.values():
            importlib.import_module(f"onnx.backend.test.case.node.{module}")
    from onnx.backend.test.case.node import _NodeTestCases

    # single-node cases only: the list stays the same when another test has generated every case
    cases = {c.name: c for c in _NodeTestCases if len(c.model.graph.node) == 1 and c.model.graph.node[0].op_type in OPS}
    return [pytest.param(case, id=name) for name, case in sorted(cases.items())]


@pytest.mark.parametrize("case", _node_cases())
def test_official_node_case(case):
    result = check_case(Case(case.name, "node", case.model, list(case.data_sets), case.rtol, case.atol))
    assert result.status == PASSED, result.detail


def test_node_cases_cover_every_op():
    covered = {n.op_type for p in _node_cases() for n in p.values[0].model.graph.node}
    assert set(OPS) <= covered


# ---------------------------------------------------------------------- agreement with onnxruntime
SETTINGS = dict(deadline=None, derandomize=True, database=None, suppress_health_check=[HealthCheck.too_slow])


def agree(model, feeds):
    assert_matches_onnxruntime(model, feeds, rtol=1e-6, atol=1e-6)


shapes = st.lists(st.integers(1, 4), min_size=1, max_size=3).map(tuple)
seeds = st.integers(0, 2**16)


def ties(seed, shape, dtype=np.float32):
    """Small integers (as ``dtype``), so equal values, hence ties, are common."""
    return np.random.default_rng(seed).integers(-3, 4, shape).astype(dtype)


@settings(max_examples=40, **SETTINGS)
@given(shapes, seeds, st.data())
def test_top_k(shape, seed, data):
    opset = data.draw(st.sampled_from([1, 10, 11]))
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    k = data.draw(st.integers(0 if opset >= 10 else 1, shape[axis]))
    x = ties(seed, shape, data.draw(st.sampled_from([np.float32, np.int64])) if opset >= 11 else np.float32)
    if x.dtype == np.float32 and data.draw(st.booleans()):
        x.flat[::3] = np.nan  # onnxruntime ranks NaN above +inf
    attrs = {"axis": axis, "k": k} if opset == 1 else {"axis": axis}
    if opset >= 11:
        attrs["largest"] = data.draw(st.integers(0, 1))
    inits = {} if opset == 1 else {"k": np.array([k], np.int64)}
    agree(make_model("TopK", {"x": x}, n_outputs=2, opset=opset, initializers=inits, **attrs), {"x": x})


@settings(max_examples=40, **SETTINGS)
@given(shapes, seeds, st.data())
def test_cum_sum(shape, seed, data):
    x = ties(seed, shape, data.draw(st.sampled_from([np.float32, np.int32, np.int64])))
    if x.dtype == np.float32:
        x = x * np.float32(0.37)
    axis = np.array(data.draw(st.integers(-len(shape), len(shape) - 1)),
                    data.draw(st.sampled_from([np.int32, np.int64])))
    if data.draw(st.booleans()):
        axis = axis.reshape(1)
    agree(make_model("CumSum", {"x": x}, opset=data.draw(st.sampled_from([11, 14])), initializers={"axis": axis},
                     exclusive=data.draw(st.integers(0, 1)), reverse=data.draw(st.integers(0, 1))), {"x": x})


@settings(max_examples=30, **SETTINGS)
@given(st.lists(st.integers(1, 5), min_size=2, max_size=3).map(tuple), seeds, st.integers(-5, 5), st.booleans(),
       st.booleans())
def test_trilu(shape, seed, k, upper, k_given):
    x = ties(seed, shape)
    inits = {"k": np.array(k, np.int64)} if k_given else {}
    want_k = k if k_given else 0
    got, = run_ours(make_model("Trilu", {"x": x}, opset=14, initializers=inits, upper=int(upper)), {"x": x})
    rows, cols = np.indices(shape[-2:])
    kept = cols - rows >= want_k if upper else cols - rows <= want_k
    np.testing.assert_array_equal(got, np.where(kept, x, 0))
    agree(make_model("Trilu", {"x": x}, opset=14, initializers=inits, upper=int(upper)), {"x": x})


def _distinct_rows(rng, count, bounds):
    """``count`` distinct index tuples in ``bounds``, each coordinate randomly written as a negative index."""
    flat = rng.choice(int(np.prod(bounds)), size=count, replace=False)
    rows = np.stack(np.unravel_index(flat, bounds), axis=-1).astype(np.int64)
    return np.where(rng.random(rows.shape) < 0.3, rows - np.array(bounds), rows)


@settings(max_examples=40, **SETTINGS)
@given(shapes, seeds, st.data())
def test_scatter_nd(shape, seed, data):
    rng = np.random.default_rng(seed)
    depth = data.draw(st.integers(1, len(shape)))
    reduction = data.draw(st.sampled_from(["none", "add", "mul", "max", "min"]))
    slots = int(np.prod(shape[:depth]))
    count = data.draw(st.integers(1, slots if reduction == "none" else 2 * slots))
    if reduction == "none":
        indices = _distinct_rows(rng, count, shape[:depth])
    else:  # repeated targets reduce in turn
        indices = np.stack([rng.integers(-d, d, count) for d in shape[:depth]], axis=-1)
    x, updates = ties(seed, shape), ties(seed + 1, (count,) + shape[depth:])
    agree(make_model("ScatterND", {"x": x, "i": indices, "u": updates}, opset=18, reduction=reduction),
          {"x": x, "i": indices, "u": updates})


@settings(max_examples=40, **SETTINGS)
@given(shapes, seeds, st.data())
def test_scatter_elements(shape, seed, data):
    rng = np.random.default_rng(seed)
    axis = data.draw(st.integers(-len(shape), len(shape) - 1))
    reduction = data.draw(st.sampled_from(["none", "add", "mul", "max", "min"]))
    length = data.draw(st.integers(1, shape[axis]))
    index_shape = shape[:axis % len(shape)] + (length,) + shape[axis % len(shape) + 1:]
    if reduction == "none":  # distinct targets along every fibre of the axis
        indices = np.take(np.argsort(rng.random(shape), axis=axis), np.arange(length), axis=axis)
    else:
        indices = rng.integers(0, shape[axis], index_shape)
    indices = np.where(rng.random(index_shape) < 0.3, indices - shape[axis], indices).astype(np.int64)
    x, updates = ties(seed, shape), ties(seed + 1, index_shape)
    agree(make_model("ScatterElements", {"x": x, "i": indices, "u": updates}, opset=18, axis=axis,
                     reduction=reduction), {"x": x, "i": indices, "u": updates})


@settings(max_examples=40, **SETTINGS)
@given(st.lists(st.integers(1, 4), min_size=1, max_size=4).map(tuple), seeds, st.data())
def test_gather_nd(shape, seed, data):
    rng = np.random.default_rng(seed)
    batch_dims = data.draw(st.integers(0, len(shape) - 1))
    depth = data.draw(st.integers(1, len(shape) - batch_dims))
    picks = data.draw(st.lists(st.integers(1, 3), max_size=2).map(tuple))
    bounds = shape[batch_dims:batch_dims + depth]
    indices = np.stack([rng.integers(-d, d, shape[:batch_dims] + picks) for d in bounds], axis=-1).astype(np.int64)
    x = ties(seed, shape)
    agree(make_model("GatherND", {"x": x, "i": indices}, opset=13, batch_dims=batch_dims), {"x": x, "i": indices})


#: (indices, depth, values) types onnxruntime implements OneHot for.
ORT_ONE_HOT_TYPES = [(np.int64, np.int64, np.int64), (np.int64, np.int64, np.float32), (np.int64, np.int32, np.float32),
                     (np.int64, np.float32, np.int32), (np.int32, np.float32, np.float32),
                     (np.float32, np.int64, np.int64), (np.float32, np.float32, np.float32)]


@settings(max_examples=40, **SETTINGS)
@given(shapes, seeds, st.sampled_from(ORT_ONE_HOT_TYPES), st.data())
def test_one_hot(shape, seed, types, data):
    index_type, depth_type, value_type = types
    depth = data.draw(st.integers(1, 5))
    indices = np.random.default_rng(seed).integers(-depth - 1, depth + 2, shape).astype(index_type)
    depth_tensor = np.array([depth] if data.draw(st.booleans()) else depth, depth_type)
    values = np.array([data.draw(st.integers(-2, 2)), data.draw(st.integers(3, 9))], value_type)
    axis = data.draw(st.integers(-len(shape) - 1, len(shape)))
    agree(make_model("OneHot", {"i": indices}, opset=11, axis=axis, initializers={"d": depth_tensor, "v": values}),
          {"i": indices})


def test_one_hot_negative_indices_count_back_only_from_opset_11():
    """Opset 9 defines indices outside [0, depth) as all-off (onnxruntime wraps them at every opset)."""
    indices = np.array([-1, 0, 2, 3], np.int64)
    inits = {"d": np.array(3, np.int64), "v": np.array([0, 1], np.int64)}
    old, = run_ours(make_model("OneHot", {"i": indices}, opset=9, initializers=inits), {"i": indices})
    new, = run_ours(make_model("OneHot", {"i": indices}, opset=11, initializers=inits), {"i": indices})
    np.testing.assert_array_equal(old, [[0, 0, 0], [1, 0, 0], [0, 0, 1], [0, 0, 0]])
    np.testing.assert_array_equal(new, [[0, 0, 1], [1, 0, 0], [0, 0, 1], [0, 0, 0]])


def test_scatter_reduction_must_exist_at_the_opset():
    from optimizer.executor import UnsupportedOpError

    x, indices, updates = np.zeros(3, np.float32), np.array([[1]], np.int64), np.ones(1, np.float32)
    model = make_model("ScatterND", {"x": x, "i": indices, "u": updates}, opset=16, reduction="max")
    with pytest.raises(UnsupportedOpError, match="reduction 'max' is not defined at opset 16"):
        run_ours(model, {"x": x, "i": indices, "u": updates})


# ---------------------------------------------------------------------- detection and sampling
@pytest.mark.parametrize("seed", range(4))
def test_non_max_suppression_with_ties_and_duplicates(seed):
    rng = np.random.default_rng(seed)
    boxes = np.round(rng.uniform(0, 8, (2, 25, 4))).astype(np.float32)
    scores = np.round(rng.uniform(0, 1, (2, 3, 25)), 1).astype(np.float32)
    inits = {"m": np.array([4], np.int64), "iou": np.array([0.3], np.float32), "s": np.array([0.2], np.float32)}
    for center in (0, 1):
        agree(make_model("NonMaxSuppression", {"b": boxes, "c": scores}, opset=11, initializers=inits,
                         center_point_box=center), {"b": boxes, "c": scores})


@pytest.mark.parametrize("mode", ["linear", "cubic", "nearest"])
@pytest.mark.parametrize("padding", ["zeros", "border", "reflection"])
def test_grid_sample_outside_the_map(mode, padding):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 3, 5, 6)).astype(np.float32)
    grid = rng.uniform(-1.6, 1.6, (2, 4, 7, 2)).astype(np.float32)
    for align in (0, 1):
        agree(make_model("GridSample", {"x": x, "g": grid}, opset=20, mode=mode, padding_mode=padding,
                         align_corners=align), {"x": x, "g": grid})


@pytest.mark.parametrize("size", [(2, 3, 4, 5), (2, 3, 3, 4, 5)], ids=["2d", "3d"])
def test_affine_grid(size):
    theta = np.random.default_rng(0).standard_normal((2, len(size) - 2, len(size) - 1)).astype(np.float32)
    for align in (0, 1):
        model = make_model("AffineGrid", {"t": theta}, opset=20, initializers={"size": np.array(size, np.int64)},
                           align_corners=align)
        grid, = run_ours(model, {"t": theta})
        np.testing.assert_allclose(grid, run_ort(model, {"t": theta})[0], rtol=1e-5, atol=1e-6)
        assert grid.shape == (2,) + size[2:] + (len(size) - 2,)


@pytest.mark.parametrize("group,offset_group,strides,dilations,pads", [
    (1, 1, [1, 1], [1, 1], [0, 0, 0, 0]), (2, 1, [2, 1], [1, 2], [1, 0, 1, 1]), (1, 2, [1, 2], [2, 1], [0, 1, 1, 0]),
    (2, 2, [2, 2], [1, 1], [1, 1, 1, 1])])
def test_deform_conv_offsets_reaching_outside(group, offset_group, strides, dilations, pads):
    rng = np.random.default_rng(group + 2 * offset_group)
    x = rng.standard_normal((2, 4, 7, 6)).astype(np.float32)
    w = rng.standard_normal((4, 4 // group, 3, 2)).astype(np.float32)
    out = [(size + pads[i] + pads[i + 2] - (k - 1) * dilations[i] - 1) // strides[i] + 1
           for i, (size, k) in enumerate(zip((7, 6), (3, 2)))]
    feeds = {"x": x, "w": w, "offset": (2 * rng.standard_normal((2, offset_group * 12, *out))).astype(np.float32),
             "b": rng.standard_normal(4).astype(np.float32),
             "mask": rng.uniform(0, 1, (2, offset_group * 6, *out)).astype(np.float32)}
    model = make_model("DeformConv", feeds, opset=19, group=group, offset_group=offset_group, kernel_shape=[3, 2],
                       strides=strides, dilations=dilations, pads=pads)
    got, = run_ours(model, feeds)
    np.testing.assert_allclose(got, run_ort(model, feeds)[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("opset,transform", [(10, None), (16, "half_pixel"), (16, "output_half_pixel")])
@pytest.mark.parametrize("mode", ["avg", "max"])
def test_roi_align_boxes_partly_outside(opset, transform, mode):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 10, 12)).astype(np.float32)
    corner = rng.uniform(-3, 14, (6, 2))
    rois = np.concatenate([corner, corner + rng.uniform(0, 9, (6, 2))], axis=1).astype(np.float32)
    batch = rng.integers(0, 2, 6).astype(np.int64)
    attrs = dict(mode=mode, output_height=3, output_width=4, sampling_ratio=2 if mode == "max" else 0,
                 spatial_scale=0.8)
    if transform:
        attrs["coordinate_transformation_mode"] = transform
    feeds = {"x": x, "r": rois, "b": batch}
    agree(make_model("RoiAlign", feeds, opset=opset, **attrs), feeds)


# ---------------------------------------------------------------------- spectral
@pytest.mark.parametrize("opset", [17, 20])
@pytest.mark.parametrize("parts,inverse,onesided", [(1, 0, 0), (2, 0, 0), (1, 0, 1), (2, 1, 0), (2, 1, 1)])
@pytest.mark.parametrize("axis", [1, -2])
def test_dft(opset, parts, inverse, onesided, axis):
    x = np.random.default_rng(0).standard_normal((2, 8, 5, parts)).astype(np.float32)
    # onnxruntime's IRFFT disagrees with numpy's (and the spec's node cases) for a dft_length other than the default
    for length in [None] if inverse and onesided else [None, 6, 11]:
        inits = {} if length is None else {"n": np.array(length, np.int64)}
        names = ["x", "" if length is None else "n"]
        attrs = dict(inverse=inverse, onesided=onesided)
        if opset == 17:
            attrs["axis"] = axis
        else:
            inits["axis"] = np.array(axis, np.int64)
            names.append("axis")
        model = make_model("DFT", {"x": x}, opset=opset, initializers=inits, input_names=names, **attrs)
        got, = run_ours(model, {"x": x})
        want, = run_ort(model, {"x": x})
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("window,frame_length", [(False, 16), (True, None), (True, 16)])
@pytest.mark.parametrize("onesided", [0, 1])
def test_stft(window, frame_length, onesided):
    signal = np.random.default_rng(0).standard_normal((2, 64, 1)).astype(np.float32)
    inits = {"step": np.array(5, np.int64)}
    if window:
        inits["window"] = np.hanning(16).astype(np.float32)
    if frame_length:
        inits["length"] = np.array(frame_length, np.int64)
    names = ["x", "step", "window" if window else "", "length" if frame_length else ""]
    model = make_model("STFT", {"x": signal}, opset=17, initializers=inits, input_names=names, onesided=onesided)
    got, = run_ours(model, {"x": signal})
    want, = run_ort(model, {"x": signal})
    assert got.shape == want.shape == (2, 10, 9 if onesided else 16, 2)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
