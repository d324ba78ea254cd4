"""Finding passes and pipelines: the built-in passes and their pipeline table, and plug-ins.

Importing ``passes`` registers the built-ins (``optimizer.pipeline.register_pass``) and
gives the named pipelines (``passes.PIPELINES``). A plug-in package exposes passes in the
entry-point group ``ninopt.passes``; each entry point names a module (importing it registers
its passes) or a Pass class. This module sits above the passes: nothing below imports it.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from importlib import metadata

from optimizer.errors import NinoptError
from optimizer.pipeline import REGISTERED, Pass

ENTRY_POINT_GROUP = "ninopt.passes"
DEFAULT_PIPELINE = "default"


@dataclass(frozen=True)
class PassListing:
    """A registered pass as ``ninopt passes`` lists it."""

    name: str
    cls: type
    exact: bool
    doc: str
    pipelines: tuple[str, ...]  # the named pipelines that run it

    @property
    def default(self) -> bool:
        return DEFAULT_PIPELINE in self.pipelines

    def create(self) -> Pass:
        return self.cls()


_pipelines: dict[str, tuple[str, ...]] | None = None


def _load() -> dict[str, tuple[str, ...]]:
    global _pipelines
    if _pipelines is not None:
        return _pipelines
    builtin = importlib.import_module("passes")
    if getattr(builtin, "__file__", None) is None:  # a namespace package: some other passes/ folder won
        raise NinoptError(f"the built-in passes could not be loaded: 'passes' resolves to {list(builtin.__path__)}, "
                          f"not ninopt's package; run ninopt from another folder.")
    for entry in metadata.entry_points(group=ENTRY_POINT_GROUP):
        try:
            entry.load()
        except Exception as exc:  # a broken plug-in: one sentence, every time it is asked for
            raise NinoptError(f"pass plug-in {entry.name!r} ({entry.value}) failed to load: {exc}.") from None
    _pipelines = dict(builtin.PIPELINES)
    return _pipelines


def _listing(name: str) -> PassListing:
    info = REGISTERED[name]
    member_of = tuple(p for p, names in _load().items() if name in names)
    return PassListing(info.name, info.cls, info.exact, info.doc, member_of)


def all_passes() -> list[PassListing]:
    """Every registered pass: the default pipeline's in its order, then the others by registration."""
    _load()
    order = list(dict.fromkeys([*pipeline_passes(DEFAULT_PIPELINE), *REGISTERED]))
    return [_listing(name) for name in order if name in REGISTERED]


def get_pass(name: str) -> PassListing:
    _load()
    if name not in REGISTERED:
        known = ", ".join(sorted(REGISTERED))
        raise NinoptError(f"unknown pass {name!r}; known passes: {known}.")
    return _listing(name)


def pipelines() -> dict[str, tuple[str, ...]]:
    """The named pipelines: name -> pass names in order."""
    return dict(_load())


def pipeline_passes(name: str) -> list[str]:
    """The pass names of a named pipeline, in order."""
    table = _load()
    if name not in table:
        raise NinoptError(f"unknown pipeline {name!r}; known pipelines: {', '.join(table)}.")
    return list(table[name])


def default_passes() -> list[str]:
    return pipeline_passes(DEFAULT_PIPELINE)
