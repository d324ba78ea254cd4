"""NumPy reference executor: plan once per graph, run lean, refuse clearly.

``Executor(graph).run(feeds)`` or the one-shot ``run(graph, feeds)``. Importing this
package registers every kernel module below.
"""

from optimizer.executor import (  # noqa: F401  (imported to register their kernels)
    control_flow, conv, detection, elementwise, indexing, linalg, norm, normalize, pool, quantize, reduce, resize, rnn,
    sampling, shape_ops, spectral, tensor,
)
from optimizer.executor.core import Executor, default_max_tensor_bytes, run, set_max_tensor_bytes, unsupported_ops
from optimizer.executor.errors import (
    FeedError, KernelError, ResourceLimitError, UnsupportedOp, UnsupportedOpError,
)
from optimizer.executor.registry import kernel, lookup, registered_ops

__all__ = [
    "Executor", "run", "unsupported_ops", "default_max_tensor_bytes", "set_max_tensor_bytes", "kernel", "lookup",
    "registered_ops",
    "FeedError", "KernelError", "ResourceLimitError", "UnsupportedOp", "UnsupportedOpError",
]
