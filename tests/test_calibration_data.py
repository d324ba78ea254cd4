"""Calibration data from files (``optimizer.calibration_data``): every source kind, the preprocessing
spec checked against values computed by hand, layouts and channel conversions, bad input as one
sentence from the CLI, and PP-OCRv4 det calibrated on real document pages end to end."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper
from PIL import Image

import optimizer
from fixtures import images, wild
from optimizer import cli
from optimizer.calibration_data import load_calibration, parse_preprocess
from optimizer.inputs import input_shape_choice
from support import make_model

RNG = np.random.default_rng(0)
#: ImageNet statistics, as PP-OCR and most torchvision-trained models normalize.
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
IMAGENET = "mean=0.485,0.456,0.406,std=0.229,0.224,0.225"


def _identity(shape, elem_type=onnx.TensorProto.FLOAT, names=("x",)) -> optimizer.Graph:
    """A model passing each input through: what is loaded depends only on the inputs' shapes and types."""
    nodes = [helper.make_node("Identity", [n], [f"{n}_out"]) for n in names]
    return optimizer.load(make_model(nodes, [(n, shape, elem_type) for n in names],
                                     [(f"{n}_out", shape, elem_type) for n in names]))


def _conv_model(path: Path, shape=(1, 3, 8, 8)) -> Path:
    """Two convolutions, so bottleneck analysis has layers to measure."""
    weights = {"w1": RNG.standard_normal((8, shape[1], 3, 3)).astype(np.float32),
               "w2": RNG.standard_normal((8, 8, 1, 1)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1"], ["h"], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"]), helper.make_node("Conv", ["r", "w2"], ["y"])]
    path.write_bytes(make_model(nodes, [("x", shape)], [("y", [shape[0], 8, *shape[2:]])], weights).SerializeToString())
    return path


def _image(path: Path, pixels: np.ndarray) -> Path:
    Image.fromarray(pixels.astype(np.uint8)).save(path)
    return path


#: A 2x2 RGB image whose every value differs, so a channel or axis mix-up cannot go unseen.
PIXELS = np.array([[[10, 20, 30], [40, 50, 60]], [[70, 80, 90], [100, 110, 120]]], np.uint8)


def _by_hand(pixels: np.ndarray) -> np.ndarray:
    """HxWx3 pixels -> normalized as the spec says: (value / 255 - mean[c]) / std[c]."""
    return (pixels.astype(np.float64) / 255 - np.array(MEAN)) / np.array(STD)


# ---------------------------------------------------------------------- arrays

def test_npz_file_keeps_samples_on_axis_0(tmp_path: Path) -> None:
    x = RNG.standard_normal((5, 3, 4, 4)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x)
    loaded = load_calibration(tmp_path / "calib.npz", _identity([1, 3, 4, 4]))
    np.testing.assert_array_equal(loaded["x"], x)


def test_array_folder_joins_samples_and_batches_in_file_name_order(tmp_path: Path) -> None:
    one, batch, keyed = (RNG.standard_normal(s).astype(np.float32) for s in ((3, 4, 4), (2, 3, 4, 4), (3, 4, 4)))
    np.save(tmp_path / "a.npy", one)  # one sample: gains the batch axis
    np.save(tmp_path / "b.npy", batch)  # a batch: taken as is
    np.savez(tmp_path / "c.npz", x=keyed)
    (tmp_path / "notes.txt").write_text("not calibration data")
    loaded = load_calibration(tmp_path, _identity(["N", 3, 4, 4]))
    np.testing.assert_array_equal(loaded["x"], np.concatenate([one[None], batch, keyed[None]]))


def test_npz_folder_feeds_several_inputs(tmp_path: Path) -> None:
    a, b = RNG.standard_normal((2, 4)), RNG.standard_normal((2, 4))
    np.savez(tmp_path / "0.npz", x=a[0], y=b[0])
    np.savez(tmp_path / "1.npz", x=a[1], y=b[1])
    loaded = load_calibration(tmp_path, _identity([1, 4], names=("x", "y")))
    np.testing.assert_array_equal(loaded["x"], a)
    np.testing.assert_array_equal(loaded["y"], b)


