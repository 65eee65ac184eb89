"""The Method tab: model, method and hyperparameters, with the live VRAM estimate and presets.

The hyperparameter widgets are generated from the RunConfig's field metadata (type, choices,
description), and which method fields show comes from the method registry, so a method added
to backend.methods appears here without touching this file. Every decision is the backend's:
backend.methods (registry, inspection, validation), backend.estimator, backend.core.presets.
"""
from __future__ import annotations

import copy
import time
from typing import Any, Literal, Optional, Union, get_args, get_origin

import gradio as gr

from backend.core.config import (
    AlignmentConfig, ConfigError, DataConfig, DistributedConfig, EarlyStoppingConfig, MethodConfig, TrainConfig, config_to_yaml,
    validate_config,
)
from backend.core.errors import UserError
from backend.core.io import atomic_write_text
from backend.methods import METHODS, available_precisions, check_run, inspect_model
from backend.core.models import BUNDLED, ModelError
from backend.objectives.online_rl import reward_runs as reward_run_choices
from backend.core.presets import apply_preset, list_presets, preset_info, save_preset
from studio.context import StudioContext
from studio.tabs.method_view import estimate_figure, estimate_summary, humanize_errors

SECTIONS = {"method": MethodConfig, "train": TrainConfig, "data": DataConfig,
            "early_stopping": EarlyStoppingConfig, "distributed": DistributedConfig,
            "alignment": AlignmentConfig}
METHOD_FIELDS = [f"method.{n}" for n in MethodConfig.model_fields if n not in ("name", "target_modules")]
TRAIN_ROWS = [
    ["train.epochs", "train.max_steps", "train.learning_rate", "train.scheduler"],
    ["train.warmup_ratio", "train.weight_decay", "train.optimizer", "train.precision"],
    ["train.batch_size", "train.gradient_accumulation", "data.max_length", "data.packing"],
    ["train.gradient_checkpointing", "train.eval_steps", "train.save_steps", "train.seed"],
]
MORE_ROWS = [
    ["early_stopping.patience", "early_stopping.threshold", "early_stopping.metric"],
    ["train.logging_steps", "train.max_grad_norm", "distributed.gpus", "distributed.strategy"],
    # Read only by the dpo/orpo/kto objectives.
    ["alignment.beta", "alignment.desirable_weight", "alignment.undesirable_weight"],
    # Read only by grpo/rloo: sampling, then the rewards that score the samples.
    ["alignment.num_generations", "alignment.max_completion_length", "alignment.temperature", "alignment.kl_coef"],
    ["alignment.reward_model", "alignment.reward_pattern", "alignment.reward_reference"],
]
STEPS = {"train.learning_rate": 1e-5, "method.dropout": 0.01, "train.warmup_ratio": 0.01,
         "train.weight_decay": 0.01, "method.alpha": 1, "early_stopping.threshold": 0.001,
         "method.fish_mask_density": 0.001, "train.max_grad_norm": 0.1, "train.epochs": 0.5,
         "method.loraplus_lr_ratio": 1, "method.s2_attn_group_ratio": 0.05}

