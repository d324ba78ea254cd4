"""Built-in passes. Importing this package registers them; the import order is the default pipeline order.

Cleanup first. Then Constant ops become initializers, constant folding runs (turning
ConstantOfShape weights and static shape arithmetic into initializers the later passes can
read), and Reshape targets made of the input's own dims become constants. Then chains that
cancel go and duplicate nodes merge (CSE after the chain removal, which makes more nodes
identical; identical constants deduped at the end of a sweep let the next sweep merge their
readers), both before the 1x1 rewrites so those see one canonical node per value. Then the
exact 1x1 rewrites (pads and affines into convs before branch merging, branch merging before
chain fusion), the passes that are off by default, and cleanup again for what the rewrites
left behind.
"""

from passes import (  # noqa: F401  (imported to register)
    eliminate_identity,
    eliminate_dropout,
    constant_to_initializer,
    fold_constants,
    fold_shape_arithmetic,
    eliminate_cancelling_chains,
    eliminate_common_subexpressions,
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
