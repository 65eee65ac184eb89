"""How the Method tab shows an estimate and validation problems: plotly figure and sentences.

Pure functions of the estimator's JSON and the validation dict, so they are tested without a browser.
"""
from __future__ import annotations

import re
from typing import Any, Optional

import plotly.graph_objects as go

from backend.core.config import ConfigError, validate_config
from backend.core.errors import UserError
from backend.core.models import ModelError

TERM_LABELS = {"weights": "Weights", "gradients": "Gradients", "optimizer": "Optimizer states",
               "activations": "Activations", "logits": "Logits and loss", "overhead": "Runtime overhead"}
TERM_COLORS = {"weights": "#2563eb", "gradients": "#f59e0b", "optimizer": "#dc2626", "activations": "#16a34a",
               "logits": "#9333ea", "overhead": "#6b7280"}
_NO_GPU_NOTE = "No GPU was found"
BAD_INPUT = (UserError, ModelError, ConfigError)
FIX_FIRST = "Fix the fields marked in red to see the estimate."
MODEL_INFO = ("**{model_type}**: {num_layers} layers, hidden size {hidden_size}, vocabulary {vocab_size}, "
              "context {ctx} tokens, {params} parameters. Linear layers: {linear}.")
_PYDANTIC = [
    (r"^Input should be greater than or equal to (.+)$", r"must be at least \1"),
    (r"^Input should be greater than (.+)$", r"must be more than \1"),
    (r"^Input should be less than or equal to (.+)$", r"must be at most \1"),
    (r"^Input should be less than (.+)$", r"must be less than \1"),
    (r"^Input should be a valid integer.*$", "must be a whole number"),
    (r"^Input should be a valid number.*$", "must be a number"),
    (r"^Input should be a valid boolean.*$", "must be on or off"),
    (r"^Input should be (.+)$", r"must be \1"),
]


def gb(n: float | int | None) -> str:
    # GiB, the unit cards are sold in ("24 GB" = 24 GiB) and that nvidia-smi shows.
    return "?" if n is None else f"{n / 2**30:.2f} GiB"


def _rewrite(msg: str) -> str | None:
    """pydantic's "Input should be ..." as "must be ..."; None for any other message."""
    head, sep, got = msg.partition(" (got ")
    for pattern, repl in _PYDANTIC:
        if re.match(pattern, head):
            return re.sub(pattern, repl, head) + (f" (got {got}" if sep else "")
    return None


def humanize_errors(errors: dict[str, str], labels: dict[str, str]) -> dict[str, str]:
    """Field path -> a sentence naming the field; the backend's own sentences pass through unchanged."""
    out: dict[str, str] = {}
    for path, msg in errors.items():
        label = labels.get(path, path or "Configuration")
        text = _rewrite(msg)
        if text is None and (msg[:1].isupper() or not path):  # already a sentence from the backend
            out[path] = msg if msg.endswith(".") else msg + "."
        else:
            text = text or msg
            out[path] = f"{label} {text}" + ("" if text.endswith(".") else ".")
    return out


def estimate_figure(data: dict[str, Any]) -> go.Figure:
    """One horizontal stacked bar, a segment per term, its formula on hover; the card's size as a line."""
    fig = go.Figure()
    formulas = data.get("formulas") or {}
    for term, value in (data.get("terms_bytes") or {}).items():
        label = TERM_LABELS.get(term, term)
        fig.add_bar(y=["needed"], x=[value / 2**30], name=label, orientation="h",
                    marker_color=TERM_COLORS.get(term), customdata=[[formulas.get(term, ""), gb(value)]],
                    hovertemplate=f"<b>{label}</b>: %{{customdata[1]}}<br>%{{customdata[0]}}<extra></extra>")
    for gpu in (data.get("per_gpu") or data.get("gpus") or [])[:1]:
        free = gpu.get("free_bytes") or gpu.get("total_bytes")
        if free:
            fig.add_vline(x=free / 2**30, line_dash="dash", line_color="#111827",
                          annotation_text=f"{gpu.get('name', 'GPU')}: {gb(free)} free", annotation_position="top")
    fig.update_layout(barmode="stack", height=260, margin=dict(l=10, r=10, t=40, b=10), xaxis_title="GiB",
                      legend=dict(orientation="h", y=-0.35), yaxis=dict(showticklabels=False))
    return fig


