"""Built-in passes. Importing this package registers them; the import order is the default pipeline order."""

from passes import (  # noqa: F401  (imported to register)
    eliminate_identity,
    eliminate_dropout,
    dedupe_initializers,
    eliminate_dead_nodes,
    eliminate_unused_initializers,
)
