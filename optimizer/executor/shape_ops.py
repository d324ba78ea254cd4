"""Ops that move or pick data: reshapes, transposes, slicing, gathering, concatenation, padding.

Several moved arguments from attributes to inputs across opsets (Reshape at 5, Slice at
10, Pad at 11, Split/Squeeze/Unsqueeze at 13); each version is its own registration.
Results may be views of their inputs: kernels never write into their inputs.
"""

from __future__ import annotations

import math

import numpy as np

from optimizer.executor.registry import kernel


def _ints(values) -> list[int]:
    """Shape-like input values as Python ints (through ``tolist``: half the cost of numpy scalars, and
    every Reshape, Slice, Unsqueeze... pays it on each run; silero-vad makes 79 such calls a run).
    Integer arrays give ints as they are; floats and bools are converted one by one."""
    flat = np.asarray(values).reshape(-1)
    return flat.tolist() if flat.dtype.kind in "iu" else [int(v) for v in flat.tolist()]


# ---------------------------------------------------------------------- reshaping
def _reshape(x, shape, allowzero=False):
    shape = _ints(shape)
    if not allowzero:
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


kernel("Reshape", until=4)(lambda ctx, x: _reshape(x, ctx.attr("shape")))
kernel("Reshape", since=5)(lambda ctx, x, shape: _reshape(x, shape, bool(ctx.attr("allowzero", 0))))


@kernel("Flatten")
def _flatten(ctx, x):
    axis = int(ctx.attr("axis", 1))
    axis = axis + x.ndim if axis < 0 else axis
    return x.reshape(math.prod(x.shape[:axis]), math.prod(x.shape[axis:]))


@kernel("Transpose")
def _transpose(ctx, x):
    perm = ctx.attr("perm")
    return np.transpose(x, None if perm is None else [int(p) for p in perm])


def _squeeze(x, axes):
    if axes is None:
        return np.squeeze(x)
    return np.squeeze(x, axis=tuple(int(a) % x.ndim for a in axes))


def _unsqueeze(x, axes):
    rank = x.ndim + len(axes)
    shape = list(x.shape)
    for axis in sorted(int(a) % rank for a in axes):
        shape.insert(axis, 1)
    return x.reshape(shape)


kernel("Squeeze", until=12)(lambda ctx, x: _squeeze(x, ctx.attr("axes")))
kernel("Squeeze", since=13)(lambda ctx, x, axes=None: _squeeze(x, None if axes is None else _ints(axes)))
kernel("Unsqueeze", until=12)(lambda ctx, x: _unsqueeze(x, ctx.attr("axes")))
kernel("Unsqueeze", since=13)(lambda ctx, x, axes: _unsqueeze(x, _ints(axes)))


@kernel("Shape")
def _shape(ctx, x):
    start, end = ctx.attr("start", 0), ctx.attr("end")
    return np.array(x.shape[start:end], dtype=np.int64)


@kernel("Size")
def _size(ctx, x):
    return np.array(x.size, dtype=np.int64)


@kernel("Expand", since=8)
def _expand(ctx, x, shape):
    out = np.broadcast_shapes(x.shape, tuple(_ints(shape)))
    ctx.guard(out, x.dtype)
    return np.broadcast_to(x, out)


@kernel("Tile", since=6)
def _tile(ctx, x, repeats):
    reps = _ints(repeats)
    ctx.guard([d * r for d, r in zip(x.shape, reps)], x.dtype)
    return np.tile(x, reps)


