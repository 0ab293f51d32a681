"""muP and CompleteP (model/parametrization.py) against numbers computed by hand here: init std per class, lr / eps /
weight-decay multipliers per parameter, residual and readout multipliers, attention scale; the exported Llama gives
our logits; bad input is refused naming the field."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from pretrain.config import load_config
from pretrain.errors import ConfigError
from pretrain.model import GPT, GPTConfig, to_llama
from pretrain.optim import build_optimizer

LR, EPS, WD = 1e-2, 1e-8, 0.1


def gpt(width, depth=2, par="mup", tie=True, base_width=32, base_depth=None, alpha=1.0, seed=0, **kw):
    torch.manual_seed(seed)
    return GPT(GPTConfig(vocab_size=256, d_model=width, n_layer=depth, n_head=2, max_seq_len=32, tie_embeddings=tie,
                         parametrization=par, base_width=base_width, base_depth=base_depth, depth_alpha=alpha, **kw))


def groups_by_param(model, optim="adamw", **hp):
    """{parameter name: its param group} of the optimizer built the way build.py builds it."""
    from pretrain.model.parametrization import optimizer_params

    hp = {"lr": LR, "weight_decay": WD, **hp}
    opt = build_optimizer(optim, optimizer_params(model, optim, hp), **hp)
    by_id = {id(p): g for g in opt.param_groups for p in g["params"]}
    return opt, {n: by_id[id(p)] for n, p in model.named_parameters()}


def hand_d_ff(d):  # GPTConfig's SwiGLU width, written out: 8/3 d rounded up to a multiple of 64
    return 64 * math.ceil(int(8 * d / 3) / 64)


@pytest.mark.parametrize("width", [64, 128])
def test_init_std_per_class_by_hand(width):
    model = gpt(width, tie=False)
    m = width / 32
    m_ff = hand_d_ff(width) / hand_d_ff(32)  # 192/128 = 1.5 at 64, 384/128 = 3 at 128
    sd = model.state_dict()
    expect = {"self_attn.k_proj": 0.02 / math.sqrt(m), "self_attn.v_proj": 0.02 / math.sqrt(m),
              "self_attn.o_proj": 0.02 / math.sqrt(m), "mlp.gate_proj": 0.02 / math.sqrt(m),
              "mlp.up_proj": 0.02 / math.sqrt(m), "mlp.down_proj": 0.02 / math.sqrt(m_ff)}
    for i in range(2):
        for k, std in expect.items():
            w = sd[f"model.layers.{i}.{k}.weight"]
            assert abs(w.std().item() / std - 1) < 0.05, (k, w.std().item(), std)
        assert sd[f"model.layers.{i}.self_attn.q_proj.weight"].abs().max() == 0  # zero query
        assert torch.all(sd[f"model.layers.{i}.input_layernorm.weight"] == 1)
    assert sd["lm_head.weight"].abs().max() == 0  # zero readout when untied
    assert abs(sd["model.embed_tokens.weight"].std().item() / 0.02 - 1) < 0.05  # embedding keeps sigma
    # SP keeps GPT-2's: o_proj / down_proj at sigma / sqrt(2 n_layer), q_proj at sigma
    sp = gpt(width, par="sp", tie=False).state_dict()
    assert abs(sp["model.layers.0.mlp.down_proj.weight"].std().item() / (0.02 / 2) - 1) < 0.05
    assert abs(sp["model.layers.0.self_attn.q_proj.weight"].std().item() / 0.02 - 1) < 0.05


@pytest.mark.parametrize("width", [64, 128])
def test_adam_rule_lr_eps_wd_by_hand(width):
    model = gpt(width, tie=False)
    m, m_ff = width / 32, hand_d_ff(width) / hand_d_ff(32)
    _, g = groups_by_param(model)
    for n, grp in g.items():
        if "down_proj" in n:
            want = (LR / m_ff, EPS / m_ff, WD * m_ff)
        elif n.endswith("proj.weight"):
            want = (LR / m, EPS / m, WD * m)
        elif n == "lm_head.weight":
            want = (LR, EPS, WD)
        else:  # embedding, norm gains: unchanged, no decay
            want = (LR, EPS, 0.0)
        assert (grp["lr"], grp["eps"], grp["weight_decay"]) == pytest.approx(want, rel=1e-12), n
        assert grp["initial_lr"] == grp["lr"]


@pytest.mark.parametrize("depth,alpha", [(8, 1.0), (8, 0.5), (4, 1.0)])
def test_completep_multipliers_by_hand(depth, alpha):
    model = gpt(128, depth=depth, par="completep", base_depth=2, alpha=alpha)
    m, m_ff, mL = 4.0, 3.0, depth / 2
    _, g = groups_by_param(model)
    for n, grp in g.items():
        got = (grp["lr"], grp["eps"], grp["weight_decay"])
        if n.endswith("proj.weight"):
            f = m_ff if "down_proj" in n else m
            want = (LR * mL ** (alpha - 1) / f, EPS * mL ** -alpha / f, WD * f)
        elif ".layers." in n:  # in-block norm gains
            want = (LR * mL ** (alpha - 1), EPS * mL ** -alpha, 0.0)
        else:  # embedding (tied readout), final norm
            want = (LR, EPS, 0.0)
        assert got == pytest.approx(want, rel=1e-12), n
    # the residual branches: x + mL^-alpha F(x), checked on one block's forward
    r = mL ** -alpha
    block = model.model.layers[0]
    x = torch.randn(2, 8, 128)
    from pretrain.model.gpt import rope_cache
    cos, sin = rope_cache(model.config, 8, x.device, x.dtype)
    with torch.no_grad():
        for p in block.parameters():
            p.add_(0.05 * torch.randn_like(p))
        h = x + r * block.self_attn(block.input_layernorm(x), cos, sin)
        want = h + r * block.mlp(block.post_attention_layernorm(h))
        assert torch.allclose(block(x, cos, sin), want, atol=1e-6)


def test_completep_at_base_depth_is_mup():
    a, b = gpt(64, depth=2, par="completep", base_depth=2), gpt(64, depth=2, par="mup")
    for (n, p), q in zip(a.named_parameters(), b.parameters()):
        assert torch.equal(p, q), n
    _, ga = groups_by_param(a)
    _, gb = groups_by_param(b)
    assert all((ga[n]["lr"], ga[n]["eps"], ga[n]["weight_decay"]) == (gb[n]["lr"], gb[n]["eps"], gb[n]["weight_decay"])
               for n in ga)


def test_sgd_rule_by_hand():
    """microsoft/mup's MuSGD: matrices lr x fan_out_mult / fan_in_mult, vector-like (embedding, norms) lr x m."""
    model = gpt(128, tie=False)
    m, m_ff = 4.0, 3.0
    _, g = groups_by_param(model, "momentum", momentum=0.9)
    for n, grp in g.items():
        if "gate_proj" in n or "up_proj" in n:
            want = (LR * m_ff / m, WD * m / m_ff)
        elif "down_proj" in n:
            want = (LR * m / m_ff, WD * m_ff / m)
        elif n.endswith("proj.weight"):
            want = (LR, WD)
        elif n == "lm_head.weight":
            want = (LR * m, WD / m)
        else:
            want = (LR * m, 0.0)
        assert (grp["lr"], grp["weight_decay"]) == pytest.approx(want, rel=1e-12), n


