"""The Method tab: model, method and hyperparameters, with the live VRAM estimate and presets.

The hyperparameter widgets are generated from the RunConfig's field metadata (type, choices,
description), and which method fields show comes from the method registry, so a method added
to backend.methods appears here without touching this file. Every decision is the backend's:
backend.methods (registry, inspection, validation), backend.estimator, backend.core.presets.
The field tables and labels are in studio/tabs/method_fields.py.
"""
from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union, get_args, get_origin

import gradio as gr

from backend.core import access
from backend.core.config import ConfigError, config_to_yaml, validate_config
from backend.core.errors import UserError
from backend.core.io import atomic_write_text
from backend.core import catalog
from backend.core.precision import available_precisions
from backend.methods import METHODS, inspect_model
from backend.objectives.validate import is_alignment
from backend.training.checks import check_run
from backend.core.models import BUNDLED, ModelError
from backend.objectives.online_rl import reward_runs as reward_run_choices
from backend.core.choices import load_choices, save_choices, settings_from
from backend.core.model_choices import hub_problem, model_choices, with_recent
from backend.core.models import hub_reachable
from backend.core.presets import apply_preset, list_presets, preset_info, save_preset
from studio.context import StudioContext, bind, default_run_config
from studio.progress import shows
from studio.tabs.method_fields import (CHOICE_HELP_FIELDS, LABELS, METHOD_FIELDS, MORE_ROWS, STEPS, TRAIN_ROWS,
                                       choice_help, field_info, get_path,
                                       label_of, set_path)
from studio.tabs.method_speed import speed_layout, speed_text
from studio.tabs.method_view import compute_estimate, humanize_errors, model_info_text
from studio.tabs import train_sweep

TEXT = {
    "intro": ("Choose the model and how it learns. The estimate on the right updates with every change; "
              "problems are marked at their field before any training starts."),
    "targets": "Linear layers that get adapters. Shortcuts:",
    "all_linear": "All linear layers ('all-linear': every linear layer except the output head; overrides the list)",
    "effective": "Effective batch: {b} per step × {a} accumulation × {g} GPU(s) = **{e}** sequences per update.",
    "saved_preset": "Saved preset **{name}** to `{path}`.",
    "exported": "Exported the full RunConfig to `{path}`; run it headless with `ftstudio train {path}`.",
    "preset_applied": "Applied preset **{title}**: {description} Your dataset is unchanged.",
    "imported": "Loaded the settings of **{name}**: dataset, mapping, method and hyperparameters.",
}
BAD_INPUT = (UserError, ModelError, ConfigError)


# ---------------------------------------------------------------- pure helpers (tested without a browser)

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


def lora_init_choices(method: str, current: Any = None) -> list[str]:
    """The adapter starts the method offers (LoftQ on QLoRA's 4-bit base, PiSSA/OLoRA on 16-bit ones); a current
    value it does not offer stays listed, so its sentence shows at the field."""
    offered = list(catalog.lora_inits_for(method)) or list(catalog.LORA_INITS)
    return offered + ([current] if current and current not in offered else [])


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


def problems_of(rc: dict[str, Any], workspace: Optional[Path] = None) -> tuple[Any, dict[str, str]]:
    """(RunConfig or None, field path -> sentence) for everything this tab can check before training.

    With the studio's workspace, a path the studio may not read is reported first, and nothing is read from it."""
    if workspace is not None:
        refused = access.policy(workspace).config_problems(rc)
        if refused:
            return None, refused
    try:
        cfg, errors = check_run(rc)
    except BAD_INPUT as e:
        return None, {"": str(e)}
    return cfg, humanize_errors(errors, {**{p: label_of(p) for p in METHOD_FIELDS}, **LABELS})


# ---------------------------------------------------------------- layout

