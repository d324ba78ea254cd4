"""save(load(m)) is lossless: structure, metadata, bytes and numbers survive untouched."""

import os
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from optimizer import onnx_io
from optimizer.pipeline import PassManager
from optimizer.registry import get_pass

LIGHT = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
LIGHT_MODELS = sorted(LIGHT.glob("light_*.onnx"))
FIXTURE_MODELS = sorted(p for p in FIXTURES.glob("*.onnx"))


def _ort_outputs(model: onnx.ModelProto | Path, seed: int = 0) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    data = model if isinstance(model, Path) else model.SerializeToString()
    session = ort.InferenceSession(str(data) if isinstance(data, Path) else data, options,
                                   providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    inits = _initializer_names(model)
    feeds = {}
    for i in session.get_inputs():
        if i.name in inits:
            continue
        shape = [d if isinstance(d, int) else 1 for d in i.shape]
        if "float" in i.type:
            feeds[i.name] = rng.standard_normal(shape).astype(np.float32)
        elif "bool" in i.type:
            feeds[i.name] = rng.integers(0, 2, shape).astype(bool)
        else:
            feeds[i.name] = rng.integers(0, 3, shape).astype(np.int64)
    return session.run(None, feeds)


def _initializer_names(model) -> set[str]:
    proto = onnx.load(str(model), load_external_data=False) if isinstance(model, Path) else model
    return {t.name for t in proto.graph.initializer}


def _assert_same_interface(a: onnx.ModelProto, b: onnx.ModelProto) -> None:
    assert a.ir_version == b.ir_version
    assert [(o.domain, o.version) for o in a.opset_import] == [(o.domain, o.version) for o in b.opset_import]
    assert (a.producer_name, a.producer_version, a.domain, a.model_version, a.doc_string) == \
           (b.producer_name, b.producer_version, b.domain, b.model_version, b.doc_string)
    assert [(p.key, p.value) for p in a.metadata_props] == [(p.key, p.value) for p in b.metadata_props]
    assert (a.graph.name, a.graph.doc_string) == (b.graph.name, b.graph.doc_string)
    assert [i.SerializeToString() for i in a.graph.input] == [i.SerializeToString() for i in b.graph.input]
    assert [o.SerializeToString() for o in a.graph.output] == [o.SerializeToString() for o in b.graph.output]
    assert [v.SerializeToString() for v in a.graph.value_info] == [v.SerializeToString() for v in b.graph.value_info]
    assert [f.SerializeToString() for f in a.functions] == [f.SerializeToString() for f in b.functions]
    assert [n.name for n in a.graph.node] == [n.name for n in b.graph.node]
    assert [n.SerializeToString() for n in a.graph.node] == [n.SerializeToString() for n in b.graph.node]


def _initializer_bytes(model: onnx.ModelProto, base_dir: Path | None = None) -> dict[str, tuple[int, bytes]]:
    out = {}
    for t in model.graph.initializer:
        if t.data_location == onnx.TensorProto.EXTERNAL:
            copy = onnx.TensorProto()
            copy.CopyFrom(t)
            onnx.external_data_helper.load_external_data_for_tensor(copy, str(base_dir))
            t = copy
        out[t.name] = (t.data_type, onnx.numpy_helper.to_array(t).tobytes())
    return out


@pytest.mark.parametrize("path", LIGHT_MODELS + FIXTURE_MODELS, ids=lambda p: p.stem)
def test_round_trip_is_lossless(path: Path, tmp_path: Path) -> None:
    original = onnx.load(str(path))
    out = tmp_path / "round_trip.onnx"
    onnx_io.save(onnx_io.load(path), out)
    onnx.checker.check_model(str(out), full_check=True)
    saved = onnx.load(str(out))
    _assert_same_interface(original, saved)
    assert _initializer_bytes(original) == _initializer_bytes(saved)
    for expected, actual in zip(_ort_outputs(path), _ort_outputs(out), strict=True):
        np.testing.assert_array_equal(expected, actual)


@pytest.mark.parametrize("path", LIGHT_MODELS, ids=lambda p: p.stem)
def test_untouched_model_serializes_byte_identical(path: Path) -> None:
    assert onnx_io.to_model_proto(onnx_io.load(path)).SerializeToString() == path.read_bytes()


def _external_model(tmp_path: Path) -> Path:
    """A copy of the external-weights fixture in a folder of its own (so nothing touches fixtures/)."""
    folder = tmp_path / "src"
    folder.mkdir()
    for name in ("external_weights.onnx", "external_weights.onnx.data"):
        (folder / name).write_bytes((FIXTURES / name).read_bytes())
    return folder / "external_weights.onnx"


def test_external_data_stays_unread_on_load_and_is_written_back_external(tmp_path: Path) -> None:
    src = _external_model(tmp_path)
    data_before = (src.parent / "external_weights.onnx.data").read_bytes()
    graph = onnx_io.load(src)
    consts = [graph.tensors[name].const for name in graph.initializers]
    assert consts and not any(c.loaded for c in consts), "weights were read on load"
    out = tmp_path / "out" / "model.onnx"
    out.parent.mkdir()
    onnx_io.save(graph, out)
    assert not any(c.loaded for c in consts), "saving copied weights through memory"
    saved = onnx.load(str(out), load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in saved.graph.initializer)
    assert (out.parent / "model.onnx.data").is_file()
    assert (src.parent / "external_weights.onnx.data").read_bytes() == data_before
    assert _initializer_bytes(saved, out.parent) == _initializer_bytes(onnx.load(str(src), load_external_data=False),
                                                                       src.parent)
    for expected, actual in zip(_ort_outputs(src), _ort_outputs(out), strict=True):
        np.testing.assert_array_equal(expected, actual)


def test_over_the_protobuf_limit_weights_go_external(tmp_path: Path) -> None:
    """The >2 GiB path, exercised with a lowered limit instead of a real 2 GiB model."""
    path = FIXTURES / "resnet_bottleneck_bn.onnx"
    out = tmp_path / "big.onnx"
    onnx_io.save(onnx_io.load(path), out, proto_limit=1000, external_min_bytes=256)
    saved = onnx.load(str(out), load_external_data=False)
    external = [t.name for t in saved.graph.initializer if t.data_location == onnx.TensorProto.EXTERNAL]
    assert external, "no initializer went to external data"
    assert out.stat().st_size < 1000 + sum(len(n.SerializeToString()) for n in saved.graph.node) + 4096
    onnx.checker.check_model(str(out), full_check=True)
    assert _initializer_bytes(saved, tmp_path) == _initializer_bytes(onnx.load(str(path)))
    for expected, actual in zip(_ort_outputs(path), _ort_outputs(out), strict=True):
        np.testing.assert_array_equal(expected, actual)


def test_external_data_outside_the_model_folder_is_refused(tmp_path: Path) -> None:
    src = _external_model(tmp_path)
    model = onnx.load(str(src), load_external_data=False)
    for t in model.graph.initializer:
        for entry in t.external_data:
            if entry.key == "location":
                entry.value = "../outside.data"
    (tmp_path / "outside.data").write_bytes(bytes(1 << 20))
    bad = src.parent / "escape.onnx"
    bad.write_bytes(model.SerializeToString())
    with pytest.raises(onnx_io.NinoptError, match="outside the model's folder"):
        onnx_io.load(bad)


def test_subgraphs_survive_a_pipeline_and_follow_renamed_outer_names(tmp_path: Path) -> None:
    """Identity elimination renames a tensor read inside If/Loop bodies; the bodies must follow."""
    path = FIXTURES / "control_flow.onnx"
    model = onnx.load(str(path))
    graph = onnx_io.load(model)
    targets = {name for n in graph.nodes for name in n.implicit_inputs}
    assert targets, "fixture has no subgraph reading an outer-scope tensor"
    # route every outer-scope read through an Identity, then let the pass remove them again
    from onnx import helper
    for name in sorted(targets):
        alias = name + "__alias"
        for node in model.graph.node:
            for sub in (a.g for a in node.attribute if a.type == onnx.AttributeProto.GRAPH):
                for inner in sub.node:
                    for i, x in enumerate(inner.input):
                        if x == name:
                            inner.input[i] = alias
        producer_index = next((i for i, n in enumerate(model.graph.node) if name in n.output), -1)
        model.graph.node.insert(producer_index + 1, helper.make_node("Identity", [name], [alias]))
    graph = onnx_io.load(model)
    report = PassManager([get_pass("eliminate-identity").create()]).run(graph)
    assert report.passes[0].rewrites == len(targets)
    assert not graph.check_invariants()
    rewritten = onnx_io.to_model_proto(graph)
    onnx.checker.check_model(rewritten, full_check=True)
    assert all(n.op_type != "Identity" for n in rewritten.graph.node)
    for expected, actual in zip(_ort_outputs(path), _ort_outputs(rewritten), strict=True):
        np.testing.assert_array_equal(expected, actual)


def test_subgraph_and_sparse_attributes_are_ir_values_written_back_as_they_came() -> None:
    """Bodies load as ``Subgraph`` values and a small sparse Constant as a ``Constant`` densified on read;
    both export the protobuf they came from, also when the exporter rebuilds every attribute."""
    from onnx import helper, numpy_helper

    from optimizer.values import Constant, Subgraph

    model = onnx.load(str(FIXTURES / "control_flow.onnx"))
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(np.array([3.0, -2.0], np.float32), "v"),
                                       numpy_helper.from_array(np.array([1, 4], np.int64), "i"), [2, 3])
    model.graph.node.insert(0, helper.make_node("Constant", [], ["s"], sparse_value=sparse))
    model.graph.output.append(helper.make_tensor_value_info("s", onnx.TensorProto.FLOAT, [2, 3]))
    graph = onnx_io.load(model)
    assert isinstance(graph.producer("s").attrs["sparse_value"], Constant)
    np.testing.assert_array_equal(graph.const("s"), [[0, 3, 0], [0, -2, 0]])
    bodies = [body for node in graph.nodes for body in node.subgraphs()]
    assert bodies and all(isinstance(body, Subgraph) for body in bodies)
    for node in graph.nodes:
        node.changed_attrs = set(node.attrs)  # every attribute goes through the exporter, none copied verbatim
    rewritten = onnx_io.to_model_proto(graph)
    assert [sorted(n.attribute, key=lambda a: a.name) for n in rewritten.graph.node] == \
        [sorted(n.attribute, key=lambda a: a.name) for n in model.graph.node]