TEXT = {
    "intro": ("Choose the model and how it learns. The estimate on the right updates with every change; "
              "problems are marked at their field before any training starts."),
    "model_info": ("**{model_type}**: {num_layers} layers, hidden size {hidden_size}, vocabulary {vocab_size}, "
                   "context {ctx} tokens, {params} parameters. Linear layers: {linear}."),
    "targets": "Linear layers that get adapters. Shortcuts:",
    "all_linear": "All linear layers ('all-linear': every linear layer except the output head; overrides the list)",
    "effective": "Effective batch: {b} per step × {a} accumulation × {g} GPU(s) = **{e}** sequences per update.",
    "saved_preset": "Saved preset **{name}** to `{path}`.",
    "exported": "Exported the full RunConfig to `{path}`; run it headless with `ftstudio train {path}`.",
    "preset_applied": "Applied preset **{title}**: {description}",
    "fix_first": "Fix the fields marked in red to see the estimate.",
}
LABELS = {
    "model": "Model", "method.name": "Method", "objective": "Objective", "method.target_modules": "Target modules",
    "method.r": "Rank (r)", "method.alpha": "Alpha", "method.dropout": "Dropout",
    "method.loraplus_lr_ratio": "LoRA+ ratio (B / A learning rate)", "method.num_layers": "Top layers that train",
    "method.quant_type": "4-bit data type", "method.double_quant": "Double quantization",
    "method.compute_dtype": "4-bit compute dtype", "method.num_virtual_tokens": "Virtual tokens",
    "method.prompt_init_text": "Initialise prompt from text", "method.bottleneck": "Adapter bottleneck size",
    "method.init_r": "Initial rank", "method.unfreeze_every": "Unfreeze a group every N steps (0: each epoch)",
    "method.fish_mask_density": "Share of parameters that train", "method.adapter_activation": "Adapter non-linearity",
    "method.s2_attn_group_ratio": "S²-Attn group size (share of the sequence; 1: off)",
    "train.epochs": "Epochs", "train.max_steps": "Max steps (0 or blank: use epochs)", "train.learning_rate": "Learning rate",
    "train.scheduler": "Scheduler", "train.warmup_ratio": "Warmup share", "train.weight_decay": "Weight decay",
    "train.batch_size": "Batch size", "train.gradient_accumulation": "Gradient accumulation",
    "train.precision": "Precision", "train.optimizer": "Optimizer",
    "train.gradient_checkpointing": "Gradient checkpointing", "train.eval_steps": "Evaluate every N steps",
    "train.save_steps": "Save every N steps (0 or blank: with evaluation)", "train.logging_steps": "Log every N steps",
    "train.max_grad_norm": "Gradient clipping norm", "train.seed": "Seed",
    "data.max_length": "Max sequence length", "data.packing": "Packing",
    "early_stopping.patience": "Early-stopping patience (0 or blank: off)",
    "early_stopping.threshold": "Minimum improvement", "early_stopping.metric": "Watched metric",
    "distributed.gpus": "GPUs", "distributed.strategy": "Multi-GPU strategy",
    "alignment.beta": "Beta (DPO/KTO/ORPO)", "alignment.desirable_weight": "KTO weight of good answers",
    "alignment.undesirable_weight": "KTO weight of bad answers",
    "alignment.num_generations": "Answers sampled per prompt", "alignment.max_completion_length": "Longest answer (tokens)",
    "alignment.temperature": "Sampling temperature", "alignment.kl_coef": "KL penalty (0: no reference pass)",
    "alignment.reward_model": "Reward model run", "alignment.reward_pattern": "Reward pattern (regular expression)",
    "alignment.reward_reference": "Reward overlap with the dataset's answer",
}
OBJECTIVE_HELP = {"sft": ("Supervised fine-tuning: learn the answers of the dataset, token by token. Other "
                          "objectives: dpo/orpo/kto/reward learn from preference data, grpo/rloo from prompts and "
                          "rewards."),
                  "pretrain": "Continued pre-training: learn every token of plain text."}
BAD_INPUT = (UserError, ModelError, ConfigError)


# ---------------------------------------------------------------- pure helpers (tested without a browser)

def label_of(path: str) -> str:
    """The field's label; a field added to the config later gets a readable one from its name."""
    return LABELS.get(path) or path.split(".")[-1].replace("_", " ").capitalize()


def field_info(path: str):
    if "." not in path:  # a top-level RunConfig field (objective)
        from backend.core.config import RunConfig

        return RunConfig.model_fields[path]
    section, name = path.split(".", 1)
    return SECTIONS[section].model_fields[name]


