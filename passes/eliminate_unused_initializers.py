"""Unused-initializer elimination."""

from optimizer.pipeline import Pass
from optimizer.registry import register_pass


@register_pass("eliminate-unused-initializers", exact=True)
class EliminateUnusedInitializers(Pass):
    """Drop initializers nothing reads (and, in IR v3 models, their graph-input entries)."""

    def run(self, g, stats):
        unused = [name for name in g.initializers if not g.num_uses(name)]
        stats.matches += len(unused)
        stats.rewrites += len(unused)
        for name in unused:
            g.remove_initializer(name)
        return bool(unused)
