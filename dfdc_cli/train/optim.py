"""Optimisers and learning-rate schedules of the recipe's ``[optim]`` section.

adam | adamw | ranger (RAdam with decoupled weight decay inside timm's Lookahead), and a one-cycle or
constant schedule stepped once per optimisation step.
"""

from __future__ import annotations

from typing import Callable, Mapping, Optional

import torch
from timm.optim import Lookahead as _TimmLookahead

from dfdc_cli.errors import UserError


class Lookahead(_TimmLookahead):
    """timm's Lookahead (Zhang et al. 2019: every ``k`` steps the slow weights move ``alpha`` of the
    way to the fast weights, and the fast weights restart from there), with the slow weights starting
    at the initial weights as in the paper. timm creates them at the first sync from the fast weights
    of that moment, which makes the first sync a no-op; the project's runs have always used the
    paper's rule, so a ranger recipe trains as it did.

    The state lives in the wrapped optimiser (``lookahead_slow_buff`` per parameter, ``lookahead_step``
    per group), so its ``state_dict`` is the wrapped optimiser's and resumes exactly.
    """

    @torch.no_grad()
    def step(self, closure: Optional[Callable] = None):
        state = self._base_optimizer.state
        start = {p: p.detach().clone() for g in self.param_groups for p in g["params"]
                 if p.grad is not None and "lookahead_slow_buff" not in state[p]}
        loss = self._base_optimizer.step(closure)
        # (set after the inner step: torch's optimisers initialise a parameter's state only when empty)
        for p, w in start.items():
            state[p]["lookahead_slow_buff"] = w
        for group in self.param_groups:
            group["lookahead_step"] += 1
            if group["lookahead_step"] % group["lookahead_k"] == 0:
                self.update_slow(group)
        return loss

    def load_state_dict(self, state_dict: Mapping) -> None:
        if "base" in state_dict and "la_steps" in state_dict:
            state_dict = _from_own_lookahead(state_dict)
        super().load_state_dict(state_dict)


def _from_own_lookahead(old: Mapping) -> dict:
    """The state of the Lookahead this project wrote before it used timm's (``last.pt`` of a run
    started then): {"base", "slow", "la_steps", "k", "alpha"} -> timm's layout, so such a run resumes."""
    base = {"state": {i: dict(s) for i, s in old["base"]["state"].items()},
            "param_groups": [dict(g) for g in old["base"]["param_groups"]]}
    for i, slow in enumerate(old["slow"]):
        if slow is not None and i in base["state"]:
            base["state"][i]["lookahead_slow_buff"] = slow
    for g in base["param_groups"]:
        g.update(lookahead_step=int(old["la_steps"]), lookahead_k=int(old["k"]), lookahead_alpha=float(old["alpha"]))
    return base


def make_optimizer(params, o: Mapping) -> torch.optim.Optimizer:
    name = str(o["optimizer"]).lower()
    lr, wd = float(o["lr"]), float(o["weight_decay"])
    betas = tuple(float(b) for b in o["betas"])
    if name == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, weight_decay=wd)
    if name == "adamw":
        return torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=wd)
    if name == "ranger":
        base = torch.optim.RAdam(params, lr=lr, betas=betas, weight_decay=wd, decoupled_weight_decay=True)
        return Lookahead(base, alpha=float(o["lookahead_alpha"]), k=int(o["lookahead_k"]))
    raise UserError(f"unknown optimizer {name!r}")


def make_scheduler(opt: torch.optim.Optimizer, o: Mapping, total_steps: int):
    if o["schedule"] == "constant":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda _s: 1.0)
    return torch.optim.lr_scheduler.OneCycleLR(
        opt,
        max_lr=float(o["lr"]),
        total_steps=max(1, int(total_steps)),
        pct_start=float(o["pct_start"]),
        div_factor=float(o["div_factor"]),
        final_div_factor=float(o["final_div_factor"]),
    )