# ---------------------------------------------------------------------- images

def test_preprocess_spec_matches_a_hand_computation_in_both_layouts(tmp_path: Path) -> None:
    _image(tmp_path / "a.png", PIXELS)
    spec = f"size=2x2,scale=1/255,{IMAGENET}"
    nchw = load_calibration(tmp_path, _identity([1, 3, 2, 2]), spec + ",layout=NCHW")["x"]
    nhwc = load_calibration(tmp_path, _identity([1, 2, 2, 3]), spec + ",layout=NHWC")["x"]
    expected = _by_hand(PIXELS)
    assert nchw.dtype == np.float32 and nchw.shape == (1, 3, 2, 2) and nhwc.shape == (1, 2, 2, 3)
    np.testing.assert_allclose(nchw[0], expected.transpose(2, 0, 1), rtol=1e-6)
    np.testing.assert_allclose(nhwc[0], expected, rtol=1e-6)


def test_layout_and_channels_default_from_the_input_and_bgr_reverses_channels(tmp_path: Path) -> None:
    _image(tmp_path / "a.png", PIXELS)
    nhwc = load_calibration(tmp_path, _identity([1, 2, 2, 3]))["x"]  # channels last: NHWC, RGB, 1/255
    np.testing.assert_allclose(nhwc[0], PIXELS / 255, rtol=1e-6)
    bgr = load_calibration(tmp_path, _identity([1, 3, 2, 2]), "channels=BGR,scale=1")["x"]
    np.testing.assert_array_equal(bgr[0], PIXELS[..., ::-1].transpose(2, 0, 1))


def test_gray_image_feeds_rgb_input_as_three_equal_channels_and_rgb_feeds_gray_by_luma(tmp_path: Path) -> None:
    gray = np.array([[0, 64], [128, 255]], np.uint8)
    _image(tmp_path / "gray.png", gray)
    rgb = load_calibration(tmp_path, _identity([1, 3, 2, 2]), "scale=1")["x"][0]
    for channel in rgb:
        np.testing.assert_array_equal(channel, gray)
    (tmp_path / "gray.png").unlink()
    _image(tmp_path / "rgb.png", PIXELS)
    luma = load_calibration(tmp_path, _identity([1, 1, 2, 2]), "scale=1")["x"][0, 0]
    # ITU-R 601-2 luma, as Pillow's "L" conversion rounds it
    np.testing.assert_array_equal(luma, np.floor(PIXELS @ np.array([299, 587, 114]) / 1000 + 0.5))


@pytest.mark.parametrize("suffix", [".png", ".bmp", ".tif", ".jpg"])
def test_every_image_format_is_read(suffix: str, tmp_path: Path) -> None:
    pixels = np.tile(np.array([200, 100, 50], np.uint8), (8, 8, 1))  # flat: even JPEG keeps it almost exactly
    _image(tmp_path / f"a{suffix}", pixels)
    loaded = load_calibration(tmp_path, _identity([1, 3, 8, 8]), "scale=1")["x"]
    tolerance = 2 if suffix == ".jpg" else 0
    np.testing.assert_allclose(loaded[0], pixels.transpose(2, 0, 1), atol=tolerance)


def test_images_are_resized_to_static_dims_or_to_the_size_verification_chooses(tmp_path: Path) -> None:
    _image(tmp_path / "wide.png", np.full((12, 20, 3), 90, np.uint8))
    _image(tmp_path / "tall.png", np.full((30, 10, 3), 30, np.uint8))
    static = load_calibration(tmp_path, _identity([1, 3, 8, 6]), "scale=1")["x"]
    assert static.shape == (2, 3, 8, 6)
    np.testing.assert_array_equal(static[:, :, 0, 0], [[30] * 3, [90] * 3])  # file name order; flat stays flat
    assert np.all(static[0] == 30) and np.all(static[1] == 90)
    dynamic = _identity(["N", 3, "H", "W"])
    chosen = input_shape_choice(dynamic).shapes["x"]
    assert load_calibration(tmp_path, dynamic)["x"].shape == (2, 3, *chosen[2:])
    assert load_calibration(tmp_path, dynamic, "size=16x24")["x"].shape == (2, 3, 16, 24)


