"""pretrain.hf: TrainingArguments / Trainer accept registry names and honour optimizer capabilities (CPU, tiny)."""
import math

import pytest
import torch
import transformers

from pretrain.hf import Trainer, TrainingArguments, parse_optim_args
from pretrain.model.gpt import GPT, GPTConfig
from pretrain.optim import OPTIMIZERS, unwrap

V, T = 64, 32


class Progressions(torch.utils.data.Dataset):
    """Arithmetic progressions mod V with a random start and stride: learnable after two tokens."""

    def __init__(self, n=256, seed=0):
        g = torch.Generator().manual_seed(seed)
        start = torch.randint(0, V, (n, 1), generator=g)
        stride = torch.randint(1, 4, (n, 1), generator=g)
        self.x = (start + stride * torch.arange(T)) % V

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"input_ids": self.x[i], "labels": self.x[i]}


def tiny_gpt():
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=V, d_model=32, n_layer=2, n_head=2, max_seq_len=T))


def make_args(tmp_path, **kw):
    base = dict(output_dir=str(tmp_path / "out"), per_device_train_batch_size=8, logging_steps=1, report_to="none",
                save_strategy="no", disable_tqdm=True, use_cpu=True, seed=0, max_steps=40)
    return TrainingArguments(**{**base, **kw})


def train(tmp_path, optimizers=(None, None), **kw):
    trainer = Trainer(model=tiny_gpt(), args=make_args(tmp_path, **kw), train_dataset=Progressions(),
                      optimizers=optimizers)
    trainer.train()
    return trainer


def losses(trainer):
    return [row["loss"] for row in trainer.state.log_history if "loss" in row]


def assert_learns(trainer, drop=0.5):
    ls = losses(trainer)
    assert len(ls) == trainer.state.max_steps and all(math.isfinite(v) for v in ls)
    first, last = sum(ls[:3]) / 3, sum(ls[-3:]) / 3
    assert ls[0] > math.log(V) - 0.3  # starts near chance
    assert last < first - drop, (first, last)


@pytest.mark.parametrize("optim,lr", [("adopt", 1e-2), ("lion", 2e-3)])
def test_registry_optimizers_train(tmp_path, optim, lr):
    trainer = train(tmp_path, optim=optim, learning_rate=lr, weight_decay=0.01)
    assert_learns(trainer)
    opt = unwrap(trainer.optimizer)
    kinds = {g["kind"]: g["weight_decay"] for g in opt.param_groups}  # our parameter groups
    assert kinds["hidden"] == 0.01 and kinds["vector"] == 0.0 and kinds["embedding"] == 0.0
    assert all(g["initial_lr"] == lr for g in opt.param_groups)


def test_sophia_trains_with_hessian_and_bs(tmp_path):
    trainer = train(tmp_path, optim="sophia", learning_rate=2e-3, optim_args="k=10,rho=0.04")
    assert_learns(trainer)
    opt = unwrap(trainer.optimizer)
    assert all(g["bs"] == 8 * T for g in opt.param_groups)  # tokens per optimizer step, filled at step 1
    hessians = [opt.state[p]["hessian"] for g in opt.param_groups for p in g["params"]]
    assert all(h.abs().sum() > 0 for h in hessians)  # update_hessian() ran (every 10 steps)


def test_transformers_optimizer_still_works(tmp_path):
    trainer = train(tmp_path, optim="adamw_torch", learning_rate=1e-2)
    assert_learns(trainer)
    assert isinstance(unwrap(trainer.optimizer), torch.optim.AdamW)
    assert "kind" not in unwrap(trainer.optimizer).param_groups[0]  # transformers' own groups


def test_wsd_schedule_lrs(tmp_path):
    kw = {"decay_fraction": 0.25, "min_lr_ratio": 0.1}
    trainer = train(tmp_path, optim="adopt", learning_rate=1e-2, max_steps=20, warmup_steps=4,
                    lr_scheduler_type="wsd", lr_scheduler_kwargs=kw)
    # independently: transformers' own WSD (warmup from min_lr_ratio, 20 - 4 - 5 = 11 stable, 25% = 5 decay steps)
    from transformers.optimization import get_wsd_schedule
    hf_wsd = get_wsd_schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1e-2), num_warmup_steps=4,
                              num_decay_steps=5, num_stable_steps=11, decay_type="1-sqrt", min_lr_ratio=0.1)
    expected = []
    for _ in range(20):
        expected.append(hf_wsd.get_last_lr()[0])
        hf_wsd.optimizer.step()
        hf_wsd.step()
    logged = [row["learning_rate"] for row in trainer.state.log_history if "learning_rate" in row]
    assert logged == pytest.approx(expected, rel=1e-6)  # the lr of update s+1
    assert logged[0] < logged[5] == pytest.approx(1e-2) and logged[-1] < 3e-3
    assert isinstance(trainer.lr_scheduler, torch.optim.lr_scheduler.LambdaLR)


def test_closure_optimizer_sgd_armijo(tmp_path):
    if "sgd_armijo" not in OPTIMIZERS:
        pytest.skip("sgd_armijo is not registered")
    trainer = train(tmp_path, optim="sgd_armijo", optim_args={"lr": 1.0}, lr_scheduler_type="constant")
    assert_learns(trainer)


class Spy(torch.optim.Optimizer):
    """Plain SGD that asks for a closure and records what it returns (capability, not name)."""

    requires_closure = True

    def __init__(self, params, lr=0.05):
        super().__init__(params, {"lr": lr})
        self.records = []

    @torch.no_grad()
    def step(self, closure=None):
        assert closure is not None
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        grads = [p.grad.clone() for p in params]
        f0 = float(closure())  # no graph, same batch, current parameters
        f1 = float(closure(backward=True))  # recomputes the gradients
        grad_err = max(float((p.grad - g).abs().max()) for p, g in zip(params, grads))
        self.records.append((f0, f1, grad_err))
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad, alpha=-group["lr"])
        return f0