def field_kind(path: str) -> tuple[str, list[Any], bool]:
    """(kind, choices, optional) of a config field: kind is choice | bool | int | float | text."""
    ann = field_info(path).annotation
    optional = False
    if get_origin(ann) is Union and type(None) in get_args(ann):
        optional = True
        rest = [a for a in get_args(ann) if a is not type(None)]
        ann = rest[0] if len(rest) == 1 else str
    if get_origin(ann) is Literal:
        choices = list(get_args(ann))
        if path in ("train.precision", "method.compute_dtype"):
            choices = [c for c in choices if c in available_precisions()]
        return "choice", choices, optional
    for kind, typ in (("bool", bool), ("int", int), ("float", float)):
        if ann is typ:
            return kind, [], optional
    return "text", [], optional


def get_path(rc: dict[str, Any], path: str) -> Any:
    node: Any = rc
    for part in path.split("."):
        node = (node or {}).get(part) if isinstance(node, dict) else None
    return node


def set_path(rc: dict[str, Any], path: str, value: Any) -> None:
    parts = path.split(".")
    node = rc
    for part in parts[:-1]:
        node = node.setdefault(part, {})
    node[parts[-1]] = value


def widget_to_value(path: str, value: Any) -> Any:
    """A widget's value as the config wants it: blanks are None, whole floats of int fields are ints."""
    kind, _, optional = field_kind(path)
    if value is None or (isinstance(value, str) and not value.strip()):
        return None if kind != "bool" else False
    if optional and kind == "int" and value == 0:
        return None  # the browser sends a cleared number box as 0; for these fields 0 means "off"
    if kind == "int" and isinstance(value, float) and value.is_integer():
        return int(value)
    return value


def with_fields(rc: dict[str, Any], model: str, method: str, targets: list[str], all_linear: bool,
                values: dict[str, Any]) -> dict[str, Any]:
    """A copy of rc with the tab's fields written in; sections other tabs own are kept as they were."""
    out = copy.deepcopy(rc or {})
    out["model"] = (model or "").strip()
    set_path(out, "method.name", method)
    set_path(out, "method.target_modules", "all-linear" if all_linear else list(targets or []))
    for path, value in values.items():
        set_path(out, path, widget_to_value(path, value))
    return out


def shown_fields(method: str) -> set[str]:
    spec = METHODS.get(method)
    return {f"method.{p}" for p in spec.params} if spec else set()


def effective_batch_text(rc: dict[str, Any]) -> str:
    try:
        b, a = int(get_path(rc, "train.batch_size")), int(get_path(rc, "train.gradient_accumulation"))
        g = int(get_path(rc, "distributed.gpus") or 1) * int(get_path(rc, "distributed.nodes") or 1)
    except (TypeError, ValueError):
        return ""
    return TEXT["effective"].format(b=b, a=a, g=g, e=b * a * g)


def model_info_text(info: Any) -> str:
    return TEXT["model_info"].format(
        model_type=info.model_type, num_layers=info.num_layers, hidden_size=info.hidden_size,
        vocab_size=f"{info.vocab_size:,}", ctx=f"{info.max_positions:,}" if info.max_positions else "?",
        params=f"{info.total_params:,}", linear=", ".join(info.linear_layers) or "none found")


def problems_of(rc: dict[str, Any]) -> tuple[Any, dict[str, str]]:
    """(RunConfig or None, field path -> sentence) for everything this tab can check before training."""
    try:
        cfg, errors = check_run(rc)
    except BAD_INPUT as e:
        return None, {"": str(e)}
    return cfg, humanize_errors(errors, {**{p: label_of(p) for p in METHOD_FIELDS}, **LABELS})


def compute_estimate(rc: dict[str, Any], card_gb: Optional[float]) -> tuple[Any, str, str]:
    """(figure, fits markdown, details markdown) for rc; a sentence instead when rc is not valid."""
    try:
        cfg = validate_config(rc)
    except ConfigError:
        return None, TEXT["fix_first"], ""
    from backend.estimator import estimate

    try:
        if card_gb:
            est = estimate(cfg, gpu_count=cfg.distributed.gpus, gpu_memory_gb=float(card_gb))
        else:
            est = estimate(cfg)
    except BAD_INPUT as e:
        return None, str(e), ""
    data = est.to_json()
    fits, details = estimate_summary(data)
    return estimate_figure(data), fits, details