def objective_help(name: str) -> str:
    info = catalog.OBJECTIVES.get(name)
    if info is None:
        return ""
    return f"**{info.title}**: {info.help}" if info.alignment else info.help


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
        if path == "method.lora_init":  # only the starts the chosen method can use
            options_now = lora_init_choices(get_path(rc, "method.name"), get_path(rc, path))
            widget = gr.Dropdown(choices=options_now, value=get_path(rc, path), label=label_of(path),
                                 info=field_info(path).description)
        else:
            widget = _widget(path, get_path(rc, path), options)
        if path in CHOICE_HELP_FIELDS:  # the chosen loss / adapter start / optimizer, in a sentence
            hint = gr.Markdown(choice_help(path, get_path(rc, path)), elem_classes=["ft-help"],
                               elem_id=f"method-help-{path.replace('.', '-')}")
            widget.change(lambda value, p=path: choice_help(p, value), widget, hint, queue=False,
                          show_progress="hidden")
        err = gr.Markdown("", visible=False, elem_classes=["ft-error"], elem_id=f"method-err-{path.replace('.', '-')}")
    return col, widget, err


@dataclass
class MethodView:
    """The tab's components, so the handlers below can name the ones they read and write."""
    ctx: StudioContext
    presets_dir: Path
    model: Any = None
    inspect_btn: Any = None
    model_md: Any = None
    preset_dd: Any = None
    preset_btn: Any = None
    preset_md: Any = None
    method: Any = None
    objective_md: Any = None
    help_md: Any = None
    targets_box: Any = None
    targets: Any = None
    sc_attn: Any = None
    sc_qv: Any = None
    sc_all: Any = None
    all_linear: Any = None
    batch_md: Any = None
    more_box: Any = None
    card_gb: Any = None
    fits_md: Any = None
    plot: Any = None
    details_md: Any = None
    errors_md: Any = None
    preset_name: Any = None
    save_btn: Any = None
    export_btn: Any = None
    export_file: Any = None
    import_run: Any = None
    import_file: Any = None
    import_btn: Any = None
    status_md: Any = None
    speed_md: Any = None  # the speed switches' reasons (studio/tabs/method_speed.py)
    widgets: dict[str, Any] = field(default_factory=dict)  # field path -> its widget
    errs: dict[str, Any] = field(default_factory=dict)     # field path -> its error line
    cols: dict[str, Any] = field(default_factory=dict)     # field path -> the column holding both

    def add_field(self, path: str, rc: dict[str, Any], visible: bool = True, options: Optional[list] = None) -> None:
        self.cols[path], self.widgets[path], self.errs[path] = _field(path, rc, visible=visible, options=options)

    @property
    def field_paths(self) -> list[str]:
        return list(self.widgets)

    @property
    def field_widgets(self) -> list:
        return [self.widgets[p] for p in self.field_paths]

    @property
    def edit_inputs(self) -> list:
        return [self.model, self.method, self.targets, self.all_linear, *self.field_widgets, self.ctx.run_config]

    @property
    def edit_outputs(self) -> set:
        return {self.ctx.run_config, self.help_md, self.objective_md, self.more_box, self.batch_md, self.targets_box,
                self.errors_md, *self.errs.values(), *(self.cols[p] for p in METHOD_FIELDS),
                self.widgets["method.lora_init"]}

    @property
    def inspect_inputs(self) -> list:
        return [self.model, self.targets, self.all_linear, self.ctx.run_config]

    @property
    def inspect_outputs(self) -> set:
        return {self.model_md, self.ctx.run_config, self.targets, self.sc_attn, self.sc_qv, self.errors_md,
                *self.errs.values()}

    @property
    def state_inputs(self) -> list:
        lengths = [self.ctx.data_lengths] if self.ctx.data_lengths is not None else []
        return [self.ctx.run_config, self.card_gb, *lengths]

    @property
    def state_outputs(self) -> set:
        return {self.plot, self.fits_md, self.details_md, self.batch_md, self.widgets["data.max_length"],
                self.widgets["data.packing"], self.speed_md}

    @property
    def preset_outputs(self) -> set:
        return {self.preset_md, self.ctx.run_config, self.model, self.method, self.all_linear, self.targets,
                *self.field_widgets}


