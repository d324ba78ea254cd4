"""Pass registration: built-in passes register on import; third parties through entry points.

A plug-in package exposes passes in the entry-point group ``ninopt.passes``; each entry
point names a module (importing it registers its passes) or a Pass class.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import metadata

from optimizer.errors import NinoptError

ENTRY_POINT_GROUP = "ninopt.passes"


@dataclass(frozen=True)
class PassInfo:
    name: str
    cls: type
    exact: bool
    default: bool
    doc: str  # first line of the class docstring

    def create(self):
        return self.cls()


_REGISTRY: dict[str, PassInfo] = {}
_loaded = False


def register_pass(name: str, *, exact: bool = True, default: bool = True):
    """Class decorator: make a Pass available by ``name``.

    ``exact`` passes keep outputs within float round-off; ``default`` ones run in the
    default pipeline, in registration order.
    """

    def decorate(cls):
        doc = (cls.__doc__ or "").strip().splitlines()
        if not doc:
            raise TypeError(f"pass {name!r} needs a docstring saying what it rewrites")
        known = _REGISTRY.get(name)
        if known is not None and _qualified(known.cls) != _qualified(cls):  # a re-imported module may re-register
            raise ValueError(f"pass name {name!r} is registered twice")
        cls.name, cls.exact, cls.default = name, exact, default
        _REGISTRY[name] = PassInfo(name, cls, exact, default, doc[0])
        return cls

    return decorate


def _qualified(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def unregister_pass(name: str) -> None:
    """Remove a pass (tests register throwaway passes)."""
    _REGISTRY.pop(name, None)


def _load() -> None:
    global _loaded
    if _loaded:
        return
    builtin = importlib.import_module("passes")
    if getattr(builtin, "__file__", None) is None:  # a namespace package: some other passes/ folder won
        raise NinoptError(f"the built-in passes could not be loaded: 'passes' resolves to {list(builtin.__path__)}, "
                          f"not ninopt's package; run ninopt from another folder.")
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as exc:  # a broken plug-in: one sentence, every time it is asked for
            raise NinoptError(f"pass plug-in {entry.name!r} ({entry.value}) failed to load: {exc}.") from None
    _loaded = True


def all_passes() -> list[PassInfo]:
    _load()
    return list(_REGISTRY.values())


def get_pass(name: str) -> PassInfo:
    _load()
    info = _REGISTRY.get(name)
    if info is None:
        known = ", ".join(sorted(_REGISTRY))
        raise NinoptError(f"unknown pass {name!r}; known passes: {known}.")
    return info


def default_passes() -> list[str]:
    return [p.name for p in all_passes() if p.default]
