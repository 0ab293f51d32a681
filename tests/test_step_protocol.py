"""The step protocol (pretrain.step) is one protocol: the loop (train.py) and pretrain.hf.Trainer give the same
per-step losses for optimizers that need a closure, a Hessian estimate or train/eval modes; an optimizer registered
from a test trains through both with no other edit; and the pieces around the step that a broken protocol would
get wrong (accumulation, processes, parameter groups, Schedule-Free's eval weights, the RNG on resume, engine
conflicts) each have a test that fails when they break."""
import shutil

import pytest
import torch

from helpers import SMALL, dump, rows, run_cli, train_inprocess
from pretrain.config import load_config, world_size_check
from pretrain.errors import ConfigError
from pretrain.optim import OPTIMIZERS, Needs, OptimizerSpec, register


# ------------------------------------------------------------------------------------------------------------
# optimizers registered by the tests themselves (one registration, nothing else edited)
# ------------------------------------------------------------------------------------------------------------
class ClosureSGD(torch.optim.Optimizer):
    """SGD that halves its step until the loss on the step's batch falls (at most 4 halvings); records the closure's
    loss at the start of each step, which must be the step's training loss."""

    def __init__(self, params, lr: float = 0.5, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})
        self.first_losses = []

    def metrics(self) -> dict:
        return {"closure_loss": self.first_losses[-1]} if self.first_losses else {}

    @torch.no_grad()
    def step(self, closure):
        f0 = float(closure())
        self.first_losses.append(f0)
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        start = [p.clone() for p in params]
        scale = 1.0
        for _ in range(5):
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        p.add_(p.grad + group["weight_decay"] * p, alpha=-group["lr"] * scale)
            if float(closure()) < f0:
                break
            for p, s in zip(params, start):
                p.copy_(s)
            scale /= 2
        return f0


