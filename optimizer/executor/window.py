"""Sliding-window geometry shared by Conv, ConvTranspose and the pools."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np


@dataclass(frozen=True)
class Window:
    """Per spatial axis: kernel size, stride, dilation, begin/end padding and output size."""

    kernel: tuple[int, ...]
    strides: tuple[int, ...]
    dilations: tuple[int, ...]
    pad_begin: tuple[int, ...]
    pad_end: tuple[int, ...]
    out: tuple[int, ...]

    @property
    def extent(self) -> tuple[int, ...]:
        """Span of one dilated window."""
        return tuple((k - 1) * d + 1 for k, d in zip(self.kernel, self.dilations))

    def taps(self) -> Iterator[tuple[int, ...]]:
        """Every kernel position, in row-major order."""
        return itertools.product(*(range(k) for k in self.kernel))

    def tap_slices(self, tap: tuple[int, ...], rows: slice | None = None) -> tuple[slice, ...]:
        """Slices of the padded input read by kernel position ``tap`` (optionally for output rows ``rows`` of axis 0)."""
        slices = []
        for axis, (k, s, d, o) in enumerate(zip(tap, self.strides, self.dilations, self.out)):
            lo, hi = (rows.start, rows.stop) if rows is not None and axis == 0 else (0, o)
            start = k * d + lo * s
            stop = start + (hi - lo - 1) * s + 1 if hi > lo else start  # empty, not wrapped past 0
            slices.append(slice(start, stop, s))
        return tuple(slices)


def window(ctx, spatial: tuple[int, ...], kernel: tuple[int, ...], *, ceil_mode: bool = False) -> Window:
    """Resolve strides, dilations, pads and auto_pad of a Conv or pool node for input size ``spatial``."""
    nd = len(spatial)
    strides = tuple(ctx.attr("strides") or (1,) * nd)
    dilations = tuple(ctx.attr("dilations") or (1,) * nd)
    pads = list(ctx.attr("pads") or (0,) * (2 * nd))
    auto_pad = ctx.attr("auto_pad", "NOTSET")
    extent = [(k - 1) * d + 1 for k, d in zip(kernel, dilations)]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        out = [math.ceil(i / s) for i, s in zip(spatial, strides)]
        total = [max(0, (o - 1) * s + e - i) for o, s, e, i in zip(out, strides, extent, spatial)]
        small = [t // 2 for t in total]
        big = [t - t // 2 for t in total]
        begin, end = (small, big) if auto_pad == "SAME_UPPER" else (big, small)
    else:
        if auto_pad == "VALID":
            pads = [0] * (2 * nd)
        begin, end = pads[:nd], pads[nd:]
        out = []
        for i, s, e, b, f in zip(spatial, strides, extent, begin, end):
            span = i + b + f - e
            o = (-(-span // s) if ceil_mode else span // s) + 1
            if ceil_mode and (o - 1) * s >= i + b:  # the last window would start in the end padding
                o -= 1
            out.append(max(o, 0))
    return Window(tuple(kernel), strides, dilations, tuple(begin), tuple(end), tuple(out))


@dataclass(frozen=True)
class Padding:
    """How ``pad_for`` pads (or crops, for negative pads) one input shape for a window."""

    crop: tuple[slice, ...] | None  # None: nothing to crop
    shape: tuple[int, ...] | None  # the padded shape; None: nothing to pad
    interior: tuple[slice, ...]  # where the (cropped) input lies in the padded array

    @classmethod
    def of(cls, shape: tuple[int, ...], win: Window) -> "Padding":
        nd = len(win.out)
        lead = len(shape) - nd
        widths = [(0, 0)] * lead
        crop = [slice(None)] * lead
        cropped = list(shape[:lead])
        for axis in range(nd):
            size = shape[lead + axis]
            needed = (win.out[axis] - 1) * win.strides[axis] + win.extent[axis] if win.out[axis] else 0
            begin = win.pad_begin[axis]
            end = needed - size - begin
            crop.append(slice(max(-begin, 0), None))  # slices never read past `needed`, so only the start crops
            cropped.append(max(size - max(-begin, 0), 0))
            widths.append((max(begin, 0), max(end, 0)))
        padded = any(w != (0, 0) for w in widths)
        return cls(tuple(crop) if any(c != slice(None) for c in crop) else None,
                   tuple(b + size + e for (b, e), size in zip(widths, cropped)) if padded else None,
                   tuple(slice(b, b + size) for (b, _), size in zip(widths, cropped)))

    def apply(self, x: np.ndarray, value=0, out: np.ndarray | None = None) -> np.ndarray:
        """``x`` padded with ``value`` (into ``out`` when given: its border must already hold ``value``)."""
        if self.crop is not None:
            x = x[self.crop]
        if self.shape is None and out is None:
            return x
        if out is None:  # np.pad costs tens of microseconds per call in Python alone
            out = np.full(self.shape, value, dtype=x.dtype)
        out[self.interior] = x
        return out


def pad_for(x: np.ndarray, win: Window, value=0) -> np.ndarray:
    """``x`` padded (or cropped, for negative pads) so that every tap slice of ``win`` is in range."""
    return Padding.of(x.shape, win).apply(x, value)
