"""Every initialization, every forward multiplier and every per-parameter optimizer correction of the GPT, in one
place: standard parametrization (SP), muP (Tensor Programs V, the Table-8 "multiplier" form of microsoft/mup) and
CompleteP (Dey et al. 2025, arXiv 2505.01618; the authors' minimal implementation, EleutherAI/nanoGPT-mup branch
`completep`).

Notation: `sigma` = config.init_std; for a hidden matrix `mw = fan_in / base_fan_in` (d_model / base_width for
q/k/v/o/gate/up, d_ff / base_d_ff for down_proj); `m = d_model / base_width`; `mL = n_layer / base_depth`,
`a` = depth_alpha (CompleteP only; mL = 1 under muP).

                     SP                         muP (+ CompleteP)
  embedding init     N(0, sigma^2)              N(0, sigma^2); forward x embed_multiplier (alpha_in)
  hidden init        N(0, sigma^2); o/down      N(0, sigma^2 / mw) (variance ~ 1/fan_in); q_proj zero
                     x 1/sqrt(2 n_layer)
  readout            tied, or N(0, sigma^2)     tied or zero when untied; logits x logit_multiplier / m
  attention scale    1/sqrt(d_head)             sqrt(base_d_head) / d_head (1/d_head; = SP at the base head dim)
  residual branch    x + F(x)                   x + mL^-a F(x)                                        (CompleteP)
  norm gains         1                          1

Per-parameter optimizer corrections (`optimizer_scales`; multipliers on the recipe's lr, eps and weight decay):

  rule "adam" (Adam family: updates of size ~lr per coordinate, whatever the gradient's scale)
    hidden          lr x mL^(a-1) / mw,  eps x mL^-a / mw,  weight decay x mw (lr * wd width-invariant)
    in-block norms  lr x mL^(a-1),       eps x mL^-a                                           (CompleteP)
    embedding, readout, final norm: unchanged
  rule "sgd" (SGD family, microsoft/mup's MuSGD: lr ~ fan_out/fan_in per matrix, x width for vector-like)
    hidden          lr x fan_out_mult / fan_in_mult, weight decay / that (lr * wd width-invariant)
    embedding, untied readout, norm gains: lr x m, weight decay / m
  rule "muon" (Muon on the hidden matrices, AdamW elsewhere): torch's Muon with adjust_lr_fn="original" already
    scales its orthogonalized update's spectral norm by sqrt(max(1, fan_out/fan_in)), the spectral muP condition
    for widths growing together, so the hidden lr is width-independent (x mL^(a-1) under CompleteP); the AdamW
    part gets the "adam" rule (its eps is `adamw_eps`).

CompleteP's eps: the authors' code multiplies the one global AdamW eps by m^-1 mL^-a; here it is corrected per
class (hidden: / (mw mL^a), in-block norms: / mL^a, others unchanged), so CompleteP at its base depth is exactly muP
(the difference is in the eps of the embedding, readout and final norm only). Weight decay: as in the authors'
code, corrected by width only (lr * wd of hidden matrices width-invariant; at a = 1 the depth lr factor is 1).
Which optimizer gets which rule is declared on its spec (`OptimizerSpec.mup`); an optimizer without one is
refused (`check_config`).
"""
from __future__ import annotations

import math

from torch import nn

PARAMETRIZATIONS = ("sp", "mup", "completep")
RULES = ("adam", "sgd", "muon")
_EPS_KEY = {"adam": "eps", "muon": "adamw_eps", "sgd": None}  # the hyperparameter an AdamW-style part's eps has


