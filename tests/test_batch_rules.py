"""Batch-size lr rules (scaling.batch_lr_rule): the documented hyperparameters for k = global / base batch, computed
here from the papers' formulas with literal numbers; the rule reaches the optimizer in the loop."""
import math

import pytest

from helpers import rows, train_inprocess
from pretrain.config import load_config, optimizer_hparams
from pretrain.errors import ConfigError


def hp(*overrides):
    return optimizer_hparams(load_config(list(overrides)))


def test_linear_rule_scales_the_lr_only():
    got = hp("optim=adamw", "optim.lr=1e-3", "train.global_batch_size=32", "scaling.batch_lr_rule=linear",
             "scaling.base_batch_size=8")
    assert got["lr"] == pytest.approx(4e-3) and list(got["betas"]) == [0.9, 0.999] and got["eps"] == 1e-8


def test_sqrt_rule_for_adam_family_scales_betas_and_eps():
    # Malladi et al. 2022: k = 4 -> lr x 2, 1 - b1' = 4 (1 - 0.9), 1 - b2' = 4 (1 - 0.999), eps / 2
    got = hp("optim=adamw", "optim.lr=1e-3", "train.global_batch_size=32", "scaling.batch_lr_rule=sqrt",
             "scaling.base_batch_size=8")
    assert got["lr"] == pytest.approx(2e-3)
    assert got["betas"] == pytest.approx((0.6, 0.996)) and got["eps"] == pytest.approx(5e-9)
    # a smaller batch than the base (k = 1/4): the decays move towards 1
    got = hp("optim=adopt", "optim.lr=1e-3", "train.global_batch_size=16", "train.micro_batch_size=8",
             "scaling.batch_lr_rule=sqrt", "scaling.base_batch_size=64")
    assert got["lr"] == pytest.approx(5e-4)
    assert got["betas"] == pytest.approx((0.975, 1 - 0.25 * 1e-4)) and got["eps"] == pytest.approx(2e-6)


def test_sqrt_rule_for_rmsprop_and_sgd():
    got = hp("optim=rmsprop", "optim.lr=1e-3", "train.global_batch_size=32",
             "scaling.batch_lr_rule=sqrt", "scaling.base_batch_size=16")
    assert got["lr"] == pytest.approx(1e-3 * math.sqrt(2)) and got["alpha"] == pytest.approx(0.8)
    assert got["eps"] == pytest.approx(1e-8 / math.sqrt(2))
    got = hp("optim=momentum", "optim.lr=0.1", "train.global_batch_size=32",
             "scaling.batch_lr_rule=sqrt", "scaling.base_batch_size=8")
    assert got["lr"] == pytest.approx(0.2) and got["momentum"] == 0.9  # SGD momentum: no decay rule here


def test_sqrt_rule_refuses_a_decay_it_would_push_below_zero():
    with pytest.raises(ConfigError, match=r"^scaling.base_batch_size: the square-root rule scales optim.betas\[0\]"):
        hp("optim=adamw", "train.global_batch_size=160", "train.micro_batch_size=8", "scaling.batch_lr_rule=sqrt",
           "scaling.base_batch_size=8")  # k = 20: 1 - 20 (1 - 0.9) = -1


def test_the_loop_trains_at_the_scaled_lr(tmp_path):
    train_inprocess([f"run_dir={tmp_path}", "optim.lr=1e-3", "schedule=constant", "schedule.warmup_steps=0",
                     "train.steps=2", "train.eval_every=0", "scaling.batch_lr_rule=sqrt", "scaling.base_batch_size=2"])
    assert [r["lr"] for r in rows(tmp_path)] == pytest.approx([2e-3, 2e-3])  # global 8 / base 2: x sqrt(4)
