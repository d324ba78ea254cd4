"""Input samples from files: an ``.npz``, a folder of ``.npy``/``.npz`` arrays, or a folder of images.

One reader serves both places a user hands ninopt data: calibration (``--calibration``; bottleneck
ranks are chosen from activation spectra, and random inputs do not excite a trained model the way
its own data does) and the inputs verification and ``run`` use (``--inputs``), so held-apart real
images can check what calibration images chose. Either way the result is a dict input name ->
samples along axis 0.

Images are decoded with Pillow (optional: ``pip install "ninopt[images]"``) and preprocessed by
a spec string, ``--preprocess "size=640x640,scale=1/255,mean=0.485,0.456,0.406,std=0.229,0.224,0.225,layout=NCHW"``:
each pixel becomes ``(value * scale - mean[c]) / std[c]``, after a bilinear resize to ``size``
(H x W) and ordering the channels as ``channels`` (RGB, BGR or GRAY). Every key is optional and
defaults from the image-shaped input: ``size`` from its static H and W, else the size
verification would choose (``optimizer.inputs.input_shape_choice``); ``layout`` from where its
1 or 3 channels sit; ``channels`` GRAY for 1 channel, else RGB; ``scale`` 1/255 for a float
input and 1 for an integer one; ``mean`` 0 and ``std`` 1; the dtype is the input's element type.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import numpy as np

from optimizer.errors import NinoptError
from optimizer.inputs import Runs, split_runs
from optimizer.ir import Graph

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"})
ARRAY_SUFFIXES = frozenset({".npy", ".npz"})
SPEC_KEYS = ("size", "scale", "mean", "std", "layout", "channels")
CHANNEL_COUNTS = {"RGB": 3, "BGR": 3, "GRAY": 1}

Source = Mapping[str, np.ndarray] | str | os.PathLike | None


def resolve_calibration(calibration: Source, graph: Graph, preprocess: str | None = None) -> dict[str, np.ndarray] | None:
    """The calibration dict for ``graph`` from what a caller passed: None, a dict, or a path to load.
    Calibration feeds every input, so each needs values."""
    if calibration is not None and not isinstance(calibration, Mapping):
        return load_calibration(calibration, graph, preprocess)
    _refuse_preprocess(preprocess)
    return None if calibration is None else _with_every_input(dict(calibration), graph)


def resolve_inputs(inputs: Source, graph: Graph, preprocess: str | None = None) -> Runs | None:
    """The inputs to verify or run ``graph`` with, from None, a dict or a path (``load_samples``), as runs
    (``optimizer.inputs.split_runs``: one, unless the model's batch is fixed and smaller than the samples);
    inputs left out are drawn at random (``optimizer.inputs.prepare_runs``)."""
    if inputs is None or isinstance(inputs, Mapping):
        _refuse_preprocess(preprocess)
        return None if inputs is None else split_runs(graph, inputs)
    return split_runs(graph, load_samples(inputs, graph, preprocess, purpose="input"), f"the inputs in {inputs}")


def _refuse_preprocess(preprocess: str | None) -> None:
    if preprocess is not None:
        raise NinoptError("--preprocess applies to images given with --calibration or --inputs FOLDER; "
                          "no image folder was given.")


def load_calibration(path: str | os.PathLike, graph: Graph, preprocess: str | None = None) -> dict[str, np.ndarray]:
    """``load_samples`` for calibration: every input of ``graph`` must have values."""
    return _with_every_input(load_samples(path, graph, preprocess), graph)


def _with_every_input(data: dict[str, np.ndarray], graph: Graph) -> dict[str, np.ndarray]:
    names = graph.feed_inputs()
    missing = [name for name in names if name not in data]
    if missing:
        raise NinoptError(f"the calibration data has no values for input(s) {', '.join(map(repr, missing))}; "
                          f"the model's inputs are {', '.join(map(repr, names))}.")
    return data


def load_samples(path: str | os.PathLike, graph: Graph, preprocess: str | None = None,
                 purpose: str = "calibration") -> dict[str, np.ndarray]:
    """Input name -> samples along axis 0, from an ``.npz`` (its arrays as they are), a folder of
    ``.npy``/``.npz`` files (one sample or a batch each, joined in file name order) or a folder of images
    (see the module docstring for ``preprocess``). ``purpose`` (calibration, input) names the data in errors.

    A single ``.npy`` or image file is taken as a folder holding just it. Subfolders are not searched.
    """
    path = Path(path)
    if path.is_dir():
        files = _folder_files(path)
    elif path.is_file():
        files = [path]
    else:
        raise NinoptError(f"{purpose} data {path} does not exist.")
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise NinoptError(f"{path} holds no {purpose} files (.npz, .npy or {', '.join(sorted(IMAGE_SUFFIXES))}; "
                          f"subfolders are not searched).")
    if images and len(images) != len(files):
        raise NinoptError(f"{path} mixes images and arrays; put each kind in its own folder.")
    if images:
        return _load_images(images, graph, preprocess)
    if preprocess is not None:
        raise NinoptError(f"--preprocess applies to images, but {path} holds arrays.")
    if path.is_file() and path.suffix.lower() != ".npy":
        return _read_arrays(path, graph.feed_inputs())
    return _load_arrays(files, graph)


def holds_images(path: str | os.PathLike) -> bool:
    """Whether ``path`` is an image or a folder holding images: what ``--preprocess`` is for."""
    path = Path(path)
    files = _folder_files(path) if path.is_dir() else [path]
    return any(p.suffix.lower() in IMAGE_SUFFIXES for p in files)


def _folder_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES | ARRAY_SUFFIXES)


# ----- arrays

def _load_arrays(files: list[Path], graph: Graph) -> dict[str, np.ndarray]:
    """Every file's arrays, each made samples-first (a sample gains a leading axis), joined per input."""
    parts: dict[str, list[np.ndarray]] = {}
    for file in files:
        for name, value in _read_arrays(file, graph.feed_inputs()).items():
            parts.setdefault(name, []).append(_samples_first(value, name, graph, file))
    result = {}
    for name, values in parts.items():
        shapes = {v.shape[1:] for v in values}
        if len(shapes) > 1:
            raise NinoptError(f"the samples of input {name!r} differ in shape "
                              f"({', '.join('x'.join(map(str, s)) for s in sorted(shapes))}).")
        result[name] = np.concatenate(values)
    return result


def _read_arrays(file: Path, names: list[str]) -> dict[str, np.ndarray]:
    """The arrays of one file by input name (a ``.npy`` is the one input's); a name the model lacks is refused."""
    try:
        data = np.load(file, allow_pickle=False)
        if isinstance(data, np.ndarray):
            if len(names) != 1:
                raise NinoptError(f"{file.name} holds one array, but the model takes several inputs "
                                  f"({', '.join(map(repr, names))}); use .npz files keyed by input name.")
            return {names[0]: data}
        with data:
            arrays = {key: data[key] for key in data.files}
    except (ValueError, OSError, EOFError) as exc:
        raise NinoptError(f"{file} is not a readable {file.suffix} file ({exc}).") from None
    unknown = [key for key in arrays if key not in names]
    if unknown:
        raise NinoptError(f"{file} holds {', '.join(map(repr, unknown))}, which the model does not take; "
                          f"its inputs are {', '.join(map(repr, names))}.")
    return arrays


def _samples_first(value: np.ndarray, name: str, graph: Graph, file: Path) -> np.ndarray:
    """A batch (the input's rank) as is; one sample (one axis fewer) with a leading axis."""
    shape = graph.shape(name)
    if shape is None or value.ndim == len(shape):
        return value
    if value.ndim == len(shape) - 1:
        return value[np.newaxis]
    raise NinoptError(f"{file.name} gives input {name!r} an array of rank {value.ndim}, but the input has rank "
                      f"{len(shape)} (a batch) or takes one sample of rank {len(shape) - 1}.")


# ----- images

@dataclass(frozen=True)
class Preprocess:
    """How an image becomes one sample of the model's input (every field settled)."""

    size: tuple[int, int]  # H, W
    scale: float
    mean: tuple[float, ...]  # per channel (or one for all)
    std: tuple[float, ...]
    layout: str  # NCHW or NHWC
    channels: str  # RGB, BGR or GRAY
    dtype: np.dtype

    def apply(self, image) -> np.ndarray:
        """A decoded Pillow image -> one sample, batch axis first (1xCxHxW or 1xHxWxC)."""
        from PIL import Image

        image = image.convert("L" if self.channels == "GRAY" else "RGB")
        height, width = self.size
        if image.size != (width, height):
            image = image.resize((width, height), Image.BILINEAR)
        pixels = np.asarray(image, dtype=np.float64).reshape(height, width, -1)
        if self.channels == "BGR":
            pixels = pixels[..., ::-1]
        pixels = (pixels * self.scale - np.asarray(self.mean)) / np.asarray(self.std)
        if self.layout == "NCHW":
            pixels = pixels.transpose(2, 0, 1)
        if self.dtype.kind in "iu":
            info = np.iinfo(self.dtype)
            pixels = np.clip(np.rint(pixels), info.min, info.max)
        return pixels[np.newaxis].astype(self.dtype)


def parse_preprocess(spec: str | None) -> dict[str, object]:
    """The keys a spec sets, checked: ``size=HxW,scale=1/255,mean=a,b,c,std=a,b,c,layout=NCHW,channels=RGB``.

    Values of ``mean`` and ``std`` may hold commas: a part without ``=`` continues the key before it.
    """
    raw: dict[str, list[str]] = {}
    key = None
    for part in (p.strip() for p in (spec or "").split(",")):
        if "=" in part:
            key, value = (s.strip() for s in part.split("=", 1))
            if key not in SPEC_KEYS:
                raise NinoptError(f"--preprocess has an unknown key {key!r}; the keys are {', '.join(SPEC_KEYS)}.")
            if key in raw:
                raise NinoptError(f"--preprocess sets {key} twice.")
            raw[key] = [value]
        elif part and key in ("mean", "std"):
            raw[key].append(part)
        elif part:
            raise NinoptError(f"--preprocess has {part!r} without a key; write key=value, e.g. size=640x640.")
    return {key: _parse_value(key, values) for key, values in raw.items()}


def _parse_value(key: str, values: list[str]):
    text = ",".join(values)
    try:
        if key == "size":
            dims = [int(d) for d in text.lower().split("x")]
            if len(dims) == 1:
                dims *= 2
            if len(dims) != 2 or min(dims) <= 0:
                raise ValueError
            return tuple(dims)
        if key == "scale":
            return _number(text)
        if key in ("mean", "std"):
            numbers = tuple(_number(v) for v in values)
            if key == "std" and 0 in numbers:
                raise ValueError
            return numbers
    except (ValueError, ZeroDivisionError):
        expected = {"size": "HxW with positive sizes, e.g. 640x640", "scale": "a number or a fraction, e.g. 1/255",
                    "mean": "one number or one per channel", "std": "one non-zero number or one per channel"}[key]
        raise NinoptError(f"--preprocess {key}={text!r} is not {expected}.") from None
    choices = ("NCHW", "NHWC") if key == "layout" else tuple(CHANNEL_COUNTS)
    if text.upper() not in choices:
        raise NinoptError(f"--preprocess {key}={text!r} is not one of {', '.join(choices)}.")
    return text.upper()


def _number(text: str) -> float:
    numerator, _, denominator = text.partition("/")
    return float(numerator) / float(denominator) if denominator else float(numerator)


def image_input(graph: Graph) -> str:
    """The one input an image feeds: rank 4 with 1 or 3 channels on axis 1 or 3. Others must not exist."""
    names = graph.feed_inputs()
    candidates = [n for n in names if _channel_axes(graph.shape(n))]
    if not candidates:
        raise NinoptError(f"no input of the model looks like an image (rank 4 with 1 or 3 channels on axis 1 or 3); "
                          f"its inputs are {_described(graph, names)}; pass arrays (.npz or .npy) instead.")
    if len(candidates) > 1:
        raise NinoptError(f"an image folder can feed only one input, and {_described(graph, candidates)} all look "
                          f"like images; pass an .npz keyed by input name instead.")
    others = [n for n in names if n != candidates[0]]
    if others:
        raise NinoptError(f"images feed input {candidates[0]!r} only, and the model also takes "
                          f"{_described(graph, others)}; pass an .npz with every input instead.")
    return candidates[0]


def _channel_axes(shape) -> list[int]:
    """Axes (1 or 3) of a rank-4 shape that statically hold 1 or 3 channels."""
    if shape is None or len(shape) != 4:
        return []
    return [axis for axis in (1, 3) if shape[axis] in (1, 3)]


def _described(graph: Graph, names: list[str]) -> str:
    def shape(name):
        dims = graph.shape(name)
        return "?" if dims is None else "x".join(str(d) if isinstance(d, int) and d > 0 else "?" for d in dims)

    return ", ".join(f"{name!r} ({shape(name)})" for name in names)


def settle_preprocess(graph: Graph, name: str, spec: str | None) -> Preprocess:
    """The spec's keys, the rest defaulted from the input's shape and element type; checked against the input."""
    given = parse_preprocess(spec)
    shape = graph.shape(name)
    axes = _channel_axes(shape)
    layout = given.get("layout") or ("NCHW" if 1 in axes else "NHWC")
    channel_axis, spatial = (1, (2, 3)) if layout == "NCHW" else (3, (1, 2))
    declared = shape[channel_axis] if isinstance(shape[channel_axis], int) and shape[channel_axis] > 0 else None
    if declared not in (None, 1, 3):
        raise NinoptError(f"input {name!r} has {declared} channels on axis {channel_axis} ({layout}); "
                          f"images give 1 or 3.")
    channels = given.get("channels") or {1: "GRAY", 3: "RGB", None: "RGB"}[declared]
    count = CHANNEL_COUNTS[channels]
    if declared is not None and count != declared:
        raise NinoptError(f"channels={channels} gives {count} channel(s), but input {name!r} takes {declared} "
                          f"on axis {channel_axis} ({layout}).")
    for key in ("mean", "std"):
        if key in given and len(given[key]) not in (1, count):
            raise NinoptError(f"--preprocess {key} has {len(given[key])} values; "
                              f"give one, or one per channel ({count}).")
    dtype = graph.tensors[name].dtype if name in graph.tensors and graph.tensors[name].dtype is not None \
        else np.dtype(np.float32)
    size = given.get("size") or _default_size(graph, name, spatial)
    for axis, value in zip(spatial, size):
        if isinstance(shape[axis], int) and shape[axis] > 0 and shape[axis] != value:
            raise NinoptError(f"size={size[0]}x{size[1]} does not fit input {name!r}, which fixes axis {axis} at "
                              f"{shape[axis]}.")
    return Preprocess(size, given.get("scale", 1.0 if dtype.kind in "iu" else 1 / 255), given.get("mean", (0.0,)),
                      given.get("std", (1.0,)), layout, channels, dtype)


def _default_size(graph: Graph, name: str, spatial: tuple[int, int]) -> tuple[int, int]:
    """Static H and W, else the sizes verification would run the model at."""
    shape = graph.shape(name)
    if all(isinstance(shape[a], int) and shape[a] > 0 for a in spatial):
        return shape[spatial[0]], shape[spatial[1]]
    from optimizer.inputs import input_shape_choice

    chosen = input_shape_choice(graph).shapes[name]
    return chosen[spatial[0]], chosen[spatial[1]]


def _load_images(files: list[Path], graph: Graph, spec: str | None) -> dict[str, np.ndarray]:
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise NinoptError('reading images needs Pillow; install it with pip install "ninopt[images]".') from None
    name = image_input(graph)
    preprocess = settle_preprocess(graph, name, spec)
    samples = []
    for file in files:
        try:
            with Image.open(file) as image:
                samples.append(preprocess.apply(image))
        except (UnidentifiedImageError, Image.DecompressionBombError, OSError, ValueError) as exc:
            raise NinoptError(f"{file} is not a readable image ({exc}).") from None
    return {name: np.concatenate(samples)}