def _model_layout(v: MethodView, rc0: dict[str, Any]) -> None:
    """Model and inspection, preset, method and objective."""
    with gr.Row():
        v.model = gr.Dropdown(choices=picker_choices(v.ctx.workspace), value=rc0["model"], allow_custom_value=True,
                              scale=4, label=LABELS["model"], elem_id="method-model",
                              info="The bundled model, a recent one, one already on this machine, a local "
                                   "directory holding config.json, or a hub id (owner/name).")
        v.inspect_btn = gr.Button("Inspect", scale=1, elem_id="method-inspect")
    v.model_md = gr.Markdown(elem_id="method-model-info")
    v.errs["model"] = gr.Markdown(visible=False, elem_classes=["ft-error"], elem_id="method-err-model")
    with gr.Row():
        v.preset_dd = gr.Dropdown(choices=[(t, n) for n, t in list_presets(v.presets_dir)], value=None,
                                  label="Preset", scale=4, elem_id="method-preset")
        v.preset_btn = gr.Button("Apply preset", scale=1, elem_id="method-apply-preset")
    v.preset_md = gr.Markdown(elem_classes=["ft-help"])
    with gr.Row():
        v.method = gr.Dropdown(choices=[(s.title, n) for n, s in METHODS.items()], value=rc0["method"]["name"],
                               label=LABELS["method.name"], elem_id="method-name", scale=2)
        v.add_field("objective", rc0)
    v.objective_md = gr.Markdown(objective_help(rc0["objective"]), elem_id="method-objective-help",
                                 elem_classes=["ft-help"])
    v.help_md = gr.Markdown(METHODS[rc0["method"]["name"]].help, elem_id="method-help", elem_classes=["ft-help"])
    v.errs["method.name"] = gr.Markdown(visible=False, elem_classes=["ft-error"], elem_id="method-err-method-name")


def _targets_layout(v: MethodView, rc0: dict[str, Any], shown: set[str]) -> None:
    """Target modules with their shortcuts (shown only for methods that have them)."""
    with gr.Group(visible="method.target_modules" in shown) as v.targets_box:
        # A free-text multiselect: a name the model lacks gets a sentence from validation
        # instead of being impossible to express.
        v.targets = gr.Dropdown(choices=rc0["method"]["target_modules"], value=rc0["method"]["target_modules"],
                                multiselect=True, allow_custom_value=True, label=LABELS["method.target_modules"],
                                info=TEXT["targets"], elem_id="method-targets")
        with gr.Row():
            v.sc_attn = gr.Button("attention only", size="sm", elem_id="method-sc-attention")
            v.sc_qv = gr.Button("Q and V", size="sm", elem_id="method-sc-qv")
            v.sc_all = gr.Button("all linear", size="sm", elem_id="method-sc-all")
        v.all_linear = gr.Checkbox(value=rc0["method"]["target_modules"] == "all-linear",
                                   label=TEXT["all_linear"], elem_id="method-all-linear")
        v.errs["method.target_modules"] = gr.Markdown(visible=False, elem_classes=["ft-error"],
                                                      elem_id="method-err-method-target_modules")


def _fields_layout(v: MethodView, rc0: dict[str, Any], shown: set[str]) -> None:
    """The method's own fields, the training rows and the folded-away rest."""
    with gr.Row():
        for path in METHOD_FIELDS:
            v.add_field(path, rc0, visible=path in shown)
    with gr.Accordion("Training", open=True):
        for row in TRAIN_ROWS:
            with gr.Row():
                for path in row:
                    v.add_field(path, rc0)
        v.batch_md = gr.Markdown(effective_batch_text(rc0), elem_id="method-effective-batch")
    speed_layout(v, rc0)
    with gr.Accordion("Early stopping, logging, GPUs and alignment (DPO/ORPO/KTO/GRPO/RLOO)",
                      open=False) as v.more_box:
        for row in MORE_ROWS:
            with gr.Row():
                for path in row:
                    options = reward_run_choices(v.ctx.workspace) if path == "alignment.reward_model" else None
                    v.add_field(path, rc0, options=options)


