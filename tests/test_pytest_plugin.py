"""The pytest plug-in: ``--ninopt-zoo DIR`` turns every model under DIR into a test item."""

from __future__ import annotations

import shutil
from importlib import metadata

import onnx
import pytest
from onnx import TensorProto, helper

pytest_plugins = ["pytester"]

# Once the package registers the plug-in (entry point group pytest11), pytest loads it by itself
# and a second `-p` of the same module would be a double registration. The inner sessions need
# neither hypothesis nor pytest-benchmark, and re-importing them costs seconds per in-process run.
REGISTERED = any(ep.name == "ninopt" for ep in metadata.entry_points(group="pytest11"))
LOAD = ["-p", "no:hypothesispytest", "-p", "no:benchmark"] + ([] if REGISTERED else ["-p", "optimizer.pytest_plugin"])


@pytest.fixture
def zoo(pytester, fixtures_dir):
    folder = pytester.mkdir("models")
    for name in ("resnet_bottleneck_bn", "identity_dropout"):
        shutil.copy(f"{fixtures_dir}/{name}.onnx", folder / f"{name}.onnx")
    return folder


def _custom_op_model(path) -> None:
    """Relu then an op from a domain nobody implements: loads and optimizes, but cannot be executed."""
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Mystery", ["r"], ["y"], domain="com.example")],
        "custom", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13), helper.make_opsetid("com.example", 1)])
    onnx.save(model, str(path))


def test_one_passing_item_per_model(pytester, zoo):
    result = pytester.runpytest(*LOAD, "--ninopt-zoo", str(zoo), "-v")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(["*::identity_dropout PASSED*", "*::resnet_bottleneck_bn PASSED*"])


def test_k_selects_zoo_items(pytester, zoo):
    pytester.runpytest(*LOAD, "--ninopt-zoo", str(zoo), "-k", "resnet").assert_outcomes(passed=1, deselected=1)


def test_without_the_option_nothing_is_added(pytester, zoo):
    pytester.makepyfile("def test_plain(): pass")
    pytester.runpytest(*LOAD).assert_outcomes(passed=1)


def test_a_model_the_executor_cannot_run_fails_with_the_reason(pytester, zoo):
    _custom_op_model(zoo / "custom_op.onnx")
    result = pytester.runpytest(*LOAD, "--ninopt-zoo", str(zoo))
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["*ninopt could not optimize and verify *custom_op.onnx: *Mystery*"])
    assert "Traceback" not in result.stdout.str()


def test_a_missing_folder_is_a_collection_error(pytester):
    result = pytester.runpytest(*LOAD, "--ninopt-zoo", "nowhere")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*--ninopt-zoo nowhere: *nowhere does not exist.*"])


def test_verification_failures_show_the_per_output_report(pytester, zoo):
    """A conftest registers a wrong pass; the failure lists each output's error and the tolerance that would pass.

    In a subprocess, so the throwaway pass never reaches this process's registry.
    """
    pytester.makeconftest('''
import numpy as np
from optimizer.pipeline import GraphPass, register_pass

@register_pass("test-plugin-drift", exact=True)
class Drift(GraphPass):
    """Scale the first Conv weight (deliberately wrong)."""
    done = False
    def run(self, g, ctx):
        if self.done:
            return False
        conv = next(n for n in g.nodes if n.op_type == "Conv")
        g.set_const(conv.inputs[1], g.const(conv.inputs[1]) * np.float32(1.01))
        self.done = True
        return True
''')
    (zoo / "identity_dropout.onnx").unlink()
    result = pytester.runpytest_subprocess(*LOAD, "--ninopt-zoo", str(zoo), "--ninopt-passes",
                                           "eliminate-identity,test-plugin-drift")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["*the optimized *resnet_bottleneck_bn.onnx fails verification: "
                                 "output 'output' is off by relative *(allowed 1e-05).",
                                 "output*max |d|*relative*min atol*min rtol"])
    number = r"(\d[\d.e+-]*|inf)"
    result.stdout.re_match_lines([rf"output\s+{number}\s+{number}\s+{number}\s+{number}$"])
