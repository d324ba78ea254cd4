"""onnx-graphsurgeon <-> Graph, through ONNX protobuf.

Deployment scripts (TensorRT's among them) build and edit models as ``onnx_graphsurgeon.Graph``;
this lets them hand one to ninopt and take the optimized model back. onnx_graphsurgeon is
imported inside the functions only: it is slow to import and ``import optimizer`` must not pay for it.

What the adapter repairs: graphsurgeon turns IR-version-3 initializers that are also graph
inputs (IR 3 requires every initializer to be one) into plain Constants, so its export is not
a valid IR-3 model. Going to ninopt they are listed as inputs again; coming back they stay in
``gs_graph.inputs`` as Constants, in the model's input order, so ``gs.export_onnx`` keeps them.

What graphsurgeon itself cannot carry, so a model loaded from a file loses it on the way to
graphsurgeon (exactly as ``gs.import_onnx`` would): the model's doc string, domain,
model_version, metadata_props and training_info; doc strings and metadata_props of nodes,
initializers and value infos; value_info of tensors with neither type nor shape; initializers
no node reads (IR 4 and later, where they are not inputs). It does carry the IR version, opset
imports, producer, graph name and doc string, typed value_info, sparse initializers, subgraphs
and model-local functions. Two gs habits change the model without changing its results: a
value_info entry replaces a graph output's declared shape, and ``gs.export_onnx`` writes an
outer-scope initializer that an If/Loop body reads into that body as well (each branch gets
its own copy of the weights: silero_vad_16k_op15 grows from 1.3 to 1.8 MB).
"""

from __future__ import annotations

from typing import Any

import onnx
from onnx import helper

from optimizer import onnx_io
from optimizer.ir import Graph


def is_graphsurgeon_graph(model: Any) -> bool:
    """Whether ``model`` is an onnx_graphsurgeon Graph, without importing onnx_graphsurgeon if the caller never did."""
    if not type(model).__module__.startswith("onnx_graphsurgeon"):
        return False
    import onnx_graphsurgeon as gs

    return isinstance(model, gs.Graph)


def from_graphsurgeon(gs_graph: Any) -> Graph:
    """A Graph from an onnx_graphsurgeon Graph, which is left unchanged."""
    model = _export_untouched(gs_graph)
    if model.ir_version < 4:
        _list_initializers_as_inputs(model.graph)
    return onnx_io.load(model)


def to_graphsurgeon(graph: Graph) -> Any:
    """The Graph as a new onnx_graphsurgeon Graph (weights embedded; IR-3 initializer inputs kept as inputs)."""
    import onnx_graphsurgeon as gs

    model = onnx_io.to_model_proto(graph)
    gs_graph = gs.import_onnx(model)
    if model.ir_version < 4:
        gs_graph.inputs = _inputs_with_initializers(gs_graph, model.graph)
    return gs_graph


def _export_untouched(gs_graph: Any) -> onnx.ModelProto:
    """``gs.export_onnx`` without its side effect: it appends the opset imports it finds missing
    to the graph's (and each function's) ``import_domains``, creating the list if it is None.
    After ``gs.import_onnx`` that list is the source ModelProto's own ``opset_import`` field."""
    import onnx_graphsurgeon as gs

    owners = [gs_graph, *gs_graph.functions]
    saved = [(owner, owner.import_domains, len(owner.import_domains or ())) for owner in owners]
    try:
        return gs.export_onnx(gs_graph, do_type_check=False)
    finally:
        for owner, domains, count in saved:
            owner.import_domains = domains
            if domains is not None:
                del domains[count:]


def _list_initializers_as_inputs(gp: onnx.GraphProto) -> None:
    listed = {vi.name for vi in gp.input}
    gp.input.extend(helper.make_tensor_value_info(t.name, t.data_type, t.dims)
                    for t in gp.initializer if t.name not in listed)


def _inputs_with_initializers(gs_graph: Any, gp: onnx.GraphProto) -> list:
    """The graph's inputs in the model's order, initializers among them as gs Constants
    (a Constant no node reads is not among the graph's tensors, so it is imported here)."""
    from onnx_graphsurgeon.importers.onnx_importer import OnnxImporter

    tensors = gs_graph.tensors()
    initializers = {t.name: t for t in gp.initializer}
    return [tensors[vi.name] if vi.name in tensors else OnnxImporter.import_tensor(initializers[vi.name])
            for vi in gp.input]
