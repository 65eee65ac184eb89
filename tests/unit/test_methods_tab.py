"""The Method tab's pure helpers: field generation, config writing, estimate rendering, error sentences."""
from __future__ import annotations

from backend.core.precision import available_precisions
from backend.methods import METHODS
from studio.tabs.method import (
    LABELS, METHOD_FIELDS, effective_batch_text, label_of, field_kind, shown_fields, widget_to_value, with_fields,
)
from studio.tabs.method_view import estimate_figure, estimate_summary, humanize_errors

EST = {
    "terms_bytes": {"weights": 2**30, "gradients": 2**29, "optimizer": 2**31, "activations": 2**28,
                    "logits": 2**30, "overhead": 2**29},
    "formulas": {"weights": "7,000 params x 2 B = 13.7 KiB", "logits": "4 x 512 x 49,152 x 14 B"},
    "total_bytes": 5 * 2**30, "allocated_bytes": 4 * 2**30, "trainable_params": 10, "total_params": 1000,
    "gpus": [], "fits": None, "suggestions": [], "notes": ["No GPU was found (no NVIDIA driver)", "A note."],
}


def test_every_method_param_gets_a_generated_widget_with_a_label():
    for spec in METHODS.values():
        for p in spec.params:
            if p != "target_modules":
                assert f"method.{p}" in METHOD_FIELDS and label_of(f"method.{p}")
    assert label_of("method.r") == LABELS["method.r"]
    assert label_of("method.some_new_field") == "Some new field"


def test_field_kinds_come_from_the_config_types():
    assert field_kind("method.r") == ("int", [], False)
    assert field_kind("train.max_steps") == ("int", [], True)
    assert field_kind("data.packing")[0] == "bool"
    kind, choices, _ = field_kind("train.optimizer")
    assert kind == "choice" and "paged_adamw_8bit" in choices
    assert field_kind("train.precision")[1] == available_precisions()
    assert field_kind("objective")[0] == "choice" and "dpo" in field_kind("objective")[1]


def test_only_the_chosen_methods_fields_are_shown():
    assert shown_fields("lora") == {"method.r", "method.alpha", "method.dropout", "method.target_modules",
                                    "method.lora_init"}
    assert "method.loraplus_lr_ratio" in shown_fields("loraplus")
    assert "method.lora_init" in shown_fields("qlora")  # for LoftQ
    assert shown_fields("oft") == {"method.oft_block_size", "method.oft_cayley_neumann", "method.target_modules"}
    assert shown_fields("boft") == {"method.oft_block_size", "method.target_modules"}


def test_each_method_offers_only_the_adapter_starts_that_fit_it():
    from studio.tabs.method import lora_init_choices

    # PiSSA/OLoRA decompose 16-bit weights; LoftQ fits a 4-bit base's quantization error.
    assert lora_init_choices("lora") == ["default", "pissa", "olora"]
    assert lora_init_choices("qlora") == ["default", "loftq"]
    assert lora_init_choices("qlora", "pissa") == ["default", "loftq", "pissa"]  # kept so its sentence shows
    assert shown_fields("full") == set()


def test_writing_fields_keeps_the_dataset_tabs_choices():
    rc = {"data": {"path": "mine.jsonl", "template": "chatml", "max_length": 128}, "method": {"name": "full"}}
    out = with_fields(rc, " smollm2-135m-instruct ", "lora", ["q_proj"], False,
                      {"method.r": 8.0, "train.max_steps": None, "data.max_length": 256})
    assert out["data"] == {"path": "mine.jsonl", "template": "chatml", "max_length": 256}
    assert out["model"] == "smollm2-135m-instruct" and out["method"]["r"] == 8 and isinstance(out["method"]["r"], int)
    assert out["train"]["max_steps"] is None and rc["data"]["max_length"] == 128  # the input is not modified
    assert with_fields(rc, "m", "lora", ["q_proj"], True, {})["method"]["target_modules"] == "all-linear"


def test_blank_widgets_become_none_and_checkboxes_false():
    assert widget_to_value("early_stopping.patience", "") is None
    assert widget_to_value("train.max_steps", 0) is None  # a cleared number box arrives as 0
    assert widget_to_value("train.seed", 0) == 0
    assert widget_to_value("data.packing", None) is False


def test_effective_batch_multiplies_batch_accumulation_and_gpus():
    text = effective_batch_text({"train": {"batch_size": 4, "gradient_accumulation": 8}, "distributed": {"gpus": 2}})
    assert "**64**" in text
    assert effective_batch_text({"train": {"batch_size": None}}) == ""


def test_pydantic_range_messages_become_sentences_naming_the_field():
    out = humanize_errors({"method.r": "Input should be greater than or equal to 1 (got 0)",
                           "train.learning_rate": "Input should be greater than 0 (got 0.0)",
                           "model": "The model type 't5' is not a causal language model."}, LABELS)
    assert out["method.r"] == "Rank (r) must be at least 1 (got 0)."
    assert out["train.learning_rate"] == "Learning rate must be more than 0 (got 0.0)."
    assert out["model"] == "The model type 't5' is not a causal language model."


def test_figure_has_one_segment_per_term_with_its_formula_on_hover():
    fig = estimate_figure(EST)
    assert [t.name for t in fig.data] == ["Weights", "Gradients", "Optimizer states", "Activations",
                                          "Logits and loss", "Runtime overhead"]
    assert fig.layout.barmode == "stack" and fig.data[0].x[0] == 1.0
    assert fig.data[0].customdata[0][0] == "7,000 params x 2 B = 13.7 KiB"
    assert "customdata[0]" in fig.data[0].hovertemplate
    with_gpu = estimate_figure({**EST, "per_gpu": [{"name": "RTX", "free_bytes": 24 * 2**30}]})
    assert with_gpu.layout.shapes and with_gpu.layout.shapes[0].x0 == 24