def estimate_summary(data: dict[str, Any]) -> tuple[str, str]:
    """(fits sentence, details markdown) for an estimate's JSON."""
    need, alloc = data.get("total_bytes"), data.get("allocated_bytes")
    gpus = data.get("gpus") or []
    if not gpus:
        fits = (f"**No GPU found**: this machine trains on the CPU. On a GPU this run would need "
                f"**{gb(need)}** free ({gb(alloc)} allocated by tensors); enter a card size above to check one.")
    else:
        first = (data.get("per_gpu") or [{}])[0]
        name, free = first.get("name", gpus[0].get("name", "GPU")), first.get("free_bytes")
        head = data.get("headroom_bytes")
        if data.get("fits"):
            fits = f"✅ **Fits** on {name}: needs {gb(need)} of {gb(free)} free, {gb(head)} headroom."
        else:
            short = gb(-head) if head is not None else "?"
            fits = f"❌ **Does not fit** on {name}: needs {gb(need)}, {gb(free)} free ({short} short)."
    t, total = data.get("trainable_params") or 0, data.get("total_params") or 0
    share = f" ({100 * t / total:.3g}%)" if total else ""
    lines = [f"**Trainable parameters:** {t:,} of {total:,}{share}", "",
             f"**Allocated by tensors** (peak): {gb(alloc)} · **card must have free**: {gb(need)}", ""]
    for term, value in (data.get("terms_bytes") or {}).items():
        lines.append(f"- {TERM_LABELS.get(term, term)}: {gb(value)} — {(data.get('formulas') or {}).get(term, '')}")
    if data.get("suggestions"):
        lines += ["", "**To make it fit, by effect:**"] + [f"{i}. {s}" for i, s in enumerate(data["suggestions"], 1)]
    notes = [n for n in data.get("notes") or [] if not n.startswith(_NO_GPU_NOTE)]
    if notes:
        lines += [""] + [f"- {n}" for n in notes]
    return fits, "\n".join(lines)


def model_info_text(info: Any) -> str:
    return MODEL_INFO.format(
        model_type=info.model_type, num_layers=info.num_layers, hidden_size=info.hidden_size,
        vocab_size=f"{info.vocab_size:,}", ctx=f"{info.max_positions:,}" if info.max_positions else "?",
        params=f"{info.total_params:,}", linear=", ".join(info.linear_layers) or "none found")


def card_size(text: Any) -> Optional[float]:
    """The card-size field as GiB: blank means "the GPUs found" (None); anything else must be a size."""
    if text is None or (isinstance(text, str) and not text.strip()):
        return None
    try:
        value = float(str(text).strip().lower().removesuffix("gib").removesuffix("gb").strip())
    except ValueError:
        raise UserError(f"The card size '{text}' is not a number: type the card's memory in GB, e.g. 24, "
                        "or leave the field blank to check the GPUs found.") from None
    if value <= 0:
        raise UserError(f"The card size must be more than 0 GB (got {text}); leave it blank to check the GPUs found.")
    return value


def _duration(seconds: float) -> str:
    minutes = int(round(seconds / 60))
    if minutes < 1:
        return "under a minute"
    h, m = divmod(minutes, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min"


def data_plan_text(plan: Optional[dict[str, Any]], rate: Optional[dict[str, Any]] = None) -> str:
    """What the run trains on (from the measured lengths) and, with a rate an earlier run measured here,
    how long that takes. Empty without measured lengths: nothing would be honest to say."""
    if not plan:
        return ""
    text = (f"**Data:** {plan['rows']:,} rows, {plan['real_tokens_per_epoch']:,} real tokens per epoch, "
            f"{plan['efficiency']:.0%} of the token slots filled (the rest is padding); "
            f"{plan['tokens_to_train']:,} tokens to train ({plan['epochs']:g} epochs).")
    if rate and rate.get("tokens_per_s"):
        from backend.estimator import eta_seconds

        eta = eta_seconds(int(plan["tokens_to_train"]), float(rate["tokens_per_s"]))
        text += (f" At the **{rate['tokens_per_s']:,.0f} tokens/s** that run {rate['run_id']} measured with this model "
                 f"and method on this {'GPU' if rate.get('device') == 'cuda' else 'CPU'}, training takes about "
                 f"**{_duration(eta or 0.0)}** (evaluation and saving not counted).")
    else:
        text += " The time to train shows here once one run of this model and method has trained on this machine."
    return text


def compute_estimate(rc: dict[str, Any], card_gb: Any, lengths: Optional[dict] = None,
                     rate: Optional[dict[str, Any]] = None) -> tuple[Any, str, str]:
    """(figure, fits markdown, details markdown) for rc; a sentence instead when rc is not valid.

    lengths: the Dataset tab's measured token lengths; without them the batch is sized at max length.
    rate: `backend.runs.rates.rate_json` of an earlier run, for the time to train."""
    try:
        cfg = validate_config(rc)
    except ConfigError:
        return None, FIX_FIRST, ""
    from backend.estimator import estimate, lengths_from

    try:
        card = card_size(card_gb)
        measured = lengths_from(lengths)
        if card:
            est = estimate(cfg, gpu_count=cfg.distributed.gpus, gpu_memory_gb=card, lengths=measured)
        else:
            est = estimate(cfg, lengths=measured)
    except BAD_INPUT as e:
        return None, str(e), ""
    data = est.to_json()
    fits, details = estimate_summary(data)
    plan = data_plan_text(data.get("data"), rate)
    return estimate_figure(data), fits, (plan + "\n\n" + details) if plan else details
