"""Every single-op case of onnx's pytorch-converted and pytorch-operator suites runs and matches its outputs."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from executor_testing import ONNX_DATA
from optimizer import onnx_io
from optimizer.executor import Executor, unsupported_ops

CASES = {p.name: p for suite in ("pytorch-converted", "pytorch-operator") for p in sorted((ONNX_DATA / suite).iterdir())
         if (p / "model.onnx").exists()}

#: Cases the executor cannot run, with the reason. Empty today: every case runs.
UNSUPPORTED: dict[str, str] = {}

# Tighter than onnx's runner (rtol 1e-3, atol 1e-7); NaN where the reference has NaN.
RTOL, ATOL = 1e-5, 1e-6


def load_tensors(folder, prefix):
    return [numpy_helper.to_array(onnx.load_tensor(str(p))) for p in sorted(folder.glob(f"{prefix}_*.pb"),
                                                                           key=lambda p: int(p.stem.split("_")[1]))]


def test_suites_are_complete():
    assert len(CASES) == 117


def test_unsupported_cases_are_exactly_the_listed_ones():
    found = {name for name, path in CASES.items() if unsupported_ops(onnx_io.load(path / "model.onnx"))}
    assert found == set(UNSUPPORTED)


@pytest.mark.parametrize("case", sorted(set(CASES) - set(UNSUPPORTED)))
def test_case_matches_shipped_outputs(case):
    folder = CASES[case]
    graph = onnx_io.load(folder / "model.onnx")
    executor = Executor(graph)
    data_sets = sorted(folder.glob("test_data_set_*"))
    assert data_sets
    for data in data_sets:
        outputs = executor.run(dict(zip(graph.feed_inputs(), load_tensors(data, "input"))))
        expected = load_tensors(data, "output")
        assert len(expected) == len(graph.outputs)
        for name, want in zip(graph.outputs, expected):
            got = outputs[name]
            assert got.dtype == want.dtype and got.shape == want.shape, name
            np.testing.assert_allclose(got, want, rtol=RTOL, atol=ATOL, equal_nan=True, err_msg=name)
