"""The Chat tab offers a run's complete checkpoints next to its final adapter, and a checkpoint
folder is traced back to its run (base model and settings from the run's config)."""
from __future__ import annotations

import json

import torch
from safetensors.torch import save_file

from backend.runs import rundir
from backend.inference.chat import chat_choices
from backend.core.config import RunConfig
from backend.export.merge import locate_adapter


def lora_folder(path, base: str) -> None:
    path.mkdir(parents=True)
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "base_model_name_or_path": base}))
    save_file({"w": torch.zeros(2)}, str(path / "adapter_model.safetensors"))


def test_complete_checkpoints_are_offered_and_lead_back_to_their_run(tmp_path):
    run_dir = rundir.create_run(tmp_path, RunConfig.model_validate({"model": "smollm2-135m-instruct"}))
    rundir.write_status(run_dir, state="completed", method="lora")
    lora_folder(rundir.adapter_dir(run_dir), "/somewhere/base")
    for step in (10, 20, 30):
        ckpt = rundir.checkpoints_dir(run_dir) / f"checkpoint-{step}"
        lora_folder(ckpt, "/somewhere/base")
        if step != 30:  # the newest one was cut short: no trainer state
            (ckpt / "trainer_state.json").write_text(json.dumps({"global_step": step}))

    values = [v for _, v in chat_choices(tmp_path)]
    ckpts = [v for v in values if "checkpoint-" in v]
    assert str(run_dir) in values
    assert ckpts == [str(rundir.checkpoints_dir(run_dir) / "checkpoint-20"), str(rundir.checkpoints_dir(run_dir) / "checkpoint-10")]
    labels = [label for label, v in chat_choices(tmp_path) if v == ckpts[0]]
    assert labels and "step 20" in labels[0]

    src = locate_adapter(ckpts[0])
    assert src.run_dir == run_dir and src.base == "smollm2-135m-instruct"


def test_reward_models_are_not_offered_for_chat_and_are_refused_with_where_to_use_them(tmp_path):
    import pytest

    from backend.core.errors import UserError

    run_dir = rundir.create_run(tmp_path, RunConfig.model_validate({"objective": "reward"}))
    rundir.write_status(run_dir, state="completed", method="lora")
    lora_folder(rundir.adapter_dir(run_dir), "/somewhere/base")
    (rundir.adapter_dir(run_dir) / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA",
                                                                               "task_type": "SEQ_CLS"}))
    assert str(run_dir) not in [v for _, v in chat_choices(tmp_path)]
    with pytest.raises(UserError, match="reward model.*GRPO or RLOO"):
        locate_adapter(run_dir)
    full = tmp_path / "scorer"
    full.mkdir()
    (full / "config.json").write_text(json.dumps({"architectures": ["LlamaForSequenceClassification"]}))
    with pytest.raises(UserError, match="reward model"):
        locate_adapter(full)
