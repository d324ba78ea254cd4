"""Identical-initializer de-duplication."""

import hashlib

import numpy as np

from optimizer.pipeline import GraphPass, register_pass


@register_pass("dedupe-initializers", exact=True)
class DedupeInitializers(GraphPass):
    """Make readers of byte-identical initializers share one copy.

    Candidates are grouped by element type and shape first, so only initializers that
    could be equal are ever read (external weights stay unread otherwise). A GraphPass: the
    grouping spans the whole initializer table, which no node pattern describes.
    """

    def run(self, g, ctx):
        stats = ctx.stats
        groups: dict[tuple, list[str]] = {}
        for name in g.removable_initializers():
            info = g.tensors[name]
            if info.const is not None and not g.is_graph_output(name):
                groups.setdefault((info.elem_type, info.const.shape), []).append(name)
        changed = False
        for names in groups.values():
            if len(names) < 2:
                continue
            first_by_digest: dict[bytes, str] = {}
            for name in names:
                data = _bytes_view(g.const(name))
                keep = first_by_digest.setdefault(hashlib.blake2b(data, digest_size=16).digest(), name)
                if keep == name or not np.array_equal(_bytes_view(g.const(keep)), data):
                    continue
                stats.matches += 1
                stats.rewrites += 1
                g.replace_all_uses(name, keep)
                g.remove_initializer(name)
                changed = True
        return changed


def _bytes_view(array: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(array).reshape(-1).view(np.uint8)
