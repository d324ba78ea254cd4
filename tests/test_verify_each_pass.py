"""--verify-each-pass: a rewrite that breaks the numbers is named, rolled back, and the rest goes on."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

import optimizer
from optimizer.cli import main
from optimizer.pattern import P
from optimizer.pipeline import GraphPass, RewritePass, register_pass, unregister_pass
from optimizer.rewrite import Refuse, Replacement
from support import FIXTURES_DIR, ort_run, random_feeds

MODEL = Path(FIXTURES_DIR) / "inception_module.onnx"
WRONG_CONV = "b3_5x5"  # the one conv the wrong pass gets wrong


@pytest.fixture(autouse=True)
def wrong_passes():
    @register_pass("test-renew-convs", exact=True)
    class RenewConvs(RewritePass):
        """Test only: rebuilds every Conv (harmless) but scales one conv's weight (wrong)."""

        pattern = P.Conv("x", "w", "b", out="y")

        def check(self, g, m):
            if m.root.name.startswith("renewed_"):
                raise Refuse("already renewed")

        def rewrite(self, g, m):
            conv = m.root
            weight = g.const(m["w"])
            if WRONG_CONV in conv.name:
                weight = weight * np.float32(1.5)
            replacement = Replacement(remove=[conv])
            w = replacement.add_initializer(g.fresh_name("w"), weight)
            replacement.add_node("Conv", [m["x"], w, m["b"]], [m["y"]], dict(conv.attrs), name="renewed_" + conv.name)
            return replacement

    @register_pass("test-break-everything", exact=True)
    class BreakEverything(GraphPass):
        """Test only: negates every initializer at once."""

        def run(self, g, ctx):
            for name in list(g.initializers):
                g.set_const(name, -g.const(name))
            ctx.stats.rewrites += 1
            return True

    yield
    unregister_pass("test-renew-convs")
    unregister_pass("test-break-everything")


def test_the_wrong_rewrite_is_named_rolled_back_and_the_rest_kept():
    conv_names = [n.name for n in optimizer.load(MODEL).nodes if n.op_type == "Conv"]
    assert any(WRONG_CONV in name for name in conv_names), "fixture renamed its convs"
    result = optimizer.optimize(MODEL, passes="test-renew-convs", verify_each_pass=True)
    stats = result.pipeline.passes[0]
    assert len(stats.rollbacks) == 1
    assert WRONG_CONV in " ".join(stats.rollbacks[0]["nodes"])
    assert "output" in stats.rollbacks[0]["problem"]
    assert stats.rewrites == len(conv_names) - 1
    assert result.verification.passed
    feeds = random_feeds(MODEL, seed=5)
    np.testing.assert_allclose(ort_run(result.model, feeds)[0], ort_run(MODEL, feeds)[0], rtol=1e-5, atol=1e-5)


def test_without_per_pass_verification_the_same_pass_fails_the_final_check():
    with pytest.raises(optimizer.VerificationError):
        optimizer.optimize(MODEL, passes="test-renew-convs")


def test_a_whole_pass_that_breaks_numbers_is_rolled_back(tmp_path, capsys):
    out = tmp_path / "out.onnx"
    assert main(["optimize", str(MODEL), "-o", str(out), "--passes", "test-break-everything",
                 "--verify-each-pass", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    stats = report["pipeline"]["passes"][0]
    assert stats["rollbacks"] and stats["rollbacks"][0]["nodes"] == ["(the whole pass)"]
    original, written = onnx.load(str(MODEL)), onnx.load(str(out))
    assert [t.raw_data for t in original.graph.initializer] == [t.raw_data for t in written.graph.initializer]