# ---------------------------------------------------------------- layout

def objective_help(name: str) -> str:
    from backend.objectives.trainers import OBJECTIVES

    spec = OBJECTIVES.get(name)
    return f"**{spec.title}**: {spec.help}" if spec else OBJECTIVE_HELP.get(name, "")


def _widget(path: str, value: Any, options: Optional[list] = None) -> gr.components.Component:
    kind, choices, optional = field_kind(path)
    label, info = label_of(path), field_info(path).description
    if options is not None:  # suggestions from the workspace; any other value may still be typed
        return gr.Dropdown(choices=options, value=value, label=label, info=info, allow_custom_value=True)
    if kind == "choice":
        if value not in choices and value is not None:
            choices = choices + [value]  # keep an unavailable value visible so its error shows at the field
        return gr.Dropdown(choices=choices, value=value, label=label, info=info)
    if kind == "bool":
        return gr.Checkbox(value=bool(value), label=label, info=info)
    if kind in ("int", "float"):
        return gr.Number(value=value, label=label, info=info, precision=0 if kind == "int" else None,
                         step=STEPS.get(path, 1))
    return gr.Textbox(value=value or "", label=label, info=info)


def _field(path: str, rc: dict[str, Any], visible: bool = True, options: Optional[list] = None) -> tuple[Any, Any, Any]:
    with gr.Column(visible=visible, min_width=160, elem_id=f"method-col-{path.replace('.', '-')}") as col:
        widget = _widget(path, get_path(rc, path), options)
        err = gr.Markdown("", visible=False, elem_classes=["ft-error"], elem_id=f"method-err-{path.replace('.', '-')}")
    return col, widget, err