def test_summary_says_no_gpu_on_a_cpu_machine_and_lists_counts():
    fits, details = estimate_summary(EST)
    assert "No GPU found" in fits and "5.00 GiB" in fits
    assert "10 of 1,000 (1%)" in details and "A note." in details and "No GPU was found" not in details


def test_summary_says_fits_or_not_with_headroom_and_suggestions():
    gpu = {"name": "RTX 4090", "free_bytes": 24 * 2**30}
    fits, _ = estimate_summary({**EST, "gpus": [gpu], "per_gpu": [gpu], "fits": True, "headroom_bytes": 19 * 2**30})
    assert fits.startswith("✅") and "19.00 GiB headroom" in fits
    small = {"name": "T4", "free_bytes": 4 * 2**30}
    fits, details = estimate_summary({**EST, "gpus": [small], "per_gpu": [small], "fits": False,
                                      "headroom_bytes": -(2**30), "suggestions": ["Enable checkpointing", "Use QLoRA"]})
    assert fits.startswith("❌") and "1.00 GiB short" in fits
    assert "1. Enable checkpointing\n2. Use QLoRA" in details


def test_alignment_settings_are_fields_of_the_method_tab():
    from studio.context import default_run_config
    from studio.tabs.method import MORE_ROWS, with_fields

    assert ["alignment.beta", "alignment.desirable_weight", "alignment.undesirable_weight"] in MORE_ROWS
    rc = with_fields(default_run_config(), "smollm2-135m-instruct", "lora", ["q_proj"], False,
                     {"alignment.beta": 0.3})
    assert rc["alignment"]["beta"] == 0.3


def test_every_objective_explains_itself_and_every_alignment_setting_has_a_labelled_field():
    from backend.core.config import OBJECTIVES, AlignmentConfig
    from studio.tabs.method import LABELS, MORE_ROWS, objective_help

    for name in OBJECTIVES:
        assert len(objective_help(name)) > 40, name
    shown = {p for row in MORE_ROWS for p in row}
    for name in AlignmentConfig.model_fields:
        assert f"alignment.{name}" in shown and f"alignment.{name}" in LABELS


def test_reward_model_choices_list_only_finished_reward_runs(tmp_path):
    from backend.runs import rundir
    from backend.core.config import RunConfig
    from backend.objectives.online_rl import reward_runs

    ws = tmp_path / "ws"
    done = rundir.create_run(ws, RunConfig.model_validate({"objective": "reward", "name": "scorer"}))
    rundir.write_status(done, state="completed")
    (done / "adapter").mkdir()
    sft = rundir.create_run(ws, RunConfig.model_validate({"objective": "sft"}))
    rundir.write_status(sft, state="completed")
    (sft / "adapter").mkdir()
    running = rundir.create_run(ws, RunConfig.model_validate({"objective": "reward"}))
    rundir.write_status(running, state="running")
    choices = reward_runs(ws)
    assert [path for _, path in choices] == [str(done)]
    assert choices[0][0].startswith("scorer")


def test_the_card_size_field_is_blank_for_the_gpus_found_and_a_number_otherwise():
    import pytest

    from backend.core.errors import UserError
    from studio.tabs.method_view import card_size

    assert card_size("") is None and card_size(None) is None and card_size("  ") is None
    assert card_size("24") == 24.0 and card_size("80 GB") == 80.0
    with pytest.raises(UserError, match="not a number"):
        card_size("big")
    with pytest.raises(UserError, match="more than 0"):
        card_size("0")


def test_the_studio_estimate_uses_the_dataset_tabs_measured_lengths(tiny_model_dir):
    from studio.context import default_run_config
    from studio.tabs.method_view import compute_estimate

    rc = default_run_config()
    rc["model"] = str(tiny_model_dir)
    rc["data"]["max_length"] = 1024
    _, _, blind = compute_estimate(rc, "24")
    _, _, measured = compute_estimate(rc, "24", {"lengths": [12, 30, 61], "total": 3})
    assert "the data's longest row, 61 tokens (max length 1024)" in measured
    assert "no data lengths measured" in blind


def test_a_choice_fields_help_names_the_chosen_value():
    from backend.core import catalog
    from studio.tabs.method_fields import CHOICE_HELP_FIELDS, LABELS, MORE_ROWS, TRAIN_ROWS, choice_help

    shown = {p for row in TRAIN_ROWS + MORE_ROWS for p in row}
    for path in ("train.neftune_noise_alpha", "train.embedding_learning_rate", "train.layer_lr_decay",
                 "alignment.loss_type", "alignment.label_smoothing", "alignment.cpo_alpha", "alignment.simpo_gamma"):
        assert path in shown and path in LABELS
    assert "method.lora_init" in CHOICE_HELP_FIELDS and "PiSSA" in LABELS["method.lora_init"]
    for table, path in ((catalog.PREFERENCE_LOSSES, "alignment.loss_type"), (catalog.LORA_INITS, "method.lora_init"),
                        (catalog.OPTIMIZERS, "train.optimizer")):
        for name, info in table.items():
            assert choice_help(path, name) == info.help and 20 < len(info.help) < 400, (path, name)
    assert choice_help("train.optimizer", "nope") == ""