def _estimate_layout(v: MethodView) -> None:
    """The right column: the memory estimate, presets and the YAML export."""
    # A Textbox, not a Number: a browser Number box shows a cleared value as "0", which is not what
    # blank means here.
    v.card_gb = gr.Textbox(value="", label="Check against a card of … GB (blank: the GPUs found)",
                           placeholder="blank: the GPUs found", elem_id="method-card-gb")
    v.fits_md = gr.Markdown(elem_id="method-fits")
    v.plot = gr.Plot(elem_id="method-estimate", label="Estimated GPU memory")
    v.details_md = gr.Markdown(elem_id="method-estimate-details")
    v.errors_md = gr.Markdown(elem_id="method-errors", elem_classes=["ft-error"])
    with gr.Row():
        v.preset_name = gr.Textbox(label="Save current settings as preset", placeholder="my-lora-run", scale=3,
                                   elem_id="method-preset-name")
        v.save_btn = gr.Button("Save preset", scale=1, elem_id="method-save-preset")
    v.export_btn = gr.Button("Export RunConfig YAML", elem_id="method-export")
    v.export_file = gr.File(label="RunConfig YAML", interactive=False, elem_id="method-export-file")
    with gr.Row():
        v.import_run = gr.Dropdown(choices=run_choices(v.ctx.workspace), value=None, label="Load settings from a run",
                                   elem_id="method-import-run", scale=2)
        v.import_file = gr.File(label="…or from a RunConfig YAML file", file_types=[".yaml", ".yml"],
                                type="filepath", elem_id="method-import-file", scale=2)
    v.import_btn = gr.Button("Load settings", elem_id="method-import")
    v.status_md = gr.Markdown(elem_id="method-status")


def build(ctx: StudioContext) -> None:
    rc0 = default_run_config()
    v = MethodView(ctx, ctx.workspace / "presets")
    gr.Markdown("## Method\n" + TEXT["intro"])
    with gr.Row():
        with gr.Column(scale=3):
            _model_layout(v, rc0)
            shown = shown_fields(rc0["method"]["name"])
            _targets_layout(v, rc0, shown)
            _fields_layout(v, rc0, shown)
        with gr.Column(scale=2):
            _estimate_layout(v)
            train_sweep.build_method_section(ctx)  # the sweep grid: studio/tabs/train_sweep.py
    wire(v)


# ---------------------------------------------------------------- handlers
# Each takes the view first (bound in wire) and returns a dict of the components it changes.

def read(v: MethodView, model_v, method_v, targets_v, all_v, *rest) -> dict[str, Any]:
    *values, rc = rest
    return with_fields(rc, model_v, method_v, targets_v, all_v, dict(zip(v.field_paths, values)))


def error_updates(v: MethodView, errors: dict[str, str], method_v: str) -> dict:
    shown_now = shown_fields(method_v)
    out = {}
    for path, md in v.errs.items():
        msg = errors.get(path, "")
        relevant = not path.startswith("method.") or path in shown_now or path in ("method.name",
                                                                                   "method.target_modules")
        out[md] = gr.update(value=msg, visible=bool(msg) and relevant)
    out[v.errors_md] = "\n".join(f"- {m}" for m in errors.values())
    return out


def on_edit(v: MethodView, *args):
    """Reads every field; writes run_config, the per-field errors, visibility and help."""
    rc = read(v, *args)
    _, errors = problems_of(rc, v.ctx.workspace)
    shown_now = shown_fields(rc["method"]["name"])
    spec = METHODS.get(rc["method"]["name"])
    out = {v.ctx.run_config: rc, v.help_md: spec.help if spec else "", v.batch_md: effective_batch_text(rc),
           v.objective_md: objective_help(rc.get("objective") or ""),
           # An alignment objective's settings live in this section: open it when one is chosen.
           v.more_box: gr.update(open=True) if is_alignment(rc.get("objective") or "") else gr.skip(),
           v.targets_box: gr.update(visible="method.target_modules" in shown_now)}
    for path in METHOD_FIELDS:
        out[v.cols[path]] = gr.update(visible=path in shown_now)
    out[v.widgets["method.lora_init"]] = gr.update(choices=lora_init_choices(rc["method"]["name"],
                                                                             get_path(rc, "method.lora_init")))
    out.update(error_updates(v, errors, rc["method"]["name"]))
    return out


def picker_choices(workspace: Path, offer_hub: bool = False) -> list[tuple[str, str]]:
    return model_choices(recent=load_choices(workspace)["recent_models"], offer_hub=offer_hub)


def model_picker_update(workspace: Path):
    """Opening the picker: what is on this machine now, plus small hub models where the hub answers."""
    return gr.update(choices=picker_choices(workspace, offer_hub=hub_reachable()))


def remember_model(workspace: Path, ref: str) -> None:
    try:
        save_choices(workspace, recent_models=with_recent(load_choices(workspace)["recent_models"], ref))
    except OSError:
        pass  # a read-only workspace loses only the recent list


