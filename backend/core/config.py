"""The RunConfig: everything a run needs, validated, saved as YAML.

Every tab writes into this one model; `ftstudio train CONFIG.yaml` reads the same
file, so a run started by clicks can be repeated from a shell.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from backend.core import catalog, kernels
from backend.core.io import atomic_write_text
from backend.core.models import BUNDLED
from backend.core.precision import PRECISIONS

# The allowed names come from the catalog, so a method, objective or optimizer is written down once.
METHOD_NAMES = tuple(catalog.METHODS)
OBJECTIVES = tuple(catalog.OBJECTIVES)
OPTIMIZERS = tuple(catalog.OPTIMIZERS)
PREFERENCE_LOSSES = tuple(catalog.PREFERENCE_LOSSES)
LORA_INITS = tuple(catalog.LORA_INITS)
SCHEDULERS = ("linear", "cosine", "constant", "constant_with_warmup")
STRATEGIES = ("ddp", "zero1", "zero2", "zero3", "fsdp")


# Upper bounds on counts a person types: a bigger number is a typo (or a test of the limits) that would
# crash a library deep inside (a seed over 2**32) or run for ever (max_steps 10**18, epochs .inf).
MAX_SEED = 2**32 - 1
MAX_EPOCHS = 10_000
MAX_STEPS = 100_000_000
MAX_GPUS_PER_NODE = 16  # no real node has more
MAX_NEW_TOKENS = 256    # special tokens a run may add: a template has a handful; more is a pasted vocabulary
MAX_TOKEN_CHARS = 64


class Strict(BaseModel):
    # A typo in a YAML key is an error, not a silently ignored setting; NaN and infinity are no numbers
    # for any setting.
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class MethodConfig(Strict):
    name: Literal[METHOD_NAMES] = Field(catalog.METHOD.lora, description="Fine-tuning method.")
    r: int = Field(16, ge=1, le=4096, description="LoRA rank: size of the low-rank update.")
    alpha: float = Field(32.0, gt=0, description="LoRA scaling numerator (update scaled by alpha/r).")
    dropout: float = Field(0.05, ge=0.0, lt=1.0, description="Dropout on the LoRA input.")
    target_modules: Union[list[str], Literal["all-linear"]] = Field(
        default_factory=lambda: ["q_proj", "v_proj"],
        description="Linear layers that get adapters, or 'all-linear'.")
    loraplus_lr_ratio: float = Field(16.0, gt=0, description="LoRA+: learning-rate ratio of B over A.")
    num_layers: int = Field(2, ge=1, le=10_000, description="Layer-selective: how many top decoder layers train.")
    quant_type: Literal["nf4", "fp4"] = Field("nf4", description="QLoRA: 4-bit data type.")
    double_quant: bool = Field(True, description="QLoRA: quantize the quantization scales too.")
    compute_dtype: Literal["bf16", "fp16", "fp32"] = Field("bf16", description="QLoRA: dtype of the matmuls.")
    # Later methods (prompt tuning, adapters, ...) add their fields here.
    num_virtual_tokens: int = Field(20, ge=1, le=512, description="Prompt/prefix methods: virtual tokens.")
    prompt_init_text: Optional[str] = Field(None, description="Prompt tuning: initialise from this text.")
    bottleneck: int = Field(64, ge=1, le=1_048_576, description="Bottleneck adapters: hidden size of the adapter.")
    init_r: int = Field(12, ge=1, le=4096, description="AdaLoRA: initial rank.")
    unfreeze_every: int = Field(0, ge=0, le=MAX_STEPS, description="Gradual unfreezing: steps between unfreezing groups (0 = each epoch).")
    fish_mask_density: float = Field(0.005, gt=0, le=1, description="Fish Mask: share of parameters that train.")
    adapter_activation: Literal["relu", "gelu", "silu", "tanh"] = Field(
        "relu", description="Bottleneck adapters: non-linearity between the down and up projections.")
    s2_attn_group_ratio: float = Field(0.25, gt=0, le=1, description=(
        "LongLoRA: attention group size as a share of the sequence length while training (1.0 turns S²-Attn off)."))
    lora_init: Literal[LORA_INITS] = Field("default", description=(
        "LoRA/DoRA/rsLoRA/QLoRA: how the adapter starts; PiSSA and OLoRA start from the weights' own decomposition "
        "(the saved adapter is converted to apply to the original base), LoftQ (QLoRA only) from the 4-bit "
        "base's quantization error."))
    oft_block_size: int = Field(32, ge=2, le=4096, description=(
        "OFT/BOFT: size of each orthogonal block; every adapted layer's input width must divide by it (larger: "
        "more capacity and parameters, about width x block / 2 per layer for OFT)."))
    oft_cayley_neumann: bool = Field(True, description=(
        "OFT: build the rotation with a Neumann series instead of a matrix inverse (faster; orthogonal up to a small "
        "error that grows with the rotation); off: the exact Cayley transform."))

    @field_validator("target_modules")
    @classmethod
    def _non_empty_targets(cls, v):
        if isinstance(v, list) and not v:
            raise ValueError("choose at least one target module, or 'all-linear'")
        return v


class DataConfig(Strict):
    path: str = Field("assets/samples/instructions.jsonl", description="Training data file.")
    validation_path: Optional[str] = Field(None, description="Separate validation file (else a split).")
    validation_split: float = Field(0.1, ge=0.0, lt=0.9, description="Share of rows held out for validation.")
    format: str = Field("auto", description="Dataset layout; 'auto' detects it.")
    mapping: Optional[dict[str, str]] = Field(None, description="Column mapping override: role -> column.")
    template: str = Field("auto", description="Chat template: the tokenizer's own ('auto') or a registry name.")
    system_prompt: Optional[str] = Field(None, description="System prompt added to every conversation.")
    max_length: int = Field(512, ge=8, le=1_048_576, description="Maximum tokens per training sequence.")
    train_on_prompt: bool = Field(False, description="Also compute the loss on prompt tokens.")
    last_turn_only: bool = Field(False, description="Grade only the last assistant turn.")
    packing: bool = Field(False, description="Join short sequences into full-length ones.")
    reasoning: Literal["keep", "keep_ungraded", "strip"] = Field("keep", description=(
        "Reasoning traces (reasoning_content, <think> blocks) in replies: keep and train on them, keep them "
        "masked (read, not learned), or strip them."))
    skip_bad_rows: bool = Field(True, description="Skip malformed rows (counted) instead of failing.")
    add_special_tokens: list[str] = Field(default_factory=list, description=(
        "Special tokens to add to the tokenizer (e.g. a chat template's markers it lacks, such as <|im_start|>): "
        "each becomes one token id, and its embedding row trains (LoRA-family and full fine-tuning)."))

    @field_validator("add_special_tokens")
    @classmethod
    def _tokens_usable(cls, v: list[str]) -> list[str]:
        # A blank or padded token would never match the text the template writes; a duplicate is a typo.
        for t in v:
            if not t or t != t.strip() or len(t) > MAX_TOKEN_CHARS:
                raise ValueError(f"each special token must be 1 to {MAX_TOKEN_CHARS} characters with no spaces at "
                                 f"either end (got {t!r})")
        if len(set(v)) != len(v):
            raise ValueError("a special token is listed twice; list each one once")
        if len(v) > MAX_NEW_TOKENS:
            raise ValueError(f"at most {MAX_NEW_TOKENS} special tokens can be added (got {len(v)})")
        return v


class TrainConfig(Strict):
    epochs: float = Field(3.0, gt=0, le=MAX_EPOCHS, description="Passes over the training data.")
    max_steps: Optional[int] = Field(None, ge=1, le=MAX_STEPS, description="Stop after this many optimizer steps (overrides epochs).")
    learning_rate: float = Field(2e-4, gt=0, le=1.0, description="Peak learning rate.")
    scheduler: Literal[SCHEDULERS] = Field("cosine", description="Learning-rate schedule.")
    warmup_ratio: float = Field(0.03, ge=0, lt=1, description="Share of steps spent warming up.")
    weight_decay: float = Field(0.0, ge=0, le=100, description="AdamW weight decay.")
    batch_size: int = Field(4, ge=1, le=4096, description="Sequences per device per step.")
    gradient_accumulation: int = Field(4, ge=1, le=4096, description="Micro-batches per optimizer step.")
    precision: Literal[PRECISIONS] = Field("bf16", description="Compute precision.")
    pure_bf16: bool = Field(False, description=(
        "bf16 only, for methods that train base weights: keep the trainable weights, their gradients and AdamW "
        "states in bf16 instead of fp32 master weights (6 bytes per trainable parameter less), at a risk: "
        "updates smaller than about 1/256 of a weight are lost, which can stall or degrade fine-tuning."))
    optimizer: Literal[OPTIMIZERS] = Field(catalog.OPTIMIZER.adamw_torch, description="Optimizer.")
    gradient_checkpointing: bool = Field(True, description="Recompute activations in backward to save memory.")
    eval_steps: int = Field(50, ge=1, le=MAX_STEPS, description="Evaluate every N steps.")
    save_steps: Optional[int] = Field(None, ge=1, le=MAX_STEPS, description="Checkpoint every N steps (default: eval_steps).")
    logging_steps: int = Field(1, ge=1, le=MAX_STEPS, description="Log every N steps.")
    max_grad_norm: float = Field(1.0, ge=0, le=1e6, description="Gradient clipping norm.")
    seed: int = Field(42, ge=0, le=MAX_SEED, description="Random seed (0 to 2**32 - 1, what numpy accepts).")
    neftune_noise_alpha: Optional[float] = Field(None, gt=0, le=100, description=(
        "NEFTune: uniform noise of this scale (divided by sqrt(length x hidden)) added to the input embeddings while "
        "training, never in evaluation or chat; 5 is the paper's usual value, blank turns it off."))
    embedding_learning_rate: Optional[float] = Field(None, gt=0, le=1.0, description=(
        "A learning rate of its own for the input embeddings and the output head where they train (continued "
        "pre-training, LongLoRA, full fine-tuning), usually 2-10x below the main one; blank: the main rate."))
    layer_lr_decay: float = Field(1.0, gt=0, le=1.0, description=(
        "Layer-wise learning-rate decay for methods that train base weights: the top block trains at the main "
        "rate and each block below at this factor times the one above (e.g. 0.9); 1 turns it off."))
    # Speed switches (backend.core.kernels decides what "auto" means on a machine, with its reason).
    liger_kernel: Literal[kernels.TOGGLES] = Field("auto", description=(
        "Liger's Triton kernels (RMSNorm, RoPE, SwiGLU) through TRL: auto uses them on a CUDA GPU with "
        "liger-kernel installed."))
    attention: str = Field("auto", description=(
        "Attention implementation: auto (FlashAttention-2 where installed and supported, else sdpa), sdpa, "
        "flash_attention_2, eager, or a hub kernel repo (owner/name, needs the kernels package)."))
    fused_adamw: Literal[kernels.TOGGLES] = Field("auto", description=(
        "torch's fused AdamW kernel: auto uses it on CUDA with the adamw_torch optimizer."))
    torch_compile: Literal[kernels.TOGGLES] = Field("auto", description=(
        "Compile the model with torch.compile: opt-in (auto is off); the first steps wait for compilation."))

    @field_validator("attention")
    @classmethod
    def _attention_known(cls, v: str) -> str:
        problem = kernels.attention_name(v)
        if problem:
            raise ValueError(problem)
        return v


class EarlyStoppingConfig(Strict):
    patience: Optional[int] = Field(3, ge=1, le=100_000, description="Evaluations without improvement before stopping; null turns it off.")
    threshold: float = Field(0.0, ge=0, description="Minimum improvement that counts.")
    metric: str = Field("eval_loss", description="Metric watched (lower is better for losses).")


class DistributedConfig(Strict):
    gpus: int = Field(1, ge=1, le=MAX_GPUS_PER_NODE, description="GPUs per node.")
    nodes: int = Field(1, ge=1, le=1024, description="Machines.")
    strategy: Literal[STRATEGIES] = Field("ddp", description="How work and memory are split across GPUs.")


class AlignmentConfig(Strict):
    beta: float = Field(0.1, gt=0, le=100, description=(
        "DPO/KTO: how strongly the model is held to the reference model (lower lets it move further); "
        "ORPO: weight of the odds-ratio preference term."))
    desirable_weight: float = Field(1.0, gt=0, description="KTO: loss weight of desirable (label true) examples.")
    undesirable_weight: float = Field(1.0, gt=0, description="KTO: loss weight of undesirable (label false) examples.")
    loss_type: Literal[PREFERENCE_LOSSES] = Field("sigmoid", description=(
        "DPO: the preference loss (sigmoid is DPO's own; ipo, hinge, robust, bco_pair)."))
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5, description=(
        "DPO's robust loss: the assumed share of pairs whose labels are flipped (below 0.5)."))
    cpo_alpha: float = Field(1.0, ge=0.0, le=100, description="CPO: weight of the SFT term on the chosen answer.")
    simpo_gamma: float = Field(0.5, ge=0.0, le=100, description=(
        "SimPO: the target margin between chosen and rejected (length-normalized) rewards."))
    # GRPO / RLOO: answers are sampled and scored while training.
    num_generations: int = Field(4, ge=2, le=256, description=(
        "GRPO/RLOO: answers sampled per prompt; each is judged against the others of its group."))
    max_completion_length: int = Field(64, ge=1, le=131_072, description="GRPO/RLOO: longest sampled answer, in tokens.")
    temperature: float = Field(1.0, gt=0, le=5, description="GRPO/RLOO: sampling temperature (variety of the answers).")
    kl_coef: float = Field(0.0, ge=0, le=10, description=(
        "GRPO/RLOO: KL penalty toward the starting model; 0 skips the reference pass (cheaper)."))
    reward_model: Optional[str] = Field(None, description=(
        "GRPO/RLOO: a finished reward-model run directory (or a reward model directory) that scores answers."))
    reward_pattern: Optional[str] = Field(None, description=(
        "GRPO/RLOO: a regular expression; an answer that matches it scores 1, else 0."))
    reward_reference: bool = Field(False, description=(
        "GRPO/RLOO: score answers by word overlap (F1) with the dataset's own answer."))


class NotifyConfig(Strict):
    webhook: Optional[str] = Field(None, description="URL that receives one JSON POST when the run ends.")


class RunConfig(Strict):
    model: str = Field("smollm2-135m-instruct", description="Bundled name, local directory, or hub id.")
    objective: Literal[OBJECTIVES] = Field(catalog.OBJECTIVE.sft, description="What the training optimizes.")
    method: MethodConfig = Field(default_factory=MethodConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    early_stopping: EarlyStoppingConfig = Field(default_factory=EarlyStoppingConfig)
    distributed: DistributedConfig = Field(default_factory=DistributedConfig)
    notify: NotifyConfig = Field(default_factory=NotifyConfig)
    alignment: AlignmentConfig = Field(default_factory=AlignmentConfig)
    trust_remote_code: bool = Field(False, description="Run code shipped with the model (only for models you trust).")
    init_adapter: Optional[str] = Field(None, description=(
        "Train more: start the adapter from this folder (a finished run's adapter/) instead of fresh weights."))
    report_to: list[Literal["tensorboard", "mlflow", "wandb"]] = Field(default_factory=lambda: ["tensorboard"])
    name: Optional[str] = Field(None, max_length=80, description="A label for the run (the run id is generated).")

    @model_validator(mode="after")
    def _cross_field(self):
        if self.data.packing and not catalog.OBJECTIVES[self.objective].packing:
            raise ValueError(f"packing is not available for the {self.objective} objective; turn packing off")
        return self


class ConfigError(ValueError):
    """A config problem as sentences a person can act on; `fields` maps dotted path -> message."""

    def __init__(self, fields: dict[str, str], source: str | None = None):
        self.fields = fields
        where = f" in {source}" if source else ""
        lines = [f"{k}: {v}" if k else v for k, v in fields.items()]
        super().__init__(f"The run configuration{where} has {len(fields)} problem(s): " + "; ".join(lines))


def _humanize(err: dict[str, Any]) -> tuple[str, str]:
    loc = ".".join(str(p) for p in err.get("loc", ()) if not isinstance(p, int) or True)
    kind = err.get("type", "")
    msg = err.get("msg", "invalid value")
    got = err.get("input")
    if kind == "extra_forbidden":
        return loc, "is not a known setting (check the spelling, or remove it)"
    if kind == "missing":
        return loc, "is required"
    if kind == "less_than_equal" and "le" in (err.get("ctx") or {}):
        return loc, f"is too large: at most {err['ctx']['le']:,} (got {got!r})"
    if kind == "finite_number":
        return loc, f"must be a finite number (got {got!r})"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, "):]
    if isinstance(got, (str, int, float, bool)) or got is None:
        return loc, f"{msg} (got {got!r})"
    return loc, msg


def validate_config(data: dict[str, Any], source: str | None = None) -> RunConfig:
    """Build a RunConfig or raise ConfigError whose message names each bad field."""
    if not isinstance(data, dict):
        raise ConfigError({"": "the file must hold a mapping of settings (key: value), not a "
                               f"{type(data).__name__}"}, source)
    try:
        return RunConfig.model_validate(data)
    except ValidationError as e:
        fields: dict[str, str] = {}
        for err in e.errors():
            k, v = _humanize(err)
            fields.setdefault(k, v)
        raise ConfigError(fields, source) from None


def read_settings(path: str | Path) -> Any:
    """A config file's parsed content (YAML; a .json file as JSON), or a ConfigError naming the problem."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError({"": f"the file {p} does not exist"}) from None
    except (UnicodeDecodeError, IsADirectoryError):
        raise ConfigError({"": f"{p} is not a UTF-8 text file"}) from None
    try:
        return json.loads(text) if p.suffix == ".json" else (yaml.safe_load(text) or {})
    except (yaml.YAMLError, json.JSONDecodeError) as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        kind = "JSON" if p.suffix == ".json" else "YAML"
        raise ConfigError({"": f"{p} is not valid {kind}{where}: {getattr(e, 'problem', e)}"}) from None


