"""Dead-node elimination."""

from optimizer.pipeline import Pass
from optimizer.registry import register_pass


@register_pass("eliminate-dead-nodes", exact=True)
class EliminateDeadNodes(Pass):
    """Remove nodes no graph output depends on."""

    def run(self, g, stats):
        live = g.live_nodes()
        dead = [n for n in g.nodes if n.id not in live]
        stats.matches += len(dead)
        stats.rewrites += len(dead)
        g.remove_nodes(dead)
        return bool(dead)
