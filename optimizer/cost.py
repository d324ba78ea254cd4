"""Cost model: per-node output shapes, MACs, parameters and activation bytes.

Conventions (chosen so totals match the numbers model zoos quote, e.g. ~1.43 G MACs for
Inception v1 and ~4.09 G for ResNet-50, and so passes compare exactly the work they trade):

- ``macs`` counts multiply-accumulates of the linear-algebra ops only: Conv
  (N·Cout·Hout·Wout·(Cin/groups)·kh·kw), ConvTranspose (N·Cin·Hin·Win·(Cout/groups)·kh·kw),
  Gemm (M·N·K) and MatMul (batch·M·N·K), their integer and QLinear forms, and the recurrent
  LSTM/GRU/RNN (seq·batch·directions·gates·hidden·(input + hidden)). Bias additions,
  element-wise, normalization and pooling ops are 0 MACs; their cost is visible as
  activation bytes instead. Ops whose work this model cannot count are unknown (None), never
  0: control flow (If/Loop/Scan: the branch or trip count is decided at run time), Einsum,
  DeformConv, and every op of a non-standard domain (except the fused ones in ``_COSTED_AS``).
- ``params`` counts the elements of the constant inputs of Conv, ConvTranspose, Gemm,
  MatMul and BatchNormalization. A tensor is constant when it is an initializer or a
  Constant op, or is computed only from constants (the light zoo builds its weights with
  ConstantOfShape). A tensor shared by several nodes counts once, at its first reader in
  topological order.
- ``activation_bytes`` counts the bytes of a node's outputs that are not constants.
- A number that depends on an unknown or symbolic dimension is None (null in JSON). Totals
  add the known numbers; ``CostReport.to_dict()`` says when a total is partial and how many
  nodes it leaves out (``macs_partial``, ``unknown_macs_nodes``, the same for params and
  activation bytes), and ``CostReport.unknown`` names them. Pin input dims with
  ``input_shapes`` to resolve them (``optimizer.analyze`` pins the shapes verification
  would choose; see ``optimizer.inputs.choose_input_shapes``).

Shapes come from ``optimizer.shape_inference``; this module only prices nodes at them.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Mapping, Sequence

from optimizer.ir import Graph, Node
from optimizer.shape_inference import Shape, TensorFacts, costed_op, infer_facts
from optimizer.values import Dim, elem_type_to_dtype

#: Ops whose multiply-accumulates ``macs`` counts (integer and QLinear forms are priced as these).
MAC_OPS = frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "LSTM", "GRU", "RNN"})
#: Ops whose constant inputs ``params`` counts.
PARAM_OPS = MAC_OPS | {"BatchNormalization"}
#: Standard ops that do linear-algebra work this model does not count: their MACs are unknown.
_UNPRICED_OPS = frozenset({"If", "Loop", "Scan", "Einsum", "DeformConv"})
#: Quantized forms: (op priced as, index of the first operand, index of the second operand).
_QUANTIZED = {"ConvInteger": ("Conv", 0, 1), "QLinearConv": ("Conv", 0, 3),
              "MatMulInteger": ("MatMul", 0, 1), "QLinearMatMul": ("MatMul", 0, 3)}
#: Gates per recurrent op: each computes hidden_size outputs from the input and the hidden state.
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


# ---------------------------------------------------------------------- results
@dataclass
class NodeCost:
    name: str
    op_type: str
    macs: int | None
    params: int | None
    output_shapes: list[Shape | None]
    activation_bytes: int | None

    def to_dict(self) -> dict:
        return {"name": self.name, "op_type": self.op_type, "macs": self.macs, "params": self.params,
                "output_shapes": [None if s is None else list(s) for s in self.output_shapes],
                "activation_bytes": self.activation_bytes}


#: The per-node numbers a CostReport totals.
METRICS = ("macs", "params", "activation_bytes")


@dataclass
class CostReport:
    """Per-node costs and their totals; a total over a node whose number is unknown is partial and says so."""

    nodes: list[NodeCost]
    #: Input shapes the costs were computed at, when they were pinned (given or chosen).
    input_shapes: dict[str, tuple] = field(default_factory=dict)
    #: Per input, the axes ninopt chose a size for itself (neither declared nor given).
    chosen_axes: dict[str, list[int]] = field(default_factory=dict)
    total_macs: int = field(init=False)
    total_params: int = field(init=False)
    total_activation_bytes: int = field(init=False)

    def __post_init__(self) -> None:
        self.total_macs, self.total_params, self.total_activation_bytes = (
            sum(getattr(n, metric) or 0 for n in self.nodes) for metric in METRICS)

    def unknown_nodes(self, metric: str) -> list[str]:
        """Nodes whose ``metric`` (one of METRICS) is unknown, so its total leaves them out."""
        return [n.name for n in self.nodes if getattr(n, metric) is None]

    @property
    def unknown(self) -> list[str]:
        """Nodes with a number the totals leave out (an unknown dimension or an op this model cannot price)."""
        return [n.name for n in self.nodes if None in (n.macs, n.params, n.activation_bytes)]

    def to_dict(self) -> dict:
        total: dict = {metric: getattr(self, f"total_{metric}") for metric in METRICS}
        for metric in METRICS:
            missing = len(self.unknown_nodes(metric))
            total[f"{metric}_partial"] = missing > 0
            total[f"unknown_{metric}_nodes"] = missing
        return {"total": total, "input_shapes": {k: list(v) for k, v in self.input_shapes.items()},
                "chosen_by_default": self.chosen_axes, "nodes": [n.to_dict() for n in self.nodes]}


# ---------------------------------------------------------------------- public API
def analyze_costs(graph: Graph, input_shapes: Mapping[str, Sequence[Dim]] | None = None, *,
                  use_onnx: bool = True) -> CostReport:
    """Shapes, MACs, params and activation bytes of every node, in topological order."""
    order = graph.toposort()
    facts = infer_facts(graph, order, input_shapes, use_onnx)
    counted: set[str] = set()
    nodes = []
    for node in order:
        outputs = [o for o in node.outputs if o]
        nodes.append(NodeCost(
            name=node.name or (outputs[0] if outputs else ""),
            op_type=node.op_type,
            macs=node_macs(graph, node, facts.shapes),
            params=_node_params(node, facts, counted),
            output_shapes=[facts.shapes.get(o) if o else None for o in node.outputs],
            activation_bytes=_sum_or_none(_nbytes(facts.shapes.get(o), facts.elem_types.get(o, 0))
                                          for o in outputs if o not in facts.constants)))
    return CostReport(nodes)


def node_macs(graph: Graph, node: Node, shapes: Mapping[str, Shape | None] | None = None) -> int | None:
    """Multiply-accumulates of one node: 0 for ops ``macs`` does not count, None when unknown.

    Unknown means a dim is unknown or symbolic, or the op does work this model cannot count
    (see the module docstring). Tensors missing from ``shapes`` fall back to the graph's
    tensor table, so a pass can price a rewrite whose new tensors it has given shapes.
    """
    op_type = costed_op(node)
    if op_type is None or op_type in _UNPRICED_OPS:
        return None
    op_type, first, second = _QUANTIZED.get(op_type, (op_type, 0, 1))
    if op_type not in MAC_OPS:
        return 0
    shapes = shapes or {}

    def shape(index: int) -> Shape | None:
        name = node.inputs[index] if index < len(node.inputs) else ""
        return (shapes[name] if name in shapes else graph.shape(name)) if name else None

    out = _numel(shapes[node.outputs[0]] if node.outputs[0] in shapes else graph.shape(node.outputs[0]))
    try:
        if op_type in _GATES:  # every step of every sequence multiplies the input by W and the state by R
            x, per_step = shape(0), _sum_or_none([_numel(shape(1)), _numel(shape(2))])
            steps = _numel(x[:2])  # (seq, batch) in either layout
            return None if steps is None or per_step is None else steps * per_step
        if op_type == "Conv":  # each output element reads (Cin/groups)·kh·kw weights
            per_output = _numel(shape(second)[1:])
            return None if out is None or per_output is None else out * per_output
        if op_type == "ConvTranspose":  # each input element scatters into (Cout/groups)·kh·kw outputs
            x, per_input = _numel(shape(0)), _numel(shape(1)[1:])
            return None if x is None or per_input is None else x * per_input
        a = shape(first)
        if op_type == "Gemm":
            k = a[0] if node.attr("transA", 0) else a[1]
        else:
            k = a[-1]
    except (TypeError, IndexError):  # an input shape is unknown
        return None
    return out * k if out is not None and isinstance(k, int) else None


# ---------------------------------------------------------------------- costs
def _node_params(node: Node, facts: TensorFacts, counted: set[str]) -> int | None:
    """Elements of the node's constant inputs not counted before; None for control flow (weights live in bodies).

    Ops of unknown domains count their constant inputs too: they are most often fused
    layers whose weights would otherwise vanish from the total.
    """
    op_type = costed_op(node)
    if op_type in _UNPRICED_OPS and node.subgraphs():
        return None
    if op_type is not None and _QUANTIZED.get(op_type, (op_type,))[0] not in PARAM_OPS:
        return 0
    fresh = [t for t in dict.fromkeys(node.inputs) if t and t in facts.constants and t not in counted]
    counted.update(fresh)
    return _sum_or_none(_numel(facts.shapes.get(t)) for t in fresh)


def _nbytes(shape: Shape | None, elem_type: int) -> int | None:
    n, itemsize = _numel(shape), _itemsize(elem_type)
    return None if n is None or itemsize is None else n * itemsize


@functools.lru_cache(maxsize=None)
def _itemsize(elem_type: int) -> int | None:
    dtype = elem_type_to_dtype(elem_type)
    return None if dtype is None else dtype.itemsize


def _numel(shape: Shape | None) -> int | None:
    if shape is None or not all(isinstance(d, int) for d in shape):
        return None
    return math.prod(shape)


def _sum_or_none(values) -> int | None:
    total = 0
    for v in values:
        if v is None:
            return None
        total += v
    return total