@kernel("DepthToSpace")
def _depth_to_space(ctx, x):
    b = int(ctx.attr("blocksize"))
    n, c, h, w = x.shape
    if ctx.attr("mode", "DCR") == "CRD":
        y = x.reshape(n, c // (b * b), b, b, h, w).transpose(0, 1, 4, 2, 5, 3)
    else:
        y = x.reshape(n, b, b, c // (b * b), h, w).transpose(0, 3, 4, 1, 5, 2)
    return y.reshape(n, c // (b * b), h * b, w * b)


@kernel("SpaceToDepth")
def _space_to_depth(ctx, x):
    b = int(ctx.attr("blocksize"))
    n, c, h, w = x.shape
    y = x.reshape(n, c, h // b, b, w // b, b)
    # opset 28 added DepthToSpace's CRD order (channel-major); DCR, block-major, is the default
    y = y.transpose(0, 1, 3, 5, 2, 4) if ctx.attr("mode", "DCR") == "CRD" else y.transpose(0, 3, 5, 1, 2, 4)
    return y.reshape(n, c * b * b, h // b, w // b)


# ---------------------------------------------------------------------- joining and splitting
@kernel("Concat")
def _concat(ctx, *xs):
    axis = int(ctx.attr("axis", 1))
    return np.concatenate(xs, axis=axis)


def _split(ctx, x, split):
    axis = int(ctx.attr("axis", 0)) % x.ndim
    size = x.shape[axis]
    if split is None or len(split) == 0:
        parts = ctx.attr("num_outputs") or ctx.n_outputs
        chunk = -(-size // parts)
        split = [min(chunk, size - i * chunk) for i in range(parts)]
    bounds = np.cumsum(_ints(split))[:-1]
    return tuple(np.split(x, bounds, axis=axis))


kernel("Split", until=1)(lambda ctx, x, split=None: _split(ctx, x, ctx.attr("split") if split is None else split))
kernel("Split", since=2, until=12)(lambda ctx, x: _split(ctx, x, ctx.attr("split")))
kernel("Split", since=13)(lambda ctx, x, split=None: _split(ctx, x, split))


def _slice(x, starts, ends, axes=None, steps=None):
    starts, ends = _ints(starts), _ints(ends)
    axes = list(range(len(starts))) if axes is None else [int(a) % x.ndim for a in _ints(axes)]
    steps = [1] * len(starts) if steps is None else _ints(steps)
    index = [slice(None)] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        index[axis] = slice(start, end, step)  # Python clamps exactly as ONNX specifies
    return x[tuple(index)]


kernel("Slice", until=9)(lambda ctx, x: _slice(x, ctx.attr("starts"), ctx.attr("ends"), ctx.attr("axes")))
kernel("Slice", since=10)(lambda ctx, x, starts, ends, axes=None, steps=None: _slice(x, starts, ends, axes, steps))


@kernel("Gather")
def _gather(ctx, x, indices):
    axis = int(ctx.attr("axis", 0)) % x.ndim
    return np.take(x, indices.astype(np.int64, copy=False), axis=axis)


@kernel("GatherElements", since=11)
def _gather_elements(ctx, x, indices):
    """Output has the indices' shape: other axes of ``x`` are cut to it, never broadcast."""
    axis = int(ctx.attr("axis", 0)) % x.ndim
    indices = np.where(indices < 0, indices + x.shape[axis], indices)
    x = x[tuple(slice(None) if a == axis else slice(0, n) for a, n in enumerate(indices.shape))]
    return np.take_along_axis(x, indices, axis=axis)


# ---------------------------------------------------------------------- padding
_PAD_MODES = {"constant": "constant", "reflect": "reflect", "edge": "edge", "wrap": "wrap"}


def _pad(ctx, x, pads, value=None, axes=None):
    """Negative pads crop; the rest go to numpy.pad in the same mode."""
    pads = _ints(pads)
    axes = list(range(x.ndim)) if axes is None else [int(a) % x.ndim for a in _ints(axes)]
    k = len(axes)
    widths = [(0, 0)] * x.ndim
    crop = [slice(None)] * x.ndim
    for i, axis in enumerate(axes):
        begin, end = pads[i], pads[k + i]
        crop[axis] = slice(max(-begin, 0), x.shape[axis] - max(-end, 0))
        widths[axis] = (max(begin, 0), max(end, 0))
    x = x[tuple(crop)]
    ctx.guard([d + b + e for d, (b, e) in zip(x.shape, widths)], x.dtype)
    mode = ctx.attr("mode", "constant")
    fill = 0 if value is None or np.size(value) == 0 else np.asarray(value).reshape(-1)[0]
    return padded(x, widths, mode, fill)


def padded(x: np.ndarray, widths: list[tuple[int, int]], mode: str, fill=0) -> np.ndarray:
    """``np.pad(x, widths, mode)`` (non-negative widths) by slice copies into one new array: np.pad's
    Python took 63 us where this takes 15 (reflect on silero-vad's 1x512 input), more than
    silero-vad's whole STFT convolution. Axes are padded in order, each over the others' padding
    already made, as np.pad does; widths a single reflection or wrap cannot fill (and empty axes,
    which np.pad refuses) go to np.pad."""
    if mode != "constant" and any((b or e) and (size == 0 or max(b, e) >= size + (mode == "wrap"))
                                  for size, (b, e) in zip(x.shape, widths)):
        return np.pad(x, widths, mode=_PAD_MODES[mode])
    shape = tuple(size + b + e for size, (b, e) in zip(x.shape, widths))
    out = np.full(shape, fill, dtype=x.dtype) if mode == "constant" else np.empty(shape, dtype=x.dtype)
    out[tuple(slice(b, b + size) for size, (b, _) in zip(x.shape, widths))] = x
    if mode == "constant":
        return out
    for axis, (size, (b, e)) in enumerate(zip(x.shape, widths)):
        lo, hi = b, b + size  # the input's extent along this axis
        lead = (slice(None),) * axis
        if mode == "edge":
            begin, end = slice(lo, lo + 1), slice(hi - 1, hi)
        elif mode == "reflect":  # mirrored about the edge element, which is not repeated
            begin, end = slice(lo + b, lo, -1), slice(hi - 2, hi - 2 - e if hi - 2 - e >= 0 else None, -1)
        else:  # wrap
            begin, end = slice(hi - b, hi), slice(lo, lo + e)
        if b:
            out[lead + (slice(0, lo),)] = out[lead + (begin,)]
        if e:
            out[lead + (slice(hi, hi + e),)] = out[lead + (end,)]
    return out


def _pad_check(node, opset):
    mode = node.attrs.get("mode", "constant")
    if mode not in _PAD_MODES or (mode == "wrap" and opset < 19):
        return f"pad mode {mode!r} is not supported"
    return None


kernel("Pad", until=1, check=_pad_check)(
    lambda ctx, x: _pad(ctx, x, ctx.attr("paddings"), ctx.attr("value", 0.0)))
kernel("Pad", since=2, until=10, check=_pad_check)(
    lambda ctx, x: _pad(ctx, x, ctx.attr("pads"), ctx.attr("value", 0.0)))
kernel("Pad", since=11, check=_pad_check)(
    lambda ctx, x, pads, value=None, axes=None: _pad(ctx, x, pads, value, axes))


@kernel("CenterCropPad", since=18)
def _center_crop_pad(ctx, x, shape):
    """Crop (start rounded down) or zero-pad (odd extra to the end) each of ``axes`` to ``shape``, centred."""
    axes = ctx.attr("axes") or range(x.ndim)
    pads = [0] * (2 * x.ndim)
    for axis, target in zip((int(a) % x.ndim for a in axes), _ints(shape)):
        extra = abs(target - x.shape[axis])
        sign = 1 if target > x.shape[axis] else -1  # negative pads crop
        pads[axis], pads[x.ndim + axis] = sign * (extra // 2), sign * (extra - extra // 2)
    return _pad(ctx, x, pads)
