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
