"""Which method/objective combinations can train, said as sentences before anything loads.

Reads only the catalog and the config (plus online_rl's reward-source checks), so the Method tab,
the pre-start checks and the trainer factories ask the same question the same way.
"""
from __future__ import annotations

from typing import Any

from backend.core import catalog
from backend.objectives import online_rl


def is_alignment(objective: str) -> bool:
    """True for the objectives TRL's alignment trainers train (not SFT or continued pre-training)."""
    info = catalog.OBJECTIVES.get(objective)
    return bool(info and info.alignment)


def validate_losses(cfg: Any) -> dict[str, str]:
    """Field -> sentence where a preference-loss setting would be ignored by the chosen objective: DPO's loss
    types and label smoothing are DPO's; another objective would silently train its own loss."""
    a = cfg.alignment
    loss = catalog.PREFERENCE_LOSSES[a.loss_type]
    out: dict[str, str] = {}
    if a.loss_type != catalog.PREFERENCE_LOSS.sigmoid and cfg.objective != catalog.OBJECTIVE.dpo:
        out["alignment.loss_type"] = (f"The {loss.title} loss is a DPO loss (prompt/chosen/rejected pairs); choose "
                                      f"the dpo objective, or set the loss back to sigmoid for {cfg.objective}.")
    elif a.label_smoothing and cfg.objective != catalog.OBJECTIVE.dpo:
        out["alignment.label_smoothing"] = (f"Label smoothing is read by DPO's robust loss only; set it to 0 for "
                                            f"{cfg.objective} or choose the dpo objective with the robust loss.")
    elif a.label_smoothing and not loss.label_smoothing:
        takes = ", ".join(n for n, x in catalog.PREFERENCE_LOSSES.items() if x.label_smoothing)
        out["alignment.label_smoothing"] = (f"The {loss.title} loss has no label smoothing (only {takes} do); set it "
                                            "to 0 or choose one of those losses.")
    return out


def validate_objective(cfg: Any) -> dict[str, str]:
    """Field -> sentence for combinations that cannot train."""
    losses = validate_losses(cfg)
    if losses:
        return losses
    if cfg.train.neftune_noise_alpha and catalog.OBJECTIVES[cfg.objective].online:
        return {"train.neftune_noise_alpha": (f"NEFTune noise is for learning from given answers; {cfg.objective.upper()} "
                                              "samples its own answers, so clear the NEFTune setting.")}
    if not is_alignment(cfg.objective):
        return {}
    method = catalog.METHODS[cfg.method.name]
    if cfg.objective == catalog.OBJECTIVE.reward and not method.reward_model:
        return {"method.name": (f"A reward model cannot train with {method.title} here; choose one of "
                                f"{', '.join(catalog.methods_where(reward_model=True))}.")}
    if method.family == "prompt":
        return {"method.name": (f"{cfg.objective.upper()} cannot train a prompt method ({method.title}): the "
                                "trainer needs the model's own outputs with and without the adapter; choose LoRA.")}
    if catalog.OBJECTIVES[cfg.objective].online:
        return online_rl.validate_online(cfg)
    return {}