def load_config(path: str | Path) -> RunConfig:
    return validate_config(read_settings(path), source=str(Path(path)))


def config_to_yaml(cfg: RunConfig) -> str:
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False, allow_unicode=True)


def save_config(cfg: RunConfig, path: str | Path) -> None:
    atomic_write_text(Path(path), config_to_yaml(cfg))


PATH_FIELDS = ("path", "validation_path")


def resolve_paths(cfg: RunConfig, roots: list[Path], strict: bool = False,
                  search_order: str = "", source: Optional[str] = None) -> RunConfig:
    """cfg with each relative data path (and a relative model folder) made absolute against the first
    of `roots` that holds it (idempotent). A data file no root holds stays as it is, or with `strict`
    is a ConfigError naming the folders searched and `search_order`."""
    updates: dict[str, str] = {}
    for field in PATH_FIELDS:
        value = getattr(cfg.data, field)
        if not value or str(value).startswith("hf://") or Path(value).expanduser().is_absolute():
            continue  # a hub dataset id (backend.data.sources) is not a path
        found = next((r / value for r in roots if (r / value).exists()), None)
        if found is not None:
            updates[field] = str(found.resolve())
        elif strict:
            looked = ", ".join(str(r) for r in roots)
            raise ConfigError({f"data.{field}": (
                f"the file {value} is in none of the folders searched ({looked}); relative paths are looked up "
                f"in {search_order}; give an absolute path or move the file there")}, source)
    if updates:
        cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update=updates)})
    if cfg.model not in BUNDLED and not Path(cfg.model).expanduser().is_absolute():
        # A relative model folder, if one exists; otherwise a hub id, left as it is.
        folder = next((r / cfg.model for r in roots if (r / cfg.model).is_dir()), None)
        if folder is not None:
            cfg = cfg.model_copy(update={"model": str(folder.resolve())})
    return cfg


def absolute_paths(cfg: RunConfig) -> RunConfig:
    """cfg with relative data/model paths resolved against the current directory (idempotent), so a run
    or a queued config no longer depends on where it was started from."""
    return resolve_paths(cfg, [Path.cwd()])


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Presets and tab values are partial configs layered over the defaults."""
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out
