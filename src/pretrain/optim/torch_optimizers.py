"""Optimizers taken from torch and from the official packages (schedulefree, bitsandbytes).

Their defaults are the papers' (written here: torch's signatures hold torch's, e.g. RMSprop's alpha). `compile`:
bench/optim_step.py's CPU measurement (comments: step time / fused AdamW's, eager -> compiled)."""
from __future__ import annotations

import torch

from .registry import Needs, OptimizerSpec, register


def _adam_unless_l2(hp):  # muP's Adam rule; its docstring is the refusal's reason
    """no rule with L2 weight decay (weight_decay > 0 is added to the gradient before the normalization, where no
    width-invariant correction exists); use weight_decay=0 or decoupled decay (adamw)"""
    return "adam" if not hp["weight_decay"] or hp.get("decoupled_weight_decay") else None


_FUSED = ("fused=true: torch's one-kernel step (CPU and CUDA; on CPU the default foreach step takes 3.1x its time "
          "at 124M parameters and 3.5x at 10.6M, bench/optim_step.py), not compiled by compile_optimizer=auto")


def _torch(cls, **fixed):
    def factory(groups, hp):
        kwargs = {**hp, **fixed}
        if cls in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW, torch.optim.NAdam, torch.optim.RMSprop,
                   torch.optim.Adagrad) and not kwargs.get("fused"):
            kwargs.setdefault("foreach", True)
        return cls(groups, **kwargs)
    return factory


register(OptimizerSpec(
    "sgd", _torch(torch.optim.SGD, momentum=0.0, nesterov=False), {"lr": 0.1, "weight_decay": 0.0},
    "Robbins & Monro 1951", "0", source="torch", notes="torch.optim.SGD; L2 weight decay (torch's)",
    compile="no_gain", mup="sgd"))  # step time / fused AdamW, eager -> compiled (CPU): 0.49 -> 0.51
register(OptimizerSpec(
    "momentum", _torch(torch.optim.SGD, nesterov=False), {"lr": 0.1, "momentum": 0.9, "dampening": 0.0,
                                                          "weight_decay": 0.0},
    "Polyak 1964", "1 fp32 (momentum buffer)", source="torch", notes="torch.optim.SGD heavy ball; L2 weight decay",
    compile="torch 2.13 dynamo fails on torch.optim.SGD(momentum, dampening) (SpeculationLogDivergence)",
    state_bytes=4, mup="sgd"))
register(OptimizerSpec(
    "nesterov", _torch(torch.optim.SGD, nesterov=True, dampening=0.0), {"lr": 0.1, "momentum": 0.9,
                                                                      "weight_decay": 0.0},
    "Nesterov 1983; Sutskever et al. 2013", "1 fp32 (momentum buffer)", source="torch",
    notes="torch.optim.SGD(nesterov=True); L2 weight decay",
    compile="pays",  # step time / fused AdamW, eager -> compiled (CPU): 1.94 -> 0.78
    state_bytes=4, mup="sgd"))
register(OptimizerSpec(
    "adagrad", _torch(torch.optim.Adagrad), {"lr": 1e-2, "lr_decay": 0.0, "weight_decay": 0.0,
                                             "initial_accumulator_value": 0.0, "eps": 1e-10},
    "Duchi, Hazan & Singer 2011", "1 fp32 (sum of squares)", source="torch",
    compile="pays",  # step time / fused AdamW, eager -> compiled (CPU): 4.04 -> 0.76
    state_bytes=4, mup=_adam_unless_l2))
register(OptimizerSpec(
    "rmsprop", _torch(torch.optim.RMSprop), {"lr": 1e-3, "alpha": 0.9, "eps": 1e-8, "weight_decay": 0.0,
                                             "momentum": 0.0, "centered": False},
    "Tieleman & Hinton 2012 (lecture 6.5)", "1 fp32 (square avg) (+1 with momentum/centered)", source="torch",
    notes="alpha=0.9 as in the lecture (torch's default is 0.99)",
    compile="pays",  # step time / fused AdamW, eager -> compiled (CPU): 2.86 -> 0.93
    ema_keys=("alpha",), state_bytes=lambda hp: 4 + 4 * (hp["momentum"] > 0) + 4 * bool(hp["centered"]),
    mup=_adam_unless_l2))
