"""onnx's own test cases on the executor, at the suites' tolerances.

Node cases (``collect_testcases()``, ~20 s to generate, once per session) whose ops all have
kernels must match; the others are skipped with the ops they lack (``pytest -rs`` groups
them per op), so a case becomes eligible as soon as its kernel lands. Excluded cases are
skipped with their reason (``conformance.EXCLUDED``). The pytorch-converted and
pytorch-operator folders must all run and match, at tighter tolerances.
"""

from __future__ import annotations

import functools

import pytest

from optimizer.executor import Executor, UnsupportedOpError, conformance
from optimizer.executor.conformance import EXCLUDED_STATUS, FAILED, PASSED, UNSUPPORTED
from optimizer.onnx_io import load

NODE_CASES = {case.name: case for case in conformance.node_cases()}
FOLDER_CASES = {f"{case.suite}/{case.name}": case for case in conformance.folder_cases()}


@functools.cache
def node_results() -> dict[str, conformance.CaseResult]:
    return {result.name: result for result in conformance.coverage().results}


@pytest.mark.parametrize("name", sorted(NODE_CASES))
def test_node_case(name: str) -> None:
    result = node_results()[name]
    if result.status == UNSUPPORTED:
        pytest.skip(f"no kernel for {', '.join(result.missing_ops)}" if result.missing_ops
                    else f"unsupported variant: {result.detail}")
    if result.status == EXCLUDED_STATUS:
        pytest.skip(f"excluded: {result.detail}")
    assert result.status == PASSED, result.detail


@pytest.mark.parametrize("key", sorted(FOLDER_CASES))
def test_pytorch_folder_case(key: str) -> None:
    result = conformance.check_case(FOLDER_CASES[key])
    assert result.status == PASSED, result.detail


def test_the_suites_are_all_there() -> None:
    assert len(NODE_CASES) == len(conformance.node_cases()) > 1800
    assert sum(key.startswith("pytorch-converted/") for key in FOLDER_CASES) == 82
    assert sum(key.startswith("pytorch-operator/") for key in FOLDER_CASES) == 35


def test_every_exclusion_is_an_eligible_node_case() -> None:
    """An exclusion hides a case the executor could run; one that names a missing or unplannable case is stale."""
    for name in conformance.EXCLUDED:
        assert name in NODE_CASES, name
        try:
            Executor(load(NODE_CASES[name].model))
        except UnsupportedOpError as exc:
            pytest.fail(f"{name} is excluded but cannot even be planned: {exc}")


def test_coverage_figures_add_up() -> None:
    coverage = conformance.coverage()
    figures = coverage.to_dict()
    cases = figures["node_cases"]
    assert cases["total"] == len(NODE_CASES)
    assert cases["passed"] + cases["failed"] + cases["excluded"] == cases["eligible"]
    assert cases["eligible"] + cases["unsupported"] == cases["total"]
    assert cases["excluded"] == len(conformance.EXCLUDED)
    assert cases["failed"] == sum(r.status == FAILED for r in coverage.results) == len(figures["failed_cases"])
    assert {"Conv", "Resize", "MaxPool", "ReduceMax"} <= set(coverage.registered["ai.onnx"])
    missing = {m.op_type for m in coverage.missing}
    assert not missing & set(coverage.registered["ai.onnx"])
    for m in coverage.missing:  # an op with no kernel blocks exactly the cases that list it
        assert m.blocked_cases == sum(m.op_type in r.missing_ops for r in coverage.results) >= m.unlocks
