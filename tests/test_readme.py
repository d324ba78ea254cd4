"""The README's Python examples run as written (from a folder where fixtures/ is at hand)."""

import os
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
#: Examples that register a built-in pass's name again only illustrate the pass API.
RUNNABLE = [b for b in BLOCKS if "@register_pass" not in b]


def test_readme_has_runnable_examples():
    assert len(RUNNABLE) >= 2


@pytest.mark.parametrize("code", RUNNABLE, ids=[f"block{i}" for i in range(len(RUNNABLE))])
def test_readme_example_runs(code: str, tmp_path: Path, monkeypatch, capsys) -> None:
    os.symlink(README.parent / "fixtures", tmp_path / "fixtures")
    monkeypatch.chdir(tmp_path)
    exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})
    assert capsys.readouterr().out.strip(), "the example printed nothing"
