"""Errors the executor raises; all are NinoptError sentences a user can act on."""

from __future__ import annotations

from dataclasses import dataclass

from optimizer.errors import NinoptError


@dataclass(frozen=True)
class UnsupportedOp:
    """One node the executor cannot run, and why."""

    op_type: str
    domain: str
    opset: int
    node: str
    reason: str = "no kernel is registered for it"

    def describe(self) -> str:
        domain = self.domain or "ai.onnx"
        return f"{self.op_type} (domain {domain}, opset {self.opset}, node {self.node!r}): {self.reason}"


class UnsupportedOpError(NinoptError):
    """The graph uses ops (or op variants) the executor has no kernel for; lists every one."""

    def __init__(self, ops: list[UnsupportedOp]):
        self.ops = list(ops)
        listing = "; ".join(op.describe() for op in self.ops)
        noun = "op" if len(self.ops) == 1 else "ops"
        super().__init__(f"The executor cannot run {len(self.ops)} {noun}: {listing}.")


class ResourceLimitError(NinoptError):
    """A tensor would exceed the executor's memory limit; raised before allocating it."""


class FeedError(NinoptError):
    """The inputs given to run() do not match the graph's inputs."""


class KernelError(NinoptError):
    """A kernel failed on the values it was given (usually an inconsistent model)."""
