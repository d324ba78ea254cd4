"""Zoo regression runs: worker pool, per-model rows, baselines, CSV/HTML reports and dask scale-out."""

from __future__ import annotations

import base64
import copy
import csv
import json
import os
import shutil
import sys

import numpy as np
import pytest
from rich.console import Console

from optimizer import api
from optimizer import zoo_runner as zoo
from optimizer.cost import analyze_costs
from optimizer.errors import NinoptError
from optimizer.pipeline import GraphPass, register_pass, unregister_pass
from optimizer.zoo_runner import LAYER_OPS, ZooReport, compare_baseline, find_models, render_table, run_model, run_zoo

GOOD = ["inception_module", "resnet_bottleneck_bn", "identity_dropout"]


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory, fixtures_dir):
    folder = tmp_path_factory.mktemp("zoo")
    for name in GOOD:
        shutil.copy(f"{fixtures_dir}/{name}.onnx", folder / f"{name}.onnx")
    (folder / "sub").mkdir()
    (folder / "sub" / "bad.onnx").write_bytes(b"this is not a protobuf")
    return folder


@pytest.fixture(scope="module")
def report(zoo_dir) -> ZooReport:
    return run_zoo([zoo_dir], jobs=2, progress=False)


def rows(report):
    return {m["name"]: m for m in report.models}


# ---------------------------------------------------------------------- the run
def test_each_model_gets_a_row_with_verdict_and_the_bad_file_an_error(report):
    by_name = rows(report)
    assert list(by_name) == sorted(GOOD + ["sub/bad"])  # folder order, found recursively
    assert {n: m["verdict"] for n, m in by_name.items()} == {**{n: "pass" for n in GOOD}, "sub/bad": "error"}
    bad = by_name["sub/bad"]
    assert "bad.onnx" in bad["message"] and bad["before"] is None and bad["max_error"] is None
    assert report.summary | {"seconds": 0} == {
        "total": 4, "passed": 3, "failed": 0, "errors": 1, "seconds": 0,
        "macs_before": sum(by_name[n]["before"]["macs"] for n in GOOD),
        "macs_after": sum(by_name[n]["after"]["macs"] for n in GOOD)}
    assert not report.passed and report.exit_code == 1  # an unreadable model is a failed model
    good_only = ZooReport([m for m in report.models if m["verdict"] == "pass"])
    assert good_only.passed and good_only.exit_code == 0


def test_rows_carry_the_cost_model_numbers_and_pass_stats(report, fixtures_dir):
    by_name = rows(report)
    for name in GOOD:
        m = by_name[name]
        graph = api.load(f"{fixtures_dir}/{name}.onnx")
        costs = analyze_costs(graph)
        assert m["before"] == {"nodes": len(graph), "macs": costs.total_macs, "params": costs.total_params,
                               "macs_partial": False, "unknown_macs_nodes": 0}
        assert m["after"]["macs"] <= m["before"]["macs"] and m["after"]["nodes"] <= m["before"]["nodes"]
        assert 0 <= m["max_error"] <= 1e-5 and [o["name"] for o in m["outputs"]] == graph.outputs
        layers = [n for n in costs.nodes if n.op_type in LAYER_OPS]
        assert [r["macs_before"] for r in m["layers"] if r["macs_before"] is not None] == [n.macs for n in layers]
        assert {r["op_type"] for r in m["layers"]} <= set(LAYER_OPS)
    # the six inception convs by hand: 28*28*(64*192 + 96*192 + 128*96*9 + 16*192 + 32*16*25 + 32*192)
    assert sum(r["macs_before"] for r in by_name["inception_module"]["layers"]) == 128_049_152
    assert by_name["identity_dropout"]["passes"]["eliminate-identity"] == 3
    json.loads(json.dumps(report.to_dict(), allow_nan=False))  # strict JSON: no NaN/inf numbers


