"""Constant ops become initializers."""

from optimizer.pattern import P
from optimizer.pipeline import RewritePass, register_pass
from optimizer.rewrite import Refuse, Replacement
from optimizer.values import dtype_to_elem_type


@register_pass("constant-to-initializer", exact=True)
class ConstantToInitializer(RewritePass):
    """Constant() -> an initializer of the same name and value.

    Exporters (paddle2onnx above all) emit one Constant op per weight and shape literal; as
    initializers they cost no node, and later passes read them like any weight. Every
    attribute form is taken (``value``, ``value_float(s)``, ``value_int(s)``, and
    ``sparse_value`` densified when small); the tensor keeps its name, so subgraph bodies
    that read it from the outer scope keep working.
    """

    pattern = P.Constant(out="y")

    def check(self, g, m):
        if g.is_graph_output(m["y"]):
            raise Refuse("its output is a graph output")
        value = g.const(m["y"])
        if value is None or value.dtype.kind in "OSU":
            raise Refuse("a string or large sparse value stays a Constant")
        try:
            dtype_to_elem_type(value.dtype)
        except (KeyError, TypeError, ValueError):
            raise Refuse(f"no ONNX element type for its numpy dtype {value.dtype}") from None

    def rewrite(self, g, m):
        replacement = Replacement(remove=[m.root])
        replacement.add_initializer(m["y"], g.const(m["y"]))
        return replacement