def on_inspect(v: MethodView, model_v, targets_v, all_v, rc):
    """Reads the model field; writes model info, target choices and run_config.model."""
    rc = copy.deepcopy(rc or {})
    rc["model"] = (model_v or "").strip()
    unreachable = hub_problem(rc["model"])
    if unreachable:  # said at once, instead of after the hub client's retries time out
        return {v.model_md: "", v.errs["model"]: gr.update(value=unreachable, visible=True), v.ctx.run_config: rc}
    try:
        access.policy(v.ctx.workspace).model(rc["model"])
        info = inspect_model(rc["model"], trust_remote_code=bool(rc.get("trust_remote_code")))
    except BAD_INPUT as e:
        return {v.model_md: "", v.errs["model"]: gr.update(value=str(e), visible=True), v.ctx.run_config: rc}
    except Exception as e:  # noqa: BLE001 - an unreadable config must not take the tab down
        return {v.model_md: "", v.errs["model"]: gr.update(value=f"Could not read the model '{rc['model']}': {e}",
                                                            visible=True), v.ctx.run_config: rc}
    if rc["model"] not in BUNDLED:
        remember_model(v.ctx.workspace, rc["model"])
    chosen = [t for t in (targets_v or [])]
    choices = info.linear_layers + [t for t in chosen if t not in info.linear_layers]
    if all_v:
        chosen = list(info.linear_layers)
    _, errors = problems_of(rc, v.ctx.workspace)
    out = {v.model_md: model_info_text(info), v.ctx.run_config: rc,
           v.targets: gr.update(choices=choices, value=chosen),
           v.sc_attn: gr.update(visible="attention only" in info.shortcuts),
           v.sc_qv: gr.update(visible="Q and V" in info.shortcuts)}
    out.update(error_updates(v, errors, get_path(rc, "method.name") or ""))
    return out


def on_shortcut(v: MethodView, which: str, model_v, *rest):
    """Reads the model; writes the target selection (then on_edit runs)."""
    try:
        access.policy(v.ctx.workspace).model(model_v)
        info = inspect_model((model_v or "").strip())
    except BAD_INPUT as e:
        return {v.errs["model"]: gr.update(value=str(e), visible=True)}
    value = info.shortcuts.get(which)
    if value == "all-linear":
        return {v.targets: gr.update(value=list(info.linear_layers)), v.all_linear: True}
    return {v.targets: gr.update(value=list(value or [])), v.all_linear: False}


_RATE_TTL_S = 30.0
_rate_cache: dict[tuple, tuple[float, Any]] = {}


def earlier_rate(workspace: Path, rc: dict[str, Any]) -> Optional[dict[str, Any]]:
    """The training speed an earlier run of this model and method measured on this kind of device.

    Looked up at most every 30 s per (model, method): the estimate follows every keystroke, and a new
    rate appears only when a run finishes."""
    from backend.core.gpu import list_gpus
    from backend.runs.rates import measured_rate, rate_json

    model, method = str(rc.get("model") or ""), str(get_path(rc, "method.name") or "")
    key = (str(workspace), model, method)
    now = time.monotonic()
    hit = _rate_cache.get(key)
    if hit is not None and now - hit[0] < _RATE_TTL_S:
        return hit[1]
    try:
        rate = rate_json(measured_rate(workspace, model, method, "cuda" if list_gpus() else "cpu"))
    except OSError:
        rate = None  # an unreadable run is only a missing forecast
    _rate_cache[key] = (now, rate)
    return rate


def on_state(v: MethodView, rc, card, lengths=None):
    """Reads run_config (any tab may have changed it) and the data's lengths; writes the estimate and the
    data fields shown here."""
    refused = access.policy(v.ctx.workspace).config_problems(rc)
    # The estimate reads the model's config.json: not from a folder the studio may not read.
    rate = earlier_rate(v.ctx.workspace, rc) if lengths and not refused else None
    fig, fits, details = ((None, next(iter(refused.values())), "") if refused
                          else compute_estimate(rc, card, lengths, rate))
    return {v.plot: fig, v.fits_md: fits, v.details_md: details, v.batch_md: effective_batch_text(rc),
            v.widgets["data.max_length"]: get_path(rc, "data.max_length"),
            v.widgets["data.packing"]: bool(get_path(rc, "data.packing")), v.speed_md: speed_text(rc)}


