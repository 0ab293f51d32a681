"""The run planner (pretrain.plan, python -m pretrain.tools.plan): model-state memory against DeepSpeed's own
estimators, the optimizer state each spec declares against what the optimizer really allocates, every GPU recipe's
stated hardware, the launch check, and bad input as one-line errors."""
import json

import pytest
import torch

from pretrain.config import load_config
from pretrain.errors import ConfigError
from pretrain.hardware import GiB, gpu_named
from pretrain.optim import OPTIMIZERS, build_optimizer, classify, needs_of
from pretrain.plan import launch_check, model_state_bytes, param_counts, plan_run

GPU_RECIPES = ["125m_cosine", "350m_wsd", "1b_wsd", "1b_cosine", "7b_wsd"]


@pytest.mark.parametrize("total,largest", [(124_000_000, 38_000_000), (1_235_000_000, 100_663_296),
                                           (6_740_000_000, 202_000_000)])
@pytest.mark.parametrize("gpus", [8, 64, 256])
def test_model_states_match_deepspeeds_estimators(total, largest, gpus):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs

    adamw = 8 * total  # fp32 m and v: what DeepSpeed's estimators assume
    ours2 = sum(model_state_bytes("zero2", total, largest, gpus, adamw).values())
    _, ds2 = estimate_zero2_model_states_mem_needs(total, num_gpus_per_node=8, num_nodes=gpus // 8, cpu_offload=False)
    assert ours2 == pytest.approx(ds2, rel=0.02)
    ours3 = sum(model_state_bytes("zero3", total, largest, gpus, adamw).values())
    _, ds3, _ = estimate_zero3_model_states_mem_needs(total, largest, num_gpus_per_node=8, num_nodes=gpus // 8,
                                                      cpu_offload=False, cpu_offload_params=False)
    assert ours3 == pytest.approx(ds3, rel=0.02)


def test_parameter_counts_match_the_model():
    from pretrain.build import model_config
    from pretrain.model import GPT

    for overrides in ([], ["model.tie_embeddings=false", "model.n_kv_head=2"]):
        cfg = load_config(overrides)
        mc = model_config(cfg, cfg.data.vocab_size)
        model = GPT(mc)
        counts = param_counts(mc)
        kinds = classify(model)
        params = dict(model.named_parameters())
        measured = {k: sum(params[n].numel() for n, kk in kinds.items() if kk == k) for k in counts["kinds"]}
        assert measured == counts["kinds"] and counts["total"] == sum(p.numel() for p in model.parameters())


def _proxy():
    from pretrain.model import GPT, GPTConfig
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=256, d_model=128, n_layer=1, n_head=2, max_seq_len=16, tie_embeddings=False))


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_declared_optimizer_state_is_what_the_optimizer_allocates(name):
    """Bytes of optimizer state per parameter of each kind, after three steps on a small GPT (matrices of >= 4096
    elements, as 8-bit AdamW needs), against the spec's state_bytes."""
    model = _proxy()
    extra = {"bs": 1024} if name == "sophia" else {}
    opt = build_optimizer(name, model, lr=1e-4, **extra)
    x = torch.randint(0, 256, (2, 16))

    def closure(backward=False):
        with torch.set_grad_enabled(backward):
            if backward:
                opt.zero_grad()
            loss = model(input_ids=x, labels=x).loss
            if backward:
                loss.backward()
        return loss.detach()

    if needs_of(opt).train_eval:
        opt.train()
    for _ in range(3):
        opt.zero_grad()
        model(input_ids=x, labels=x).loss.backward()
        opt.step(closure) if needs_of(opt).closure else opt.step()
    kinds, params = classify(model), dict(model.named_parameters())
    declared = OPTIMIZERS[name].state_bytes_per_kind()
    for kind in declared:
        ps = [params[n] for n, k in kinds.items() if k == kind]
        seen, nbytes = set(), 0
        for p in ps:
            for v in opt.state.get(p, {}).values():
                if torch.is_tensor(v) and v.data_ptr() not in seen:
                    seen.add(v.data_ptr())
                    nbytes += v.numel() * v.element_size()
        measured = nbytes / sum(p.numel() for p in ps)
        assert measured == pytest.approx(declared[kind], abs=0.15), (name, kind, measured, declared[kind])


@pytest.mark.parametrize("recipe", GPU_RECIPES)
def test_every_gpu_recipe_fits_its_stated_hardware(recipe):
    cfg = load_config([f"recipe={recipe}"])
    hw = cfg.hardware
    plan = plan_run(cfg, gpus=hw.gpus, gpu=hw.gpu, strategy=hw.strategy)
    assert plan.fits, plan.as_dict()
    assert plan.max_micro_batch >= cfg.train.micro_batch_size and plan.hours > 0


