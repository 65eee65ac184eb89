"""The checks before a run starts: the config's ranges, the model, the method, the objective and this machine.

Each check lives with what it checks (RunConfig ranges in backend.core.config, method and hardware
checks in backend.methods.validation, method/objective combinations in backend.objectives.validate);
this module asks them all in one place, so the Method tab and a start from the command line see the
same sentences.
"""
from __future__ import annotations

from typing import Any

from backend.core.config import ConfigError, RunConfig, validate_config
from backend.core.models import ModelError, load_model_config
from backend.methods.validation import validate_for_model
from backend.objectives.validate import validate_objective


def run_problems(cfg: RunConfig, model_config: Any) -> dict[str, str]:
    """Field -> sentence for everything about cfg that cannot train on this model and machine."""
    errors = validate_for_model(cfg, model_config)
    for field, sentence in validate_objective(cfg).items():
        errors.setdefault(field, sentence)
    return errors


def check_run(data: dict[str, Any]) -> tuple[RunConfig | None, dict[str, str]]:
    """Validate a RunConfig dict fully (ranges, model, hardware): (RunConfig or None, field -> sentence)."""
    try:
        cfg = validate_config(data)
    except ConfigError as e:
        return None, dict(e.fields)
    try:
        model_config = load_model_config(cfg.model, trust_remote_code=cfg.trust_remote_code)
    except ModelError as e:
        return cfg, {"model": str(e)}
    return cfg, run_problems(cfg, model_config)
