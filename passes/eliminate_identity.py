"""Identity elimination."""

from optimizer.pattern import P
from optimizer.pipeline import RewritePass, register_pass
from optimizer.rewrite import Replacement


@register_pass("eliminate-identity", exact=True)
class EliminateIdentity(RewritePass):
    """Identity(x) -> x: readers of the copy read the original."""

    pattern = P.Identity("x", out="y")

    def rewrite(self, g, m):
        return Replacement().bypass(m.root)
