"""Every registered optimizer trains the tiny recipe: the loss falls within a short run."""
import pytest

from helpers import rows, train_inprocess
from pretrain.optim import OPTIMIZERS

# learning rates for a 0.2M-parameter GPT (the registry defaults are the papers', for their settings)
LR = {"sgd": 0.5, "momentum": 0.1, "nesterov": 0.1, "adagrad": 0.05, "rmsprop": 3e-3, "adam": 3e-3, "adamw": 3e-3,
      "nadam": 3e-3, "adafactor": 3e-2, "sf_adamw": 5e-3, "sf_sgd": 1.0, "adamw_8bit": 3e-3, "muon": 0.02,
      "adopt": 3e-3, "lion": 3e-3, "sophia": 3e-3, "lamb": 0.1, "lars": 30.0, "rdbd": 3e-3, "sgd_armijo": 1.0,
      "sgd_hd": 0.5, "adam_hd": 3e-3, "vsgd": 1.0}
CONSTANT = {"sf_adamw", "sf_sgd", "sgd_armijo", "vsgd"}  # own step-size control: no external decay


def test_every_registered_optimizer_has_a_learning_rate_here():
    assert sorted(LR) == sorted(OPTIMIZERS)


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_tiny_recipe_trains_with(name, tmp_path):
    sched = ["schedule=constant"] if name in CONSTANT else []
    extra = ["optim.k=5"] if name == "sophia" else []
    train_inprocess([f"run_dir={tmp_path}", f"optim={name}", f"optim.lr={LR[name]}", "train.steps=30",
                     "train.eval_every=30", "log.log_every=1"] + sched + extra)
    losses = [r["loss"] for r in rows(tmp_path)]
    ev = rows(tmp_path, "eval")
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.3, (name, losses)
    assert ev[-1]["val_loss"] < ev[0]["val_loss"] - 0.2, (name, ev)