def test_dtype_follows_the_input_and_integer_inputs_keep_raw_pixels(tmp_path: Path) -> None:
    _image(tmp_path / "a.png", PIXELS)
    half = load_calibration(tmp_path, _identity([1, 3, 2, 2], onnx.TensorProto.FLOAT16))["x"]
    assert half.dtype == np.float16
    np.testing.assert_allclose(half[0], PIXELS.transpose(2, 0, 1) / 255, rtol=1e-3)
    raw = load_calibration(tmp_path, _identity([1, 2, 2, 3], onnx.TensorProto.UINT8))["x"]
    assert raw.dtype == np.uint8
    np.testing.assert_array_equal(raw[0], PIXELS)


def test_spec_values_may_hold_commas_and_sizes_may_be_square() -> None:
    assert parse_preprocess(f"size=640,scale=1/255,{IMAGENET},layout=nhwc,channels=bgr") == {
        "size": (640, 640), "scale": 1 / 255, "mean": MEAN, "std": STD, "layout": "NHWC", "channels": "BGR"}


@pytest.mark.parametrize("inputs, problem", [
    ((("a", [1, 3, 8, 8]), ("b", [1, 3, 8, 8])), "all look like images"),
    ((("a", [1, 3, 8, 8]), ("scale", [1, 2])), "also takes 'scale'"),
    ((("a", [1, 16]),), "no input of the model looks like an image"),
])
def test_image_folders_need_exactly_one_image_input(inputs, problem, tmp_path: Path) -> None:
    _image(tmp_path / "a.png", PIXELS)
    nodes = [helper.make_node("Identity", [name], [f"{name}_out"]) for name, _ in inputs]
    graph = optimizer.load(make_model(nodes, inputs, [(f"{name}_out", shape) for name, shape in inputs]))
    with pytest.raises(optimizer.NinoptError, match=problem):
        load_calibration(tmp_path, graph)


# ---------------------------------------------------------------------- the library and the CLI

def test_library_takes_a_path_where_it_took_a_dict(tmp_path: Path) -> None:
    model = _conv_model(tmp_path / "m.onnx")
    folder = tmp_path / "images"
    folder.mkdir()
    _image(folder / "a.png", RNG.integers(0, 256, (8, 8, 3)))
    from_path = optimizer.analyze_bottlenecks(model, calibration=folder, preprocess=IMAGENET)
    loaded = load_calibration(folder, optimizer.load(model), IMAGENET)
    from_dict = optimizer.analyze_bottlenecks(model, calibration=loaded)
    assert from_path.evidence == "calibration"
    assert json.dumps(from_path.to_dict(), default=float) == json.dumps(from_dict.to_dict(), default=float)
    result = optimizer.optimize(model, bottleneck=optimizer.BottleneckOptions(1e-2, folder, preprocess=IMAGENET))
    assert result.verification.passed


def test_dynamic_batch_model_takes_one_image_per_feed(tmp_path: Path) -> None:
    """Regression: a dynamic batch used to put every sample in the first feed and empty arrays in the rest."""
    from optimizer.bottleneck.calibration import calibration_feeds

    model = _conv_model(tmp_path / "m.onnx", shape=("N", 3, 8, 8))
    for i in range(3):
        _image(tmp_path / f"{i}.png", np.full((8, 8, 3), 40 * i, np.uint8))
    graph = optimizer.load(model)
    feeds, evidence = calibration_feeds(graph, load_calibration(tmp_path, graph, "scale=1"), samples=8, seed=0)
    assert evidence == "calibration" and [f["x"].shape for f in feeds] == [(1, 3, 8, 8)] * 3
    assert [float(f["x"].max()) for f in feeds] == [0.0, 40.0, 80.0]
    assert optimizer.analyze_bottlenecks(model, calibration=tmp_path).evidence == "calibration"


