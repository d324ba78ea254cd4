"""The `ninopt` command end to end: real runs, and bad input that must fail cleanly."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from optimizer.cli import main

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "optimizer.cli", *args], capture_output=True, text=True)


def _ort(path: Path, feeds: dict) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"]).run(None, feeds)


def _light_feeds(path: Path) -> dict:
    model = onnx.load(str(path))
    inits = {t.name for t in model.graph.initializer}
    rng = np.random.default_rng(0)
    return {i.name: rng.standard_normal([d.dim_value for d in i.type.tensor_type.shape.dim]).astype(np.float32)
            for i in model.graph.input if i.name not in inits}


@pytest.mark.parametrize("path", sorted(LIGHT.glob("light_*.onnx")), ids=lambda p: p.stem)
def test_optimize_light_zoo_keeps_outputs(path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out.onnx"
    before = _digest(path)
    assert main(["optimize", str(path), "-o", str(out), "--json"]) == 0
    assert _digest(path) == before
    onnx.checker.check_model(str(out), full_check=True)
    assert len(onnx.load(str(out)).graph.node) <= len(onnx.load(str(path)).graph.node)
    feeds = _light_feeds(path)
    for expected, actual in zip(_ort(path, feeds), _ort(out, feeds), strict=True):
        np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-6)


def test_optimize_json_report_has_the_pipeline_and_costs(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(LIGHT / "light_bvlc_alexnet.onnx"), "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    stats = {p["name"]: p for p in report["pipeline"]["passes"]}
    assert stats["eliminate-dropout"]["rewrites"] == 2
    assert report["after"]["nodes"] <= report["before"]["nodes"] - 2
    assert report["after"]["macs"] == report["before"]["macs"] > 0
    assert report["pipeline"]["converged"] is True


def test_optimize_with_named_passes_runs_only_those(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(LIGHT / "light_bvlc_alexnet.onnx"), "-o", str(out), "--passes",
                 "eliminate-dropout", "--json", "--no-verify"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [p["name"] for p in report["pipeline"]["passes"]] == ["eliminate-dropout"]
    assert report["verification"] is None


def test_console_script_and_version() -> None:
    out = subprocess.run(["ninopt", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("ninopt ")


def test_help_shows_an_example() -> None:
    out = _run("optimize", "--help")
    assert out.returncode == 0 and "example: ninopt optimize" in out.stdout


# ---------------------------------------------------------------- bad input (the full corpus: test_bad_input.py)
def test_refuses_to_overwrite_the_input(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes((LIGHT / "light_squeezenet.onnx").read_bytes())
    before = _digest(model)
    result = _run("optimize", str(model), "-o", str(model))
    assert result.returncode == 2 and "--in-place" in result.stderr
    assert _digest(model) == before


def test_in_place_rewrites_the_input(tmp_path: Path) -> None:
    model = tmp_path / "model.onnx"
    model.write_bytes((LIGHT / "light_squeezenet.onnx").read_bytes())
    assert _run("optimize", str(model), "-o", str(model), "--in-place").returncode == 0
    assert all(n.op_type != "Dropout" for n in onnx.load(str(model)).graph.node)


@pytest.mark.parametrize("where", ["directory", "missing_folder", "parent_is_a_file"])
def test_unwritable_output_is_one_sentence(where: str, tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    target = {"directory": tmp_path,
              "missing_folder": tmp_path / "nope" / "out.onnx",
              "parent_is_a_file": tmp_path / "file" / "out.onnx"}[where]
    result = _run("optimize", str(LIGHT / "light_squeezenet.onnx"), "-o", str(target), "--no-verify")
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_unknown_pass_is_named(tmp_path: Path) -> None:
    result = _run("optimize", str(LIGHT / "light_squeezenet.onnx"), "-o", str(tmp_path / "o.onnx"),
                  "--passes", "no-such-pass")
    assert result.returncode == 2 and "'no-such-pass'" in result.stderr and "eliminate-identity" in result.stderr
    assert not (tmp_path / "o.onnx").exists()


def test_bottleneck_insertion_from_the_cli(tmp_path: Path, capsys) -> None:
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(FIXTURES / "seed_bottleneck.onnx"), "-o", str(out), "--bottleneck",
                 "--max-error", "1e-4", "--cost", "macs", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bottleneck_cost"] == "macs"
    assert report["before"]["macs"] >= 9 * report["after"]["macs"]
    assert report["budget"] == pytest.approx(2e-4)
    model = onnx.load(str(out))
    reduce = [n for n in model.graph.node if n.op_type == "Conv"][0]
    weights = {t.name: t for t in model.graph.initializer}
    assert list(weights[reduce.input[1]].dims) == [16, 192, 1, 1]
    feeds = {model.graph.input[0].name: np.random.default_rng(7).standard_normal((1, 192, 28, 28)).astype(np.float32)}
    expected, actual = _ort(FIXTURES / "seed_bottleneck.onnx", feeds)[0], _ort(out, feeds)[0]
    assert np.abs(actual - expected).max() <= 1e-5 * np.abs(expected).max()


def test_bottleneck_insertion_is_priced_by_onnxruntime_by_default(tmp_path: Path, capsys) -> None:
    """No --cost: the run says it timed layers in onnxruntime, the kept layer carries the measured latency,
    and the written model verifies against the input (the figures themselves depend on the machine's load)."""
    source, out = FIXTURES / "seed_bottleneck.onnx", tmp_path / "out.onnx"
    assert main(["optimize", str(source), "-o", str(out), "--bottleneck", "--max-error", "1e-4", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["bottleneck_cost"] == "onnxruntime" and report["verification"]["passed"]
    decisions = [d for p in report["pipeline"]["passes"] for d in p["decisions"] if d["kind"] == "bottleneck"]
    assert decisions and all(d["seconds_before"] > 0 and d["seconds_after"] > 0 for d in decisions)
    assert main(["verify", str(source), str(out), "--tolerance", "2e-4", "-q"]) == 0
    assert main(["optimize", str(source), "-o", str(out), "--bottleneck", "--max-error", "1e-4"]) == 0
    assert "bottlenecks priced by onnxruntime latency" in capsys.readouterr().out


def test_analyze_bottlenecks_ranks_the_seed_layer(tmp_path: Path, capsys) -> None:
    table = tmp_path / "bottlenecks.csv"
    assert main(["analyze", str(FIXTURES / "seed_bottleneck.onnx"), "--bottlenecks", "--csv", str(table)]) == 0
    out = capsys.readouterr().out
    assert "input" in out and "weaker evidence" in out
    header, first = table.read_text().splitlines()[:2]
    row = dict(zip(header.split(","), first.split(",")))
    assert row["structure"] == "input" and row["rank"] == "16"


def test_target_onnxruntime_fuses_conv_activations(tmp_path: Path, capsys) -> None:
    source = FIXTURES / "inception_module.onnx"
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(source), "-o", str(out), "--target", "onnxruntime", "--json"]) == 0
    model = onnx.load(str(out))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("FusedConv") == 6 and "Relu" not in ops
    feeds = dict(np.load(FIXTURES / "inception_module_inputs.npz"))
    np.testing.assert_allclose(_ort(out, feeds)[0], _ort(source, feeds)[0], rtol=1e-5, atol=1e-5)


def test_zoo_over_the_light_models_with_json_and_html(tmp_path: Path) -> None:
    html = tmp_path / "report.html"
    result = _run("zoo", "--builtin", "light", "--jobs", "2", "--json", "--html", str(html))
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert len(report["models"]) == 9 and report["summary"]["passed"] == 9
    page = html.read_text()
    assert page.count('<img src="data:image/png;base64,') == 9
    assert all(m["name"] in page for m in report["models"])


def test_zoo_with_a_missing_path_is_bad_input(tmp_path: Path) -> None:
    result = _run("zoo", str(tmp_path / "nowhere"))
    assert result.returncode == 2 and result.stderr.startswith("ninopt: error: ") and "Traceback" not in result.stderr


@pytest.mark.parametrize("command", [["optimize", "{model}", "-o", "{out}"], ["analyze", "{model}"],
                                     ["run", "{model}"], ["verify", "{model}", "{model}"]])
def test_quiet_prints_nothing_and_keeps_the_exit_code(command: list[str], tmp_path: Path) -> None:
    model = FIXTURES / "repvgg_stage.onnx"
    args = [a.format(model=model, out=tmp_path / "out.onnx") for a in command] + ["--quiet"]
    result = _run(*args)
    assert result.returncode == 0 and result.stdout == "" and result.stderr == ""


def test_tensor_size_limit_from_the_flag_and_the_library(tmp_path: Path) -> None:
    import optimizer
    from optimizer.executor import set_max_tensor_bytes

    model = FIXTURES / "inception_module.onnx"
    result = _run("run", str(model), "--max-tensor-bytes", "1M", "-o", str(tmp_path / "y.npz"))
    assert result.returncode == 2 and "1,048,576 bytes" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "y.npz").exists()
    assert _run("run", str(model), "--max-tensor-bytes", "64M", "-q").returncode == 0
    feeds = dict(np.load(FIXTURES / "inception_module_inputs.npz"))
    set_max_tensor_bytes(1 << 20)
    try:
        with pytest.raises(optimizer.NinoptError, match="limit"):
            optimizer.run(model, feeds)
    finally:
        set_max_tensor_bytes(None)
    assert optimizer.run(model, feeds)["output"].shape == (1, 256, 28, 28)