def test_closure_is_the_step_loss_on_the_same_batch(tmp_path):
    model = tiny_gpt()
    spy = Spy(model.parameters())
    args = make_args(tmp_path, max_steps=4, gradient_accumulation_steps=2, max_grad_norm=0.0)
    trainer = Trainer(model=model, args=args, train_dataset=Progressions(), optimizers=(spy, None))
    trainer.train()
    logged = losses(trainer)
    assert len(spy.records) == 4
    for (f0, f1, grad_err), loss in zip(spy.records, logged):
        assert f0 == pytest.approx(f1, rel=1e-5) and f0 == pytest.approx(loss, rel=1e-4)
        assert grad_err < 1e-5


def test_schedule_free_eval_mode_for_saving(tmp_path):
    pytest.importorskip("schedulefree")
    trainer = train(tmp_path, optim="sf_adamw", learning_rate=1e-2, max_steps=6, lr_scheduler_type="constant")
    opt = unwrap(trainer.optimizer)
    assert opt.param_groups[0]["train_mode"] is False  # left in eval mode: the model holds the x weights
    trainer.optimizer.train()
    trainer.save_model(str(tmp_path / "saved"))
    assert opt.param_groups[0]["train_mode"] is False


def test_optim_args_and_name_rules(tmp_path):
    assert parse_optim_args("lr=1e-3, betas=(0.9,0.95), b=0.9|0.99, flag=false, k=10, s=abc, n=none") == {
        "lr": 1e-3, "betas": (0.9, 0.95), "b": (0.9, 0.99), "flag": False, "k": 10, "s": "abc", "n": None}
    args = make_args(tmp_path, optim="lion", optim_args="betas=0.95|0.98", learning_rate=3e-4, weight_decay=0.1)
    assert args.optim == "lion" and args.optimizer_hparams() == {"betas": (0.95, 0.98), "lr": 3e-4,
                                                                 "weight_decay": 0.1}
    args = make_args(tmp_path, optim="lion", optim_args={"lr": 1e-4}, learning_rate=3e-4)
    assert args.optimizer_hparams()["lr"] == 1e-4  # optim_args wins over learning_rate
    # a name in both: transformers'; the prefix picks ours
    assert make_args(tmp_path, optim="sgd").registry_optimizer is None
    assert make_args(tmp_path, optim="pretrain:sgd").registry_optimizer == "sgd"
    assert make_args(tmp_path, lr_scheduler_type="cosine").registry_schedule is None
    assert make_args(tmp_path, lr_scheduler_type="pretrain:cosine").registry_schedule == "cosine"
    with pytest.raises(ValueError, match=r"unknown optimizer 'adamw_typo'.*adamw_torch.*adopt.*sophia"):
        make_args(tmp_path, optim="adamw_typo")
    with pytest.raises(ValueError, match=r"unknown schedule 'wsdd'.*cosine_with_restarts.*wsd"):
        make_args(tmp_path, lr_scheduler_type="wsdd")
    with pytest.raises(ValueError, match="not a hyperparameter of 'lion'"):
        make_args(tmp_path, optim="lion", optim_args="rho=0.1")
    with pytest.raises(ValueError, match="not a keyword of schedule 'wsd'"):
        make_args(tmp_path, lr_scheduler_type="wsd", lr_scheduler_kwargs={"decay_fractio": 0.1})


def test_clip_policies_in_the_trainer(tmp_path):
    """clip_policy=percentile: each step's threshold is numpy's 90th percentile of the previous steps' unclipped
    norms (after a warm-up of 3), logged with the norm; value: every gradient element within +-value at the
    optimizer step; bad policy names and keywords name the field."""
    import numpy as np

    from pretrain.errors import ConfigError
    trainer = train(tmp_path, optim="pretrain:adamw", learning_rate=3e-3, max_steps=12, clip_policy="percentile",
                    clip_kwargs={"warmup_steps": 3})
    rows = [r for r in trainer.state.log_history if "loss" in r]
    norms = [r["grad_norm"] for r in rows]
    for t, r in enumerate(rows):
        want = None if t < 3 else float(np.percentile(norms[:t], 90))
        assert r["clip_threshold"] == (None if want is None else pytest.approx(want, rel=1e-12)), (t, r)
        assert r["clipped"] == int(want is not None and norms[t] > want)

    seen = []

    class Check(transformers.TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, model=None, **kw):
            seen.append(max(float(p.grad.abs().max()) for p in model.parameters() if p.grad is not None))
    t2 = Trainer(model=tiny_gpt(), args=make_args(tmp_path, optim="pretrain:adamw", max_steps=3, clip_policy="value",
                                                  clip_kwargs={"value": 2.0 ** -10}),
                 train_dataset=Progressions(), callbacks=[Check()])
    t2.train()
    assert len(seen) == 3 and max(seen) == 2.0 ** -10  # exact in float32: clamped
    for kw, field in [({"clip_policy": "p90"}, "clip_policy"),
                      ({"clip_policy": "percentile", "clip_kwargs": {"percentile": 0}}, "clip_kwargs.percentile"),
                      ({"clip_policy": "zscore", "clip_kwargs": {"z": -1}}, "clip_kwargs.z"),
                      ({"clip_policy": "norm", "clip_kwargs": {"zz": 1}}, "clip_kwargs.zz")]:
        with pytest.raises(ConfigError) as e:
            make_args(tmp_path, **kw)
        assert e.value.field == field, str(e.value)
