"""Typed cost-model verdicts: one dataclass per kind of decision, with a common base.

A pass that prices a rewrite records a ``Decision`` whether or not it applies it, so the
report (``--json``, ``ninopt optimize``'s table, the zoo) can show what was weighed. The
base holds what every kind prices (MACs and nodes before and after, applied or not); a
subclass adds what only its kind knows. ``to_dict`` is the JSON form: the kind, the base
fields, and the subclass fields that are set.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any, ClassVar


@dataclass(kw_only=True)
class Decision:
    """A rewrite of the subgraph at ``node`` priced by the cost model; None marks an unknown cost."""

    kind: ClassVar[str] = "fold"

    node: str
    macs_before: int | None
    macs_after: int | None
    nodes_before: int
    nodes_after: int
    applied: bool

    def to_dict(self) -> dict[str, Any]:
        base = {f.name for f in fields(Decision)}
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        return {"kind": self.kind, **{k: v for k, v in values.items() if k in base or v is not None}}


@dataclass(kw_only=True)
class FoldDecision(Decision):
    """A per-channel affine (BatchNormalization, Mul/Add...) folded into the op beside it: same MACs, fewer nodes."""

    kind: ClassVar[str] = "fold"


@dataclass(kw_only=True)
class ChainFusion(Decision):
    """Two convolutions composed into one (fuse-conv1x1-chain); ``chain`` reads like ``64->16->64 fused 3x3``."""

    kind: ClassVar[str] = "conv-chain"

    chain: str
    #: set when MACs are counted per output position because the grid size is unknown and cancels
    macs_per: str | None = None


@dataclass(kw_only=True)
class ConvCanonicalization(Decision):
    """A matrix product rewritten as a 1x1 Conv (canonicalize-conv1x1-gemm) and what that unlocks."""

    kind: ClassVar[str] = "conv1x1-canonicalization"

    rewrite: str
    chain: str | None = None
    fused_macs_after: int | None = None
    unlocks: str | None = None


@dataclass(kw_only=True)
class BranchMerge(Decision):
    """Parallel linear branches of one tensor merged into one Conv (merge-parallel-branches)."""

    kind: ClassVar[str] = "branch-merge"

    branches: int


@dataclass(kw_only=True)
class SiblingMerge(Decision):
    """Sibling 1x1 convs of one tensor merged into one wider conv and a Split (merge-sibling-conv1x1)."""

    kind: ClassVar[str] = "sibling-merge"

    siblings: list[str]
    relu_merged: bool


@dataclass(kw_only=True)
class BottleneckDecision(Decision):
    """One Conv/Gemm weighed for a channel bottleneck (insert-bottleneck): measured, not exact."""

    kind: ClassVar[str] = "bottleneck"

    op: str
    reason: str
    shape: list[int] | None = None
    structure: str | None = None
    rank: int | None = None
    basis: str | None = None
    relu: str | None = None
    layer_error: float | None = None
    predicted_error: float | None = None
    model_error: float | None = None
    max_error: float | None = None
    evidence: str | None = None
    #: the global allocation: the budget's metric, the MACs this layer saves, its end-to-end error
    #: when factored alone, its share of the predicted model error, and that prediction
    metric: str | None = None
    macs_saved: int | None = None
    solo_error: float | None = None
    error_share: float | None = None
    predicted_model_error: float | None = None
    #: the model error on the held-apart (verification) inputs, after layers that failed there were vetoed
    held_apart_error: float | None = None
    #: with ``--cost onnxruntime``: the model's onnxruntime latency before, predicted from the kept
    #: layers' timed savings, and measured after (seconds; one intra-op thread)
    seconds_before: float | None = None
    seconds_predicted: float | None = None
    seconds_after: float | None = None