def fill(v: MethodView, new: dict[str, Any]) -> dict:
    """Every widget of the tab set from a RunConfig dict (a preset applied, saved choices, an import)."""
    out = {v.ctx.run_config: new, v.model: new.get("model"), v.method: get_path(new, "method.name")}
    tm = get_path(new, "method.target_modules")
    out[v.all_linear] = tm == "all-linear"
    if isinstance(tm, list):
        out[v.targets] = gr.update(value=tm, choices=sorted(set(tm)))
    for path in v.field_paths:
        out[v.widgets[path]] = get_path(new, path)
    return out


def restore_fields(v: MethodView, rc):
    """Page load / import: the widgets from the session's RunConfig."""
    return fill(v, rc or default_run_config())


def on_preset(v: MethodView, name, rc):
    """Reads the chosen preset; writes every field it sets (the dataset is kept: a preset never changes it)."""
    if not name:
        return {v.preset_md: "Choose a preset first."}
    try:
        new = apply_preset(rc or {}, name, v.presets_dir)
        meta = preset_info(name, v.presets_dir)
    except BAD_INPUT as e:
        return {v.preset_md: str(e)}
    return {v.preset_md: TEXT["preset_applied"].format(**meta), **fill(v, new)}


def run_choices(workspace: Path) -> list[str]:
    """Run ids of the workspace, newest first, for "Load settings from a run"."""
    root = workspace / "runs"
    return sorted((p.name for p in root.iterdir() if (p / "config.yaml").is_file()), reverse=True) \
        if root.is_dir() else []


def on_import(v: MethodView, run_id, upload, rc):
    """Reads a run's config or an uploaded YAML; writes run_config (the tabs' restore steps then show it)."""
    source = upload or (str(v.ctx.workspace / "runs" / run_id) if run_id else None)
    if not source:
        return {v.status_md: "Choose a run or a YAML file to load settings from."}
    if run_id and not upload and run_id not in run_choices(v.ctx.workspace):
        return {v.status_md: f"There is no run named {run_id} in this workspace."}
    try:
        new = settings_from(source)
    except BAD_INPUT as e:
        return {v.status_md: str(e)}
    name = run_id if not upload else Path(upload).name
    return {v.ctx.run_config: new, v.status_md: TEXT["imported"].format(name=name), v.import_file: None}


def on_save(v: MethodView, name, rc):
    """Reads the preset name and run_config; writes the preset file and the preset list."""
    partial = {k: copy.deepcopy(rc.get(k)) for k in ("model", "method", "train", "early_stopping", "distributed")
               if rc.get(k) is not None}
    partial["data"] = {k: get_path(rc, f"data.{k}") for k in ("max_length", "packing")}
    try:
        path = save_preset(name, partial, title=(name or "").strip(), user=v.presets_dir)
    except BAD_INPUT as e:
        return {v.status_md: str(e)}
    return {v.status_md: TEXT["saved_preset"].format(name=path.stem, path=path),
            v.preset_dd: gr.update(choices=[(t, n) for n, t in list_presets(v.presets_dir)], value=path.stem)}


def on_export(v: MethodView, rc):
    """Reads run_config; writes a YAML file offered for download."""
    try:
        cfg = validate_config(rc)
    except ConfigError as e:
        return {v.status_md: str(e), v.export_file: None}
    path = v.ctx.workspace / "exports" / f"runconfig-{time.strftime('%Y%m%d-%H%M%S')}.yaml"
    atomic_write_text(path, config_to_yaml(cfg))
    return {v.status_md: TEXT["exported"].format(path=path), v.export_file: str(path)}


def run_choices_update(workspace: Path):
    return gr.update(choices=run_choices(workspace))


def reward_choices_update(workspace: Path):
    """A reward-model run finished since the page was built shows up when the list is opened."""
    return gr.update(choices=reward_run_choices(workspace))


# ---------------------------------------------------------------- events

# What each slow step says while it runs (over the widgets it will write).
TEXT_WAIT = {
    "edit": "Checking the settings…",
    "inspect": "Reading the model's layers and size…",
    "estimate": "Estimating the memory this configuration needs…",
    "preset": "Applying the preset (method and hyperparameters; the dataset stays)…",
    "import": "Loading the settings…",
}


