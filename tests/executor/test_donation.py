"""Buffer donation: a kernel may write its result into an input's buffer only when nothing else can see it."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from onnx import helper

from optimizer import onnx_io
from optimizer.executor import Executor, core
from support import make_model

SHAPE = (2, 3, 4)
#: ops that may write into a freed input, and ops whose outputs alias their input (views, Identity)
ARITHMETIC = ("Add", "Sub", "Mul", "Div")
UNARY = ("Relu", "Clip", "HardSigmoid", "Neg")
ALIASING = ("Identity", "Reshape", "Transpose", "Flatten")


@pytest.fixture(autouse=True)
def donate_small_buffers(monkeypatch):
    """Offer every buffer, however small: these tests check which buffers are safe to write into."""
    monkeypatch.setattr(core, "MIN_DONATED_BYTES", 0)


@pytest.fixture
def donations(monkeypatch):
    """The inputs each run donated, by node name."""
    donated: list[str] = []
    offer = core._donation

    def recording(env, args, step):
        out = offer(env, args, step)
        if out is not None:
            donated.append(step.ctx.node.name)
        return out

    monkeypatch.setattr(core, "_donation", recording)
    return donated


def _run_without_donation(graph, feeds, monkeypatch):
    with monkeypatch.context() as patch:
        patch.setattr(core, "_donation", lambda env, args, step: None)
        return Executor(graph).run(feeds)


def _node(op: str, inputs: list[str], output: str, rank: int):
    if op == "Reshape":
        return helper.make_node(op, [inputs[0], "flat_shape"], [output], name=output)
    if op == "Transpose":  # the last two axes swapped: a strided view
        return helper.make_node(op, inputs[:1], [output], perm=[0, 2, 1] if rank == 3 else [1, 0], name=output)
    if op == "Clip":
        return helper.make_node(op, [inputs[0], "low", "high"], [output], name=output)
    return helper.make_node(op, inputs, [output], name=output)


def _graph(steps: list[tuple[str, list[int]]], outputs: list[int]):
    """A chain of ops over float tensors t0 (the feed), t1, ...; ``steps`` name each op and the earlier
    tensors it reads. Views (Reshape, Transpose, Flatten) change the shape, so a binary op reads two
    tensors of one shape, else the first with itself."""
    nodes, shapes = [], {0: SHAPE}
    for i, (op, reads) in enumerate(steps, start=1):
        first = reads[0] % i
        second = reads[1] % i if op in ARITHMETIC else first
        if op in ARITHMETIC and shapes[second] != shapes[first]:
            second = first
        names = [f"t{first}", f"t{second}"] if op in ARITHMETIC else [f"t{first}"]
        shape = shapes[first]
        nodes.append(_node(op, names, f"t{i}", len(shape)))
        flat = (shape[0], int(np.prod(shape[1:])))
        shapes[i] = {"Reshape": flat, "Flatten": flat, "Transpose": shape[:-2] + shape[-2:][::-1]}.get(op, shape)
    last = len(steps)
    kept = sorted({o % (last + 1) for o in outputs} | {last})
    model = make_model(nodes, [("t0", list(SHAPE))], [f"t{k}" for k in kept],
                       {"flat_shape": np.array([SHAPE[0], -1], np.int64), "low": np.float32(-0.5),
                        "high": np.float32(0.75)}, check=False)
    return onnx_io.load(model)


@settings(max_examples=150, deadline=None, database=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(steps=st.lists(st.tuples(st.sampled_from(ARITHMETIC + UNARY + ALIASING),
                                st.lists(st.integers(0, 50), min_size=2, max_size=2)), min_size=1, max_size=12),
       outputs=st.lists(st.integers(0, 50), max_size=3))
def test_donating_never_changes_a_result(steps, outputs, monkeypatch):
    """Every output equals, bit for bit, the run in which no buffer is donated: a donated buffer was
    seen by nothing else, not through a view, an Identity alias, a graph output or the feed."""
    graph = _graph(steps, outputs)
    x = np.random.default_rng(len(steps)).standard_normal(SHAPE).astype(np.float32)
    fed = x.copy()
    got = Executor(graph).run({"t0": fed})
    want = _run_without_donation(graph, {"t0": x}, monkeypatch)
    assert got.keys() == want.keys()
    for name in want:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)
    np.testing.assert_array_equal(fed, x)  # the caller's feed is never written into


def test_a_chain_donates_and_a_viewed_or_aliased_buffer_does_not(donations):
    nodes = [
        helper.make_node("Add", ["x", "x"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["relu"], name="relu"),  # a's last reader: donated
        helper.make_node("Mul", ["relu", "x"], ["b"], name="mul"),
        helper.make_node("Reshape", ["b", "flat_shape"], ["view"], name="view"),  # a view of b, read below
        helper.make_node("Neg", ["b"], ["neg"], name="neg"),
        helper.make_node("Relu", ["neg"], ["c"], name="clip_b"),
        helper.make_node("Identity", ["c"], ["alias"], name="alias"),
        helper.make_node("Relu", ["c"], ["d"], name="relu_aliased"),  # c lives on as `alias`: not donated
        helper.make_node("Sub", ["d", "x"], ["e"], name="sub"),
    ]
    model = make_model(nodes, [("x", list(SHAPE))], ["view", "alias", "e"],
                       {"flat_shape": np.array([SHAPE[0], -1], np.int64)}, check=False)
    x = np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)
    got = Executor(onnx_io.load(model)).run({"x": x})
    b = np.maximum(x + x, 0) * x
    c = np.maximum(-b, 0)
    np.testing.assert_array_equal(got["view"], b.reshape(SHAPE[0], -1))
    np.testing.assert_array_equal(got["alias"], c)
    np.testing.assert_array_equal(got["e"], c - x)
    assert "relu" in donations and "relu_aliased" not in donations and "sub" in donations
