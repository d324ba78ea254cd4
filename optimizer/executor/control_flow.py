"""If and Loop: run planned bodies in the enclosing scope (bodies read outer names directly)."""

from __future__ import annotations

import numpy as np

from optimizer.executor.registry import kernel


@kernel("If")
def _if(ctx, cond):
    branch = "then_branch" if bool(np.asarray(cond).reshape(-1)[0]) else "else_branch"
    return tuple(ctx.subgraphs[branch].call(ctx.outer, []))


@kernel("Loop")
def _loop(ctx, max_trip=None, cond=None, *carried):
    """for i in range(M) while cond: carried = body(i, cond, carried); scan outputs stack along a new axis 0."""
    body = ctx.subgraphs["body"]
    limit = None if max_trip is None else int(np.asarray(max_trip).reshape(-1)[0])
    keep_going = True if cond is None else bool(np.asarray(cond).reshape(-1)[0])
    state = list(carried)
    scans: list[list[np.ndarray]] = []
    i = 0
    while keep_going and (limit is None or i < limit):
        outputs = body.call(ctx.outer, [np.array(i, dtype=np.int64), np.array(keep_going), *state])
        keep_going = bool(np.asarray(outputs[0]).reshape(-1)[0])
        state = outputs[1:1 + len(carried)]
        for j, value in enumerate(outputs[1 + len(carried):]):
            if len(scans) <= j:
                scans.append([])
            scans[j].append(value)
        i += 1
    n_scans = len(body.graph.outputs) - 1 - len(carried)
    stacked = [np.stack(values) if values else _empty_scan(body, 1 + len(carried) + j)
               for j, values in enumerate(scans + [[]] * (n_scans - len(scans)))]
    return tuple(state + stacked)


def _empty_scan(body, index: int) -> np.ndarray:
    """A zero-iteration scan output: shape (0, ...) with the body output's declared dtype."""
    info = body.graph.tensors.get(body.graph.outputs[index])
    dtype = info.dtype if info is not None and info.dtype is not None else np.float32
    return np.zeros((0,), dtype=dtype)
