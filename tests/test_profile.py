"""ninopt run --profile and optimizer.profile: where the executor's time goes, per op type and per node."""

from __future__ import annotations

import json

import numpy as np
import pytest

import optimizer
from optimizer.cli import main
from support import FIXTURES_DIR, make_model

MODEL = f"{FIXTURES_DIR}/inception_module.onnx"


@pytest.fixture(scope="module")
def profile():
    return optimizer.profile(MODEL, runs=2)


def test_every_executed_node_is_timed_with_its_shapes_and_the_cost_models_macs(profile):
    costs = {n.name: n for n in optimizer.analyze(MODEL).nodes}
    assert sorted(n.name for n in profile.nodes) == sorted(costs)
    for n in profile.nodes:
        assert n.seconds > 0
        assert n.macs == costs[n.name].macs
        assert list(n.output_shapes[0]) == list(costs[n.name].output_shapes[0])
        if n.macs:
            assert n.gflops == pytest.approx(2 * n.macs / n.seconds / 1e9)


def test_op_types_add_up_to_the_nodes_and_slowest_are_sorted(profile):
    rows = profile.by_op_type()
    assert sum(r.seconds for r in rows) == pytest.approx(profile.node_seconds)
    assert sum(r.nodes for r in rows) == len(profile.nodes)
    assert [r.seconds for r in rows] == sorted((r.seconds for r in rows), reverse=True)
    conv = next(r for r in rows if r.op_type == "Conv")
    assert conv.nodes == 6 and conv.macs == optimizer.analyze(MODEL).total_macs
    slowest = profile.slowest(3)
    assert len(slowest) == 3 and slowest[0].seconds == max(n.seconds for n in profile.nodes)


def test_weights_from_constant_nodes_are_priced_though_constants_are_not_timed():
    """Constant nodes are evaluated once per executor, so no run times them; a Conv reading its weights
    from one still gets its MACs (Paddle exports do this: PP-OCR cls has 308 Constant nodes)."""
    from onnx import helper, numpy_helper

    weights = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    nodes = [helper.make_node("Constant", [], ["w"], value=weights),
             helper.make_node("Conv", ["x", "w"], ["y"], kernel_shape=[3, 3], name="conv")]
    model = make_model(nodes, [("x", [1, 3, 8, 8])], [("y", [1, 4, 6, 6])])
    result = optimizer.profile(model, runs=1)
    assert [n.op_type for n in result.nodes] == ["Conv"]
    assert result.nodes[0].macs == 4 * 3 * 9 * 6 * 6


def test_cli_profile_json_and_table(capsys, tmp_path):
    np.savez(tmp_path / "x.npz", data=np.load(f"{FIXTURES_DIR}/inception_module_inputs.npz")["data"])
    assert main(["run", MODEL, "--profile", "--runs", "1", "--json", "--inputs", str(tmp_path / "x.npz")]) == 0
    data = json.loads(capsys.readouterr().out)["profile"]
    assert data["runs"] == 1 and len(data["slowest"]) == 10 and len(data["nodes"]) == 14
    assert {r["op_type"] for r in data["by_op_type"]} == {"Conv", "Relu", "MaxPool", "Concat"}
    assert main(["run", MODEL, "--profile", "--runs", "1"]) == 0
    text = capsys.readouterr().out
    assert "time per op type" in text and "slowest nodes" in text and "b2_3x3" in text and "GFLOP/s" in text
