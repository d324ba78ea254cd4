"""Constant folding on the reference executor."""

from types import SimpleNamespace

import numpy as np

from optimizer.errors import NinoptError
from optimizer.executor import default_max_tensor_bytes
from optimizer.executor.registry import NodeContext, lookup
from optimizer.pipeline import Pass
from optimizer.registry import register_pass

#: Ops whose result is not a function of their inputs.
NONDETERMINISTIC = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
                    "Bernoulli"}


@register_pass("fold-constants", exact=True)
class FoldConstants(Pass):
    """Replace nodes whose inputs are all constant (or whose shape is static) by initializers.

    This turns the light zoo's ConstantOfShape weights into initializers later passes can
    read. ``max_bytes`` caps any one folded tensor: kernels refuse before allocating more, so
    folding never materializes huge tensors (a ConstantOfShape of 10^12 elements stays a node).
    """

    max_bytes = 64 << 20

    def run(self, g, stats):
        changed = False
        cap = min(self.max_bytes, default_max_tensor_bytes())  # --max-tensor-bytes can only lower it
        limits = SimpleNamespace(max_tensor_bytes=cap)
        for node in g.toposort():
            if node.op_type in NONDETERMINISTIC or node.op_type == "Constant" or node.implicit_inputs \
                    or any(not isinstance(v, (int, float, str, list, np.ndarray)) for v in node.attrs.values()):
                continue
            values = self._static_inputs(g, node)
            if values is None:
                continue
            stats.matches += 1
            if any(g.is_graph_output(out) for out in node.outputs):
                stats.refuse("its output is a graph output")
                continue
            spec = lookup(node.domain, node.op_type, g.opset(node.domain))
            if spec is None or (spec.check is not None and spec.check(node, g.opset(node.domain))):
                stats.refuse(f"the executor has no kernel for {node.op_type}")
                continue
            try:
                with np.errstate(all="ignore"):
                    result = spec.fn(NodeContext(node, g.opset(node.domain), limits), *values)
            except NinoptError:
                stats.refuse(f"folding it would allocate more than the cap of {cap:,} bytes")
                continue
            results = result if isinstance(result, tuple) else (result,)
            outputs = [(name, np.asarray(value)) for name, value in zip(node.outputs, results) if name]
            if any(value.nbytes > cap for _, value in outputs):
                stats.refuse("a folded tensor would exceed the size cap")
                continue
            g.remove_node(node)
            for name, value in outputs:
                if g.num_uses(name):
                    g.add_initializer(np.ascontiguousarray(value), name=name)
            stats.rewrites += 1
            changed = True
        return changed

    @staticmethod
    def _static_inputs(g, node):
        """Input values when all are known: constants, or the static shape a Shape/Size reads."""
        if node.op_type in ("Shape", "Size") and node.inputs:
            shape = g.shape(node.inputs[0])
            if shape is None or not all(isinstance(d, int) for d in shape):
                return None
            return [np.broadcast_to(np.zeros((), np.uint8), shape)]  # shape only, no memory
        if not g.all_constant(*node.inputs):
            return None
        return [g.const(name) if name else None for name in node.inputs]
