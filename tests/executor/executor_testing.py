"""Helpers shared by the executor tests and the executor benchmark (not a test module)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from optimizer import onnx_io
from optimizer.executor import Executor

ONNX_DATA = Path(onnx.__file__).parent / "backend" / "test" / "data"


def make_model(op_type: str, inputs: dict[str, np.ndarray], n_outputs: int = 1, *, opset: int = 13,
               domain: str = "", initializers: dict[str, np.ndarray] | None = None, input_names=None,
               **attrs) -> onnx.ModelProto:
    """A one-node model. ``inputs`` are fed (typed from the arrays); ``initializers`` are constants;
    ``input_names`` orders the node's inputs ("" for an omitted optional one)."""
    initializers = initializers or {}
    names = list(input_names) if input_names is not None else list(inputs) + list(initializers)
    outputs = [f"y{i}" for i in range(n_outputs)]
    node = helper.make_node(op_type, names, outputs, domain=domain, **attrs)
    graph = helper.make_graph(
        [node], "single",
        [helper.make_tensor_value_info(k, helper.np_dtype_to_tensor_dtype(v.dtype), v.shape) for k, v in inputs.items()],
        [onnx.ValueInfoProto(name=o) for o in outputs],
        [numpy_helper.from_array(v, k) for k, v in initializers.items()])
    opsets = [helper.make_opsetid("", opset)]
    if domain:
        opsets.append(helper.make_opsetid(domain, 1))
    return helper.make_model(graph, opset_imports=opsets, ir_version=8)


def run_ours(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    graph = onnx_io.load(model)
    result = Executor(graph).run(feeds)
    return [result[name] for name in graph.outputs]


def run_ort(model: onnx.ModelProto, feeds: dict[str, np.ndarray], threads: int = 1) -> list[np.ndarray]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def randomize_weights(model: onnx.ModelProto, seed: int = 0) -> onnx.ModelProto:
    """The model with every ConstantOfShape-made weight replaced by a seeded random initializer.

    Light zoo models build weights with ConstantOfShape (all equal), which makes outputs
    trivial. Conv and Gemm weights get He-scaled normals, BatchNormalization gets a
    positive variance and scales near 1, other per-channel parameters small values
    (multipliers near 1), so activations keep a realistic range through deep models.
    """
    rng = np.random.default_rng(seed)
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
    for node in graph.node:
        for i, name in enumerate(node.input):
            readers.setdefault(name, []).append((node, i))
    kept = []
    for node in graph.node:
        if node.op_type != "ConstantOfShape" or node.input[0] not in consts:
            kept.append(node)
            continue
        shape = tuple(int(d) for d in consts[node.input[0]])
        value = _weight(rng, shape, _final_use(node.output[0], readers))
        graph.initializer.append(numpy_helper.from_array(value, node.output[0]))
    del graph.node[:]
    graph.node.extend(kept)
    return model


def _final_use(name: str, readers) -> tuple[str, int]:
    """(op, input index) of the first real reader, looking through Unsqueeze/Reshape."""
    node, index = (readers.get(name) or [(None, -1)])[0]
    if node is None:
        return "", -1
    if node.op_type in ("Unsqueeze", "Reshape") and index == 0:
        return _final_use(node.output[0], readers)
    return node.op_type, index


def _weight(rng, shape, use) -> np.ndarray:
    op, index = use
    if len(shape) >= 2:
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    if op == "BatchNormalization" and index == 4:
        return rng.uniform(0.5, 1.5, shape).astype(np.float32)
    if (op == "BatchNormalization" and index == 1) or op == "Mul":
        return (1 + 0.1 * rng.standard_normal(shape)).astype(np.float32)
    return (0.1 * rng.standard_normal(shape)).astype(np.float32)
