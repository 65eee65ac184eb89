"""GRPO/RLOO's data and rewards as plain functions: prompts from every dataset layout, the reward
functions' scores, and the sentences for settings that cannot train."""
from __future__ import annotations

import json

import pytest

from backend.objectives import online_rl
from backend.core.config import ConfigError, RunConfig, validate_config
from backend.core.errors import UserError


def cfg(**alignment) -> RunConfig:
    return RunConfig.model_validate({"objective": "grpo", "alignment": alignment,
                                     "train": {"batch_size": 2, "gradient_accumulation": 2}})


def test_chat_prompts_end_before_the_last_assistant_turn_which_becomes_the_reference():
    rows = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
                          {"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]}]
    out = online_rl.prompt_rows(rows, "messages", "Be brief.")
    assert out == [{"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                               {"role": "assistant", "content": "Hello"}, {"role": "user", "content": "2+2?"}],
                    "reference": "4"}]


def test_preference_and_kto_rows_give_prompts_and_only_good_answers_as_references():
    pref = online_rl.prompt_rows([{"prompt": "Q", "chosen": "good", "rejected": "bad"}], "preference", None)
    assert pref == [{"prompt": [{"role": "user", "content": "Q"}], "reference": "good"}]
    kto = online_rl.prompt_rows([{"prompt": "Q", "completion": "meh", "label": False},
                                 {"prompt": "R", "completion": "yes", "label": True}], "kto", None)
    assert [r["reference"] for r in kto] == ["", "yes"]


def test_rows_without_a_user_turn_are_skipped_and_plain_text_is_refused():
    assert online_rl.prompt_rows([{"messages": [{"role": "system", "content": "s"}]}], "messages", None) == []
    with pytest.raises(UserError, match="plain text"):
        online_rl.prompt_rows([{"text": "abc"}], "text", None)


def test_token_f1_scores_overlap_between_zero_and_one():
    assert online_rl.token_f1("ANSWER: 56", "answer: 56 | WHY: sum") == pytest.approx(2 * 1 * 0.5 / 1.5)
    assert online_rl.token_f1("Lima", "Lima") == 1.0
    assert online_rl.token_f1("nothing", "Lima") == 0.0
    assert online_rl.token_f1("", "Lima") == 0.0


def test_reward_functions_score_text_and_chat_completions():
    fmt = online_rl.pattern_reward(r"^ANSWER: .+ \| WHY: ")
    chats = [[{"role": "assistant", "content": "ANSWER: 6 | WHY: counted"}],
             [{"role": "assistant", "content": "six"}]]
    assert fmt(completions=chats) == [1.0, 0.0]
    scores = online_rl.reference_overlap(completions=["Lima", "Paris"], reference=["Lima", ""])
    assert scores == [1.0, None]  # no reference: TRL leaves that score out instead of counting a 0


def test_settings_that_cannot_train_name_their_field():
    assert "alignment.reward_model" in online_rl.validate_online(cfg())
    assert "not a valid regular expression" in online_rl.validate_online(cfg(reward_pattern="(unclosed"))[
        "alignment.reward_pattern"]
    odd = cfg(reward_reference=True, num_generations=3)
    assert "multiple of 3" in online_rl.validate_online(odd)["alignment.num_generations"]
    assert online_rl.validate_online(cfg(reward_reference=True)) == {}


def test_reward_model_locations_are_checked(tmp_path):
    with pytest.raises(UserError, match="not a directory"):
        online_rl.locate_reward_model(str(tmp_path / "missing"))
    causal = tmp_path / "causal"
    causal.mkdir()
    (causal / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    with pytest.raises(UserError, match="without a scoring head"):
        online_rl.locate_reward_model(str(causal))
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_text(json.dumps({"task_type": "CAUSAL_LM"}))
    with pytest.raises(UserError, match="not a reward model"):
        online_rl.locate_reward_model(str(lora))
    scorer = tmp_path / "scorer"
    scorer.mkdir()
    (scorer / "config.json").write_text(json.dumps({"architectures": ["LlamaForSequenceClassification"]}))
    assert online_rl.locate_reward_model(str(scorer))["kind"] == "full"


def test_online_objectives_refuse_packing_with_a_sentence():
    with pytest.raises(ConfigError, match="packing is not available for the rloo objective"):
        validate_config({"objective": "rloo", "data": {"packing": True}})


def test_long_prompts_are_left_out_not_cut():
    class Tok:
        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return list(range(sum(len(m["content"]) for m in messages)))

    rows = [{"prompt": [{"role": "user", "content": "x" * 5}]}, {"prompt": [{"role": "user", "content": "y" * 50}]}]
    kept, dropped = online_rl.drop_long_prompts(rows, Tok(), 10)
    assert kept == rows[:1] and dropped == 1


def test_a_reward_run_still_training_is_named_with_its_state(tmp_path):
    from backend.runs import rundir

    run_dir = rundir.create_run(tmp_path, RunConfig.model_validate({"objective": "reward"}))
    rundir.write_status(run_dir, state="running")
    with pytest.raises(UserError, match=r"no saved model yet \(state: running\)"):
        online_rl.locate_reward_model(str(run_dir))


def test_a_hub_reward_model_id_is_accepted_without_a_download():
    assert online_rl.locate_reward_model("someone/reward-model") == {"kind": "full", "path": "someone/reward-model",
                                                                      "base": None}
