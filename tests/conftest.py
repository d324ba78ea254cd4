"""Shared pytest fixtures: the light model zoo, the fixtures folder and an onnxruntime oracle.

The light zoo comes from the installed ``onnx`` package (``onnx/backend/test/data/light``);
it is never copied into this repository. The plain functions live in ``support.py``; the
fixtures here expose some of them under the same names.
"""

from __future__ import annotations

import os

import pytest

from support import FIXTURES_DIR, LIGHT_MODELS, LIGHT_ZOO_DIR, light_model_id, ort_run, random_feeds


# ---------------------------------------------------------------------- pytest fixtures
@pytest.fixture(scope="session")
def light_zoo_dir() -> str:
    if not os.path.isdir(LIGHT_ZOO_DIR):
        pytest.skip("the installed onnx package has no light model zoo")
    return LIGHT_ZOO_DIR


@pytest.fixture(scope="session")
def light_models(light_zoo_dir) -> list[str]:
    assert len(LIGHT_MODELS) == 9, f"expected the 9 light-zoo models, found {len(LIGHT_MODELS)}"
    return list(LIGHT_MODELS)


@pytest.fixture(params=LIGHT_MODELS, ids=[light_model_id(p) for p in LIGHT_MODELS])
def light_model(request) -> str:
    """Parametrized: one light-zoo model path per test instance."""
    return request.param


@pytest.fixture(scope="session")
def fixtures_dir() -> str:
    return FIXTURES_DIR


@pytest.fixture(name="ort_run", scope="session")
def _ort_run_fixture():
    return ort_run


@pytest.fixture(name="random_feeds", scope="session")
def _random_feeds_fixture():
    return random_feeds
