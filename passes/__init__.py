"""Built-in passes (importing this package registers them) and the named pipelines that run them.

The default pipeline: cleanup first. Then Constant ops become initializers, constant
folding runs (turning ConstantOfShape weights and static shape arithmetic into initializers
the later passes can read), and Reshape targets made of the input's own dims become
constants. Then chains that cancel go and duplicate nodes merge (CSE after the chain
removal, which makes more nodes identical; identical constants deduped at the end of a sweep
let the next sweep merge their readers), both before the 1x1 rewrites so those see one
canonical node per value. Then the exact 1x1 rewrites in the order ``ORDERING`` states, and
cleanup again for what the rewrites left behind.
"""

from passes import (  # noqa: F401  (imported to register)
    canonicalize_conv1x1_gemm,
    constant_to_initializer,
    dedupe_initializers,
    eliminate_cancelling_chains,
    eliminate_common_subexpressions,
    eliminate_dead_nodes,
    eliminate_dropout,
    eliminate_identity,
    eliminate_unused_initializers,
    fold_affine,
    fold_batchnorm,
    fold_constants,
    fold_pad,
    fold_shape_arithmetic,
    fuse_conv1x1_chain,
    fuse_conv_activation,
    insert_bottleneck,
    merge_parallel_branches,
    merge_sibling_conv1x1,
)

_CLEANUP = ("dedupe-initializers", "eliminate-dead-nodes", "eliminate-unused-initializers")

_DEFAULT = (
    "eliminate-identity",
    "eliminate-dropout",
    "constant-to-initializer",
    "fold-constants",
    "fold-shape-arithmetic",
    "eliminate-cancelling-chains",
    "eliminate-common-subexpressions",
    "fold-pad",
    "fold-batchnorm",
    "fold-affine",
    "merge-parallel-branches",
    "canonicalize-conv1x1-gemm",
    "fuse-conv1x1-chain",
    *_CLEANUP,
)

#: Named pipelines: what ``--pipeline NAME`` and ``optimize(pipeline=NAME)`` run, in order.
PIPELINES: dict[str, tuple[str, ...]] = {
    # exact rewrites any runtime runs
    "default": _DEFAULT,
    # the default plus rewrites only onnxruntime runs (``--target onnxruntime``)
    "onnxruntime": (*_DEFAULT, "fuse-conv-activation"),
    # after approximate bottleneck insertion: the factored weights replace the old ones
    "after-bottleneck": _CLEANUP,
    # before bottleneck analysis: Constant ops, ConstantOfShape and other computed weights become readable
    "constant-folding": ("constant-to-initializer", "fold-constants"),
}

#: (earlier, later): wherever a pipeline runs both, the first must come first.
ORDERING: tuple[tuple[str, str, str], ...] = (
    ("fold-pad", "merge-parallel-branches", "a Pad folded into a branch Conv makes the branch mergeable"),
    ("fold-batchnorm", "merge-parallel-branches", "branches are read as Conv+bias; a BN left over hides one"),
    ("fold-affine", "merge-parallel-branches", "a per-channel Mul/Add left over hides a branch's conv"),
    ("merge-parallel-branches", "fuse-conv1x1-chain", "a merged branch sum is one Conv that chain fusion can see"),
    ("canonicalize-conv1x1-gemm", "fuse-conv1x1-chain", "the Gemm becomes the 1x1 Conv that the chain fuses"),
    ("fold-constants", "fold-batchnorm", "folding needs the computed weights as initializers"),
    ("eliminate-common-subexpressions", "merge-parallel-branches", "one canonical node per value"),
)