def test_bad_arguments_raise_before_any_work(tmp_path, zoo_dir):
    with pytest.raises(NinoptError, match="does not exist"):
        run_zoo([tmp_path / "missing.onnx"], progress=False)
    with pytest.raises(NinoptError, match="no .onnx models found"):
        run_zoo([tmp_path], progress=False)
    with pytest.raises(NinoptError, match="no models given"):
        run_zoo([], progress=False)
    with pytest.raises(NinoptError, match="unknown built-in zoo 'heavy'"):
        run_zoo([], builtin="heavy", progress=False)
    with pytest.raises(NinoptError, match="at least 1"):
        run_zoo([zoo_dir], jobs=0, progress=False)
    with pytest.raises(NinoptError, match="unknown pass 'no-such-pass'"):
        run_zoo([zoo_dir], passes="no-such-pass", progress=False)
    with pytest.raises(NinoptError, match="unknown pipeline 'fastest'"):
        run_zoo([zoo_dir], pipeline="fastest", progress=False)


def test_a_named_pipeline_runs_on_every_model(fixtures_dir):
    report = run_zoo([os.path.join(fixtures_dir, "resnet_bottleneck_bn.onnx")], pipeline="constant-folding",
                     progress=False)
    (row,) = report.models
    assert report.meta["pipeline"] == "constant-folding"
    assert report.meta["passes"] == ["constant-to-initializer", "fold-constants"]
    assert set(row["passes"]) == {"constant-to-initializer", "fold-constants"} and row["verdict"] == "pass"


def test_builtin_light_finds_the_nine_light_models(light_zoo_dir):
    found = find_models([], builtin="light")
    assert len(found) == 9 and all(name.startswith("light_") for name, _ in found)


@pytest.fixture
def drifting_pass():
    """A throwaway pass that scales the first Conv weight by 1.01: a wrong rewrite verification must catch."""

    @register_pass("test-zoo-drift", exact=True)
    class Drift(GraphPass):
        """Scale one conv weight (deliberately wrong)."""

        done = False

        def run(self, g, ctx):
            if self.done:
                return False
            conv = next(n for n in g.nodes if n.op_type == "Conv")
            g.set_const(conv.inputs[1], g.const(conv.inputs[1]) * np.float32(1.01))
            self.done = True
            ctx.stats.rewrites += 1
            return True

    yield "test-zoo-drift"
    unregister_pass("test-zoo-drift")


def test_a_wrong_rewrite_is_a_fail_row_with_the_error(fixtures_dir, drifting_pass):
    row = run_model(f"{fixtures_dir}/inception_module.onnx", passes=[drifting_pass])
    assert row["verdict"] == "fail" and row["passes"] == {drifting_pass: 1}
    assert row["message"].startswith("output 'output' is off by relative ") and "(allowed 1e-05)" in row["message"]
    assert max(o["error"] for o in row["outputs"]) == row["max_error"] > 1e-3
    lenient = run_model(f"{fixtures_dir}/inception_module.onnx", passes=[drifting_pass], tolerance=0.1)
    assert lenient["verdict"] == "pass" and lenient["message"] is None


def test_bottleneck_budget_adds_the_approximate_pass_and_widens_the_tolerance(fixtures_dir):
    row = run_model(f"{fixtures_dir}/seed_bottleneck.onnx", bottleneck_max_error=1e-3)
    assert row["verdict"] == "pass" and row["passes"]["insert-bottleneck"] == 1
    assert row["after"]["macs"] * 5 < row["before"]["macs"]


def _die_on_crash_onnx(path, **options):
    """Stands in for run_model in the workers (imported there by reference): kills its process on one file."""
    if path.endswith("crash.onnx"):
        os._exit(3)
    return run_model(path, **options)


def test_a_model_that_kills_its_worker_is_an_error_row_and_the_rest_still_run(zoo_dir, tmp_path, monkeypatch):
    for name in ("identity_dropout", "crash"):
        shutil.copy(zoo_dir / "identity_dropout.onnx", tmp_path / f"{name}.onnx")
    monkeypatch.setattr(zoo, "run_model", _die_on_crash_onnx)
    got = {m["name"]: m for m in run_zoo([tmp_path], jobs=2, progress=False).models}
    assert got["crash"]["verdict"] == "error" and "worker process died" in got["crash"]["message"]
    assert got["identity_dropout"]["verdict"] == "pass"