def _one_sentence(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ninopt: error: "), stderr
    assert "Traceback" not in stderr
    return lines[0]


BAD = {  # case -> (builds the calibration path in a folder, --preprocess, words the sentence holds)
    "missing folder": (lambda d: d / "nowhere", None, "does not exist"),
    "no usable files": (lambda d: (d / "README.txt").write_text("hi") and d, None, "holds no calibration files"),
    "wrong channel count": (lambda d: _image(d / "a.png", PIXELS).parent, "channels=GRAY", "takes 3"),
    "spec typo": (lambda d: _image(d / "a.png", PIXELS).parent, "sise=8x8", "unknown key 'sise'"),
    "bad scale": (lambda d: _image(d / "a.png", PIXELS).parent, "scale=1/0", "scale='1/0' is not"),
    "two means for three channels": (lambda d: _image(d / "a.png", PIXELS).parent, "mean=0.5,0.5", "one per channel"),
    "size the model does not take": (lambda d: _image(d / "a.png", PIXELS).parent, "size=4x4", "fixes axis 2 at 8"),
    "not an image": (lambda d: (d / "a.png").write_bytes(b"not a png") and d, None, "not a readable image"),
    "images and arrays": (lambda d: (np.save(d / "b.npy", np.zeros(3)), _image(d / "a.png", PIXELS))[1].parent,
                          None, "mixes images and arrays"),
    "preprocess on arrays": (lambda d: (np.save(d / "b.npy", np.zeros((3, 8, 8))), d)[1], "scale=1",
                             "applies to images"),
    "array of the wrong rank": (lambda d: (np.save(d / "b.npy", np.zeros(3)), d)[1], None, "rank 1"),
    "preprocess without images": (lambda d: None, "scale=1", "no image folder was given"),
}


@pytest.mark.parametrize("case", list(BAD))
@pytest.mark.parametrize("command", ["analyze", "optimize"])
def test_bad_calibration_is_one_sentence_exit_2(case: str, command: str, tmp_path: Path, capsys) -> None:
    model = _conv_model(tmp_path / "m.onnx")
    folder = tmp_path / "calib"
    folder.mkdir()
    build, spec, words = BAD[case]
    path = build(folder)
    args = (["analyze", str(model), "--bottlenecks"] if command == "analyze"
            else ["optimize", str(model), "-o", str(tmp_path / "out.onnx"), "--bottleneck"])
    args += (["--calibration", str(path)] if path is not None else []) + (["--preprocess", spec] if spec else [])
    assert cli.main(args) == 2
    assert words in _one_sentence(capsys.readouterr().err)
    assert not (tmp_path / "out.onnx").exists()


def test_images_without_pillow_name_the_extra(tmp_path: Path, monkeypatch, capsys) -> None:
    model = _conv_model(tmp_path / "m.onnx")
    _image(tmp_path / "a.png", PIXELS)
    monkeypatch.setitem(sys.modules, "PIL", None)  # `import PIL` now raises ImportError
    assert cli.main(["analyze", str(model), "--bottlenecks", "--calibration", str(tmp_path)]) == 2
    assert 'pip install "ninopt[images]"' in _one_sentence(capsys.readouterr().err)


# ---------------------------------------------------------------------- --inputs: the same reader

def _run_cli(tmp_path: Path, model: Path, *extra: str) -> dict[str, np.ndarray]:
    """``ninopt run MODEL ... -o y.npz``'s outputs."""
    assert cli.main(["run", str(model), "-o", str(tmp_path / "y.npz"), "-q", *extra]) == 0
    with np.load(tmp_path / "y.npz") as outputs:
        return dict(outputs)


def test_run_on_an_image_folder_is_the_executor_on_the_preprocessed_pixels(tmp_path: Path) -> None:
    model = _conv_model(tmp_path / "m.onnx", shape=(1, 3, 2, 2))
    folder = tmp_path / "images"
    folder.mkdir()
    _image(folder / "a.png", PIXELS)
    got = _run_cli(tmp_path, model, "--inputs", str(folder), "--preprocess", IMAGENET)
    x = _by_hand(PIXELS).transpose(2, 0, 1)[np.newaxis].astype(np.float32)
    np.testing.assert_allclose(got["y"], optimizer.run(model, {"x": x})["y"], rtol=1e-5, atol=1e-6)


def test_run_on_a_folder_of_npy_samples_batches_them(tmp_path: Path) -> None:
    model = _conv_model(tmp_path / "m.onnx", shape=("N", 3, 4, 4))
    samples = RNG.standard_normal((3, 3, 4, 4)).astype(np.float32)
    for i, sample in enumerate(samples):
        np.save(tmp_path / f"{i}.npy", sample)
    got = _run_cli(tmp_path, model, "--inputs", str(tmp_path))
    assert got["y"].shape == (3, 8, 4, 4)
    np.testing.assert_array_equal(got["y"], optimizer.run(model, {"x": samples})["y"])


def test_optimize_and_verify_check_on_held_apart_images(tmp_path: Path, capsys) -> None:
    """Calibrated on one image folder, verified on another: the one --preprocess reads both."""
    model = _conv_model(tmp_path / "m.onnx")
    calibration, verification = tmp_path / "calibration", tmp_path / "verification"
    for folder, seed in ((calibration, 1), (verification, 2)):
        folder.mkdir()
        _image(folder / "a.png", np.random.default_rng(seed).integers(0, 256, (8, 8, 3)))
    out = tmp_path / "out.onnx"
    assert cli.main(["optimize", str(model), "-o", str(out), "--bottleneck", "--cost", "macs", "--json",
                     "--calibration", str(calibration), "--inputs", str(verification), "--preprocess", IMAGENET]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["verification"]["passed"] and report["verification"]["seed"] is None  # not random inputs
    assert report["budget"] == pytest.approx(2e-2)  # held apart: twice the default --max-error
    assert cli.main(["verify", str(model), str(out), "--inputs", str(verification), "--preprocess", IMAGENET,
                     "--tolerance", "2e-2", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["seed"] is None
    assert cli.main(["optimize", str(model), "-o", str(out), "--bottleneck", "--cost", "macs", "--json",
                     "--calibration", str(calibration), "--inputs", str(calibration), "--preprocess", IMAGENET]) == 0
    assert json.loads(capsys.readouterr().out)["budget"] == pytest.approx(1e-2)  # verified on what calibrated


def test_preprocess_goes_to_whichever_source_holds_images(tmp_path: Path, capsys) -> None:
    model = _conv_model(tmp_path / "m.onnx")
    images = tmp_path / "images"
    images.mkdir()
    _image(images / "a.png", PIXELS)
    arrays = tmp_path / "x.npz"
    np.savez(arrays, x=RNG.standard_normal((1, 3, 8, 8)).astype(np.float32))
    base = ["optimize", str(model), "-o", str(tmp_path / "out.onnx"), "--bottleneck", "--cost", "macs", "-q",
            "--max-error", "1e-7"]  # factors nothing: flat calibration pixels say little about random inputs
    assert cli.main(base + ["--calibration", str(images), "--inputs", str(arrays), "--preprocess", "scale=1/255"]) == 0
    assert cli.main(base + ["--calibration", str(arrays), "--inputs", str(images), "--preprocess", "scale=1/255"]) == 0
    assert cli.main(["run", str(model), "--inputs", str(arrays), "--preprocess", "scale=1"]) == 2
    assert "applies to images" in _one_sentence(capsys.readouterr().err)


@pytest.mark.parametrize("build, words", [
    (lambda d: np.savez(d / "x.npz", x=np.zeros((1, 3, 8, 8), np.float32), z=np.zeros(3)), "'z', which the model"),
    (lambda d: None, "holds no input files"),
])
def test_bad_inputs_folder_is_one_sentence(build, words, tmp_path: Path, capsys) -> None:
    model = _conv_model(tmp_path / "m.onnx")
    folder = tmp_path / "inputs"
    folder.mkdir()
    build(folder)
    source = folder / "x.npz" if (folder / "x.npz").exists() else folder
    assert cli.main(["run", str(model), "--inputs", str(source)]) == 2
    assert words in _one_sentence(capsys.readouterr().err)


# ---------------------------------------------------------------------- a trained model on real documents

def test_pp_ocr_det_calibrated_on_document_pages(capsys) -> None:
    model = wild.cache_dir() / "ch_PP-OCRv4_det_infer.onnx"
    pages = images.cache_dir() / "documents" / "calibration"
    if not model.is_file() or not pages.is_dir():
        pytest.skip(f"needs the fetched caches: python fixtures/wild.py; python fixtures/images.py "
                    f"({model} or {pages} is missing)")
    code = cli.main(["analyze", "--bottlenecks", str(model), "--calibration", str(pages),
                     "--preprocess", IMAGENET, "--json"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and report["evidence"] == "calibration"
    measured = [layer for layer in report["layers"] if layer.get("input_spectrum")]
    assert measured and all(np.all(np.isfinite(layer["input_spectrum"])) for layer in measured)


def test_pp_ocr_det_bottlenecks_fitted_on_one_page_are_vetoed_where_the_held_apart_page_disagrees(tmp_path, capsys):
    """One document page is a small calibration set: layers fitted to it can be far off on the next page
    (solo cosine errors up to 0.5). ``optimize`` still writes a verified model: the held-apart page vetoes
    those layers and keeps the ones that hold there."""
    model = wild.cache_dir() / "ch_PP-OCRv4_det_infer.onnx"
    documents = images.cache_dir() / "documents"
    if not model.is_file() or not documents.is_dir():
        pytest.skip(f"needs the fetched caches: python fixtures/wild.py; python fixtures/images.py "
                    f"({model} or {documents} is missing)")
    out = tmp_path / "det.onnx"
    code = cli.main(["optimize", str(model), "-o", str(out), "--bottleneck", "--metric", "cosine",
                     "--max-error", "1e-3", "--cost", "macs", "--calibration", str(documents / "calibration"),
                     "--inputs", str(documents / "verification"), "--json", "--quiet"])
    report = json.loads(capsys.readouterr().out)
    assert code == 0 and out.is_file() and report["verification"]["passed"]
    decisions = [d for p in report["pipeline"]["passes"] for d in p["decisions"] if d["kind"] == "bottleneck"]
    vetoed = [d for d in decisions if "alone on the held-apart inputs" in d["reason"]]
    kept = [d for d in decisions if d["applied"]]
    assert vetoed and kept and report["after"]["macs"] < report["before"]["macs"]
    assert all(d["held_apart_error"] <= 2e-3 for d in decisions)


def test_a_fixed_batch_model_runs_once_per_batch_of_a_folder_and_is_judged_on_all_runs(tmp_path: Path, capsys) -> None:
    model = _conv_model(tmp_path / "m.onnx")  # batch 1
    folder = tmp_path / "inputs"
    folder.mkdir()
    for i in range(3):
        _image(folder / f"{i}.png", PIXELS + 40 * i)
    out = tmp_path / "y.npz"
    assert cli.main(["run", str(model), "--inputs", str(folder), "-o", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["runs"] == 3 and report["outputs"][0]["shape"] == [3, 1, 8, 8, 8]
    stacked, samples = np.load(out)["y"], load_calibration(folder, optimizer.load(model))["x"]
    for i in range(3):  # run i is image i, alone
        assert np.array_equal(stacked[i], optimizer.run(model, {"x": samples[i:i + 1]})["y"])
    assert cli.main(["optimize", str(model), "-o", str(tmp_path / "o.onnx"), "--inputs", str(folder), "--json"]) == 0
    verification = json.loads(capsys.readouterr().out)["verification"]
    assert verification["passed"] and verification["runs"] == 3
    assert verification["inputs"]["x"]["shape"] == [1, 3, 8, 8]
    batch_of_two = _conv_model(tmp_path / "m2.onnx", shape=(2, 3, 8, 8))
    assert cli.main(["run", str(batch_of_two), "--inputs", str(folder)]) == 2
    assert "fixed batch of 2; give a multiple of 2" in _one_sentence(capsys.readouterr().err)
