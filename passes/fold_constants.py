"""Constant folding on the reference executor."""

import numpy as np

from optimizer.executor import KernelError, ResourceLimitError, default_max_tensor_bytes, has_kernel, run_node
from optimizer.pipeline import GraphPass, register_pass
from optimizer.rewrite import Replacement, apply_replacement

#: Ops whose result is not a function of their inputs.
NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                    "Bernoulli"}


@register_pass("fold-constants", exact=True)
class FoldConstants(GraphPass):
    """Replace nodes whose inputs are all constant (or whose shape is static) by initializers.

    Shape arithmetic folds as far as the shapes are static: a Shape/Size of a tensor whose
    shape is known (from the tensor table, else from ``infer_shapes``), and a Gather or Slice
    that picks only static dims out of a partly symbolic Shape (``Shape(x)[1]`` with a dynamic
    batch), after which the Concat/Cast/Unsqueeze chains feeding Reshape and friends fold as
    ordinary constants. This turns the light zoo's ConstantOfShape weights into initializers later passes can
    read. ``max_bytes`` caps any one folded tensor: kernels refuse before allocating more, so
    folding never materializes huge tensors (a ConstantOfShape of 10^12 elements stays a node).

    A GraphPass: one walk in topological order folds whole constant subgraphs, each fold making
    its readers foldable, so one fold has no meaning alone (and rolling back thousands of single
    folds one by one under --verify-each-pass would copy the graph thousands of times).
    """

    max_bytes = 64 << 20

    def run(self, g, ctx):
        stats, shapes = ctx.stats, ctx.shapes
        changed = False
        cap = min(self.max_bytes, default_max_tensor_bytes())  # --max-tensor-bytes can only lower it
        for node in g.toposort():
            if node.op_type in NONDETERMINISTIC or node.op_type == "Constant" or node.implicit_inputs \
                    or any(not isinstance(v, (int, float, str, list, np.ndarray)) for v in node.attrs.values()):
                continue
            values = self._static_inputs(g, node, shapes)
            shape_pick = None if values is not None else self._shape_pick(g, node, shapes)
            if values is None and shape_pick is None:
                continue
            stats.matches += 1
            if any(g.is_graph_output(out) for out in node.outputs):
                stats.refuse("its output is a graph output")
                continue
            if not has_kernel(node, g.opset(node.domain)):
                stats.refuse(f"the executor has no kernel for {node.op_type}")
                continue
            try:
                inputs = values if values is not None else shape_pick[0]
                results = run_node(node, inputs, g.opset(node.domain), max_tensor_bytes=cap)
            except ResourceLimitError:
                stats.refuse(f"folding it would allocate more than the cap of {cap:,} bytes")
                continue
            except KernelError:  # e.g. an index out of range: left for the runtime to report
                stats.refuse(f"the executor's {node.op_type} kernel fails on these constant inputs")
                continue
            outputs = [(name, np.asarray(value)) for name, value in zip(node.outputs, results) if name]
            if shape_pick is not None:  # the kernel picked positions of the shape; read the dims there
                dims = shape_pick[1]
                if not all(isinstance(dims[p], int) for p in outputs[0][1].reshape(-1)):
                    stats.refuse("it reads a dimension that is not static")
                    continue
                picked = outputs[0][1]
                outputs = [(outputs[0][0], np.array([dims[p] for p in picked.reshape(-1)], np.int64)
                            .reshape(picked.shape))]
            if any(value.nbytes > cap for _, value in outputs):
                stats.refuse("a folded tensor would exceed the size cap")
                continue
            # np.asarray keeps a 0-d result 0-d (np.ascontiguousarray would make it 1-d)
            apply_replacement(g, Replacement(remove=[node], initializers={
                name: np.asarray(value, order="C") for name, value in outputs if g.num_uses(name)}))
            stats.rewrites += 1
            changed = True
        return changed

    @staticmethod
    def _static_inputs(g, node, shapes):
        """Input values when all are known: constants, or the static shape a Shape/Size reads."""
        if node.op_type in ("Shape", "Size") and node.inputs:
            shape = shapes.of(node.inputs[0])
            window = _shape_window(g, node) if node.op_type == "Shape" else slice(None)
            if shape is None or not all(isinstance(d, int) for d in shape[window]):
                return None
            # dims outside a Shape's start/end window are not read: any stand-in size will do
            static = tuple(d if isinstance(d, int) else 1 for d in shape)
            return [np.broadcast_to(np.zeros((), np.uint8), static)]  # shape only, no memory
        if not g.all_constant(*node.inputs):
            return None
        return [g.const(name) if name else None for name in node.inputs]

    @staticmethod
    def _shape_pick(g, node, shapes):
        """For a Gather or Slice of a partly known shape, with constant indices: the kernel's inputs
        (positions 0..r-1 standing for the shape's dims) and the dims, so the static picks can fold."""
        if node.op_type not in ("Gather", "Slice") or not node.inputs or not g.all_constant(*node.inputs[1:]):
            return None
        source = g.producer(node.inputs[0])
        if source is None or source.op_type != "Shape" or source.domain not in ("", "ai.onnx"):
            return None
        shape = shapes.of(source.inputs[0])
        if shape is None:
            return None
        dims = list(shape[_shape_window(g, source)])
        positions = np.arange(len(dims), dtype=np.int64)
        return [positions] + [g.const(name) if name else None for name in node.inputs[1:]], dims


def _shape_window(g, node) -> slice:
    """The dims a Shape op returns: ``start``/``end`` from opset 15 on (clamped like Python slicing), else all."""
    if g.opset(node.domain) < 15:
        return slice(None)
    return slice(node.attr("start", 0), node.attr("end"))