def default_d_ff(d_model: int) -> int:
    """GPTConfig's SwiGLU width: 8/3 d rounded up to a multiple of 64."""
    return 64 * ((int(8 * d_model / 3) + 63) // 64)


def is_mup(config) -> bool:
    return getattr(config, "parametrization", "sp") in ("mup", "completep")


def bases(config) -> dict:
    """The proxy's shape: base_width, base_head_dim (default base_width / n_head), base_d_ff (default: the default
    SwiGLU width of base_width when the model uses the default rule, else d_ff scaled like the width) and base_depth
    (default n_layer: no depth scaling)."""
    bw = config.base_width
    hd = config.base_head_dim or bw // config.n_head
    if config.base_d_ff:
        dff = config.base_d_ff
    else:
        dff = default_d_ff(bw) if config.d_ff == default_d_ff(config.d_model) else config.d_ff * bw / config.d_model
    depth = config.base_depth if config.parametrization == "completep" else config.n_layer
    return {"width": bw, "head_dim": hd, "d_ff": dff, "depth": depth or config.n_layer}


def width_mult(config) -> float:
    return config.d_model / bases(config)["width"] if is_mup(config) else 1.0


def depth_mult(config) -> float:
    """mL = n_layer / base_depth under CompleteP, else 1."""
    return config.n_layer / bases(config)["depth"] if config.parametrization == "completep" else 1.0


def _alpha(config) -> float:
    return config.depth_alpha if config.parametrization == "completep" else 1.0


def attn_scale(config) -> float:
    if config.attn_scale is not None:
        return config.attn_scale
    if is_mup(config):
        return math.sqrt(bases(config)["head_dim"]) / config.head_dim
    return 1.0 / math.sqrt(config.head_dim)


def readout_multiplier(config) -> float:
    """The factor on the logits: logit_multiplier (alpha_out), / m under muP."""
    return config.logit_multiplier / width_mult(config)


def residual_multiplier(config) -> float:
    """The factor on each residual branch (attention, MLP): mL^-a under CompleteP, else 1."""
    return depth_mult(config) ** -_alpha(config)


def fan_mults(config, name: str) -> tuple[float, float]:
    """(fan_in, fan_out) width multipliers of hidden matrix `name` (a module or parameter name) vs the proxy: the
    MLP's inner side scales as d_ff / base_d_ff, every other side as d_model / base_width (n_head * head_dim ==
    d_model here, whether heads or head dims grow)."""
    b = bases(config)
    m, mff = config.d_model / b["width"], config.d_ff / b["d_ff"]
    if "down_proj" in name:
        return mff, m
    if "gate_proj" in name or "up_proj" in name:
        return m, mff
    return m, m


def init_std_for(config, name: str, module: nn.Module) -> float:
    """Init std of Linear `name`: SP as GPT-2 (residual projections / sqrt(2 n_layer)); muP: variance ~ 1/fan_in,
    zero query and zero untied readout."""
    std = config.init_std
    if is_mup(config):
        if name.endswith(("q_proj", "lm_head")):
            return 0.0
        return std / math.sqrt(fan_mults(config, name)[0])
    if name.endswith(("o_proj", "down_proj")):
        std = std / math.sqrt(2 * config.n_layer)
    return std


def init_weights(model) -> None:
    """Initialize all weights of a GPT (called once after construction)."""
    config = model.config
    tied = config.tie_embeddings
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            if tied and name == "lm_head":
                continue  # the embedding's weight
            std = init_std_for(config, name, module)
            if std == 0.0:
                nn.init.zeros_(module.weight)
            else:
                nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=config.init_std)
        elif hasattr(module, "weight") and module.__class__.__name__ == "RMSNorm":
            nn.init.ones_(module.weight)


def optimizer_scales(model, rule: str) -> dict[str, dict]:
    """Per trainable parameter name: {"lr_mult", "eps_mult", "wd_mult"} of `rule` (see the module docstring)."""
    from ..optim.param_groups import classify

    config = model.config
    m, mL, a = width_mult(config), depth_mult(config), _alpha(config)
    scales = {}
    for name, kind in classify(model).items():
        lr = eps = wd = 1.0
        in_block = ".layers." in f".{name}"
        if kind == "hidden":
            fin, fout = fan_mults(config, name)
            if rule == "sgd":
                lr, wd = fout / fin, fin / fout
            elif rule == "adam":
                lr, eps, wd = mL ** (a - 1) / fin, mL ** -a / fin, fin
            else:  # muon: Muon's own spectral scaling is width-invariant
                lr = mL ** (a - 1)
        elif rule == "sgd":  # embedding, untied readout, norm gains: vector-like (one dimension grows)
            lr, wd = m, 1 / m
        elif kind == "vector" and in_block:
            lr, eps = mL ** (a - 1), mL ** -a
        scales[name] = {"lr_mult": lr, "eps_mult": eps, "wd_mult": wd}
    return scales


def mup_rule(optim_name: str, hparams: dict) -> str:
    """The optimizer's muP rule (its spec's `mup`, a name or a function of the hyperparameters); ConfigError naming
    scaling.parametrization when it has none."""
    from ..errors import ConfigError
    from ..optim import OPTIMIZERS, get_spec

    spec = get_spec(optim_name)
    rule = spec.mup(hparams) if callable(spec.mup) else spec.mup
    if rule is None:
        ok = sorted(n for n, s in OPTIMIZERS.items() if s.mup is not None)
        if callable(spec.mup):  # a rule for some settings only (e.g. no L2 weight decay): its docstring says which
            why = " ".join((spec.mup.__doc__ or "").split())
            raise ConfigError("scaling.parametrization", f"no muP rule is defined for optim.name={optim_name!r} with "
                              f"these hyperparameters: {why}; use scaling.parametrization=sp or change them")
        raise ConfigError("scaling.parametrization", f"no muP rule is defined for optim.name={optim_name!r} (README: "
                          "muP and CompleteP, which optimizer gets which rule); use scaling.parametrization=sp or an "
                          "optimizer with a rule", ok, got=optim_name)
    if rule not in RULES:
        raise ValueError(f"optimizer {optim_name!r} declares an unknown muP rule {rule!r}; rules: {RULES}")
    return rule