def test_launch_check_refuses_7b_under_ddp_in_one_line():
    cfg = load_config(["recipe=7b_wsd"])
    with pytest.raises(ConfigError) as err:
        launch_check(cfg, gpu=gpu_named("h100-80gb"), gpus=256, strategy="ddp")
    text = str(err.value)
    assert "\n" not in text and text.startswith("plan: 7b_wsd does not fit 256 x h100-80gb under ddp"), text
    assert "GiB over" in text and "fits" in text and "train.ignore_plan=true" in text, text
    launch_check(load_config(["recipe=7b_wsd", "train.ignore_plan=true"]), gpu=gpu_named("h100-80gb"), gpus=256,
                 strategy="ddp")  # launches anyway when asked
    launch_check(cfg, gpu=gpu_named("h100-80gb"), gpus=256, strategy="fsdp")  # the stated hardware fits


def test_cli_table_and_json(capsys):
    from pretrain.tools.plan import main
    assert main(["recipe=1b_wsd", "--price-per-gpu-hour", "2.0"]) == 0
    out = capsys.readouterr().out
    assert "1b_wsd on 64 x h100-80gb" in out and all(s in out for s in ("ddp", "zero1", "zero3", "fsdp"))
    assert main(["recipe=1b_wsd", "--strategy", "zero1", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert len(rows) == 1 and rows[0]["strategy"] == "zero1" and rows[0]["fits"]
    mem = rows[0]["memory"]
    assert mem["total"] == pytest.approx(sum(v for k, v in mem.items() if k != "total"))
    # 1b_wsd: 25B tokens at 40% MFU on 64 H100s: about 2 hours, as the recipe states
    assert 1.0 < rows[0]["hours"] < 3.0


@pytest.mark.parametrize("args,hint", [
    (["recipe=1b_wsd", "--gpu", "h100"], "allowed: a100-40gb"),
    (["recipe=1b_wsd", "--gpus", "48"], "do not divide train.global_batch_size (512)"),
    (["recipe=1b_wsd", "--mfu", "1.5"], "mfu: 1.5 is out of range"),
    (["recipe=1b_wsd", "--mfu", "0"], "mfu: 0.0 is out of range"),
    (["recipe=tiny"], "states no hardware"),
])
def test_bad_input_is_one_line(capsys, args, hint):
    from pretrain.tools.plan import main
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("plan error: ") and hint in err, err


def test_memory_grows_with_micro_batch_and_shrinks_with_sharding():
    cfg = load_config(["recipe=1b_wsd"])
    plans = {s: plan_run(cfg, gpus=64, gpu="h100-80gb", strategy=s) for s in ("ddp", "zero1", "zero2", "zero3")}
    assert plans["ddp"].memory["optimizer"] > plans["zero1"].memory["optimizer"] * 60
    opt_state = [plans[s].memory["parameters"] + plans[s].memory["gradients"] + plans[s].memory["optimizer"]
                 for s in ("ddp", "zero1", "zero2", "zero3")]
    assert opt_state == sorted(opt_state, reverse=True)
    bigger = plan_run(load_config(["recipe=1b_wsd", "train.micro_batch_size=16"]), gpus=32, gpu="h100-80gb",
                      strategy="zero1")
    # activations scale with the micro batch (up to the batch-independent RoPE tables)
    assert bigger.memory["activations"] == pytest.approx(2 * plans["zero1"].memory["activations"], rel=1e-4)
    assert plans["zero1"].memory["total"] / GiB < 80


def test_train_py_runs_the_launch_check_before_building_anything(monkeypatch, tmp_path, capsys):
    """train.py on a (here simulated) H100: the 7B recipe under one-process DDP stops with one line, before the run
    directory, data or model exist."""
    import sys

    from accelerate.state import AcceleratorState, GradientState, PartialState

    import pretrain.hardware
    sys.path.insert(0, str(__import__("helpers").ROOT))
    from train import main

    h100 = gpu_named("h100-80gb")
    monkeypatch.setattr(pretrain.hardware, "gpu_of_device", lambda device: h100)
    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()
    PartialState._reset_state()
    run_dir = tmp_path / "r"
    assert main(["recipe=7b_wsd", f"run_dir={run_dir}", "log.wandb=false"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("config error: plan: 7b_wsd does not fit 1 x h100-80gb under ddp"), err
    assert not run_dir.exists()
