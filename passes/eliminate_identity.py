"""Identity elimination."""

from optimizer.pattern import P
from optimizer.pipeline import RewritePass
from optimizer.registry import register_pass


@register_pass("eliminate-identity", exact=True)
class EliminateIdentity(RewritePass):
    """Identity(x) -> x: readers of the copy read the original."""

    pattern = P.Identity("x", out="y")

    def check(self, g, m):
        blocker = g.bypass_blocker(m.root)
        return m.fail(blocker) if blocker else m

    def rewrite(self, g, m):
        g.bypass(m.root)