def _blas_setting(path, name=None, **options):
    """Stands in for run_model: the BLAS thread count its worker was started with."""
    return {"name": name, "path": path, "blas_threads": os.environ.get("OPENBLAS_NUM_THREADS")}


def test_parallel_workers_split_the_cores_between_their_blas_threads(zoo_dir, monkeypatch):
    monkeypatch.setattr(zoo, "run_model", _blas_setting)
    monkeypatch.delenv("OPENBLAS_NUM_THREADS", raising=False)
    models = [zoo_dir / "identity_dropout.onnx", zoo_dir / "inception_module.onnx"]
    got = run_zoo(models, jobs=2, progress=False).models
    assert [m["blas_threads"] for m in got] == [str(max(1, (os.cpu_count() or 1) // 2))] * 2
    assert "OPENBLAS_NUM_THREADS" not in os.environ  # the parent's environment is left as it was
    monkeypatch.setenv("OPENBLAS_NUM_THREADS", "7")  # a user's choice wins
    with zoo._blas_threads(1):
        assert os.environ["OPENBLAS_NUM_THREADS"] == "7"


# ---------------------------------------------------------------------- baselines
def _save(tmp_path, data) -> str:
    path = tmp_path / "baseline.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_a_run_compared_with_itself_has_no_regressions(report, tmp_path):
    report.to_json(tmp_path / "run.json")
    result = compare_baseline(report, tmp_path / "run.json")
    assert result.regressions == [] and result.notes == [] and not result


def test_planted_regressions_are_each_named(report, tmp_path):
    base = copy.deepcopy(report.to_dict())
    by_name = {m["name"]: m for m in base["models"]}
    by_name["inception_module"]["after"]["macs"] -= 1  # so the current run looks like MACs grew
    by_name["resnet_bottleneck_bn"]["after"]["nodes"] -= 1
    by_name["sub/bad"].update(verdict="pass")  # it used to pass, now errors
    by_name["identity_dropout"]["passes"]["no-longer-firing"] = 2
    result = compare_baseline(report, _save(tmp_path, base))
    assert len(result.regressions) == 4, result.regressions
    text = "\n".join(result.regressions)
    assert "inception_module: MACs after optimization grew from" in text
    assert "resnet_bottleneck_bn: node count after optimization grew" in text
    assert "sub/bad passed in the baseline but now errors" in text
    assert "identity_dropout: pass no-longer-firing rewrote it 2 time(s) in the baseline" in text


def test_error_growth_needs_both_the_factor_and_the_floor(report, tmp_path):
    current = ZooReport(copy.deepcopy(report.models))
    base = copy.deepcopy(report.to_dict())
    rows(current)["inception_module"]["max_error"] = 5e-6
    base_rows = {m["name"]: m for m in base["models"]}
    base_rows["inception_module"]["max_error"] = 1e-7
    path = _save(tmp_path, base)
    assert [r for r in compare_baseline(current, path).regressions if "grew from 1e-07 to 5e-06" in r]
    assert compare_baseline(current, path, error_growth=100).regressions == []
    assert compare_baseline(current, path, abs_error_floor=1e-5).regressions == []


def test_models_on_one_side_only_are_notes_not_regressions(report, tmp_path):
    base = copy.deepcopy(report.to_dict())
    base["models"] = [m for m in base["models"] if m["name"] != "identity_dropout"]
    base["models"].append(dict(base["models"][0], name="retired_model"))
    result = compare_baseline(report, _save(tmp_path, base))
    assert result.regressions == []
    assert sorted(result.notes) == ["identity_dropout is new (not in the baseline).",
                                    "retired_model is in the baseline but was not run."]


def test_unreadable_baselines_are_bad_input(report, tmp_path):
    with pytest.raises(NinoptError, match="cannot read the baseline"):
        compare_baseline(report, tmp_path / "missing.json")
    with pytest.raises(NinoptError, match="is not a zoo report JSON"):
        compare_baseline(report, _save(tmp_path, {"something": "else"}))


# ---------------------------------------------------------------------- outputs
def test_csv_has_a_header_and_one_row_per_model(report, tmp_path):
    report.to_csv(tmp_path / "zoo.csv")
    with open(tmp_path / "zoo.csv", newline="", encoding="utf-8") as f:
        table = list(csv.DictReader(f))
    assert [r["name"] for r in table] == [m["name"] for m in report.models]
    inception = next(r for r in table if r["name"] == "inception_module")
    assert int(inception["macs_before"]) == rows(report)["inception_module"]["before"]["macs"]
    assert next(r for r in table if r["name"] == "sub/bad")["verdict"] == "error"


def test_table_names_every_model_and_the_totals(report):
    console = Console(record=True, width=140)
    render_table(report, console)
    text = console.export_text()
    assert all(name in text for name in rows(report)) and "3/4 passed, 0 failed, 1 errors" in text
    assert "not a readable ONNX model" in text  # the error row's sentence


def test_table_marks_partial_mac_totals_and_layers_use_the_chosen_shapes(tmp_path):
    """A model with an unpriced op (If) shows its MACs as a lower bound, never a plain 0; a dynamic model's
    layers are priced at the shapes it was verified at."""
    from onnx import TensorProto, helper, numpy_helper

    body = helper.make_graph([helper.make_node("Relu", ["c"], ["r"])], "b", [],
                             [helper.make_tensor_value_info("r", TensorProto.FLOAT, ["n", 4, "h", "w"])])
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("If", ["cond"], ["y"], then_branch=body, else_branch=body)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, "h", "w"]),
                                           helper.make_tensor_value_info("cond", TensorProto.BOOL, [])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4, "h", "w"])], [w])
    path = tmp_path / "if.onnx"
    path.write_bytes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]).SerializeToString())
    zoo_report = run_zoo([path], progress=False)
    (row,) = zoo_report.models
    assert row["before"]["macs_partial"] and row["layers"][0]["macs_before"] > 0
    console = Console(record=True, width=140)
    render_table(zoo_report, console)
    assert "≥" in console.export_text()


