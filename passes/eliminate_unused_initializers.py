"""Unused-initializer elimination."""

from optimizer.pipeline import GraphPass, register_pass


@register_pass("eliminate-unused-initializers", exact=True)
class EliminateUnusedInitializers(GraphPass):
    """Drop initializers nothing reads (and, in IR v3 models, their graph-input entries).

    From IR v4 on, an initializer that is also a graph input is an overridable default and
    part of the model's interface, so it stays. A GraphPass: it edits the initializer table,
    not nodes, so there is no match to replace.
    """

    def run(self, g, ctx):
        stats = ctx.stats
        unused = [name for name in g.removable_initializers() if not g.num_uses(name)]
        stats.matches += len(unused)
        stats.rewrites += len(unused)
        for name in unused:
            g.remove_initializer(name)
        return bool(unused)
