"""NumPy reference executor: plan once per graph, run lean, refuse clearly.

``Executor(graph).run(feeds)`` or the one-shot ``run(graph, feeds)``; ``outputs=[names]`` returns
those tensors (intermediates too) instead of the graph's outputs. Passes and engines that work
node by node use ``run_node(node, inputs, opset)`` and ``has_kernel(node, opset)``, and
``bn_is_training`` for BatchNormalization's mode, rather than the kernel registry; a loop of
``run_node`` calls holds ``with blas_limit:`` around it (each call then skips setting BLAS's
thread count). Importing
this package registers every kernel module below.
"""

from optimizer.executor import (  # noqa: F401  (imported to register their kernels)
    control_flow, conv, detection, elementwise, indexing, linalg, norm, normalize, pool, quantize, reduce, resize, rnn,
    sampling, shape_ops, spectral, tensor,
)
from optimizer.executor.core import (
    Executor, default_max_tensor_bytes, has_kernel, run, run_node, set_max_tensor_bytes, unsupported_ops,
)
from optimizer.executor.errors import (
    FeedError, KernelError, ResourceLimitError, UnsupportedOp, UnsupportedOpError,
)
from optimizer.executor.norm import bn_is_training
from optimizer.executor.registry import kernel, lookup, registered_ops
from optimizer.executor.threads import blas_limit, set_blas_threads

__all__ = [
    "Executor", "run", "run_node", "has_kernel", "unsupported_ops", "default_max_tensor_bytes", "set_max_tensor_bytes",
    "set_blas_threads", "blas_limit",
    "kernel", "lookup", "registered_ops", "bn_is_training",
    "FeedError", "KernelError", "ResourceLimitError", "UnsupportedOp", "UnsupportedOpError",
]