def test_muon_composes():
    """Muon: hidden matrices at Muon's lr (its spectral scaling is width-invariant), the rest at adamw_lr with
    Adam's rule; a step runs and the schedule keeps the groups' ratios."""
    from pretrain.step import set_lr

    model = gpt(128, tie=False)
    opt, g = groups_by_param(model, "muon", lr=0.02, adamw_lr=3e-3)
    for n, grp in g.items():
        want = 0.02 if n.endswith("proj.weight") else 3e-3
        assert grp["lr"] == pytest.approx(want), n
    x = torch.randint(0, 256, (2, 16))
    model(input_ids=x, labels=x).loss.backward()
    opt.step()
    set_lr(opt, 0.5)
    assert all(grp["lr"] == pytest.approx(0.5 * grp["initial_lr"]) for grp in opt.param_groups)


def test_attention_and_readout_multipliers_by_hand():
    model = gpt(128, tie=False, logit_multiplier=2.0)
    from pretrain.model import parametrization as P
    assert P.attn_scale(model.config) == pytest.approx(math.sqrt(16) / 64)  # base head dim 32/2, head dim 128/2
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    seen = {}
    model.model.norm.register_forward_hook(lambda mod, a, out: seen.update(h=out))
    x = torch.randint(0, 256, (2, 12))
    logits = model(input_ids=x).logits
    assert torch.allclose(logits, F.linear(seen["h"], model.lm_head.weight) * 2.0 / 4.0, atol=1e-6)