def test_html_is_self_contained_with_a_row_and_a_chart_per_model(report, tmp_path):
    pytest.importorskip("matplotlib")
    from optimizer.report_html import write_html

    write_html(report, tmp_path / "zoo.html")
    page = (tmp_path / "zoo.html").read_text(encoding="utf-8")
    assert page.count('<tr class="model">') == 4
    marker = '<img src="data:image/png;base64,'
    assert page.count(marker) == 3  # the unreadable model has no layers to chart
    png = page.split(marker)[1].split('"')[0]
    assert base64.b64decode(png).startswith(b"\x89PNG\r\n\x1a\n")
    assert "http://" not in page and "https://" not in page and "<script" not in page and "<link" not in page


def test_html_without_matplotlib_names_the_extra(report, tmp_path, monkeypatch):
    from optimizer.report_html import write_html

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    with pytest.raises(NinoptError, match=r"pip install 'ninopt\[html\]'"):
        write_html(report, tmp_path / "zoo.html")
    assert not (tmp_path / "zoo.html").exists()


# ---------------------------------------------------------------------- dask
def test_dask_cluster_gives_the_same_rows(report, zoo_dir, capsys):
    distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed (ninopt[dask])")
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        got = run_zoo([zoo_dir / "inception_module.onnx", zoo_dir / "sub"], dask_address=cluster.scheduler_address)
    assert capsys.readouterr().out == ""  # progress=True never writes to stdout
    assert [m["name"] for m in got.models] == ["inception_module", "bad"]  # names relative to each argument
    keep = ("verdict", "before", "after", "max_error", "passes", "layers")
    for m, same in zip(got.models, ("inception_module", "sub/bad")):
        assert {k: m[k] for k in keep} == {k: rows(report)[same][k] for k in keep}


def test_dask_missing_names_the_extra(zoo_dir, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)
    with pytest.raises(NinoptError, match=r"pip install 'ninopt\[dask\]'"):
        run_zoo([zoo_dir], dask_address="tcp://127.0.0.1:1", progress=False)