def test_blas_threads_flag_holds_for_the_command_only(monkeypatch, tmp_path: Path) -> None:
    from optimizer.executor import threads

    calls = []
    monkeypatch.setattr(threads, "set_blas_threads", lambda count: calls.append(count))
    model = FIXTURES / "inception_module.onnx"
    assert main(["run", str(model), "--blas-threads", "2", "-o", str(tmp_path / "y.npz"), "-q"]) == 0
    assert calls == [2, threads.DEFAULT_BLAS_THREADS] and (tmp_path / "y.npz").exists()
    monkeypatch.undo()
    result = _run("run", str(model), "--blas-threads", "0")
    assert result.returncode == 2 and "at least 1" in result.stderr and "Traceback" not in result.stderr


def test_run_shows_nan_outputs_instead_of_crashing(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Log", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])])
    model = tmp_path / "log.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(model))
    np.savez(tmp_path / "x.npz", x=np.array([-1.0, 1.0, 2.0, 3.0], np.float32))
    result = _run("run", str(model), "--inputs", str(tmp_path / "x.npz"))
    assert result.returncode == 0 and "nan" in result.stdout, result.stderr


def test_ops_lists_kernels_and_the_node_test_score(capsys) -> None:
    from optimizer.executor import conformance, lookup, registered_ops

    assert main(["ops", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert "Conv" in report["registered_ops"]["by_domain"]["ai.onnx"]
    assert "FusedConv" in report["registered_ops"]["by_domain"]["com.microsoft"]
    assert report["registered_ops"]["count"] == len({(d, op) for d, op, _, _ in registered_ops()})
    results = conformance.coverage().results
    cases = report["node_cases"]
    assert cases["total"] == len(conformance.node_cases()) == len(results)
    assert cases["passed"] == sum(r.status == conformance.PASSED for r in results) > 1000
    assert cases["eligible"] == cases["total"] - sum(r.status == conformance.UNSUPPORTED for r in results)
    newest = onnx.defs.onnx_opset_version()
    for missing in report["missing_ops"]:
        assert all(lookup("", missing["op"], opset) is None for opset in range(1, newest + 1)), missing
    assert main(["ops"]) == 0
    text = capsys.readouterr().out
    assert f"{cases['passed']} passed / {cases['eligible']} eligible / {cases['total']} total" in text