register(OptimizerSpec(
    "adam", _torch(torch.optim.Adam), {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
                                       "fused": False},
    "Kingma & Ba 2015", "2 fp32 (m, v)", source="torch",
    notes="weight decay is L2 (coupled), as in Adam; " + _FUSED,
    compile="pays",  # step time / fused AdamW, eager -> compiled (CPU): 3.76 -> 1.25
    ema_keys=("betas",), state_bytes=8, mup=_adam_unless_l2))
register(OptimizerSpec(
    "adamw", _torch(torch.optim.AdamW), {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2,
                                         "fused": False},
    "Loshchilov & Hutter 2019", "2 fp32 (m, v)", source="torch", notes="decoupled weight decay; " + _FUSED,
    compile="pays",  # step time / fused AdamW, eager -> compiled (CPU): 4.37 -> 1.37
    ema_keys=("betas",), state_bytes=8, mup="adam"))
register(OptimizerSpec(
    "nadam", _torch(torch.optim.NAdam), {"lr": 2e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
                                         "momentum_decay": 4e-3, "decoupled_weight_decay": True},
    "Dozat 2016", "2 fp32 (m, v) + mu product", source="torch", notes="decoupled weight decay by default",
    compile="pays",  # step time / fused AdamW, eager -> compiled (CPU): 5.31 -> 1.79
    ema_keys=("betas",), state_bytes=8, mup=_adam_unless_l2))
register(OptimizerSpec(
    "adafactor", _torch(torch.optim.Adafactor), {"lr": 1e-2, "beta2_decay": -0.8, "eps": (None, 1e-3), "d": 1.0,
                                                 "weight_decay": 0.0},
    "Shazeer & Stern 2018", "factored: rows + cols per matrix (1 for vectors)", source="torch",
    notes="torch.optim.Adafactor: no beta1, relative step scaled by parameter RMS (not transformers' Adafactor)",
    compile="dynamo skips torch.optim.Adafactor's frames (graph breaks): nothing is compiled",
    state_bytes={"vector": 4, "other": 0}))


_SF_COMPILE = ("schedulefree: inductor fails (GuardOnDataDependentSymNode) with a tensor lr; a float lr "
               "recompiles every step")


def _sf(cls_name):
    def factory(groups, hp):
        import schedulefree
        return getattr(schedulefree, cls_name)(groups, **hp)
    return factory


register(OptimizerSpec(
    "sf_adamw", _sf("AdamWScheduleFree"), {"lr": 2.5e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
                                          "warmup_steps": 0, "r": 0.0, "weight_lr_power": 2.0},
    "Defazio et al. 2024", "2 fp32 (z, v)", source="schedulefree",
    notes="use schedule=constant; warmup is the optimizer's own warmup_steps; train()/eval() switched by the loop",
    needs=Needs(train_eval=True), compile=_SF_COMPILE,
    ema_keys=("betas",), state_bytes=8, mup="adam"))
register(OptimizerSpec(
    "sf_sgd", _sf("SGDScheduleFree"), {"lr": 1.0, "momentum": 0.9, "weight_decay": 0.0, "warmup_steps": 0,
                                      "r": 0.0, "weight_lr_power": 2.0},
    "Defazio et al. 2024", "1 fp32 (z)", source="schedulefree",
    notes="use schedule=constant; warmup is the optimizer's own warmup_steps",
    needs=Needs(train_eval=True), compile=_SF_COMPILE,
    state_bytes=4, mup="sgd"))


def _bnb_adamw8bit(groups, hp):
    import bitsandbytes as bnb
    return bnb.optim.AdamW8bit(groups, **hp)


register(OptimizerSpec(
    "adamw_8bit", _bnb_adamw8bit, {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 1e-2},
    "Dettmers et al. 2022", "2 x 8-bit (m, v) + block scales; fp32 for tensors < 4096 elements",
    source="bitsandbytes", compile="bitsandbytes' update kernels cannot run on fake tensors (dynamo fails)",
    ema_keys=("betas",), state_bytes={"vector": 8, "other": 2}, mup="adam"))
