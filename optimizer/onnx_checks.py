"""onnx's own shape inference and checker, asked about a Graph.

Split from ``optimizer.onnx_io`` (the conversion) because these are analyses that merely
go through protobuf: cost's shape inference falls back on ``inferred_shapes``, input-shape
choice screens candidates with ``shape_inference_accepts``, and a rewritten model must
pass ``schema_problem`` before it is handed back.
"""

from __future__ import annotations

import onnx
from onnx import helper

from optimizer.errors import first_line
from optimizer.ir import Graph
from optimizer.onnx_io import onnx_dim, to_model_proto

#: Initializers larger than this are left out of the model that shape inference reads.
_INFERENCE_KEEP_BYTES = 4096


def inferred_shapes(graph: Graph, pins: dict[str, tuple] | None = None) -> tuple[dict[str, tuple | None], dict[str, int]]:
    """Shapes and element types from onnx shape inference; empty when it fails.

    Runs on a copy without large weights (they become typed inputs). With pinned input
    shapes, the model's own value_info and output shapes are dropped, since they may
    contradict the pins.
    """
    model = to_model_proto(graph, max_weight_bytes=_INFERENCE_KEEP_BYTES)
    gp = model.graph
    if pins:
        del gp.value_info[:]
        for vi in gp.output:
            vi.type.tensor_type.ClearField("shape")
        for vi in gp.input:
            if vi.name in pins:
                vi.CopyFrom(helper.make_tensor_value_info(vi.name, vi.type.tensor_type.elem_type, pins[vi.name]))
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, ValueError, RuntimeError):
        return {}, {}
    shapes: dict[str, tuple | None] = {}
    types: dict[str, int] = {}
    for vi in [*inferred.graph.input, *inferred.graph.output, *inferred.graph.value_info]:
        if vi.type.HasField("tensor_type"):
            tt = vi.type.tensor_type
            types[vi.name] = tt.elem_type
            if tt.HasField("shape"):
                shapes[vi.name] = tuple(onnx_dim(d) for d in tt.shape.dim)
    return shapes, types


def shape_inference_accepts(graph: Graph, pins: dict[str, tuple]) -> bool:
    """Whether strict onnx shape inference (with data propagation) accepts the graph with these input shapes.

    The model's own value_info and output shapes stay: a dim they pin that the shapes
    contradict is a rejection, which is how those hints take part. Call it with no pins
    first: a model it rejects anyway tells nothing about shapes.
    """
    model = to_model_proto(graph, max_weight_bytes=_INFERENCE_KEEP_BYTES)
    for vi in model.graph.input:
        if vi.name in pins:
            vi.CopyFrom(helper.make_tensor_value_info(vi.name, vi.type.tensor_type.elem_type, pins[vi.name]))
    for vi in [*model.graph.output, *model.graph.value_info]:  # a declared -1 means unknown, not a size to contradict
        for d in vi.type.tensor_type.shape.dim:
            if d.HasField("dim_value") and d.dim_value < 0:
                d.ClearField("dim_value")
    try:
        onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, onnx.checker.ValidationError, ValueError, RuntimeError):
        return False
    return True


def schema_problem(graph: Graph) -> str | None:
    """What onnx's checker rejects in the graph (op schemas, attributes, input counts), or None.

    The executor is lenient where ONNX is not (e.g. Gemm without C before opset 11), so a
    rewritten model must pass this too; large weights are left out, as values don't matter.
    """
    try:
        onnx.checker.check_model(to_model_proto(graph, max_weight_bytes=_INFERENCE_KEEP_BYTES))
    except onnx.checker.ValidationError as exc:
        return first_line(exc)
    return None
