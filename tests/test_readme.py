"""The README's Python examples run as written (from a folder where fixtures/ is at hand)."""

import os
import re
from pathlib import Path

import pytest

from optimizer import pipeline

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCKS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)


def test_readme_has_runnable_examples():
    assert len(BLOCKS) >= 2


@pytest.mark.parametrize("code", BLOCKS, ids=[f"block{i}" for i in range(len(BLOCKS))])
def test_readme_example_runs(code: str, tmp_path: Path, monkeypatch, capsys) -> None:
    os.symlink(README.parent / "fixtures", tmp_path / "fixtures")
    monkeypatch.chdir(tmp_path)
    registered = set(pipeline.REGISTERED)
    try:
        exec(compile(code, str(README), "exec"), {"__name__": "readme_example"})
    finally:  # a pass the example registers goes again (the built-ins it loaded stay)
        for name in set(pipeline.REGISTERED) - registered:
            if not pipeline.REGISTERED[name].cls.__module__.startswith("passes."):
                pipeline.unregister_pass(name)
    assert capsys.readouterr().out.strip(), "the example printed nothing"