def optimizer_params(model, optim_name: str, hparams: dict):
    """What `build_optimizer` gets: the model itself under SP; under muP / CompleteP parameter groups carrying each
    parameter's lr multiplier, eps and weight decay (`hparams`: the recipe's, before the spec's defaults)."""
    if not is_mup(model.config):
        return model
    from ..optim import validate_hparams
    from ..optim.param_groups import build_param_groups

    hp = validate_hparams(optim_name, hparams)
    rule = mup_rule(optim_name, hp)
    eps_key = _EPS_KEY[rule]
    base_eps = hp.get(eps_key) if eps_key else None
    scales = optimizer_scales(model, rule)
    overrides = {}
    for name, s in scales.items():
        o = {"lr_mult": s["lr_mult"], "wd_mult": s["wd_mult"]}
        if isinstance(base_eps, (int, float)) and s["eps_mult"] != 1.0:
            o["eps"] = base_eps * s["eps_mult"]
        overrides[name] = o
    return build_param_groups(model, lr=hp.get("lr"), weight_decay=hp.get("weight_decay", 0.0) or 0.0,
                              decay_embeddings=hp.get("decay_embeddings", False), overrides=overrides)


def check_config(cfg) -> None:
    """The scaling block against the model and the optimizer (config validation, before anything is built)."""
    from ..errors import ConfigError, check_number, check_range

    s, mc = cfg.scaling, cfg.model
    for f in ("input_multiplier", "output_multiplier"):
        check_number(f"scaling.{f}", getattr(s, f), lo=0.0, lo_open=True, hi=math.inf, hi_open=True)
    if s.parametrization == "sp":
        return
    if s.base_width is None:
        raise ConfigError("scaling.base_width", f"scaling.parametrization={s.parametrization} needs the width "
                          "(d_model) of the proxy the hyperparameters were tuned on")
    check_range("scaling.base_width", s.base_width, lo=1, hi=mc.d_model)
    if s.base_head_dim is None and s.base_width % mc.n_head:
        raise ConfigError("scaling.base_width", f"{s.base_width} is not divisible by model.n_head ({mc.n_head}): the "
                          "proxy's head dim base_width / n_head must be whole (or set scaling.base_head_dim)")
    head_dim = mc.d_model // mc.n_head
    base_hd = s.base_head_dim or s.base_width // mc.n_head
    check_range("scaling.base_head_dim", base_hd, lo=1, hi=head_dim)
    d_ff = mc.d_ff or default_d_ff(mc.d_model)
    if s.base_d_ff is not None:
        check_range("scaling.base_d_ff", s.base_d_ff, lo=1, hi=d_ff)
    if s.parametrization == "completep":
        if s.base_depth is None:
            raise ConfigError("scaling.base_depth", "scaling.parametrization=completep needs the depth (n_layer) of "
                              "the proxy the hyperparameters were tuned on")
        check_range("scaling.base_depth", s.base_depth, lo=1, hi=mc.n_layer)
        check_number("scaling.depth_alpha", s.depth_alpha, lo=0.5, hi=1.0)
    from ..config import optimizer_hparams
    from ..optim import validate_hparams
    rule = mup_rule(cfg.optim["name"], validate_hparams(cfg.optim["name"], optimizer_hparams(cfg)))
    if s.parametrization == "completep" and rule == "sgd":
        raise ConfigError("scaling.parametrization", f"CompleteP's depth corrections are defined for Adam-family "
                          f"optimizers and Muon; {cfg.optim['name']!r} gets the SGD rule", ["sp", "mup"],
                          got="completep")


def model_kwargs(cfg) -> dict:
    """GPTConfig keywords of the recipe's scaling block."""
    s = cfg.scaling
    return {"parametrization": s.parametrization, "base_width": s.base_width, "base_head_dim": s.base_head_dim,
            "base_d_ff": s.base_d_ff, "base_depth": s.base_depth, "depth_alpha": s.depth_alpha,
            "embed_multiplier": s.input_multiplier, "logit_multiplier": s.output_multiplier}
