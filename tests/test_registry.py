"""Pass registration: built-ins, `ninopt passes`, and entry-point plug-ins."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import optimizer
import optimizer.registry as registry
from optimizer.cli import main
from optimizer.errors import NinoptError
from optimizer.pipeline import Pass, PassManager, register_pass, unregister_pass
from optimizer.registry import all_passes, default_passes, get_pass, pipeline_passes, pipelines

CLEANUP = ["eliminate-identity", "eliminate-dropout", "eliminate-dead-nodes", "eliminate-unused-initializers",
           "dedupe-initializers"]
PLUGIN_MODULE = "ninopt_test_plugin_passes"
PLUGIN_PASS = "test-plugin-negate-nothing"


def builtin_passes() -> dict[str, registry.PassListing]:
    """Every registered pass defined in the built-in ``passes`` package."""
    return {p.name: p for p in all_passes() if p.cls.__module__.split(".")[0] == "passes"}


def passes_json(capsys) -> list[dict]:
    assert main(["passes", "--json"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    listing = json.loads(captured.out)
    assert listing["pipelines"] == {name: list(names) for name, names in pipelines().items()}
    return listing["passes"]


# ---------------------------------------------------------------------- built-ins
def test_every_builtin_module_registers_a_pass():
    import passes

    folder = os.path.dirname(passes.__file__)
    modules = sorted(f[:-3] for f in os.listdir(folder) if f.endswith(".py") and not f.startswith("_"))
    registered = {p.cls.__module__ for p in builtin_passes().values()}
    assert {f"passes.{m}" for m in modules} <= registered, "a passes/*.py module is not imported by passes/__init__"
    assert set(CLEANUP) <= set(builtin_passes())


def test_passes_json_lists_every_builtin_with_exact_default_and_doc(capsys):
    listed = {entry["name"]: entry for entry in passes_json(capsys)}
    builtins = builtin_passes()
    assert set(builtins) <= set(listed)
    for name, info in builtins.items():
        entry = listed[name]
        assert set(entry) == {"name", "exact", "default", "doc", "pipelines"}
        assert entry["exact"] is info.exact and entry["default"] is info.default
        assert entry["pipelines"] == [p for p, names in pipelines().items() if name in names]
        assert entry["doc"] == info.cls.__doc__.strip().splitlines()[0]
        assert entry["doc"] and "\n" not in entry["doc"]
    for name in CLEANUP:
        assert listed[name]["exact"] is True and listed[name]["default"] is True
    assert listed["eliminate-identity"]["doc"] == "Identity(x) -> x: readers of the copy read the original."


def test_passes_json_lists_the_default_pipeline_first_in_its_order(capsys):
    names = [entry["name"] for entry in passes_json(capsys)]
    assert names == [p.name for p in all_passes()]
    assert default_passes() == [p.name for p in all_passes() if p.default] == names[:len(default_passes())]
    # the default pipeline runs identity before dropout, dead nodes before unused initializers
    assert names.index("eliminate-identity") < names.index("eliminate-dropout")
    assert names.index("eliminate-dead-nodes") < names.index("eliminate-unused-initializers")


def test_passes_table_names_every_pass(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    assert main(["passes"]) == 0
    out = capsys.readouterr().out
    for name in builtin_passes():
        assert name in out


def test_console_script_lists_the_passes():
    exe = shutil.which("ninopt") or os.path.join(os.path.dirname(sys.executable), "ninopt")
    assert os.path.exists(exe), "the `ninopt` console script is not installed (pip install -e .)"
    env = dict(os.environ, COLUMNS="250", NO_COLOR="1")
    result = subprocess.run([exe, "passes"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    for name in CLEANUP:
        assert name in result.stdout
    result = subprocess.run([exe, "passes", "--json"], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0
    assert set(CLEANUP) <= {e["name"] for e in json.loads(result.stdout)["passes"]}


# ---------------------------------------------------------------------- register_pass contract
def test_register_pass_sets_class_attributes_and_unregister_removes_it():
    @register_pass("test-temporary", exact=False)
    class Temporary(Pass):
        """A throwaway pass.

        More text that is not the summary.
        """

    try:
        info = get_pass("test-temporary")
        assert (Temporary.name, Temporary.exact) == ("test-temporary", False)
        assert (info.exact, info.default, info.doc) == (False, False, "A throwaway pass.")
        assert isinstance(info.create(), Temporary)
        assert "test-temporary" not in default_passes()
    finally:
        unregister_pass("test-temporary")
    with pytest.raises(NinoptError, match="unknown pass 'test-temporary'"):
        get_pass("test-temporary")


def test_a_pass_needs_a_docstring():
    with pytest.raises(TypeError, match="docstring"):
        @register_pass("test-undocumented")
        class Undocumented(Pass):
            pass
    assert "test-undocumented" not in {p.name for p in all_passes()}


def test_a_name_cannot_be_registered_by_two_classes():
    with pytest.raises(ValueError, match="registered twice"):
        @register_pass("eliminate-identity")
        class Impostor(Pass):
            """Pretends to be eliminate-identity."""
    assert get_pass("eliminate-identity").cls.__name__ == "EliminateIdentity"


def test_unknown_pass_error_lists_known_passes():
    with pytest.raises(NinoptError) as info:
        get_pass("no-such-pass")
    assert "no-such-pass" in str(info.value) and "eliminate-identity" in str(info.value)


# ---------------------------------------------------------------------- entry-point plug-ins
def _write_plugin(tmp_path, module_source: str, dist: str = "ninopt_test_plugin") -> None:
    (tmp_path / f"{PLUGIN_MODULE}.py").write_text(textwrap.dedent(module_source))
    info = tmp_path / f"{dist}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(f"[ninopt.passes]\ntest_plugin = {PLUGIN_MODULE}\n")


@pytest.fixture
def plugin_env(tmp_path, monkeypatch):
    """sys.path with a temporary dist-info; the registry forgets it loaded; everything undone afterwards."""
    monkeypatch.syspath_prepend(str(tmp_path))
    all_passes()  # built-ins first, so only the plug-in is new
    monkeypatch.setattr(registry, "_pipelines", None)
    importlib.invalidate_caches()
    yield tmp_path
    unregister_pass(PLUGIN_PASS)
    sys.modules.pop(PLUGIN_MODULE, None)
    importlib.invalidate_caches()


PLUGIN_SOURCE = f'''
    from optimizer.pipeline import GraphPass, register_pass


    @register_pass("{PLUGIN_PASS}", exact=True)
    class NegateNothing(GraphPass):
        """A plug-in pass that counts Neg nodes and changes nothing."""

        def run(self, g, ctx):
            ctx.stats.matches += sum(n.op_type == "Neg" for n in g.nodes)
            return False
'''


def test_entry_point_plugin_is_listed_and_runs(plugin_env, capsys):
    _write_plugin(plugin_env, PLUGIN_SOURCE)
    listed = {entry["name"]: entry for entry in passes_json(capsys)}
    assert listed[PLUGIN_PASS] == {"name": PLUGIN_PASS, "exact": True, "default": False, "pipelines": [],
                                   "doc": "A plug-in pass that counts Neg nodes and changes nothing."}
    assert set(CLEANUP) <= set(listed)
    assert PLUGIN_PASS not in default_passes()
    # and it is usable like any other pass
    from optimizer.ir import Graph

    g = Graph()
    g.inputs = ["x"]
    g.add_node("Neg", ["x"], ["y"], name="neg")
    g.outputs = ["y"]
    report = PassManager([get_pass(PLUGIN_PASS).create()]).run(g)
    assert report.passes[0].matches == 1 and report.converged


def test_plugin_is_not_seen_without_its_dist_info(tmp_path, monkeypatch, capsys):
    (tmp_path / f"{PLUGIN_MODULE}.py").write_text(textwrap.dedent(PLUGIN_SOURCE))
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(registry, "_pipelines", None)
    try:
        assert PLUGIN_PASS not in {entry["name"] for entry in passes_json(capsys)}
    finally:
        sys.modules.pop(PLUGIN_MODULE, None)


def test_a_broken_plugin_is_one_clear_error(plugin_env, capsys):
    _write_plugin(plugin_env, "raise RuntimeError('boom')\n")
    with pytest.raises(NinoptError, match=r"pass plug-in 'test_plugin' \(ninopt_test_plugin_passes\) failed to load: boom"):
        all_passes()
    registry._loaded = False
    assert main(["passes", "--json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("ninopt: error: pass plug-in 'test_plugin'") and "Traceback" not in err


def test_a_broken_plugin_keeps_failing_instead_of_vanishing(plugin_env):
    _write_plugin(plugin_env, "raise RuntimeError('boom')\n")
    with pytest.raises(NinoptError):
        all_passes()
    with pytest.raises(NinoptError):
        all_passes()


# ---------------------------------------------------------------------- named pipelines
def test_every_pipeline_names_registered_passes_once():
    for name, names in pipelines().items():
        assert names, name
        assert len(set(names)) == len(names), f"pipeline {name!r} runs a pass twice"
        for pass_name in names:
            get_pass(pass_name)


def test_pipelines_respect_the_ordering_constraints():
    """Each stated constraint (e.g. pads and affines before branch merging, branch merging before
    chain fusion) holds in every pipeline that runs both passes, and constrains passes that exist."""
    from passes import ORDERING

    assert ORDERING
    for earlier, later, why in ORDERING:
        get_pass(earlier), get_pass(later)
        assert why
        for name, names in pipelines().items():
            if earlier in names and later in names:
                assert names.index(earlier) < names.index(later), f"{name}: {earlier} must run before {later} ({why})"


def test_an_ordering_violation_would_be_caught(monkeypatch):
    import passes

    swapped = list(passes.PIPELINES["default"])
    i, j = swapped.index("merge-parallel-branches"), swapped.index("fuse-conv1x1-chain")
    swapped[i], swapped[j] = swapped[j], swapped[i]
    monkeypatch.setitem(passes.PIPELINES, "default", tuple(swapped))
    monkeypatch.setattr(registry, "_pipelines", None)
    with pytest.raises(AssertionError, match="merge-parallel-branches must run before fuse-conv1x1-chain"):
        test_pipelines_respect_the_ordering_constraints()


def test_the_onnxruntime_pipeline_is_the_default_plus_fused_activations():
    assert pipeline_passes("onnxruntime") == default_passes() + ["fuse-conv-activation"]
    with pytest.raises(NinoptError, match="unknown pipeline 'fastest'; known pipelines: default"):
        pipeline_passes("fastest")


def test_cli_pipeline_option_runs_the_named_pipeline(tmp_path, capsys):
    model = os.path.join(os.path.dirname(__file__), "..", "fixtures", "resnet_bottleneck_bn.onnx")
    out = tmp_path / "out.onnx"
    assert main(["optimize", model, "-o", str(out), "--pipeline", "onnxruntime", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["passes"] == pipeline_passes("onnxruntime")
    assert "FusedConv" in {n.op_type for n in optimizer.load(out).nodes}
    assert main(["optimize", model, "-o", str(tmp_path / "other.onnx"), "--pipeline", "fastest"]) == 2
    err = capsys.readouterr().err
    assert "unknown pipeline 'fastest'" in err and "Traceback" not in err
    assert not (tmp_path / "other.onnx").exists()


def test_library_pipeline_argument_and_passes_are_exclusive():
    model = os.path.join(os.path.dirname(__file__), "..", "fixtures", "resnet_bottleneck_bn.onnx")
    result = optimizer.optimize(model, pipeline="constant-folding", verify=False)
    assert result.passes == ["constant-to-initializer", "fold-constants"]
    with pytest.raises(NinoptError, match="either passes or a pipeline"):
        optimizer.optimize(model, passes="fold-constants", pipeline="default")
