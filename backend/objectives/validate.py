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


def validate_objective(cfg: Any) -> dict[str, str]:
    """Field -> sentence for combinations that cannot train."""
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