def test_a_full_disk_is_one_sentence_and_leaves_nothing_behind(tmp_path: Path, monkeypatch) -> None:
    import errno

    graph = onnx_io.load(FIXTURES / "inception_module.onnx")

    def full_disk(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(onnx_io.os, "fsync", full_disk)
    with pytest.raises(onnx_io.NinoptError, match="No space left on device"):
        onnx_io.save(graph, tmp_path / "out.onnx")
    assert list(tmp_path.iterdir()) == []


def test_in_place_replacement_is_atomic(tmp_path: Path, monkeypatch) -> None:
    """Overwriting a file keeps the old one intact until the new one is complete."""
    target = tmp_path / "model.onnx"
    target.write_bytes((FIXTURES / "inception_module.onnx").read_bytes())
    before = target.read_bytes()
    graph = onnx_io.load(target)

    def interrupted(fd):
        raise OSError("interrupted")

    monkeypatch.setattr(onnx_io.os, "fsync", interrupted)
    with pytest.raises(onnx_io.NinoptError):
        onnx_io.save(graph, target)
    assert target.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]


def test_external_data_without_a_recorded_length_reads_just_its_tensor(tmp_path: Path) -> None:
    """Several tensors share one file: a reference with no length must not swallow the rest of it."""
    src = _external_model(tmp_path)
    model = onnx.load(str(src), load_external_data=False)
    for t in model.graph.initializer:
        kept = [(e.key, e.value) for e in t.external_data if e.key != "length"]
        del t.external_data[:]
        for key, value in kept:
            entry = t.external_data.add()
            entry.key, entry.value = key, value
    no_length = src.parent / "no_length.onnx"
    no_length.write_bytes(model.SerializeToString())
    out = tmp_path / "out.onnx"
    onnx_io.save(onnx_io.load(no_length), out)
    assert _initializer_bytes(onnx.load(str(out), load_external_data=False), tmp_path) == \
        _initializer_bytes(onnx.load(str(src), load_external_data=False), src.parent)


def test_external_data_that_shrinks_after_load_is_one_sentence(tmp_path: Path) -> None:
    src = _external_model(tmp_path)
    graph = onnx_io.load(src)
    data = src.parent / "external_weights.onnx.data"
    data.write_bytes(data.read_bytes()[:100])
    with pytest.raises(onnx_io.NinoptError, match="shorter than"):
        onnx_io.save(graph, tmp_path / "out.onnx")
    assert not (tmp_path / "out.onnx").exists() and not (tmp_path / "out.onnx.data").exists()
