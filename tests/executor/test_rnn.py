"""LSTM, GRU, RNN and com.microsoft DynamicQuantizeLSTM against ONNX's node test cases and onnxruntime."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from optimizer import onnx_io
from optimizer.executor import Executor, ResourceLimitError, UnsupportedOpError, conformance
from support import one_node_model as make_model, run_ort, run_ours

GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}
ACTIVATIONS_PER_DIRECTION = {"LSTM": 3, "GRU": 2, "RNN": 1}
#: activation -> (takes alpha, takes beta)
ACTIVATION_PARAMS = {
    "Relu": (False, False), "Tanh": (False, False), "Sigmoid": (False, False), "Affine": (True, True),
    "LeakyRelu": (True, False), "ThresholdedRelu": (True, False), "ScaledTanh": (True, True),
    "HardSigmoid": (True, True), "Elu": (True, False), "Softsign": (False, False), "Softplus": (False, False),
}


@pytest.mark.parametrize("op", ["LSTM", "GRU", "RNN"])
def test_official_node_cases(op):
    """Every ``collect_testcases()`` case of the op, at its own tolerances (generated once per session)."""
    cases = [c for c in conformance.node_cases() if c.model.graph.node[0].op_type == op]
    assert len(cases) >= 6
    for case in cases:
        for inputs, outputs in case.data_sets:
            feeds = {i.name: v for i, v in zip(case.model.graph.input, inputs)}
            got = run_ours(case.model, feeds)
            assert len(got) == len(outputs), case.name
            for g, want in zip(got, outputs):
                assert g.dtype == want.dtype and g.shape == want.shape, case.name
                np.testing.assert_allclose(g, want, rtol=case.rtol, atol=case.atol, err_msg=case.name)


# ---------------------------------------------------------------------- property test against onnxruntime
def recurrent_model(op, feeds, initializers, input_names, outputs, opset, domain="", **attrs) -> onnx.ModelProto:
    """A one-node model whose omitted outputs (False in ``outputs``) are "" in the node and not graph outputs."""
    model = make_model(op, feeds, len(outputs), opset=opset, domain=domain, initializers=initializers,
                       input_names=input_names, **attrs)
    node = model.graph.node[0]
    for i, wanted in enumerate(outputs):
        if not wanted:
            node.output[i] = ""
    kept = [o for o in model.graph.output if o.name in node.output]
    del model.graph.output[:]
    model.graph.output.extend(kept)
    return model


def activation_attrs(draw, op, num_directions):
    """activations with explicit alphas and betas (onnxruntime's defaults for some differ from the spec's)."""
    count = ACTIVATIONS_PER_DIRECTION[op] * num_directions
    names = [draw(st.sampled_from(sorted(ACTIVATION_PARAMS))) for _ in range(count)]
    alphas = [draw(st.floats(0.1, 1.5)) for n in names if ACTIVATION_PARAMS[n][0]]
    betas = [draw(st.floats(-0.5, 1.0)) for n in names if ACTIVATION_PARAMS[n][1]]
    attrs = {"activations": names}
    if alphas:
        attrs["activation_alpha"] = alphas
    if betas:
        attrs["activation_beta"] = betas
    return attrs


@st.composite
def recurrent_cases(draw):
    op = draw(st.sampled_from(["LSTM", "GRU", "RNN"]))
    direction = draw(st.sampled_from(["forward", "reverse", "bidirectional"]))
    opset = draw(st.sampled_from([7, 14, 22]))
    layout = draw(st.integers(0, 1)) if opset >= 14 else 0
    seq, batch = draw(st.integers(2, 5)), draw(st.integers(1, 4))  # two steps at least: H feeds back
    input_size, hidden = draw(st.integers(1, 4)), draw(st.integers(2, 5))
    lens = draw(st.none() | st.lists(st.integers(0, seq), min_size=batch, max_size=batch))
    n_outputs = 3 if op == "LSTM" else 2
    kept = draw(st.sets(st.integers(0, n_outputs - 1), min_size=1))
    outputs = [i in kept for i in range(n_outputs)]
    attrs = {"direction": direction, "hidden_size": hidden}
    if opset >= 14:
        attrs["layout"] = layout
    if draw(st.booleans()):
        attrs["clip"] = draw(st.floats(0.2, 3.0))
    if op == "GRU":
        attrs["linear_before_reset"] = draw(st.integers(0, 1))
    if op == "LSTM" and draw(st.booleans()):
        attrs["input_forget"] = 1
    num_directions = 2 if direction == "bidirectional" else 1
    if draw(st.integers(0, 3)) == 0:
        attrs.update(activation_attrs(draw, op, num_directions))
    present = {name: draw(st.booleans()) for name in ("B", "initial_h", "initial_c", "P")}
    return op, opset, seq, batch, input_size, hidden, lens, outputs, attrs, present, draw(st.integers(0, 2**16))


def _batch_major(array, sequence_axis_first):
    """Layout 0 <-> 1: swap the sequence/direction axis with the batch axis."""
    return array.transpose((2, 0, 1, 3) if sequence_axis_first else (1, 0, 2))


@settings(max_examples=60, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(recurrent_cases())
def test_recurrent_ops_agree_with_onnxruntime(case):
    op, opset, seq, batch, input_size, hidden, lens, outputs, attrs, present, seed = case
    rng = np.random.default_rng(seed)
    num_directions = 2 if attrs["direction"] == "bidirectional" else 1
    gates = GATES[op] * hidden
    layout = attrs.get("layout", 0)

    def rand(*shape, scale=1.0):
        return (rng.standard_normal(shape) * scale).astype(np.float32)

    x = rand(seq, batch, input_size)
    states = {k: rand(num_directions, batch, hidden) for k in ("initial_h", "initial_c")
              if present[k] and (k == "initial_h" or op == "LSTM")}
    inits = {"W": rand(num_directions, gates, input_size, scale=0.7),
             "R": rand(num_directions, gates, hidden, scale=0.7)}
    if present["B"]:
        inits["B"] = rand(num_directions, 2 * gates, scale=0.5)
    if lens is not None:
        inits["sequence_lens"] = np.array(lens, np.int32)
    if op == "LSTM" and present["P"]:
        inits["P"] = rand(num_directions, 3 * hidden, scale=0.5)
    slots = ["x", "W", "R", "B", "sequence_lens", "initial_h"] + (["initial_c", "P"] if op == "LSTM" else [])
    names = [s if s in inits or s in states or s == "x" else "" for s in slots]
    while names[-1] == "":
        names.pop()

    # onnxruntime runs layout 0 only: it gets the sequence-major twin of a layout-1 model
    reference_attrs = {**attrs, "layout": 0} if opset >= 14 else attrs
    reference = recurrent_model(op, {"x": x, **states}, inits, names, outputs, opset, **reference_attrs)
    want = run_ort(reference, {"x": x, **states})
    feeds = {"x": x, **states}
    if layout:
        feeds = {"x": x.transpose(1, 0, 2), **{k: v.transpose(1, 0, 2) for k, v in states.items()}}
        want = [_batch_major(w, w.ndim == 4) for w in want]
    got = run_ours(recurrent_model(op, feeds, inits, names, outputs, opset, **attrs), feeds)
    assert len(got) == len(want) == sum(outputs)
    for g, w in zip(got, want):
        assert g.dtype == w.dtype and g.shape == w.shape
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)

    if outputs[0] and lens is not None:  # outputs past each sequence's end are exactly zero
        y = got[0] if not layout else got[0].transpose(1, 2, 0, 3)
        for b, length in enumerate(lens):
            assert not y[length:, :, b].any()


@pytest.mark.parametrize("op", sorted(GATES))
@pytest.mark.parametrize("dtype, tolerance", [(np.float64, 1e-6), (np.float16, 5e-3)])
def test_other_float_types_keep_their_dtype(op, dtype, tolerance):
    """onnxruntime has no float64 or float16 recurrent kernels: the reference is its float32 run."""
    rng = np.random.default_rng(3)
    x = rng.standard_normal((4, 2, 3)).astype(dtype)
    inits = {"W": (rng.standard_normal((2, GATES[op] * 5, 3)) * 0.5).astype(dtype),
             "R": (rng.standard_normal((2, GATES[op] * 5, 5)) * 0.5).astype(dtype)}
    model = make_model(op, {"x": x}, 2, opset=14, initializers=inits, hidden_size=5, direction="bidirectional")
    model32 = make_model(op, {"x": x.astype(np.float32)}, 2, opset=14, hidden_size=5, direction="bidirectional",
                         initializers={k: v.astype(np.float32) for k, v in inits.items()})
    want = run_ort(model32, {"x": x.astype(np.float32)})
    for g, w in zip(run_ours(model, {"x": x}), want):
        assert g.dtype == dtype
        np.testing.assert_allclose(g, w, rtol=tolerance, atol=tolerance)


@pytest.mark.parametrize("op, old_opset", [("LSTM", 1), ("GRU", 1), ("GRU", 3), ("RNN", 1)])
def test_opsets_before_7_compute_what_opset_7_does(op, old_opset):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((3, 2, 4)).astype(np.float32)
    inits = {"W": rng.standard_normal((1, GATES[op] * 3, 4)).astype(np.float32),
             "R": rng.standard_normal((1, GATES[op] * 3, 3)).astype(np.float32),
             "B": rng.standard_normal((1, GATES[op] * 6)).astype(np.float32)}
    attrs = {"hidden_size": 3, **({"linear_before_reset": 1} if old_opset == 3 else {})}
    old = run_ours(make_model(op, {"x": x}, 2, opset=old_opset, initializers=inits, **attrs), {"x": x})
    new = make_model(op, {"x": x}, 2, opset=7, initializers=inits, **attrs)
    for a, b, want in zip(old, run_ours(new, {"x": x}), run_ort(new, {"x": x})):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_allclose(a, want, rtol=1e-5, atol=1e-6)


def test_rnn_schema_default_of_two_activations_applies_the_first_to_one_direction():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((3, 2, 4)).astype(np.float32)
    inits = {"W": rng.standard_normal((1, 3, 4)).astype(np.float32),
             "R": rng.standard_normal((1, 3, 3)).astype(np.float32)}
    two = make_model("RNN", {"x": x}, 2, opset=14, initializers=inits, hidden_size=3, activations=["Relu", "Tanh"])
    one = make_model("RNN", {"x": x}, 2, opset=14, initializers=inits, hidden_size=3, activations=["Relu"])
    got = run_ours(two, {"x": x})
    assert got[0].min() == 0  # Relu, not Tanh
    for g, same, want in zip(got, run_ours(one, {"x": x}), run_ort(two, {"x": x})):
        np.testing.assert_array_equal(g, same)
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-6)


def test_unknown_activation_is_refused_before_running():
    x = np.zeros((2, 1, 3), np.float32)
    inits = {"W": np.zeros((1, 4, 3), np.float32), "R": np.zeros((1, 4, 4), np.float32)}
    model = make_model("RNN", {"x": x}, 2, opset=14, initializers=inits, hidden_size=4, activations=["Swish"])
    with pytest.raises(UnsupportedOpError, match="activation 'Swish'"):
        Executor(onnx_io.load(model))


def test_output_larger_than_the_limit_is_refused_before_allocating():
    x = np.zeros((64, 8, 3), np.float32)
    inits = {"W": np.zeros((1, 16, 3), np.float32), "R": np.zeros((1, 16, 4), np.float32)}
    graph = onnx_io.load(make_model("LSTM", {"x": x}, 1, opset=14, initializers=inits, hidden_size=4))
    with pytest.raises(ResourceLimitError, match="LSTM node"):
        Executor(graph, max_tensor_bytes=4096).run({"x": x})


# ---------------------------------------------------------------------- com.microsoft DynamicQuantizeLSTM
def dynamic_quantize_lstm_case(direction, weight_type, per_column):
    """(feeds, initializers, input names, hidden size) of a DynamicQuantizeLSTM with sequence lengths 6, 3, 0
    and peepholes. int8 weights stay within [-64, 64]: with wider ones onnxruntime's AVX2 u8 x s8 kernel
    (vpmaddubsw) saturates pairs of products at int16, while this executor computes the exact integer product."""
    rng = np.random.default_rng(5)
    seq, batch, input_size, hidden = 6, 3, 8, 5
    num_directions = 2 if direction == "bidirectional" else 1
    scale_shape = (num_directions, 4 * hidden) if per_column else (num_directions,)
    if weight_type == np.int8:
        w = rng.integers(-64, 65, (num_directions, input_size, 4 * hidden)).astype(np.int8)
        r = rng.integers(-64, 65, (num_directions, hidden, 4 * hidden)).astype(np.int8)
        zero_point = np.zeros(scale_shape, np.int8)
    else:
        w = rng.integers(0, 256, (num_directions, input_size, 4 * hidden)).astype(np.uint8)
        r = rng.integers(0, 256, (num_directions, hidden, 4 * hidden)).astype(np.uint8)
        zero_point = np.full(scale_shape, 128, np.uint8)
    w_scale = rng.uniform(0.01, 0.05, scale_shape).astype(np.float32)
    x = (rng.standard_normal((seq, batch, input_size)) * 2).astype(np.float32)
    states = {k: rng.standard_normal((num_directions, batch, hidden)).astype(np.float32) for k in ("h0", "c0")}
    inits = {"W": w, "R": r, "B": rng.standard_normal((num_directions, 8 * hidden)).astype(np.float32),
             "sequence_lens": np.array([6, 3, 0], np.int32),
             "P": rng.standard_normal((num_directions, 3 * hidden)).astype(np.float32),
             "w_scale": w_scale, "w_zero_point": zero_point, "r_scale": w_scale * 0.7, "r_zero_point": zero_point}
    names = ["x", "W", "R", "B", "sequence_lens", "h0", "c0", "P", "w_scale", "w_zero_point", "r_scale", "r_zero_point"]
    return {"x": x, **states}, inits, names, hidden


@pytest.mark.parametrize("direction", ["forward", "reverse", "bidirectional"])
@pytest.mark.parametrize("weight_type, per_column", [(np.int8, False), (np.int8, True), (np.uint8, False),
                                                     (np.uint8, True)])
def test_dynamic_quantize_lstm_agrees_with_onnxruntime(direction, weight_type, per_column):
    feeds, inits, names, hidden = dynamic_quantize_lstm_case(direction, weight_type, per_column)
    model = recurrent_model("DynamicQuantizeLSTM", feeds, inits, names, [True] * 3, 14, domain="com.microsoft",
                            hidden_size=hidden, direction=direction)
    got, want = run_ours(model, feeds), run_ort(model, feeds)
    for g, w_ in zip(got, want):
        assert g.dtype == w_.dtype and g.shape == w_.shape
        np.testing.assert_allclose(g, w_, rtol=1e-5, atol=2e-6)
    graph = onnx_io.load(model)
    truth = Executor(graph, compute_dtype=np.float64).run(feeds)  # the verifier's float64 run
    for name, w_ in zip(graph.outputs, want):
        assert truth[name].dtype == np.float64
        np.testing.assert_allclose(truth[name], w_, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("direction", ["forward", "bidirectional"])
@pytest.mark.parametrize("weight_type", [np.int8, np.uint8])
def test_dynamic_quantize_lstm_weights_kept_or_fed_agree(direction, weight_type):
    """Initializer weights are centered once per executor and kept; fed ones every run: bit-identical outputs,
    run after run."""
    feeds, inits, names, hidden = dynamic_quantize_lstm_case(direction, weight_type, per_column=True)
    everything = feeds | inits
    outputs = []
    for model_feeds, model_inits in ((feeds, inits), (everything, {})):
        model = recurrent_model("DynamicQuantizeLSTM", model_feeds, model_inits, names, [True] * 3, 14,
                                domain="com.microsoft", hidden_size=hidden, direction=direction)
        executor = Executor(onnx_io.load(model))
        outputs += [executor.run(model_feeds), executor.run(model_feeds)]
    for other in outputs[1:]:
        for name, value in outputs[0].items():
            assert other[name].dtype == value.dtype
            np.testing.assert_array_equal(other[name], value)


@pytest.mark.parametrize("last", [3, 5])
def test_dynamic_quantize_lstm_recurrent_product_is_exact_at_the_float32_bound(last):
    """The recurrent product of a hidden state quantized to 0..255 (scale 1) and uint8 weights 258 x 255 +
    ``last``: 2**24 - 1 with 3 (the largest float32 still proves exact), 2**24 + 509 with 5, which float32
    cannot hold. With identity activations, x = 0 and the o gate's bias 1, Y_h is that forget-gate
    product; the verifier's float64 run shows it to the last unit."""
    hidden = 260
    r = np.zeros((1, hidden, 4 * hidden), np.uint8)
    r[0, :, 2 * hidden] = [255] * 258 + [last, 0]
    h0 = np.array([255] * 259 + [0], np.float32).reshape(1, 1, hidden)
    bias = np.zeros((1, 8 * hidden), np.float32)
    bias[0, hidden:2 * hidden] = 1
    one, zero = np.ones(1, np.float32), np.zeros(1, np.uint8)
    feeds = {"x": np.zeros((1, 1, 1), np.float32), "h0": h0, "c0": np.ones_like(h0)}
    inits = {"W": np.zeros((1, 1, 4 * hidden), np.uint8), "R": r, "B": bias, "w_scale": one, "w_zero_point": zero,
             "r_scale": one, "r_zero_point": zero}
    names = ["x", "W", "R", "B", "", "h0", "c0", "", "w_scale", "w_zero_point", "r_scale", "r_zero_point"]
    model = recurrent_model("DynamicQuantizeLSTM", feeds, inits, names, [False, True, False], 14,
                            domain="com.microsoft", hidden_size=hidden, activations=["Affine"] * 3,
                            activation_alpha=[1.0] * 3, activation_beta=[0.0] * 3)
    y_h = Executor(onnx_io.load(model), compute_dtype=np.float64).run(feeds)["y1"]
    assert y_h[0, 0, 0] == 255 * (258 * 255 + last) and not y_h[0, 0, 1:].any()


def test_empty_sequence_without_lengths_gives_zero_states():
    """With no sequence_lens every sequence runs every step, unmasked, and Y_h is the last step's H:
    but zero steps leave the states at zero (not at the initial ones). Y and Y_h are onnxruntime's;
    its Y_c is whatever its buffer held before (seen: 0, 1.86, 3.5e26, NaN), and its GRU aborts the
    process on an empty sequence."""
    x, ones = np.zeros((0, 2, 3), np.float32), np.ones((1, 2, 4), np.float32)
    feeds = {"x": x, "h": ones, "c": ones}
    model = make_model("LSTM", feeds, 3, opset=14, input_names=["x", "W", "R", "", "", "h", "c"], hidden_size=4,
                       initializers={"W": np.ones((1, 16, 3), np.float32), "R": np.ones((1, 16, 4), np.float32)})
    got, want = run_ours(model, feeds), run_ort(model, feeds)
    assert [g.shape for g in got] == [w.shape for w in want]
    assert all(np.array_equal(g, w) for g, w in zip(got[:2], want[:2]))
    assert not any(state.any() for state in got[1:])