class NoisySGD(torch.optim.Optimizer):
    """SGD with Gaussian gradient noise from torch's global RNG: a resume that loses the RNG changes its path."""

    def __init__(self, params, lr: float = 0.3, sigma: float = 0.05, weight_decay: float = 0.0):
        super().__init__(params, {"lr": lr, "sigma": sigma, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    p.add_(p.grad + group["sigma"] * torch.randn_like(p), alpha=-group["lr"])


@pytest.fixture
def registered():
    """Registers the test optimizers for one test, and removes them after it."""
    names = []

    def add(spec):
        register(spec)
        names.append(spec.name)
        return spec

    add(OptimizerSpec.of_class("test_closure_sgd", ClosureSGD, "a test", "0", needs=Needs(closure=True)))
    add(OptimizerSpec.of_class("test_noisy_sgd", NoisySGD, "a test", "0"))
    yield
    for n in names:
        OPTIMIZERS.pop(n)


ADAMW_ONLY = ["~optim.betas", "~optim.eps", "~optim.fused"]  # the recipe's optim block is adamw's: drop keys the test ones lack


# ------------------------------------------------------------------------------------------------------------
# the same protocol in the loop and in the Trainer
# ------------------------------------------------------------------------------------------------------------
class Sequential(torch.utils.data.IterableDataset):
    def __init__(self, seqs):
        self.seqs = seqs

    def __iter__(self):
        return iter({"input_ids": s, "labels": s} for s in self.seqs)


def trainer_run(cfg, out_dir):
    """pretrain.hf.Trainer on the loop's model initialization, data order and hyperparameters for `cfg`."""
    from accelerate.utils import set_seed

    from pretrain.build import build_model
    from pretrain.config import optimizer_hparams, schedule_kwargs
    from pretrain.data import build_data
    from pretrain.hf import Trainer, TrainingArguments

    t = cfg.train
    tokenizer, loader, _ = build_data(cfg, rank=0, world=1, log=lambda *_: None)
    accum = t.global_batch_size // t.micro_batch_size
    seqs = [s for step in range(t.steps) for i in range(accum) for s in loader.micro_batch(step, i)]
    set_seed(cfg.seed)
    model = build_model(cfg, len(tokenizer), tokenizer.eos_token_id)
    hp = optimizer_hparams(cfg)
    args = TrainingArguments(
        output_dir=str(out_dir), optim=f"pretrain:{cfg.optim['name']}", optim_args=hp, learning_rate=hp["lr"],
        lr_scheduler_type=f"pretrain:{cfg.schedule['name']}", lr_scheduler_kwargs=schedule_kwargs(cfg),
        per_device_train_batch_size=t.micro_batch_size, gradient_accumulation_steps=accum, max_steps=t.steps,
        max_grad_norm=cfg.clip.max_norm, seed=cfg.seed, use_cpu=True, report_to="none", save_strategy="no",
        logging_steps=1, disable_tqdm=True)
    trainer = Trainer(model=model, args=args, train_dataset=Sequential(seqs))
    trainer.train()
    return trainer, [row["loss"] for row in trainer.state.log_history if "loss" in row]


CASES = {  # the three capabilities: a Hessian estimate, a closure, train/eval modes
    "sophia": ["optim=sophia", "optim.lr=3e-3", "optim.k=3"],
    "sgd_armijo": ["optim=sgd_armijo", "optim.lr=1.0", "schedule=constant"],
    "sf_adamw": ["optim=sf_adamw", "optim.lr=5e-3", "schedule=constant"],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_loop_and_trainer_give_the_same_losses(name, tmp_path):
    overrides = [f"run_dir={tmp_path / 'loop'}", "train.steps=10", "train.eval_every=0"] + CASES[name]
    _, metrics = train_inprocess(overrides)
    loop = [r["loss"] for r in metrics if r.get("kind", "train") == "train"]
    trainer, hf = trainer_run(load_config(SMALL + overrides), tmp_path / "hf")
    assert len(loop) == len(hf) == 10
    assert hf == pytest.approx(loop, rel=1e-5), (loop, hf)
    assert loop[-1] < loop[0]
    if name == "sophia":  # the estimate ran (steps 3, 6, 9) in both
        from pretrain.optim import unwrap
        opt = unwrap(trainer.optimizer)
        assert all(opt.state[p]["hessian"].abs().sum() > 0 for g in opt.param_groups for p in g["params"])


def test_an_optimizer_registered_in_a_test_trains_through_the_loop_and_the_trainer(registered, tmp_path):
    overrides = [f"run_dir={tmp_path / 'loop'}", "optim.name=test_closure_sgd", "optim.lr=0.5", "schedule=constant",
                 "train.steps=12", "train.eval_every=12"] + ADAMW_ONLY
    train_inprocess(overrides)
    train = rows(tmp_path / "loop")
    losses = [r["loss"] for r in train]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.3, losses
    # the closure is the loss on the step's batch at the step's parameters: the step's training loss
    assert [r["closure_loss"] for r in train] == pytest.approx(losses, rel=1e-5)
    ev = rows(tmp_path / "loop", "eval")
    assert ev[-1]["val_loss"] < ev[0]["val_loss"]

    from pretrain.optim import unwrap
    trainer, hf = trainer_run(load_config(SMALL + overrides), tmp_path / "hf")
    assert unwrap(trainer.optimizer).first_losses == pytest.approx(hf, rel=1e-5)
    assert hf == pytest.approx(losses, rel=1e-5)


# ------------------------------------------------------------------------------------------------------------
# what a broken step would get wrong
# ------------------------------------------------------------------------------------------------------------
def test_world_size_check_with_several_processes():
    cfg = load_config(["train.global_batch_size=16", "train.micro_batch_size=4"])
    assert [world_size_check(cfg, w) for w in (1, 2, 4)] == [4, 2, 1]
    with pytest.raises(ConfigError, match="train.global_batch_size.*micro_batch_size x world size = 4 x 3"):
        world_size_check(cfg, 3)
    cfg = load_config(["train.global_batch_size=12", "train.micro_batch_size=4"])
    with pytest.raises(ConfigError, match="train.global_batch_size"):
        world_size_check(cfg, 2)  # 12 = 4 x 3 sequences, not 4 x 2 x k


def test_gradient_accumulation_matches_one_large_micro_batch(tmp_path):
    """Accumulation 2 (micro 4) and accumulation 1 (micro 8) at the same global batch of 8: one process, the same
    sequences per step, so the same losses and gradient norms."""
    common = ["train.steps=6", "train.eval_every=0", "train.global_batch_size=8"]
    train_inprocess([f"run_dir={tmp_path / 'acc2'}", "train.micro_batch_size=4"] + common)
    train_inprocess([f"run_dir={tmp_path / 'acc1'}", "train.micro_batch_size=8"] + common)
    a, b = rows(tmp_path / "acc2"), rows(tmp_path / "acc1")
    assert [r["step"] for r in a] == [r["step"] for r in b] == list(range(1, 7))
    for ra, rb in zip(a, b):
        assert ra["loss"] == pytest.approx(rb["loss"], rel=1e-5), (ra, rb)
        assert ra["grad_norm"] == pytest.approx(rb["grad_norm"], rel=1e-4), (ra, rb)


def test_parameter_groups_decay_matrices_only():
    """Weight decay on the hidden matrices and an untied head; never on norm gains (or biases); on embeddings only
    with decay_embeddings. Expected kinds from the parameter names, not from the classifier under test."""
    from pretrain.model import GPT, GPTConfig
    from pretrain.optim import build_param_groups

    model = GPT(GPTConfig(vocab_size=64, d_model=32, n_layer=2, n_head=2, max_seq_len=16, tie_embeddings=False))
    names = {id(p): n for n, p in model.named_parameters()}

    def expected_decay(name, decay_embeddings):
        if "norm" in name or name.endswith(".bias"):
            return 0.0
        if "embed_tokens" in name:
            return 0.1 if decay_embeddings else 0.0
        assert name.endswith("proj.weight") or name == "lm_head.weight", name
        return 0.1

    for decay_embeddings in (False, True):
        groups = build_param_groups(model, lr=1e-3, weight_decay=0.1, decay_embeddings=decay_embeddings)
        seen = [names[id(p)] for g in groups for p in g["params"]]
        assert sorted(seen) == sorted(names.values())  # each parameter in exactly one group
        for g in groups:
            for p in g["params"]:
                assert g["weight_decay"] == expected_decay(names[id(p)], decay_embeddings), names[id(p)]
    assert any("norm" in n for n in names.values()) and "lm_head.weight" in names.values()


def test_schedule_free_is_evaluated_on_its_eval_weights(tmp_path):
    """The validation loss of a Schedule-Free run is the loss of the weights it exports (its x sequence), not of
    the training-mode weights (y) the optimizer holds between evaluations."""
    import torch.nn.functional as F
    from transformers import AutoModelForCausalLM

    from pretrain.data import build_data

    run_dir = tmp_path / "sf"
    overrides = [f"run_dir={run_dir}", "optim=sf_adamw", "optim.lr=5e-3", "schedule=constant", "train.steps=10",
                 "train.eval_every=10"]
    train_inprocess(overrides)
    final = AutoModelForCausalLM.from_pretrained(run_dir / "final").eval()
    _, _, val = build_data(load_config(SMALL + overrides), rank=0, world=1, log=lambda *_: None)
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in val:
            logits = final(batch).logits
            loss = F.cross_entropy(logits[:, :-1].reshape(-1, logits.size(-1)), batch[:, 1:].reshape(-1))
            total, count = total + float(loss) * len(batch), count + len(batch)
    assert rows(run_dir, "eval")[-1]["val_loss"] == pytest.approx(total / count, rel=1e-5)


def test_resume_restores_the_random_state(registered, tmp_path):
    """An optimizer that draws from torch's RNG continues bit-identically from a checkpoint."""
    common = ["optim.name=test_noisy_sgd", "optim.lr=0.3", "train.steps=8", "train.eval_every=0",
              "train.save_every=4"] + ADAMW_ONLY
    full = tmp_path / "full"
    train_inprocess([f"run_dir={full}"] + common)
    part = tmp_path / "part"
    (part / "checkpoints").mkdir(parents=True)
    shutil.copytree(full / "checkpoints" / "step_4", part / "checkpoints" / "step_4")
    train_inprocess([f"run_dir={part}", "resume=auto"] + common)
    a, b = {r["step"]: r["loss"] for r in rows(full)}, {r["step"]: r["loss"] for r in rows(part)}
    assert sorted(b) == [5, 6, 7, 8]
    assert [b[s] for s in b] == [a[s] for s in b]


@pytest.mark.parametrize("overrides,field,hint", [
    (["optim=sophia"], "optim.name", "Hessian estimate"),
    (["optim=sgd_armijo"], "optim.name", "closure"),
    (["optim=vsgd"], "optim.name", "closure"),
    (["optim=muon"], "optim.name", "2-D matrices"),
    (["schedule=autolrs"], "schedule.name", "snapshots"),
])
def test_deepspeed_conflicts_are_refused_from_the_specs(monkeypatch, overrides, field, hint):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(ConfigError) as err:
        load_config(overrides)
    assert str(err.value).startswith(field + ":") and hint in str(err.value), str(err.value)
    load_config(["optim=adopt"])  # what DeepSpeed can run passes
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "false")
    load_config(overrides)  # the same recipe under DDP


def test_deepspeed_conflict_stops_the_cli_before_anything_is_built(tmp_path):
    p = run_cli([f"run_dir={tmp_path / 'r'}", "optim=sophia"], extra_env={"ACCELERATE_USE_DEEPSPEED": "true"})
    assert p.returncode == 2, dump(p)
    assert p.stderr.strip().splitlines()[-1].startswith("config error: optim.name: sophia needs"), dump(p)
    assert "Traceback" not in p.stderr and not (tmp_path / "r").exists()


def test_trainer_refuses_a_controller_schedule(tmp_path):
    from pretrain.hf import TrainingArguments
    with pytest.raises(ConfigError, match="lr_scheduler_type.*only the training loop"):
        TrainingArguments(output_dir=str(tmp_path), lr_scheduler_type="autolrs", max_steps=10, use_cpu=True,
                          report_to="none")

