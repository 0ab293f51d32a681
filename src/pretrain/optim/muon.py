"""Muon on the hidden matrices and AdamW on everything else, as one optimizer (Jordan et al. 2024).

The 2-D hidden matrices of the model (see `param_groups.classify`) go to `torch.optim.Muon`
(Newton-Schulz orthogonalized momentum); embeddings, the output head and 1-D parameters go to
`torch.optim.AdamW`. Both share this object's `param_groups`, so schedules and muP multipliers apply to both.
"""
from __future__ import annotations

import torch

from .registry import Needs, OptimizerSpec, register


class MuonWithAdamW(torch.optim.Optimizer):
    def __init__(self, groups, *, lr=0.02, momentum=0.95, nesterov=True, weight_decay=0.1, ns_steps=5,
                 adjust_lr_fn="original", adamw_lr=3e-4, adamw_betas=(0.9, 0.95), adamw_eps=1e-8,
                 adamw_weight_decay=0.1):
        muon_groups, adam_groups = [], []
        for g in groups:
            if g.get("kind") == "hidden" and all(p.ndim == 2 for p in g["params"]):
                muon_groups.append({**g, "lr": lr * g.get("lr_mult", 1.0), "weight_decay": weight_decay})
            else:
                wd = adamw_weight_decay if g.get("weight_decay", 0.0) > 0 else 0.0
                adam_groups.append({**g, "lr": adamw_lr * g.get("lr_mult", 1.0), "weight_decay": wd})
        self.muon = torch.optim.Muon(muon_groups, lr=lr, momentum=momentum, nesterov=nesterov,
                                     weight_decay=weight_decay, ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn) \
            if muon_groups else None
        self.adamw = torch.optim.AdamW(adam_groups, lr=adamw_lr, betas=adamw_betas, eps=adamw_eps,
                                       weight_decay=adamw_weight_decay, foreach=True) if adam_groups else None
        subs = [o for o in (self.muon, self.adamw) if o is not None]
        super().__init__([g for o in subs for g in o.param_groups], {})
        self.param_groups = [g for o in subs for g in o.param_groups]  # the very same dicts as the sub-optimizers'

    @property
    def _subs(self):
        return [o for o in (self.muon, self.adamw) if o is not None]

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for o in self._subs:
            o.step()
        return loss

    def zero_grad(self, set_to_none: bool = True):
        for o in self._subs:
            o.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return {"muon": self.muon.state_dict() if self.muon else None,
                "adamw": self.adamw.state_dict() if self.adamw else None}

    def load_state_dict(self, state_dict):
        for key, o in (("muon", self.muon), ("adamw", self.adamw)):
            if o is not None:
                o.load_state_dict(state_dict[key])

    @property
    def state(self):
        merged = {}
        for o in self._subs:
            merged.update(o.state)
        return merged

    @state.setter
    def state(self, value):  # Optimizer.__init__ assigns an empty state; the sub-optimizers own the real one
        pass


def _mup_rule(hp):  # muP's "muon" rule; its docstring is the refusal's reason
    """the muP rule needs adjust_lr_fn="original" (the update's spectral norm scaled by sqrt(max(1, rows/cols)),
    which keeps the hidden lr width-invariant)"""
    return "muon" if hp["adjust_lr_fn"] == "original" else None


register(OptimizerSpec.of_class(
    "muon", MuonWithAdamW,
    "Jordan et al. 2024 (Muon); torch.optim.Muon", "1 fp32 (momentum) on matrices; 2 fp32 (AdamW) elsewhere",
    source="torch", notes="hidden 2-D matrices on Muon (Newton-Schulz, 5 steps); embeddings, head, 1-D on AdamW",
    needs=Needs(matrix_params=True),  # orthogonalizes whole 2-D matrices: not on ZeRO's flattened partitions
    # compiled step not measured: Newton-Schulz matmuls dominate (127x eager on 1 CPU thread); compiled results
    # differ from eager at bf16 rounding (1e-2 relative)
    compile="no_gain",
    state_bytes={"hidden": 4, "other": 8},
    mup=_mup_rule))
