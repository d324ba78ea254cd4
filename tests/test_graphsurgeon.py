"""onnx-graphsurgeon at the door: gs Graphs in, gs Graphs out, nothing lost that gs can carry."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from onnx import helper, numpy_helper

import optimizer
from optimizer import onnx_io
from support import FIXTURES_DIR, LIGHT_MODELS, assert_agrees, make_model

FIXTURES = sorted(glob.glob(os.path.join(FIXTURES_DIR, "*.onnx")))
MODELS = FIXTURES + LIGHT_MODELS
IDS = [os.path.basename(p)[:-len(".onnx")] for p in MODELS]


def _attribute(a: onnx.AttributeProto):
    """An attribute's value, comparable across exporters (gs names attribute tensors ""
    and adds value_info to subgraphs)."""
    if a.type == onnx.AttributeProto.TENSOR:
        return a.name, _array(a.t)
    if a.type == onnx.AttributeProto.GRAPH:
        return a.name, _graph(a.g)
    if a.type == onnx.AttributeProto.GRAPHS:
        return a.name, [_graph(g) for g in a.graphs]
    return a.SerializeToString()


def _array(t: onnx.TensorProto):
    value = numpy_helper.to_array(t)
    return t.data_type, value.shape, value.tobytes()


def _nodes(nodes) -> list:
    return [(n.op_type, n.domain, n.name, list(n.input), list(n.output), sorted(map(_attribute, n.attribute), key=str))
            for n in nodes]


def _read(gp: onnx.GraphProto) -> set[str]:
    """Every name a node reads (subgraph bodies included) or the graph outputs."""
    names = {vi.name for vi in gp.output}
    for n in gp.node:
        names.update(n.input)
        for a in n.attribute:
            for sub in [a.g] if a.type == onnx.AttributeProto.GRAPH else a.graphs:
                names |= _read(sub)
    return names


def _graph(gp: onnx.GraphProto) -> dict:
    """What gs carries of a graph; initializers no node reads and that are not inputs are not among it."""
    kept = _read(gp) | {vi.name for vi in gp.input}
    return {"nodes": _nodes(gp.node), "inputs": [vi.SerializeToString() for vi in gp.input],
            "outputs": [vi.SerializeToString() for vi in gp.output], "name": gp.name, "doc": gp.doc_string,
            "initializers": sorted((t.name, _array(t)) for t in gp.initializer if t.name in kept)}


def _model(m: onnx.ModelProto) -> dict:
    return {"ir_version": m.ir_version, "opsets": sorted((o.domain, o.version) for o in m.opset_import),
            "producer": (m.producer_name, m.producer_version), "graph": _graph(m.graph),
            "functions": [(f.domain, f.name, list(f.input), list(f.output), _nodes(f.node)) for f in m.functions]}


@pytest.mark.parametrize("path", MODELS, ids=IDS)
def test_loaded_model_comes_out_of_graphsurgeon_whole(path: str) -> None:
    graph = optimizer.load(path)
    exported = gs.export_onnx(optimizer.to_graphsurgeon(graph))
    assert _model(exported) == _model(onnx_io.to_model_proto(graph))
    if graph.ir_version < 4:  # the initializer inputs plain gs drops are there: the checker accepts it
        onnx.checker.check_model(exported)


@pytest.mark.parametrize("path", MODELS, ids=IDS)
def test_graphsurgeon_graph_round_trips_through_ninopt(path: str) -> None:
    gs_graph = gs.import_onnx(onnx.load(path))
    want = _model(gs.export_onnx(gs_graph))
    got_model = gs.export_onnx(optimizer.to_graphsurgeon(optimizer.load(gs_graph)))
    got = _model(got_model)
    if got["ir_version"] < 4:  # gs dropped the initializer inputs; the round trip lists them again
        initializers = [t.name for t in got_model.graph.initializer]
        assert [vi.name for vi in got_model.graph.input][len(gs_graph.inputs):] == \
            [name for name in initializers if name not in {t.name for t in gs_graph.inputs}]
        onnx.checker.check_model(got_model)
        got["graph"]["inputs"] = got["graph"]["inputs"][:len(gs_graph.inputs)]
    assert got == want


def _passes_checker(model: onnx.ModelProto) -> bool:
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError:
        return False
    return True


def _ir3_model() -> onnx.ModelProto:
    """IR 3: the weight is a graph input listed before the data, and one initializer input no node reads."""
    w = np.arange(6, dtype=np.float32).reshape(2, 3)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")]
    inits = [numpy_helper.from_array(w, "w"), numpy_helper.from_array(np.ones(4, np.float32), "spare")]
    return make_model(nodes, [("w", (2, 3)), ("x", (1, 2)), ("spare", (4,))], [("y", (1, 3))], inits,
                      opset=6, ir_version=3)


def test_ir3_initializer_inputs_survive_both_directions() -> None:
    model = _ir3_model()
    assert not _passes_checker(gs.export_onnx(gs.import_onnx(model)))  # the trap the adapter avoids
    back = optimizer.to_graphsurgeon(optimizer.load(model))
    assert [t.name for t in back.inputs] == ["w", "x", "spare"]
    assert [type(t).__name__ for t in back.inputs] == ["Constant", "Variable", "Constant"]
    np.testing.assert_array_equal(back.inputs[2].values, np.ones(4, np.float32))
    exported = gs.export_onnx(back)
    assert _passes_checker(exported)
    assert [vi.name for vi in exported.graph.input] == ["w", "x", "spare"]
    again = optimizer.load(gs.import_onnx(model))  # from plain gs: listed again, after the fed inputs
    assert again.inputs == ["x", "w"] and again.feed_inputs() == ["x"]
    assert set(again.initializers) == {"w"}  # gs itself never imported "spare": no node reads it


def test_optimize_takes_a_graphsurgeon_graph_and_gives_one_back() -> None:
    path = os.path.join(FIXTURES_DIR, "resnet_bottleneck_bn.onnx")
    gs_graph = gs.import_onnx(onnx.load(path))
    before = gs.export_onnx(gs_graph).SerializeToString()
    result = optimizer.optimize(gs_graph)
    assert gs.export_onnx(gs_graph).SerializeToString() == before
    optimized = result.to_graphsurgeon()
    assert isinstance(optimized, gs.Graph)
    assert "BatchNormalization" in {n.op for n in gs_graph.nodes}
    assert "BatchNormalization" not in {n.op for n in optimized.nodes}
    assert_agrees(path, gs.export_onnx(optimized), runners=("onnxruntime",))


def test_analyze_and_verify_take_graphsurgeon_graphs() -> None:
    path = os.path.join(FIXTURES_DIR, "inception_module.onnx")
    gs_graph = gs.import_onnx(onnx.load(path))
    assert optimizer.analyze(gs_graph).total_macs == optimizer.analyze(path).total_macs
    assert optimizer.verify(gs_graph, optimizer.optimize(path).to_graphsurgeon()).passed


def test_loading_leaves_the_opset_imports_alone() -> None:
    """gs.export_onnx fills in ``import_domains`` (after gs.import_onnx: the source model's own
    ``opset_import``); loading into ninopt must leave neither changed."""
    x = gs.Variable("x", dtype=np.float32, shape=(1, 4))
    y = gs.Variable("y", dtype=np.float32, shape=(1, 4))
    hand_built = gs.Graph(nodes=[gs.Node("Relu", inputs=[x], outputs=[y])], inputs=[x], outputs=[y], opset=13)
    assert optimizer.load(hand_built).opsets == {"": 13}
    assert hand_built.import_domains is None

    model = onnx.load(os.path.join(FIXTURES_DIR, "inception_module.onnx"))
    imported = gs.import_onnx(model)
    plugin_out = gs.Variable("plugin_out", dtype=np.float32)
    imported.nodes.append(gs.Node("Scale", domain="trt.plugins", inputs=[imported.outputs[0]], outputs=[plugin_out]))
    imported.outputs.append(plugin_out)
    assert optimizer.load(imported).opsets["trt.plugins"] == 1
    assert [d.domain for d in imported.import_domains] == [d.domain for d in model.opset_import] == [""]


def test_import_optimizer_does_not_import_graphsurgeon() -> None:
    code = "import sys, optimizer; assert 'onnx_graphsurgeon' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
