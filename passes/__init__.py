"""Built-in passes. Importing this package registers them; the import order is the default pipeline order.

Cleanup first, then constant folding (which turns ConstantOfShape weights into initializers
the folding passes can read), the exact 1x1 rewrites (pads and affines into convs before
branch merging, branch merging before chain fusion), the passes that are off by default,
and cleanup again for what the rewrites left behind.
"""

from passes import (  # noqa: F401  (imported to register)
    eliminate_identity,
    eliminate_dropout,
    fold_constants,
    fold_pad,
    fold_batchnorm,
    fold_affine,
    merge_parallel_branches,
    canonicalize_conv1x1_gemm,
    fuse_conv1x1_chain,
    merge_sibling_conv1x1,
    fuse_conv_activation,
    insert_bottleneck,
    dedupe_initializers,
    eliminate_dead_nodes,
    eliminate_unused_initializers,
)
