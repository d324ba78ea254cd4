"""Model files on disk: weights in external data files, and atomic writes.

Split from ``optimizer.onnx_io`` (which converts between protobuf and the IR) because this
is file handling: resolving, checking and lazily reading external data references at load,
streaming weights into a data file at save, and writing every file through a temporary
beside it so an interrupted write never leaves a half-written model.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import numpy_helper

from optimizer.errors import NinoptError, first_line
from optimizer.ir import Graph
from optimizer.values import Constant, Tensor, elem_type_to_dtype

if TYPE_CHECKING:
    from optimizer.onnx_io import Source

_COPY_CHUNK = 16 << 20


# ---------------------------------------------------------------------- reading external data
def _external_fields(tp: onnx.TensorProto) -> dict[str, str]:
    return {e.key: e.value for e in tp.external_data}


def lazy_constant(tp: onnx.TensorProto, source: Source) -> Constant:
    """An initializer as a Constant read on first use; an external one is checked now and its file
    recorded in ``source`` (a save must never write over it)."""
    dtype = elem_type_to_dtype(tp.data_type)
    shape = tuple(tp.dims)
    if tp.data_location != onnx.TensorProto.EXTERNAL:
        return Constant(loader=lambda: _embedded_array(tp, dtype, shape), proto=tp, dtype=dtype, shape=shape)
    path, offset, length = _external_location(tp, source)
    source.external = True
    source.external_files.add(path)

    def read() -> np.ndarray:
        if dtype is not None and dtype.kind in "biufc" and length == int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            return np.fromfile(path, dtype=dtype, count=int(np.prod(shape, dtype=np.int64)), offset=offset).reshape(shape)
        copy = onnx.TensorProto()
        copy.CopyFrom(tp)
        del copy.external_data[:]
        copy.data_location = onnx.TensorProto.DEFAULT
        with open(path, "rb") as f:
            f.seek(offset)
            copy.raw_data = f.read(length)
        return numpy_helper.to_array(copy)

    return Constant(loader=read, proto=tp, dtype=dtype, shape=shape)


def _embedded_array(tp: onnx.TensorProto, dtype: np.dtype | None, shape: tuple[int, ...]) -> np.ndarray:
    """An initializer's value; a raw_data length that contradicts its shape is bad input, not a crash."""
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize if dtype is not None else None
    if tp.HasField("raw_data") and expected is not None and dtype.kind in "biufc" and len(tp.raw_data) != expected:
        raise NinoptError(f"initializer {tp.name!r} holds {len(tp.raw_data)} bytes but its shape {shape} and type "
                          f"need {expected}.")
    try:
        return numpy_helper.to_array(tp)
    except ValueError as exc:
        raise NinoptError(f"initializer {tp.name!r} cannot be read: {first_line(exc)}.") from None


def _external_location(tp: onnx.TensorProto, source: Source) -> tuple[Path, int, int]:
    """Resolve and check an external data reference: it must stay inside the model's folder."""
    fields = _external_fields(tp)
    location = fields.get("location", "")
    if source.base_dir is None:
        raise NinoptError(f"initializer {tp.name!r} has external data but the model was not loaded from a file.")
    if not location or os.path.isabs(location):
        raise NinoptError(f"initializer {tp.name!r} points to external data at {location!r}, outside the model's folder.")
    base = source.base_dir.resolve()
    path = (base / location).resolve()
    if base not in path.parents:
        raise NinoptError(f"initializer {tp.name!r} points to external data at {location!r}, outside the model's folder.")
    if not path.is_file():
        raise NinoptError(f"external data file {location!r} of initializer {tp.name!r} is missing.")
    offset = int(fields.get("offset", 0) or 0)
    dtype = elem_type_to_dtype(tp.data_type)
    default_length = int(np.prod(tuple(tp.dims), dtype=np.int64)) * (dtype.itemsize if dtype is not None else 0)
    # without a recorded length the tensor is as long as its shape says (the rest of the file if unknown)
    length = int(fields.get("length", 0) or 0) or default_length or path.stat().st_size - offset
    if offset < 0 or offset + length > path.stat().st_size:
        raise NinoptError(f"external data file {location!r} is shorter than initializer {tp.name!r} needs.")
    return path, offset, length


# ---------------------------------------------------------------------- writing
def check_destination(path: Path) -> Path:
    """The folder ``path`` will be written in, after checking it is one and writable (one sentence if not)."""
    folder = path.resolve().parent
    if path.is_dir():
        raise NinoptError(f"output path {path} is a directory.")
    if not folder.is_dir():
        raise NinoptError(f"output folder {folder} does not exist.")
    if not os.access(folder, os.W_OK):
        raise NinoptError(f"output folder {folder} is not writable.")
    return folder


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike, mode: str = "wb", **open_args):
    """Open a temporary file beside ``path``; rename it over ``path`` only if the block succeeds."""
    path = Path(path)
    folder = check_destination(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode, **open_args) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the mode open() would
        os.replace(tmp, path)
    except OSError as exc:
        raise NinoptError(f"could not write {path}: {exc.strerror or exc}.") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_external(graph: Graph, data_path: Path, min_bytes: int) -> tuple[dict[str, tuple[str, int, int]], Path]:
    """Stream large initializers into a temporary data file; returns their locations and the file."""
    fd, tmp = tempfile.mkstemp(prefix=f".{data_path.name}.", suffix=".tmp", dir=data_path.parent)
    locations: dict[str, tuple[str, int, int]] = {}
    offset = 0
    with os.fdopen(fd, "wb") as out:
        for name in graph.initializers:
            info = graph.tensors[name]
            if info.const is None or info.const.nbytes < min_bytes:
                continue
            length, write = _external_bytes_for(graph, info)
            pad = (-offset) % 64  # keep every tensor 64-byte aligned for memory mapping
            out.write(b"\0" * pad)
            offset += pad
            write(out)
            locations[name] = (data_path.name, offset, length)
            offset += length
        out.flush()
        os.fsync(out.fileno())
    os.chmod(tmp, 0o666 & ~_umask())
    return locations, Path(tmp)


def _external_bytes_for(graph: Graph, info: Tensor):
    const = info.const
    original = const.proto
    if not const.loaded and original is not None and original.data_location == onnx.TensorProto.EXTERNAL:
        path, offset, length = _external_location(original, graph.source)

        def copy(out):
            with open(path, "rb") as f:
                f.seek(offset)
                remaining = length
                while remaining:
                    chunk = f.read(min(_COPY_CHUNK, remaining))
                    if not chunk:  # the file shrank since it was checked at load
                        raise NinoptError(f"external data of initializer {info.name!r} ended early in {path}.")
                    out.write(chunk)
                    remaining -= len(chunk)
        return length, copy
    proto = numpy_helper.from_array(np.ascontiguousarray(const.value))
    raw = proto.raw_data
    return len(raw), lambda out: out.write(raw)