@pytest.mark.parametrize("par,tie", [("mup", True), ("mup", False), ("completep", True)])
def test_export_gives_our_logits(par, tie, tmp_path):
    from transformers import AutoModelForCausalLM

    model = gpt(64, depth=4, par=par, tie=tie, base_depth=2, embed_multiplier=1.5, logit_multiplier=0.7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    model.eval()
    x = torch.randint(0, 256, (2, 16))
    ours = model(input_ids=x).logits
    to_llama(model).save_pretrained(tmp_path)
    theirs = AutoModelForCausalLM.from_pretrained(tmp_path).eval()(input_ids=x).logits
    assert torch.allclose(ours, theirs, atol=1e-5), (ours - theirs).abs().max()


BASE = ["model.d_model=128", "model.n_head=4"]


@pytest.mark.parametrize("overrides,field", [
    (["scaling.parametrization=mup"], "scaling.base_width"),
    (["scaling.parametrization=mup", "scaling.base_width=256"], "scaling.base_width"),
    (["scaling.parametrization=mup", "scaling.base_width=66"], "scaling.base_width"),  # 66 / 4 heads
    (["scaling.parametrization=mup", "scaling.base_width=64", "model.n_head=3"], "model.n_head"),
    (["scaling.parametrization=mup", "scaling.base_width=64", "optim=lamb"], "scaling.parametrization"),
    (["scaling.parametrization=mup", "scaling.base_width=64", "optim=adam", "optim.weight_decay=0.1"],
     "scaling.parametrization"),
    (["scaling.parametrization=completep", "scaling.base_width=64"], "scaling.base_depth"),
    (["scaling.parametrization=completep", "scaling.base_width=64", "scaling.base_depth=2", "optim=sgd"],
     "scaling.parametrization"),
    (["scaling.parametrization=completep", "scaling.base_width=64", "scaling.base_depth=2",
      "scaling.depth_alpha=2.0"], "scaling.depth_alpha"),
    (["scaling.parametrization=mu"], "scaling.parametrization"),
])
def test_bad_input_names_the_field(overrides, field):
    with pytest.raises(ConfigError) as e:
        load_config(BASE + overrides)
    assert e.value.field == field, str(e.value)
    if "optim=lamb" in overrides:
        assert "lamb" in str(e.value)


def test_recipe_builds_mup_groups(tmp_path):
    """The run's build path (build.py) gives the parametrization's groups and model."""
    from pretrain.build import build_model
    from pretrain.config import optimizer_hparams
    from pretrain.model.parametrization import optimizer_params

    cfg = load_config(BASE + ["scaling.parametrization=mup", "scaling.base_width=32", "optim.lr=0.01",
                              "optim.eps=1e-8", "optim.weight_decay=0.1", f"run_dir={tmp_path}"])
    model = build_model(cfg, 512, 0)
    assert model.config.parametrization == "mup" and model.config.base_width == 32
    hp = optimizer_hparams(cfg)
    opt = build_optimizer("adamw", optimizer_params(model, "adamw", hp), **hp)
    q = model.model.layers[0].self_attn.q_proj.weight
    grp = next(g for g in opt.param_groups if any(p is q for p in g["params"]))
    assert (grp["lr"], grp["eps"], grp["weight_decay"]) == pytest.approx((0.01 / 4, 1e-8 / 4, 0.4))
