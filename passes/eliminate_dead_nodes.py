"""Dead-node elimination."""

from optimizer.pipeline import GraphPass, register_pass


@register_pass("eliminate-dead-nodes", exact=True)
class EliminateDeadNodes(GraphPass):
    """Remove nodes no graph output depends on.

    A GraphPass: liveness is a property of the whole graph (one walk back from the outputs),
    and removing one dead node makes its producers dead too.
    """

    def run(self, g, ctx):
        stats = ctx.stats
        live = g.live_nodes()
        dead = [n for n in g.nodes if n.id not in live]
        stats.matches += len(dead)
        stats.rewrites += len(dead)
        g.remove_nodes(dead)
        return bool(dead)
