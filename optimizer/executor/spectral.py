"""Spectral ops: DFT, STFT, the window generators (Hann, Hamming, Blackman) and MelWeightMatrix.

Complex tensors are real tensors with a trailing axis of 2 (real, imaginary); real
signals may carry a trailing axis of 1. Transforms run in the input's precision (numpy's
FFT keeps float32 as complex64), as onnxruntime does.
"""

from __future__ import annotations

import numpy as np

from optimizer.executor.indexing import scalar_int
from optimizer.executor.registry import kernel
from optimizer.values import elem_type_to_dtype


def _as_complex(x: np.ndarray) -> np.ndarray:
    return x[..., 0] + 1j * x[..., 1] if x.shape[-1] == 2 else x[..., 0]


def _as_pairs(z: np.ndarray, dtype) -> np.ndarray:
    return np.stack([z.real, z.imag], axis=-1).astype(dtype, copy=False)


def _dft(ctx, x, length, axis):
    """Forward: full spectrum, or its first n/2 + 1 bins when one-sided. Inverse: complex, or a real
    signal rebuilt from a one-sided spectrum (whose default length is then 2 (bins - 1))."""
    axis %= x.ndim
    inverse, onesided = bool(ctx.attr("inverse", 0)), bool(ctx.attr("onesided", 0))
    if length is None:
        length = 2 * (x.shape[axis] - 1) if inverse and onesided else x.shape[axis]
    else:
        length = scalar_int(length)
    ctx.guard(x.shape[:axis] + (length,) + x.shape[axis + 1:-1], np.complex128)
    z = _as_complex(x)
    if not inverse:
        spectrum = np.fft.fft(z, n=length, axis=axis)
        if onesided:
            spectrum = np.take(spectrum, np.arange(length // 2 + 1), axis=axis)
        return _as_pairs(spectrum, x.dtype)
    if onesided:
        return np.fft.irfft(z, n=length, axis=axis)[..., None].astype(x.dtype, copy=False)
    return _as_pairs(np.fft.ifft(z, n=length, axis=axis), x.dtype)


kernel("DFT", since=17, until=19)(lambda ctx, x, length=None: _dft(ctx, x, length, int(ctx.attr("axis", 1))))
kernel("DFT", since=20)(
    lambda ctx, x, length=None, axis=None: _dft(ctx, x, length, -2 if axis is None else scalar_int(axis)))


@kernel("STFT", since=17)
def _stft(ctx, signal, frame_step, window=None, frame_length=None):
    """Spectra of windowed frames: output [batch, frames, bins, 2]."""
    step = scalar_int(frame_step)
    if frame_length is not None:
        size = scalar_int(frame_length)
    else:
        size = window.shape[0] if window is not None else signal.shape[1]
    frames = (signal.shape[1] - size) // step + 1
    z = _as_complex(signal)
    ctx.guard((signal.shape[0], frames, size), np.complex128)
    samples = np.arange(frames)[:, None] * step + np.arange(size)[None, :]
    framed = z[:, samples]  # (batch, frames, size)
    if window is not None:
        framed = framed * window
    spectrum = np.fft.fft(framed, axis=-1)
    if ctx.attr("onesided", 1):
        spectrum = spectrum[..., :size // 2 + 1]
    return _as_pairs(spectrum, signal.dtype)


# ---------------------------------------------------------------------- windows
def _window(coefficients):
    """A generalized cosine window sum_k a_k cos(2 pi k n / N); N is the size (periodic) or size - 1."""
    def run(ctx, size):
        size = scalar_int(size)
        ctx.guard((size,), np.float64)
        span = size if ctx.attr("periodic", 1) else size - 1
        phase = 2 * np.pi * np.arange(size) / span
        values = sum(a * np.cos(k * phase) for k, a in enumerate(coefficients))
        return np.asarray(values, dtype=np.float64).astype(elem_type_to_dtype(ctx.attr("output_datatype", 1)))
    return run


kernel("HannWindow", since=17)(_window((0.5, -0.5)))
kernel("HammingWindow", since=17)(_window((25 / 46, -21 / 46)))
kernel("BlackmanWindow", since=17)(_window((0.42, -0.5, 0.08)))


@kernel("MelWeightMatrix", since=17)
def _mel_weight_matrix(ctx, num_mel_bins, dft_length, sample_rate, lower_edge_hertz, upper_edge_hertz):
    """[dft_length // 2 + 1, num_mel_bins] triangular filters peaking at 1, on the mel scale 2595 log10(1 + f / 700).

    The band edges are num_mel_bins + 2 points a mel step of (high - low) / (num_mel_bins + 2)
    apart, mapped to DFT bins floor((dft_length + 1) f / sample_rate), as onnx and onnxruntime do.
    """
    bands, length, rate = scalar_int(num_mel_bins), scalar_int(dft_length), scalar_int(sample_rate)
    low, high = (2595 * np.log10(1 + float(np.asarray(f).reshape(-1)[0]) / 700)
                 for f in (lower_edge_hertz, upper_edge_hertz))
    mels = low + np.arange(bands + 2) * (high - low) / (bands + 2)
    edges = ((length + 1) * (700 * (10 ** (mels / 2595) - 1)) // rate).astype(np.int64)
    left, center, right = edges[:-2], edges[1:-1], edges[2:]
    j = np.arange(length // 2 + 1)[:, None]
    rising = np.where(center > left, (j - left) / np.maximum(center - left, 1), 1.0)
    falling = (right - j) / np.maximum(right - center, 1)
    weights = np.where((j >= left) & (j <= center), rising, np.where((j > center) & (j < right), falling, 0.0))
    return weights.astype(elem_type_to_dtype(ctx.attr("output_datatype", 1)))
