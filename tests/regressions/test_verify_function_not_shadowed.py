"""Regression (bad-input corpus): ``optimizer.verify`` stopped being the verify function after the first optimize().

The first import of the submodule then named ``optimizer.verify`` (api.optimize imported it
lazily) rebound the package attribute to the module, so ``optimizer.verify(a, b)`` failed
with "'module' object is not callable". Fixed by renaming the module to verification.py.
"""

from pathlib import Path

import optimizer

FIXTURE = Path(__file__).resolve().parents[2] / "fixtures" / "repvgg_stage.onnx"


def test_verify_is_still_the_function_after_optimize() -> None:
    optimizer.optimize(FIXTURE)
    assert callable(optimizer.verify)
    assert optimizer.verify(FIXTURE, FIXTURE).passed


def test_no_public_function_is_shadowed_by_a_submodule_of_the_same_name() -> None:
    """The same trap caught optimizer.profile(): its module was first named profile.py (now profiling.py)."""
    import pkgutil

    submodules = {m.name for m in pkgutil.iter_modules(optimizer.__path__)}
    assert not submodules & set(optimizer.__all__)