def build(ctx: StudioContext) -> None:
    from studio.context import default_run_config

    rc0 = default_run_config()
    presets_dir = ctx.workspace / "presets"
    widgets: dict[str, Any] = {}
    errs: dict[str, Any] = {}
    cols: dict[str, Any] = {}

    gr.Markdown("## Method\n" + TEXT["intro"])
    with gr.Row():
        with gr.Column(scale=3):
            with gr.Row():
                model = gr.Dropdown(choices=list(BUNDLED), value=rc0["model"], allow_custom_value=True, scale=4,
                                    label=LABELS["model"], elem_id="method-model",
                                    info="The bundled model, a local directory holding config.json, or a hub id.")
                inspect_btn = gr.Button("Inspect", scale=1, elem_id="method-inspect")
            model_md = gr.Markdown(elem_id="method-model-info")
            errs["model"] = gr.Markdown(visible=False, elem_classes=["ft-error"], elem_id="method-err-model")
            with gr.Row():
                preset_dd = gr.Dropdown(choices=[(t, n) for n, t in list_presets(presets_dir)], value=None,
                                        label="Preset", scale=4, elem_id="method-preset")
                preset_btn = gr.Button("Apply preset", scale=1, elem_id="method-apply-preset")
            preset_md = gr.Markdown(elem_classes=["ft-help"])
            with gr.Row():
                method = gr.Dropdown(choices=[(s.title, n) for n, s in METHODS.items()], value=rc0["method"]["name"],
                                     label=LABELS["method.name"], elem_id="method-name", scale=2)
                cols["objective"], widgets["objective"], errs["objective"] = _field("objective", rc0)
            objective_md = gr.Markdown(objective_help(rc0["objective"]), elem_id="method-objective-help",
                                       elem_classes=["ft-help"])
            help_md = gr.Markdown(METHODS[rc0["method"]["name"]].help, elem_id="method-help",
                                  elem_classes=["ft-help"])
            errs["method.name"] = gr.Markdown(visible=False, elem_classes=["ft-error"], elem_id="method-err-method-name")
            shown = shown_fields(rc0["method"]["name"])
            with gr.Group(visible="method.target_modules" in shown) as targets_box:
                # A free-text multiselect: a name the model lacks gets a sentence from validation
                # instead of being impossible to express.
                targets = gr.Dropdown(choices=rc0["method"]["target_modules"], value=rc0["method"]["target_modules"],
                                      multiselect=True, allow_custom_value=True, label=LABELS["method.target_modules"],
                                      info=TEXT["targets"], elem_id="method-targets")
                with gr.Row():
                    sc_attn = gr.Button("attention only", size="sm", elem_id="method-sc-attention")
                    sc_qv = gr.Button("Q and V", size="sm", elem_id="method-sc-qv")
                    sc_all = gr.Button("all linear", size="sm", elem_id="method-sc-all")
                all_linear = gr.Checkbox(value=rc0["method"]["target_modules"] == "all-linear",
                                         label=TEXT["all_linear"], elem_id="method-all-linear")
                errs["method.target_modules"] = gr.Markdown(visible=False, elem_classes=["ft-error"],
                                                            elem_id="method-err-method-target_modules")
            with gr.Row():
                for path in METHOD_FIELDS:
                    cols[path], widgets[path], errs[path] = _field(path, rc0, visible=path in shown)
            with gr.Accordion("Training", open=True):
                for row in TRAIN_ROWS:
                    with gr.Row():
                        for path in row:
                            cols[path], widgets[path], errs[path] = _field(path, rc0)
                batch_md = gr.Markdown(effective_batch_text(rc0), elem_id="method-effective-batch")
            with gr.Accordion("Early stopping, logging, GPUs and alignment (DPO/ORPO/KTO/GRPO/RLOO)",
                              open=False) as more_box:
                for row in MORE_ROWS:
                    with gr.Row():
                        for path in row:
                            options = reward_run_choices(ctx.workspace) if path == "alignment.reward_model" else None
                            cols[path], widgets[path], errs[path] = _field(path, rc0, options=options)
        with gr.Column(scale=2):
            card_gb = gr.Number(value=None, label="Check against a card of … GB (blank: the GPUs found)",
                                elem_id="method-card-gb")
            fits_md = gr.Markdown(elem_id="method-fits")
            plot = gr.Plot(elem_id="method-estimate", label="Estimated GPU memory")
            details_md = gr.Markdown(elem_id="method-estimate-details")
            errors_md = gr.Markdown(elem_id="method-errors", elem_classes=["ft-error"])
            with gr.Row():
                preset_name = gr.Textbox(label="Save current settings as preset", placeholder="my-lora-run", scale=3,
                                         elem_id="method-preset-name")
                save_btn = gr.Button("Save preset", scale=1, elem_id="method-save-preset")
            export_btn = gr.Button("Export RunConfig YAML", elem_id="method-export")
            export_file = gr.File(label="RunConfig YAML", interactive=False, elem_id="method-export-file")
            status_md = gr.Markdown(elem_id="method-status")

    field_paths = list(widgets)
    field_widgets = [widgets[p] for p in field_paths]
    edit_inputs = [model, method, targets, all_linear, *field_widgets, ctx.run_config]

    def read(model_v, method_v, targets_v, all_v, *rest):
        *values, rc = rest
        return with_fields(rc, model_v, method_v, targets_v, all_v, dict(zip(field_paths, values)))

    def error_updates(errors: dict[str, str], method_v: str) -> dict:
        shown_now = shown_fields(method_v)
        out = {}
        for path, md in errs.items():
            msg = errors.get(path, "")
            relevant = not path.startswith("method.") or path in shown_now or path in ("method.name",
                                                                                       "method.target_modules")
            out[md] = gr.update(value=msg, visible=bool(msg) and relevant)
        out[errors_md] = "\n".join(f"- {m}" for m in errors.values())
        return out

    def on_edit(*args):
        """Reads every field; writes run_config, the per-field errors, visibility and help."""
        from backend.objectives.trainers import is_alignment

        rc = read(*args)
        _, errors = problems_of(rc)
        shown_now = shown_fields(rc["method"]["name"])
        spec = METHODS.get(rc["method"]["name"])
        out = {ctx.run_config: rc, help_md: spec.help if spec else "", batch_md: effective_batch_text(rc),
               objective_md: objective_help(rc.get("objective") or ""),
               # An alignment objective's settings live in this section: open it when one is chosen.
               more_box: gr.update(open=True) if is_alignment(rc.get("objective") or "") else gr.skip(),
               targets_box: gr.update(visible="method.target_modules" in shown_now)}
        for path in METHOD_FIELDS:
            out[cols[path]] = gr.update(visible=path in shown_now)
        out.update(error_updates(errors, rc["method"]["name"]))
        return out

    edit_outputs = {ctx.run_config, help_md, objective_md, more_box, batch_md, targets_box, errors_md, *errs.values(),
                    *(cols[p] for p in METHOD_FIELDS)}

    def on_inspect(model_v, targets_v, all_v, rc):
        """Reads the model field; writes model info, target choices and run_config.model."""
        rc = copy.deepcopy(rc or {})
        rc["model"] = (model_v or "").strip()
        try:
            info = inspect_model(rc["model"], trust_remote_code=bool(rc.get("trust_remote_code")))
        except BAD_INPUT as e:
            return {model_md: "", errs["model"]: gr.update(value=str(e), visible=True), ctx.run_config: rc}
        except Exception as e:  # noqa: BLE001 - an unreadable config must not take the tab down
            return {model_md: "", errs["model"]: gr.update(value=f"Could not read the model '{rc['model']}': {e}",
                                                            visible=True), ctx.run_config: rc}
        chosen = [t for t in (targets_v or [])]
        choices = info.linear_layers + [t for t in chosen if t not in info.linear_layers]
        if all_v:
            chosen = list(info.linear_layers)
        _, errors = problems_of(rc)
        out = {model_md: model_info_text(info), ctx.run_config: rc,
               targets: gr.update(choices=choices, value=chosen),
               sc_attn: gr.update(visible="attention only" in info.shortcuts),
               sc_qv: gr.update(visible="Q and V" in info.shortcuts)}
        out.update(error_updates(errors, get_path(rc, "method.name") or ""))
        return out

    inspect_outputs = {model_md, ctx.run_config, targets, sc_attn, sc_qv, errors_md, *errs.values()}

    def shortcut(which: str):
        def apply(model_v, *rest):
            """Reads the model; writes the target selection (then on_edit runs)."""
            try:
                info = inspect_model((model_v or "").strip())
            except BAD_INPUT as e:
                return {errs["model"]: gr.update(value=str(e), visible=True)}
            value = info.shortcuts.get(which)
            if value == "all-linear":
                return {targets: gr.update(value=list(info.linear_layers)), all_linear: True}
            return {targets: gr.update(value=list(value or [])), all_linear: False}
        return apply

    def on_state(rc, card):
        """Reads run_config (any tab may have changed it); writes the estimate and the data fields shown here."""
        fig, fits, details = compute_estimate(rc, card)
        return {plot: fig, fits_md: fits, details_md: details, batch_md: effective_batch_text(rc),
                widgets["data.max_length"]: get_path(rc, "data.max_length"),
                widgets["data.packing"]: bool(get_path(rc, "data.packing"))}

    state_outputs = {plot, fits_md, details_md, batch_md, widgets["data.max_length"], widgets["data.packing"]}

    def on_preset(name, rc):
        """Reads the chosen preset; writes every field it sets (the dataset file is kept)."""
        if not name:
            return {preset_md: "Choose a preset first."}
        try:
            new = apply_preset(rc or {}, name, presets_dir)
            meta = preset_info(name, presets_dir)
        except BAD_INPUT as e:
            return {preset_md: str(e)}
        out = {preset_md: TEXT["preset_applied"].format(**meta), ctx.run_config: new, model: new.get("model"),
               method: get_path(new, "method.name")}
        tm = get_path(new, "method.target_modules")
        out[all_linear] = tm == "all-linear"
        if isinstance(tm, list):
            out[targets] = gr.update(value=tm)
        for path in field_paths:
            out[widgets[path]] = get_path(new, path)
        return out

    preset_outputs = {preset_md, ctx.run_config, model, method, all_linear, targets, *field_widgets}

    def on_save(name, rc):
        """Reads the preset name and run_config; writes the preset file and the preset list."""
        partial = {k: copy.deepcopy(rc.get(k)) for k in ("model", "method", "train", "early_stopping", "distributed")
                   if rc.get(k) is not None}
        partial["data"] = {k: get_path(rc, f"data.{k}") for k in ("max_length", "packing")}
        try:
            path = save_preset(name, partial, title=(name or "").strip(), user=presets_dir)
        except BAD_INPUT as e:
            return {status_md: str(e)}
        return {status_md: TEXT["saved_preset"].format(name=path.stem, path=path),
                preset_dd: gr.update(choices=[(t, n) for n, t in list_presets(presets_dir)], value=path.stem)}

    def on_export(rc):
        """Reads run_config; writes a YAML file offered for download."""
        try:
            cfg = validate_config(rc)
        except ConfigError as e:
            return {status_md: str(e), export_file: None}
        path = ctx.workspace / "exports" / f"runconfig-{time.strftime('%Y%m%d-%H%M%S')}.yaml"
        atomic_write_text(path, config_to_yaml(cfg))
        return {status_md: TEXT["exported"].format(path=path), export_file: str(path)}

    state_inputs = [ctx.run_config, card_gb]
    inspect_inputs = [model, targets, all_linear, ctx.run_config]

    # Every handler writes run_config; its change event (which the Dataset tab's edits raise too)
    # is the one place the estimate is recomputed.
    # always_last: .input's default ("once") drops a keystroke that lands while the estimate of the
    # previous one is computing, and the field would keep a stale value.
    for comp in [method, all_linear, *field_widgets]:
        comp.input(on_edit, edit_inputs, edit_outputs, trigger_mode="always_last")
    # A pasted or browser-filled text raises no input event in every browser; leaving the field does.
    for comp in field_widgets:
        if isinstance(comp, gr.Textbox):
            comp.blur(on_edit, edit_inputs, edit_outputs, trigger_mode="always_last")
    # .change, not .input: a multiselect's typed (custom) value only raises change events.
    targets.change(on_edit, edit_inputs, edit_outputs)
    # A reward-model run finished since the page was built shows up when the list is opened.
    widgets["alignment.reward_model"].focus(lambda: gr.update(choices=reward_run_choices(ctx.workspace)), None,
                                            widgets["alignment.reward_model"])
    # Not model.change: that also fires for programmatic updates and would race the page-load inspection.
    for trigger in (inspect_btn.click, model.select, model.blur):
        trigger(on_inspect, inspect_inputs, inspect_outputs)
    for btn, which in ((sc_attn, "attention only"), (sc_qv, "Q and V"), (sc_all, "all linear")):
        btn.click(shortcut(which), [model], {targets, all_linear, errs["model"]}).then(
            on_edit, edit_inputs, edit_outputs)
    ctx.run_config.change(on_state, state_inputs, state_outputs)
    card_gb.input(on_state, state_inputs, state_outputs, trigger_mode="always_last")
    preset_btn.click(on_preset, [preset_dd, ctx.run_config], preset_outputs).then(
        on_inspect, inspect_inputs, inspect_outputs).then(on_edit, edit_inputs, edit_outputs)
    save_btn.click(on_save, [preset_name, ctx.run_config], {status_md, preset_dd})
    export_btn.click(on_export, [ctx.run_config], {status_md, export_file})
    ctx.extras["method_model"] = model

    # Inspect the default model and show its estimate when the page opens.
    root = gr.context.Context.root_block
    if root is not None:
        root.load(on_inspect, inspect_inputs, inspect_outputs).then(
            on_state, state_inputs, state_outputs)
