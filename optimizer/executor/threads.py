"""How many threads BLAS may use while the executor runs (default: one).

OpenBLAS's worker threads spin while they wait for work. On a machine whose cores are busy
(a CI runner, a laptop running tests, two verifications side by side) the spinning workers take
the cores from the thread that does the work: on a 2-core machine at load 3, PP-OCR's classifier
ran in 364 ms with two BLAS threads and in 34 ms with one. One thread also makes results
independent of the machine's core count (BLAS splits sums differently per thread count), so a
verification verdict reproduces everywhere. threadpoolctl finds whichever BLAS numpy loaded
(OpenBLAS, MKL, BLIS, under any symbol prefix) and sets its thread count for the duration.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator

from optimizer.errors import NinoptError

_blas_threads: int | None = 1
_lock = threading.Lock()
_depth = 0  # runs in progress (nested, or in several Python threads): the limit is process-wide
_limiter = None  # threadpoolctl's handle while the limit is in force
_controller = None  # built on first use: finding the loaded BLAS libraries takes a few milliseconds


def set_blas_threads(count: int | None) -> None:
    """Let BLAS use ``count`` threads during executor runs, process-wide (None: leave BLAS as it is)."""
    global _blas_threads
    if count is not None and count < 1:
        raise NinoptError("the BLAS thread count must be at least 1 (or None to leave BLAS as it is).")
    _blas_threads = count


@contextmanager
def blas_limit() -> Iterator[None]:
    """Hold BLAS at the executor's thread count while the block runs; restore it when the last run ends."""
    global _depth, _limiter, _controller
    count = _blas_threads
    if count is None:
        yield
        return
    with _lock:
        if _depth == 0:
            if _controller is None:
                from threadpoolctl import ThreadpoolController

                _controller = ThreadpoolController()
            _limiter = _controller.limit(limits=count, user_api="blas")
        _depth += 1
    try:
        yield
    finally:
        with _lock:
            _depth -= 1
            if _depth == 0:
                _limiter.restore_original_limits()
                _limiter = None
