"""pytest plug-in: ``pytest --ninopt-zoo DIR`` adds one test per ONNX model under DIR.

Each test optimizes the model with the default pipeline and verifies the result against the
original (``optimizer.zoo_runner.run_model``); a failure shows the per-output error report. The
plug-in does nothing unless the option is given, so loading it everywhere is harmless.
"""

from __future__ import annotations

from pathlib import Path

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("ninopt", "ninopt model zoo")
    group.addoption("--ninopt-zoo", action="append", default=[], metavar="DIR",
                    help="optimize and verify every .onnx model under DIR, one test each (repeatable)")
    group.addoption("--ninopt-passes", metavar="P1,P2", default=None,
                    help="with --ninopt-zoo: comma-separated passes instead of the default pipeline")


@pytest.hookimpl(tryfirst=True)  # before -k / -m deselection, so those select zoo items too
def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]) -> None:
    for folder in config.getoption("ninopt_zoo"):
        collector = ZooCollector.from_parent(session, name=folder, path=Path(folder).resolve(), nodeid=folder)
        items.extend(session.genitems(collector))  # genitems reports collection errors the usual way


class ZooCollector(pytest.Collector):
    """The models found under one ``--ninopt-zoo`` argument."""

    def collect(self):
        from optimizer.errors import NinoptError
        from optimizer.zoo_runner import find_models

        try:
            found = find_models([self.path])
        except NinoptError as exc:
            raise self.CollectError(f"--ninopt-zoo {self.name}: {exc}") from None
        for name, path in found:
            yield ZooModelItem.from_parent(self, name=name, path=Path(path))


class ZooModelFailure(Exception):
    """The model failed verification or could not be optimized; carries the zoo row."""

    def __init__(self, row: dict):
        super().__init__(row["message"])
        self.row = row


class ZooModelItem(pytest.Item):
    """Optimize + verify one model in this process."""

    def runtest(self) -> None:
        from optimizer.zoo_runner import run_model

        row = run_model(str(self.path), passes=self.config.getoption("ninopt_passes"), name=self.name)
        if row["verdict"] != "pass":
            raise ZooModelFailure(row)

    def repr_failure(self, excinfo, style=None):
        if not isinstance(excinfo.value, ZooModelFailure):
            return super().repr_failure(excinfo, style)
        row = excinfo.value.row
        if row["verdict"] == "error":
            return f"ninopt could not optimize and verify {row['path']}: {row['message']}"
        lines = [f"ninopt: the optimized {row['path']} fails verification: {row['message']}",
                 f"{'output':<24} {'max |d|':>10} {'relative':>10} {'min atol':>10} {'min rtol':>10}"]
        for o in row["outputs"]:
            lines.append(f"{o['name']:<24} " + " ".join(f"{_fmt(o[k]):>10}"
                                                       for k in ("max_abs", "max_rel", "min_atol", "min_rtol")))
        return "\n".join(lines)

    def reportinfo(self):
        return self.path, None, f"ninopt zoo: {self.name}"


def _fmt(x) -> str:
    return f"{x:.3g}" if isinstance(x, float) else str(x)
