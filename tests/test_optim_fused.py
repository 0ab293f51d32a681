"""optim.fused=true on the registry's adam / adamw: torch's one-kernel step, against a plain-Python computation
of the papers' update rules (Kingma & Ba's Adam with L2 decay, Loshchilov & Hutter's decoupled decay) step by
step, through a state-dict round trip; a bad value is refused naming the field; compile_optimizer=auto leaves a
fused step alone; the loop trains with it as it does with the default foreach step."""
import math

import numpy as np
import pytest
import torch

from helpers import SMALL, train_inprocess
from pretrain.build import should_compile
from pretrain.config import load_config
from pretrain.errors import ConfigError
from pretrain.optim import build_optimizer


def reference(w0, grads, lrs, b1, b2, eps, wd, decoupled):
    """Per step t (1-based): decoupled: w *= 1 - lr wd; L2: g += wd w; m, v EMAs; w -= lr m^ / (sqrt(v^) + eps)."""
    w = [x.astype(np.float64).copy() for x in w0]
    m = [np.zeros_like(x) for x in w]
    v = [np.zeros_like(x) for x in w]
    for t, (gs, lr) in enumerate(zip(grads, lrs), 1):
        for i, g in enumerate(gs):
            g = g.astype(np.float64)
            if decoupled:
                w[i] = w[i] * (1 - lr * wd)
            else:
                g = g + wd * w[i]
            m[i] = b1 * m[i] + (1 - b1) * g
            v[i] = b2 * v[i] + (1 - b2) * g * g
            w[i] = w[i] - lr * (m[i] / (1 - b1 ** t)) / (np.sqrt(v[i] / (1 - b2 ** t)) + eps)
    return w


@pytest.mark.parametrize("name", ["adam", "adamw"])
@pytest.mark.parametrize("fused", [True, False])
def test_fused_and_foreach_steps_follow_the_paper(name, fused):
    rng = np.random.default_rng(0)
    w0 = [rng.normal(size=(5, 3)).astype(np.float32), rng.normal(size=(7,)).astype(np.float32)]
    grads = [[rng.normal(size=x.shape).astype(np.float32) for x in w0] for _ in range(8)]
    lrs = [1e-2 * (1 - k / 10) for k in range(8)]  # the schedule changes the group's lr every step
    b1, b2, eps, wd = 0.8, 0.95, 1e-6, 0.1

    def fresh(params):
        return build_optimizer(name, params, lr=lrs[0], betas=[b1, b2], eps=eps, weight_decay=wd, fused=fused)

    params = [torch.tensor(x, requires_grad=True) for x in w0]
    opt = fresh(params)
    assert all(g["fused"] is fused for g in opt.param_groups)
    assert all(bool(g.get("foreach")) is (not fused) for g in opt.param_groups)
    for k, (gs, lr) in enumerate(zip(grads, lrs)):
        if k == 4:  # state-dict round trip into a new optimizer, mid-run
            state = opt.state_dict()
            params = [torch.tensor(p.detach().numpy(), requires_grad=True) for p in params]
            opt = fresh(params)
            opt.load_state_dict(state)
        for p, g in zip(params, gs):
            p.grad = torch.tensor(g)
        for group in opt.param_groups:
            group["lr"] = lr
        opt.step()
    want = reference(w0, grads, lrs, b1, b2, eps, wd, decoupled=name == "adamw")
    for p, w in zip(params, want):
        np.testing.assert_allclose(p.detach().numpy(), w, rtol=2e-5, atol=2e-6)


def test_fused_must_be_a_boolean():
    with pytest.raises(ConfigError) as e:
        build_optimizer("adamw", [torch.zeros(2, requires_grad=True)], fused="yes")
    assert "optim.fused" in str(e.value) and "must be true or false" in str(e.value)
    with pytest.raises(ConfigError) as e:
        load_config(["optim=adamw", "optim.fused=1"])
    assert "optim.fused" in str(e.value)


def test_auto_does_not_compile_a_fused_step():
    for fused, want in ((False, True), (True, False)):
        cfg = load_config(SMALL + ["optim=adamw", f"optim.fused={str(fused).lower()}", "train.steps=500"])
        opt = build_optimizer("adamw", [torch.zeros(2, requires_grad=True)], fused=fused)
        assert should_compile(cfg, opt, is_deepspeed=False, device_type="cpu") is want, fused
        always = load_config(SMALL + ["optim=adamw", f"optim.fused={str(fused).lower()}", "train.steps=500",
                                      "train.compile_optimizer=always"])
        assert should_compile(always, opt, is_deepspeed=False, device_type="cpu")


def test_the_loop_trains_with_a_fused_step(tmp_path):
    base = ["optim=adamw", "train.steps=6", "train.eval_every=0", "log.log_every=1"]
    _, foreach = train_inprocess(base + [f"run_dir={tmp_path / 'foreach'}"])
    _, fused = train_inprocess(base + [f"run_dir={tmp_path / 'fused'}", "optim.fused=true"])
    a = [r["loss"] for r in foreach if r.get("kind", "train") == "train" and "loss" in r]
    b = [r["loss"] for r in fused if r.get("kind", "train") == "train" and "loss" in r]
    assert len(a) == len(b) == 6 and a[0] == b[0]  # same model, data and first loss
    assert all(math.isfinite(x) for x in b) and b == pytest.approx(a, rel=1e-4)  # the same rule, another kernel


def test_a_checkpoint_from_before_the_fused_key_resumes_without_overrides():
    """A checkpoint's config that does not name optim.fused ran at its default (false): no change on resume;
    a checkpoint that ran fused is a change, refused without resume_overrides."""
    from pretrain import resume_rules

    new = load_config(SMALL + ["optim=adamw"]).to_dict()
    old = {**new, "optim": {k: v for k, v in new["optim"].items() if k != "fused"}}
    assert "fused" in new["optim"] and resume_rules.check(old, new, branch=False, overrides=False, source="ck") == {}
    ran_fused = {**new, "optim": {**new["optim"], "fused": True}}
    with pytest.raises(ConfigError) as e:
        resume_rules.check(ran_fused, new, branch=False, overrides=False, source="ck")
    assert "optim.fused True -> False" in str(e.value)


def test_a_hyperparameter_named_on_one_side_at_its_default_is_no_change():
    from pretrain import resume_rules

    new = load_config(SMALL + ["optim=adamw"]).to_dict()
    bare = {**new, "optim": {"name": "adamw", "lr": new["optim"]["lr"]}}  # betas, eps, ... at their defaults
    assert resume_rules.changes(bare, new) == {} and resume_rules.changes(new, bare) == {}
    other = {**new, "optim": {**new["optim"], "betas": [0.9, 0.95]}}
    assert resume_rules.changes(bare, other) == {"optim.betas": ([0.9, 0.999], [0.9, 0.95])}
