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

from optimizer.errors import NinoptError

DEFAULT_BLAS_THREADS = 1
_blas_threads: int | None = DEFAULT_BLAS_THREADS


def set_blas_threads(count: int | None) -> None:
    """Let BLAS use ``count`` threads during executor runs, process-wide (None: leave BLAS as it is)."""
    global _blas_threads
    if count is not None and count < 1:
        raise NinoptError("the BLAS thread count must be at least 1 (or None to leave BLAS as it is).")
    _blas_threads = count


class _BlasLimit:
    """``with blas_limit:`` holds BLAS at the executor's thread count while the block runs and restores
    each library's own count when the last block in flight (nested, or in other Python threads) ends.

    Entering costs a few microseconds (threadpoolctl's ``limit()`` context, which re-reads every
    library's state, took 26 µs): ``run_node`` enters it for every node a bottleneck walk computes,
    hundreds of thousands of times on a detector. Such a walk holds it around the whole loop, so
    each node's entry is a nested one that changes nothing."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._libraries: list | None = None  # found on first use: numpy has loaded its BLAS by then
        self._restore: list[tuple[object, int]] = []

    def __enter__(self) -> None:
        with self._lock:
            self._depth += 1
            count = _blas_threads
            if self._depth > 1 or count is None:
                return
            if self._libraries is None:
                from threadpoolctl import ThreadpoolController

                self._libraries = ThreadpoolController().select(user_api="blas").lib_controllers
            self._restore = [(library, own) for library in self._libraries
                             if (own := library.get_num_threads()) != count]
            for library, _ in self._restore:
                library.set_num_threads(count)

    def __exit__(self, *exc) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                for library, count in self._restore:
                    library.set_num_threads(count)
                self._restore = []


#: the one limit every run and ``run_node`` call enters
blas_limit = _BlasLimit()
