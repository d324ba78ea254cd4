"""Bad input of every kind: each command and each library entry point refuses it cleanly.

Every case goes through ``ninopt optimize``, ``analyze``, ``run`` and ``verify`` and must end
with one sentence on stderr starting with "ninopt: error: ", exit 2 (1 for a failed
verification), no traceback, the input files byte-identical and no output or temporary
file left behind. The library raises ``optimizer.NinoptError`` for the same cases.
Most run in process (``main([...])``); one case per command runs as a real subprocess to
prove no traceback reaches stderr.
"""

from __future__ import annotations

import functools
import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import optimizer
from optimizer.cli import main
from support import make_model

COMMANDS = ("optimize", "analyze", "run", "verify")
HUGE = [1_000_000, 1_000_000]  # 10^12 elements
OPSET = [helper.make_opsetid("", 13)]


# ---------------------------------------------------------------------- the corpus
def _conv_model(weight_scale: float = 1.0, ir_version: int = 8) -> onnx.ModelProto:
    """A small valid model: Conv -> Relu on a 1x3x6x6 input."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * weight_scale).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
         helper.make_node("Relu", ["c"], ["y"], name="relu")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 6, 6])], [w, b])
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = ir_version
    return model


#: The corpus's models are broken on purpose: no checker.
_model = functools.partial(make_model, check=False)


def _vi(name: str, shape, elem=TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, elem, shape)


def _external_model(location: str, length: int | None = None) -> onnx.ModelProto:
    """The conv model with weight ``w`` stored externally at ``location``."""
    model = _conv_model()
    w = next(t for t in model.graph.initializer if t.name == "w")
    w.ClearField("raw_data")
    w.ClearField("float_data")
    w.data_location = TensorProto.EXTERNAL
    fields = {"location": location, "offset": "0"} | ({"length": str(length)} if length is not None else {})
    for key, value in fields.items():
        entry = w.external_data.add()
        entry.key, entry.value = key, value
    return model


def _graph_cases() -> dict[str, onnx.ModelProto]:
    x1, y1 = _vi("x", [1]), _vi("y", [1])
    x4, y4 = _vi("x", [1, 3, 6, 6]), _vi("y", [1, 4, 6, 6])
    raw_short = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "w")
    raw_short.raw_data = raw_short.raw_data[:40]  # declared 108 floats, holds 10
    huge_const = helper.make_tensor("shape", TensorProto.INT64, [2], HUGE)
    custom = _conv_model()
    custom.graph.node.append(helper.make_node("Frobnicate", ["y"], ["z"], name="frob", domain="com.acme"))
    custom.graph.output[0].CopyFrom(_vi("z", [1, 4, 6, 6]))
    custom.opset_import.append(helper.make_opsetid("com.acme", 1))
    future = _conv_model()
    future.opset_import[0].version = 999
    return {
        "cycle": _model([helper.make_node("Relu", ["b"], ["y"]), helper.make_node("Relu", ["y"], ["b"])], [x1], [y1]),
        "duplicate_producer": _model([helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Neg", ["x"], ["y"])],
                                     [x1], [y1]),
        "undefined_input": _model([helper.make_node("Add", ["x", "nowhere"], ["y"])], [x1], [y1]),
        "unproduced_output": _model([helper.make_node("Relu", ["x"], ["z"])], [x1], [y1]),
        "missing_initializer": _model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], [x4], [y4]),
        "conv_on_int64": _model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
                                [_vi("x", [1, 3, 6, 6], TensorProto.INT64)], [_vi("y", [1, 4, 6, 6], TensorProto.INT64)],
                                [numpy_helper.from_array(np.ones((4, 3, 3, 3), np.int64), "w")]),
        "raw_data_too_short": _model([helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], [x4], [y4],
                                     [raw_short]),
        "zero_dim": _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", [1, 0, 6, 6])], [_vi("y", None)]),
        "unknown_opset": future,
        "unknown_op": custom,
        "huge_input": _model([helper.make_node("Relu", ["x"], ["y"])], [_vi("x", HUGE)], [_vi("y", HUGE)]),
        "huge_constant_of_shape": _model(
            [helper.make_node("ConstantOfShape", ["shape"], ["k"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
             helper.make_node("Add", ["x", "k"], ["y"])], [x1], [_vi("y", HUGE)], [huge_const]),
        "huge_expand": _model([helper.make_node("Expand", ["x", "shape"], ["y"])], [x1], [_vi("y", HUGE)], [huge_const]),
        "huge_tile": _model([helper.make_node("Tile", ["x", "reps"], ["y"])], [_vi("x", [1, 1])], [_vi("y", HUGE)],
                            [helper.make_tensor("reps", TensorProto.INT64, [2], HUGE)]),
    }


def build_corpus(folder: Path) -> dict[str, Path]:
    """Every bad model as a file in ``folder`` (with its external data and a decoy outside it)."""
    folder.mkdir()
    outside = folder.parent / "outside"
    outside.mkdir()
    weights = np.random.default_rng(0).standard_normal((4, 3, 3, 3)).astype(np.float32).tobytes()
    (outside / "w.bin").write_bytes(weights)
    (folder / "short.bin").write_bytes(weights[:100])
    os.symlink(outside / "w.bin", folder / "link.bin")
    good = _conv_model().SerializeToString()
    files: dict[str, bytes] = {
        "empty": b"",
        "random_bytes": np.random.default_rng(0).bytes(4096),
        "truncated": good[: len(good) // 2],
        "not_a_model": numpy_helper.from_array(np.ones((3, 3), np.float32)).SerializeToString(),
        "text": b"this is not an ONNX model\n",
        "external_parent": _external_model("../outside/w.bin").SerializeToString(),
        "external_absolute": _external_model(str(outside / "w.bin")).SerializeToString(),
        "external_symlink": _external_model("link.bin").SerializeToString(),
        "external_missing": _external_model("nope.bin").SerializeToString(),
        "external_short": _external_model("short.bin").SerializeToString(),
        "external_short_length": _external_model("short.bin", length=len(weights)).SerializeToString(),
    }
    files.update({name: model.SerializeToString() for name, model in _graph_cases().items()})
    (folder / "directory.onnx").mkdir()
    paths = {"missing": folder / "missing.onnx", "directory": folder / "directory.onnx"}
    for name, data in files.items():
        paths[name] = folder / f"{name}.onnx"
        paths[name].write_bytes(data)
    return paths


#: Cases a command may accept: analyze reads no weight values and runs no kernels.
ACCEPTED = {(case, "analyze") for case in ("conv_on_int64", "raw_data_too_short", "zero_dim", "unknown_opset",
                                           "unknown_op", "huge_input", "huge_constant_of_shape", "huge_expand",
                                           "huge_tile")}
CASES = ["missing", "directory", "empty", "random_bytes", "truncated", "not_a_model", "text", "cycle",
         "duplicate_producer", "undefined_input", "unproduced_output", "missing_initializer", "conv_on_int64", "raw_data_too_short", "zero_dim",
         "unknown_opset", "unknown_op", "external_parent", "external_absolute", "external_symlink", "external_missing",
         "external_short", "external_short_length", "huge_input", "huge_constant_of_shape", "huge_expand", "huge_tile"]
#: Words the one sentence must contain, so it says what is wrong (not just that something is).
EXPECTED_WORDS = {
    "missing": "does not exist", "directory": "not a file", "empty": "empty", "random_bytes": "not a readable",
    "truncated": "not a readable", "text": "not a readable", "cycle": "cycle", "duplicate_producer": "already has a producer",
    "raw_data_too_short": "bytes", "zero_dim": "--shape",
    "undefined_input": "'nowhere'", "unproduced_output": "'y'", "missing_initializer": "'w'", "conv_on_int64": "int64",
    "unknown_opset": "999", "unknown_op": "Frobnicate", "external_parent": "outside the model's folder",
    "external_absolute": "outside the model's folder", "external_symlink": "outside the model's folder",
    "external_missing": "missing", "external_short": "shorter", "external_short_length": "shorter",
    "huge_constant_of_shape": "limit", "huge_expand": "limit", "huge_tile": "limit",
}
def _matrix() -> list:
    return [pytest.param(case, command, id=f"{case}-{command}") for case in CASES for command in COMMANDS]


# ---------------------------------------------------------------------- helpers
def _snapshot(folder: Path) -> dict[str, str]:
    """Digest of every file under ``folder`` (symlinks followed), to prove nothing was modified."""
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.rglob("*")) if p.is_file()}


def _args(command: str, model: Path, out: Path, *extra: str) -> list[str]:
    if command == "optimize":
        return ["optimize", str(model), "-o", str(out / "model.onnx"), *extra]
    if command == "analyze":
        return ["analyze", str(model), "--csv", str(out / "costs.csv"), *extra]
    if command == "run":
        return ["run", str(model), "-o", str(out / "outputs.npz"), *extra]
    return ["verify", str(model), str(model), *extra]


def _one_sentence(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ninopt: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> dict[str, Path]:
    return build_corpus(tmp_path_factory.mktemp("bad") / "models")


@pytest.fixture
def out(tmp_path: Path) -> Path:
    folder = tmp_path / "out"
    folder.mkdir()
    return folder


# ---------------------------------------------------------------------- CLI, in process
@pytest.mark.parametrize("case,command", _matrix())
def test_bad_model_is_one_sentence_exit_2(case: str, command: str, corpus, out: Path, capsys) -> None:
    folder = corpus["empty"].parent.parent  # the models and the files outside their folder
    before = _snapshot(folder)
    code = main(_args(command, corpus[case], out))
    captured = capsys.readouterr()
    assert _snapshot(folder) == before, "an input file changed"
    if (case, command) in ACCEPTED and code == 0:
        assert captured.err == ""
        return
    assert code == 2, captured.err
    assert EXPECTED_WORDS.get(case, "") in _one_sentence(captured.err)
    assert list(out.iterdir()) == [], "an output or temporary file was left behind"


def test_unknown_op_is_named_except_when_not_verifying(corpus, out: Path, capsys) -> None:
    """Passes skip what they do not know; only the executor refuses, naming op, domain and node."""
    assert main(["optimize", str(corpus["unknown_op"]), "-o", str(out / "m.onnx"), "--no-verify"]) == 0
    capsys.readouterr()
    for args in (["optimize", str(corpus["unknown_op"]), "-o", str(out / "v.onnx")],
                 ["run", str(corpus["unknown_op"])], ["verify", str(corpus["unknown_op"]), str(out / "m.onnx")]):
        assert main(args) == 2
        line = _one_sentence(capsys.readouterr().err)
        assert "Frobnicate" in line and "com.acme" in line and "frob" in line
    assert not (out / "v.onnx").exists()


@pytest.mark.parametrize("case", ["huge_input", "huge_constant_of_shape", "huge_expand", "huge_tile"])
def test_huge_tensors_are_refused_before_allocating(case: str, corpus, capsys) -> None:
    """10^12 elements: the resource guard refuses, naming the limit, before anything is allocated."""
    assert main(["run", str(corpus[case])]) == 2
    assert "limit" in _one_sentence(capsys.readouterr().err)


# ---------------------------------------------------------------------- inputs (.npz)
def _npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


@pytest.fixture
def good_model(tmp_path: Path) -> Path:
    path = tmp_path / "good.onnx"
    path.write_bytes(_conv_model().SerializeToString())
    return path


@pytest.mark.parametrize("inputs", ["wrong_name", "wrong_shape", "wrong_rank", "wrong_dtype", "extra_name",
                                    "not_npz", "pickled", "missing_file"])
@pytest.mark.parametrize("command", ["optimize", "run", "verify"])
def test_bad_inputs_file(inputs: str, command: str, good_model: Path, tmp_path: Path, out: Path, capsys) -> None:
    x = np.zeros((1, 3, 6, 6), np.float32)
    folder = tmp_path / "inputs"
    folder.mkdir()
    path = {
        "wrong_name": lambda p: _npz(p, data=x),
        "wrong_shape": lambda p: _npz(p, x=np.zeros((1, 3, 7, 6), np.float32)),
        "wrong_rank": lambda p: _npz(p, x=np.zeros((3, 6, 6), np.float32)),
        "wrong_dtype": lambda p: _npz(p, x=x.astype(np.float64)),
        "extra_name": lambda p: _npz(p, x=x, extra=x),
        "not_npz": lambda p: (p.write_bytes(b"not a zip archive"), p)[1],
        "pickled": lambda p: _npz(p, x=np.array([{"a": 1}], dtype=object)),
        "missing_file": lambda p: p,
    }[inputs](folder / "inputs.npz")
    before = _snapshot(folder) | _snapshot(good_model.parent)
    assert main(_args(command, good_model, out, "--inputs", str(path))) == 2
    _one_sentence(capsys.readouterr().err)
    assert _snapshot(folder) | _snapshot(good_model.parent) == before
    assert list(out.iterdir()) == []


# ---------------------------------------------------------------------- verification failure
def test_verify_perturbed_weights_exits_1(tmp_path: Path, capsys) -> None:
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    a.write_bytes(_conv_model().SerializeToString())
    b.write_bytes(_conv_model(weight_scale=1.01).SerializeToString())
    before = _snapshot(tmp_path)
    assert main(["verify", str(a), str(b)]) == 1
    captured = capsys.readouterr()
    line = _one_sentence(captured.err)
    assert "'y'" in line and "FAIL" in captured.out
    assert main(["verify", str(a), str(a)]) == 0
    assert _snapshot(tmp_path) == before
    assert not optimizer.verify(a, b).passed


# ---------------------------------------------------------------------- subprocess: no traceback reaches stderr
@pytest.mark.parametrize("command,case", [("optimize", "external_symlink"), ("analyze", "missing_initializer"),
                                          ("run", "huge_constant_of_shape"), ("verify", "random_bytes")])
def test_subprocess_prints_one_sentence(command: str, case: str, corpus, out: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "optimizer.cli", *_args(command, corpus[case], out)],
                            capture_output=True, text=True, env=os.environ | {"NINOPT_DEBUG": ""})
    assert result.returncode == 2, result.stderr
    _one_sentence(result.stderr)
    assert list(out.iterdir()) == []


# ---------------------------------------------------------------------- library
@pytest.mark.parametrize("case,command", _matrix())
def test_library_raises_ninopt_error(case: str, command: str, corpus) -> None:
    if (case, command) in ACCEPTED:
        pytest.skip(f"{command} may accept {case}")
    path = corpus[case]
    feeds = {"x": np.zeros((1, 3, 6, 6), np.float32)}
    call = {"optimize": lambda: optimizer.optimize(path), "analyze": lambda: optimizer.analyze(path),
            "run": lambda: optimizer.run(path, feeds), "verify": lambda: optimizer.verify(path, path)}[command]
    with pytest.raises(optimizer.NinoptError):
        call()
