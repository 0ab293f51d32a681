"""Coordinate check (pretrain.tools.coordcheck): under muP the size of every activation stays put as the width grows,
under SP it grows; a wrong readout multiplier planted in muP is caught; CompleteP keeps the residual stream's size
across depth where muP alone lets it grow."""
from __future__ import annotations

import pytest

from pretrain.model import parametrization
from pretrain.tools.coordcheck import coord_check, main, verdict

# tiny widths, few steps: arithmetic token sequences over 16 tokens (few distinct directions, so the large-width
# behaviour shows at these widths), 4 sequences of 16 tokens, Adam lr 1e-2, 2 seeds
WIDTHS = dict(widths=[32, 64, 128, 256], steps=4, seeds=2, vocab_size=16, seq_len=16, batch=4, lr=1e-2)


def worst(parametrization, **kw):
    return verdict(coord_check(parametrization=parametrization, **{**WIDTHS, **kw})[2])


def test_mup_activations_do_not_move_with_width_sp_do():
    mup, where = worst("mup")
    sp, _ = worst("sp")
    assert mup < 0.25, where
    assert sp > 0.5


def test_planted_wrong_readout_multiplier_fails_the_check(monkeypatch):
    # muP without the 1/width readout multiplier (SP's readout): the logits grow with the width
    monkeypatch.setattr(parametrization, "readout_multiplier", lambda config: config.logit_multiplier)
    bad, where = worst("mup")
    assert bad > 0.25, where
    assert where.startswith("logits")


def test_completep_keeps_the_residual_stream_across_depth():
    kw = dict(depths=[2, 4, 8, 16], width=64, steps=4, seeds=2, vocab_size=16, seq_len=16, batch=4, lr=1e-2)
    blocks = lambda table: {k: v for k, v in table.items() if k.startswith("block.")}  # noqa: E731
    cp, where = verdict(blocks(coord_check(parametrization="completep", **kw)[2]))
    mup, _ = verdict(blocks(coord_check(parametrization="mup", **kw)[2]))
    assert cp < 0.45, where
    assert mup > 0.7


def test_cli_prints_a_verdict_and_a_plot(tmp_path, capsys):
    out = tmp_path / "coord.png"
    assert main(["--parametrization", "mup", "--widths", "32,64", "--steps", "3", "--seeds", "1", "--data",
                 "pattern", "--vocab-size", "16", "--seq-len", "16", "--batch", "2", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "verdict: largest |slope| at steps >= 2" in text and out.stat().st_size > 0


def test_slopes_by_hand():
    from pretrain.tools.coordcheck import slopes
    # sizes ~ x^1 and x^0 exactly: slopes 1 and 0
    table = slopes([32, 64, 128], [{"a": [1.0, 32.0], "b": [2.0, 3.0]}, {"a": [1.0, 64.0], "b": [2.0, 3.0]},
                                   {"a": [1.0, 128.0], "b": [2.0, 3.0]}])
    assert table["a"] == pytest.approx([0.0, 1.0]) and table["b"] == pytest.approx([0.0, 0.0])