def wire(v: MethodView) -> None:
    rc = v.ctx.run_config
    edit_in, edit_out = v.edit_inputs, v.edit_outputs
    inspect_in, inspect_out = v.inspect_inputs, v.inspect_outputs
    state_in, state_out = v.state_inputs, v.state_outputs
    # Each wait over a second says what it is doing (studio/progress.py).
    edit = shows(TEXT_WAIT["edit"], bind(on_edit, v), edit_in)
    inspecting = shows(TEXT_WAIT["inspect"], bind(on_inspect, v), inspect_in)
    estimating = shows(TEXT_WAIT["estimate"], bind(on_state, v), state_in)
    # Every handler writes run_config; its change event (which the Dataset tab's edits raise too)
    # is the one place the estimate is recomputed.
    # always_last: .input's default ("once") drops a keystroke that lands while the estimate of the
    # previous one is computing, and the field would keep a stale value.
    for comp in [v.method, v.all_linear, *v.field_widgets]:
        comp.input(edit, edit_in, edit_out, trigger_mode="always_last")
    # A pasted or browser-filled text raises no input event in every browser; leaving the field does.
    for comp in v.field_widgets:
        if isinstance(comp, gr.Textbox):
            comp.blur(edit, edit_in, edit_out, trigger_mode="always_last")
    # .change, not .input: a multiselect's typed (custom) value only raises change events.
    v.targets.change(edit, edit_in, edit_out)
    reward = v.widgets["alignment.reward_model"]
    reward.focus(bind(reward_choices_update, v.ctx.workspace, name="<lambda>"), None, reward)
    # Not model.change: that also fires for programmatic updates and would race the page-load inspection.
    for trigger in (v.inspect_btn.click, v.model.select, v.model.blur):
        trigger(inspecting, inspect_in, inspect_out)
    for btn, which in ((v.sc_attn, "attention only"), (v.sc_qv, "Q and V"), (v.sc_all, "all linear")):
        btn.click(bind(on_shortcut, v, which, name="apply"), [v.model], {v.targets, v.all_linear, v.errs["model"]}
                  ).then(edit, edit_in, edit_out)
    rc.change(estimating, state_in, state_out)
    # No data_lengths.change listener: the Dataset tab writes the lengths in the same event as the
    # RunConfig, whose change (above) re-estimates already; a second listener would estimate twice.
    v.card_gb.input(estimating, state_in, state_out, trigger_mode="always_last")
    v.preset_btn.click(shows(TEXT_WAIT["preset"], bind(on_preset, v), [v.preset_dd, rc]), [v.preset_dd, rc],
                       v.preset_outputs).then(inspecting, inspect_in, inspect_out).then(edit, edit_in, edit_out)
    v.save_btn.click(bind(on_save, v), [v.preset_name, rc], {v.status_md, v.preset_dd})
    v.export_btn.click(bind(on_export, v), [rc], {v.status_md, v.export_file})
    v.import_run.focus(bind(run_choices_update, v.ctx.workspace, name="<lambda>"), None, v.import_run)
    # studio/app.py chains every tab's restore step after this, so the whole page shows the import.
    import_in = [v.import_run, v.import_file, rc]
    v.ctx.extras["import_event"] = v.import_btn.click(shows(TEXT_WAIT["import"], bind(on_import, v), import_in),
                                                      import_in, {rc, v.status_md, v.import_file})
    v.ctx.extras["method_model"] = v.model

    # Page load and settings import: the widgets from the RunConfig, the model inspected, the estimate.
    fill_out = {v.ctx.run_config, v.model, v.method, v.all_linear, v.targets, *v.field_widgets}
    # The picker's list is refreshed per page load (recent models, new downloads), not on focus: an
    # update while the list is open would re-render it under the user's click.
    v.ctx.extras.setdefault("restore_steps", []).extend([
        (bind(model_picker_update, v.ctx.workspace, name="<lambda>"), None, v.model),
        (bind(restore_fields, v), [rc], fill_out),
        (inspecting, inspect_in, inspect_out),
        (edit, edit_in, edit_out),
        (estimating, state_in, state_out)])
