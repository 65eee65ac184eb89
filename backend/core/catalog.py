"""The names the studio knows, as data: fine-tuning methods, training objectives and optimizers.

Each method, objective and optimizer is written here once, with the families it belongs to (LoRA family,
quantized, bottleneck, trains the base weights, online, uses a reference, fused head, packing allowed...).
The config's allowed values, the Method tab's lists, the estimator's terms, the loader and the trainer all
read these tables; behaviour (how a method wraps a model, how an objective builds its trainer) is attached
to the names in backend.methods and backend.objectives. This module imports nothing else of the project,
so every layer may read it.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace
from typing import Optional

LORA_PARAMS = ("r", "alpha", "dropout", "target_modules")
# Plain LoRA and the variants whose adapter can start from the weights' own decomposition (PiSSA, OLoRA).
LORA_INIT_PARAMS = LORA_PARAMS + ("lora_init",)


@dataclass(frozen=True)
class MethodInfo:
    name: str
    title: str
    family: str                  # full | reparameterization | additive | selective | prompt | hybrid
    help: str                    # one or two sentences: when to choose it and what it costs
    params: tuple[str, ...]      # MethodConfig fields the method shows
    uses_peft: bool
    quantized: bool
    trains_base: bool = False    # base weights train (full-style): AdamW states per base parameter
    lora_family: bool = False    # a PEFT LoraConfig (LoRA, QLoRA, DoRA, rsLoRA, LoRA+)
    bottleneck: bool = False     # the studio's own bottleneck adapters (not PEFT; cannot merge)
    reward_model: bool = False   # can train a reward model (its score head trains too)
    qlora_switch: bool = False   # switching to QLoRA keeps the run meaningful (the estimator suggests it)
    kv_prefix: bool = False      # virtual tokens live as key/value prefixes, not as input embeddings
    orthogonal: bool = False     # rotates each adapted linear's input by a learned orthogonal matrix (OFT, BOFT)
    unquantized: Optional[str] = None  # the same structure without quantization (QLoRA -> LoRA)
    # Trains the embedding rows of tokens added to the tokenizer (data.add_special_tokens): every weight trains
    # (full), or a LoraConfig whose trainable_token_indices train only those rows (LoRA family, LoRA-FA).
    new_tokens: bool = False


def _m(name: str, title: str, family: str, help: str, **kw) -> MethodInfo:
    return MethodInfo(name, title, family, help, **kw)


# The order is the order the Method tab lists them.
METHODS: dict[str, MethodInfo] = {m.name: m for m in (
    _m("full", "Full fine-tuning", "full",
       ("Every weight trains: the most capacity for a large shift in behaviour, but memory is about 16 "
        "bytes per parameter with AdamW and the result is a whole new model."),
       params=(), uses_peft=False, quantized=False, trains_base=True, reward_model=True, qlora_switch=True,
       new_tokens=True),
    _m("last_layers", "Last N layers (layer-selective)", "selective",
       ("Only the top N transformer blocks (and the final norm) train: cheaper than full fine-tuning and "
        "good for adapting the output style; lower layers keep the base model's knowledge."),
       params=("num_layers",), uses_peft=False, quantized=False, trains_base=True, reward_model=True, qlora_switch=True),
    _m("lora", "LoRA", "reparameterization",
       ("Trains small low-rank matrices beside the chosen layers while the base stays frozen: the usual "
        "first choice, a few MB of adapter and a fraction of full fine-tuning's memory."),
       params=LORA_INIT_PARAMS, uses_peft=True, quantized=False, lora_family=True, reward_model=True, qlora_switch=True,
       new_tokens=True),
    _m("qlora", "QLoRA (4-bit base)", "hybrid",
       ("LoRA on a base loaded in 4-bit NF4: choose it when the model does not fit in 16-bit (a 7B model "
        "on a 24 GB card); about 4x less weight memory, somewhat slower steps. Needs bitsandbytes."),
       params=LORA_PARAMS + ("quant_type", "double_quant", "compute_dtype", "lora_init"), uses_peft=True,
       quantized=True, lora_family=True, unquantized="lora", new_tokens=True),
    _m("dora", "DoRA", "reparameterization",
       ("LoRA that learns each weight's magnitude and direction separately: often more stable and closer "
        "to full fine-tuning at low ranks, at roughly 1.2-2x LoRA's step time and a little more memory."),
       params=LORA_INIT_PARAMS, uses_peft=True, quantized=False, lora_family=True, reward_model=True, qlora_switch=True,
       new_tokens=True),
    _m("rslora", "rsLoRA (rank-stabilized)", "reparameterization",
       ("LoRA scaled by alpha/sqrt(r) instead of alpha/r, so high ranks (64+) keep learning; same cost as"
        " LoRA. Choose it when you want a large rank."),
       params=LORA_INIT_PARAMS, uses_peft=True, quantized=False, lora_family=True, reward_model=True, qlora_switch=True,
       new_tokens=True),
    _m("loraplus", "LoRA+", "reparameterization",
       ("LoRA whose B matrices learn faster than A (the ratio below): often converges faster at the same "
        "cost as LoRA; lower the base learning rate a little."),
       params=LORA_PARAMS + ("loraplus_lr_ratio",), uses_peft=True, quantized=False, lora_family=True, qlora_switch=True,
       new_tokens=True),
    _m("lora_fa", "LoRA-FA (frozen A)", "reparameterization",
       ("LoRA whose A matrices stay at their random start and only B trains: about half of LoRA's "
        "trainable parameters and less activation memory, at similar quality; choose it when LoRA's "
        "memory is tight."),
       params=LORA_PARAMS, uses_peft=True, quantized=False),
    _m("adalora", "AdaLoRA (adaptive rank)", "reparameterization",
       ("LoRA that starts at the initial rank and moves the rank budget to the layers that matter, ending"
        " at rank r: better use of a small budget than fixed-rank LoRA, at a somewhat slower step."),
       params=("init_r", "r", "alpha", "dropout", "target_modules"), uses_peft=True, quantized=False),
    _m("vera", "VeRA (vector-based random adaptation)", "reparameterization",
       ("One frozen random low-rank pair shared by all layers, with only small scaling vectors trained: "
        "around 10x fewer trainable parameters than LoRA (use a larger r, e.g. 256); adapters of a few "
        "KB."),
       params=("r", "dropout", "target_modules"), uses_peft=True, quantized=False),
    _m("longlora", "LongLoRA (long contexts)", "hybrid",
       ("LoRA plus trainable embeddings and norms for extending a model to longer contexts, trained with "
        "shifted sparse attention (S²-Attn: attention in groups, full attention at inference) where the "
        "model allows it; costs the embedding matrix's gradients and optimizer states on top of LoRA."),
       params=LORA_PARAMS + ("s2_attn_group_ratio",), uses_peft=True, quantized=False),
    _m("oft", "OFT (orthogonal fine-tuning)", "reparameterization",
       ("Learns a block-diagonal rotation of each chosen layer's input, so the weights keep their singular values "
        "(their 'energy'): less forgetting than LoRA at a similar size; the layers' input widths must divide by "
        "the block size."),
       params=("oft_block_size", "oft_cayley_neumann", "target_modules"), uses_peft=True, quantized=False,
       orthogonal=True),
    _m("boft", "BOFT (orthogonal butterfly)", "reparameterization",
       ("OFT with an exact rotation plus a learned scale per output, built as one full input-by-input matrix per "
        "layer each step: more memory than OFT (that matrix and its buffers per adapted layer), one butterfly "
        "factor here."),
       params=("oft_block_size", "target_modules"), uses_peft=True, quantized=False, orthogonal=True),
    _m("ia3", "IA³ (scaling vectors)", "additive",
       ("Learns one scaling vector each for keys, values and the feed-forward layer: the fewest trainable"
        " parameters of the adapter methods (about 0.01%) and very cheap, but less capacity than LoRA."),
       params=(), uses_peft=True, quantized=False),
    _m("adapter_houlsby", "Bottleneck adapters (Houlsby)", "additive",
       ("Small bottleneck layers after each attention and each feed-forward block: a well-proven adapter "
        "with LoRA-like memory, but the extra layers add some inference latency and cannot be merged."),
       params=("bottleneck", "adapter_activation"), uses_peft=False, quantized=False, bottleneck=True),
    _m("adapter_pfeiffer", "Bottleneck adapters (Pfeiffer)", "additive",
       ("One bottleneck layer after each feed-forward block only: half of Houlsby's adapter parameters "
        "and latency at similar quality on most tasks; cannot be merged."),
       params=("bottleneck", "adapter_activation"), uses_peft=False, quantized=False, bottleneck=True),
    _m("prompt_tuning", "Prompt tuning", "prompt",
       ("Learns only a few virtual tokens put in front of every input (optionally started from a text "
        "such as a task description): tiny adapters and little memory, but weaker than LoRA on small "
        "models."),
       params=("num_virtual_tokens", "prompt_init_text"), uses_peft=True, quantized=False),
    _m("prefix_tuning", "Prefix tuning", "prompt",
       ("Learns keys and values prepended at every attention layer: stronger than prompt tuning with tiny"
        " adapters (2 x tokens x layers x hidden values); each prefix token costs attention memory."),
       params=("num_virtual_tokens",), uses_peft=True, quantized=False, kv_prefix=True),
    _m("p_tuning_v2", "P-tuning v2 (deep prompts)", "prompt",
       ("Deep prompts at every layer trained through a small MLP of the bottleneck width: more stable "
        "than plain prefix tuning on harder tasks, close to full fine-tuning on understanding tasks; the "
        "MLP adds training memory."),
       params=("num_virtual_tokens", "bottleneck"), uses_peft=True, quantized=False, kv_prefix=True),
    _m("feature_extraction", "Feature extraction (output head only)", "full",
       ("Only the output head trains; the body is a fixed feature extractor: the cheapest full-model "
        "option for a quick domain-vocabulary shift. When the head is tied to the input embeddings (most "
        "small models) that shared matrix trains, so memory is the vocabulary matrix's."),
       params=(), uses_peft=False, quantized=False, trains_base=True),
    _m("gradual_unfreezing", "Gradual unfreezing", "full",
       ("Starts with the top block and unfreezes one more block below each epoch (or every N steps): less"
        " forgetting than full fine-tuning on small datasets; memory grows to that of training all "
        "blocks."),
       params=("unfreeze_every",), uses_peft=False, quantized=False, trains_base=True),
    _m("bitfit", "BitFit (biases only)", "selective",
       ("Only the bias terms train (about 0.1% of the weights): very cheap and surprisingly good for "
        "small shifts on models that have biases (GPT-2, OPT, Qwen attention); Llama-style models have "
        "none."),
       params=(), uses_peft=False, quantized=False, trains_base=True),
    _m("fish_mask", "Fish Mask (top-k% by Fisher information)", "selective",
       ("Measures on a few batches which weights matter most and trains only that share (e.g. 0.5%): "
        "sparse updates with little forgetting, but memory is like full fine-tuning's since gradients are"
        " dense."),
       params=("fish_mask_density",), uses_peft=False, quantized=False, trains_base=True),
)}
METHOD = SimpleNamespace(**{n: n for n in METHODS})  # METHOD.qlora: a name typo fails at import


@dataclass(frozen=True)
class ObjectiveInfo:
    name: str
    title: str
    help: str
    data_format: Optional[str]   # the normalized dataset format it trains on (None: SFT's any text/chat format)
    alignment: bool = False      # trained by a TRL alignment trainer, not the SFT path
    uses_reference: bool = False  # holds a frozen reference model (or the adapter switched off)
    online: bool = False         # samples answers while training (GRPO/RLOO)
    fused_head: bool = False     # TRL computes the loss without holding the full logits
    packing: bool = False        # rows may be packed into full-length sequences


OBJECTIVES: dict[str, ObjectiveInfo] = {o.name: o for o in (
    ObjectiveInfo(
        "sft", "SFT (supervised fine-tuning)",
        ("Supervised fine-tuning: learn the answers of the dataset, token by token. Other objectives: "
         "dpo/orpo/kto/reward learn from preference data, grpo/rloo from prompts and rewards."),
        None, fused_head=True, packing=True),
    ObjectiveInfo(
        "pretrain", "Continued pre-training", "Continued pre-training: learn every token of plain text.",
        None, fused_head=True, packing=True),
    ObjectiveInfo(
        "dpo", "DPO (direct preference optimization)",
        ("Learns from chosen/rejected answer pairs without a reward model, held near the starting model by beta: "
         "the usual alignment step after SFT; costs two forward passes per pair (policy and reference)."),
        "preference", alignment=True, uses_reference=True, fused_head=True),
    ObjectiveInfo(
        "orpo", "ORPO (odds-ratio preference optimization)",
        ("SFT and preference learning in one step, with no reference model: cheaper than DPO (one model) and "
         "usable straight from a base model; beta weighs the preference term."),
        "preference", alignment=True),
    ObjectiveInfo(
        "cpo", "CPO (contrastive preference optimization)",
        ("Preference pairs with no reference model: a DPO-style loss on the policy alone plus an SFT term on the "
         "chosen answer (weighted by CPO alpha); one model in memory, like ORPO."),
        "preference", alignment=True),
    ObjectiveInfo(
        "simpo", "SimPO (simple preference optimization)",
        ("Preference pairs with no reference model: the length-normalized log-probability of chosen over "
         "rejected must beat a target margin (SimPO gamma); cheap (one model) and robust to long answers."),
        "preference", alignment=True),
    ObjectiveInfo(
        "kto", "KTO (Kahneman-Tversky optimization)",
        ("Learns from single answers marked good or bad (no pairs needed): choose it when you have thumbs-up/"
         "down data; like DPO it needs a reference pass, and both labels should be present in each batch."),
        "kto", alignment=True, uses_reference=True, fused_head=True),
    ObjectiveInfo(
        "reward", "Reward model",
        ("Trains a scorer (the model with a one-number head) that ranks chosen above rejected answers, for RLHF "
         "or filtering; the result scores text and does not chat. Costs like SFT on both answers of each pair."),
        "preference", alignment=True),
    ObjectiveInfo(
        "grpo", "GRPO (RLHF: group-relative policy optimization)",
        ("Samples several answers per prompt, scores them with your rewards (a reward model, a pattern, or "
         "overlap with the dataset's answer) and moves the model toward the better ones: choose it to sharpen a "
         "skill you can score; each step costs generation time on top of training."),
        "prompts", alignment=True, online=True),
    ObjectiveInfo(
        "rloo", "RLOO (RLHF: REINFORCE leave-one-out)",
        ("Like GRPO, scored answers sampled per prompt, but each answer is compared with the mean of the others "
         "in its group; a simpler, often steadier update at the same generation cost."),
        "prompts", alignment=True, online=True),
)}
OBJECTIVE = SimpleNamespace(**{n: n for n in OBJECTIVES})


@dataclass(frozen=True)
class PreferenceLossInfo:
    name: str                    # TRL's DPOConfig.loss_type value
    title: str
    help: str
    label_smoothing: bool = False  # reads alignment.label_smoothing (the assumed share of flipped labels)


# DPO's losses (TRL DPOConfig.loss_type); each trains on prompt/chosen/rejected pairs, like DPO itself.
# TRL 1.16 has no unpaired BCO trainer, so BCO is offered on pairs only (thumbs-up/down data: KTO).
PREFERENCE_LOSSES: dict[str, PreferenceLossInfo] = {x.name: x for x in (
    PreferenceLossInfo("sigmoid", "DPO (sigmoid)",
                       ("The DPO paper's loss: the usual choice. (TRL 1.16's sigmoid loss ignores label smoothing, so "
                        "conservative DPO for noisy labels is the robust loss here.)")),
    PreferenceLossInfo("ipo", "IPO",
                       ("Identity preference optimization: a squared loss toward a fixed margin (1/2 beta), which "
                        "does not over-fit when the pairs are always won; beta is its regularization strength.")),
    PreferenceLossInfo("hinge", "Hinge (SLiC)",
                       ("A hinge on the reward margin (SLiC): stops pushing a pair once it is won by 1/beta, which "
                        "keeps the policy closer to the reference on easy pairs.")),
    PreferenceLossInfo("robust", "Robust DPO (label smoothing, cDPO-style)",
                       ("DPO made unbiased under label noise: give label smoothing the share of pairs you think are "
                        "flipped (e.g. 0.1, below 0.5); the loss then discounts that share of each pair's verdict."),
                       label_smoothing=True),
    PreferenceLossInfo("bco_pair", "BCO (pairs)",
                       ("Binary classifier optimization on pairs: chosen and rejected are classified good and bad "
                        "around a running reward mean; steadier than sigmoid when answers are both good or both "
                        "bad. Unpaired thumbs-up/down data trains with KTO instead.")),
)}
PREFERENCE_LOSS = SimpleNamespace(**{n: n for n in PREFERENCE_LOSSES})


@dataclass(frozen=True)
class LoraInitInfo:
    name: str
    title: str
    help: str
    peft_value: object           # LoraConfig.init_lora_weights
    changes_base: bool = False   # the method moves part of the base weights into the adapter at the start
    quantized_base: bool = False  # meaningful only on a 4-bit base (QLoRA): it starts from the quantization error


# How a LoRA-family adapter starts (PEFT's init_lora_weights).
LORA_INITS: dict[str, LoraInitInfo] = {x.name: x for x in (
    LoraInitInfo("default", "Default (B = 0)", "A random, B zero: the adapter starts as a no-op.", True),
    LoraInitInfo("pissa", "PiSSA (principal singular vectors)",
                 ("A and B start from the weight's top singular vectors, and the base keeps the rest: often faster "
                  "convergence than LoRA. The saved adapter is converted so it applies to the original base."),
                 "pissa", changes_base=True),
    LoraInitInfo("olora", "OLoRA (orthonormal)",
                 ("A and B start from a QR decomposition of the weight, the base keeps the rest: steadier early "
                  "training. The saved adapter is converted so it applies to the original base."),
                 "olora", changes_base=True),
    LoraInitInfo("loftq", "LoftQ (quantization-aware, QLoRA)",
                 ("A and B start from the largest part of the 4-bit base's quantization error (W minus the dequantized "
                  "weight), so base plus adapter begin closer to the original weights: QLoRA only."),
                 True, quantized_base=True),
)}


def lora_inits_for(method: str) -> tuple[str, ...]:
    """The adapter starts that mean something for a method: LoftQ needs a 4-bit base, and PiSSA/OLoRA decompose
    16-bit weights, which a 4-bit base does not have; empty for a method without the field."""
    info = METHODS.get(method)
    if info is None or "lora_init" not in info.params:
        return ()
    return tuple(n for n, x in LORA_INITS.items()
                 if not (x.quantized_base and not info.quantized) and not (x.changes_base and info.quantized))


@dataclass(frozen=True)
class OptimizerInfo:
    name: str
    trainer_name: str            # transformers' TrainingArguments.optim value
    bitsandbytes: bool = False   # needs the bitsandbytes package
    eight_bit: bool = False      # 8-bit states (2 B per state value plus block scales)
    paged: bool = False          # states in managed memory that can page out to the host
    states: str = ""             # what the optimizer keeps per trainable parameter (the estimator's breakdown)
    own: bool = False            # built by backend.methods.optimizers, not by the Trainer's `optim` name
    package: Optional[str] = None  # the importable package it needs (a sentence names it when missing)
    help: str = ""               # when to choose it (the Method tab shows it under the optimizer)


OPTIMIZERS: dict[str, OptimizerInfo] = {o.name: o for o in (
    OptimizerInfo("adamw_torch", "adamw_torch", states="AdamW m + v in the parameter dtype",
                  help="AdamW: the usual choice; two states per trainable parameter."),
    OptimizerInfo("adamw_8bit", "adamw_bnb_8bit", bitsandbytes=True, eight_bit=True,
                  help="AdamW with 8-bit states (bitsandbytes, CUDA): about a quarter of AdamW's optimizer memory.",
                  states="8-bit AdamW: 2 B + fp32 scale per 256 (tensors < 4096 elements: 8 B)"),
    OptimizerInfo("paged_adamw_8bit", "paged_adamw_8bit", bitsandbytes=True, eight_bit=True, paged=True,
                  help="8-bit AdamW whose states can page out to host memory at memory peaks (CUDA).",
                  states="paged 8-bit AdamW (managed memory): 2 B + fp32 scale per 256"),
    OptimizerInfo("paged_adamw_32bit", "paged_adamw_32bit", bitsandbytes=True, paged=True,
                  help="AdamW whose 32-bit states can page out to host memory at memory peaks (CUDA).",
                  states="paged AdamW (managed memory): 8 B fp32"),
    OptimizerInfo("sgd", "sgd", states="SGD without momentum keeps no state",
                  help="Plain SGD: no optimizer memory at all, but needs a much higher learning rate and more steps."),
    OptimizerInfo("adafactor", "adafactor", states="Adafactor: factored row + column second moments",
                  help="Adafactor: factored second moments, a small fraction of AdamW's optimizer memory."),
    OptimizerInfo("lion", "adamw_torch", own=True,
                  help=("Lion: updates by the sign of a momentum, one state instead of AdamW's two (half the optimizer "
                        "memory); use a 3-10x lower learning rate and a larger weight decay than AdamW."),
                  states="Lion: one momentum (m) in the parameter dtype"),
    OptimizerInfo("muon", "adamw_torch", own=True,
                  help=("Muon: orthogonalized momentum for the hidden weight matrices (AdamW for the rest), often faster "
                        "per step for full fine-tuning; needs a torch with torch.optim.Muon."),
                  states=("Muon: one momentum buffer per hidden matrix; embeddings, head, norms and biases use "
                          "AdamW (m + v)")),
    OptimizerInfo("schedule_free_adamw", "schedule_free_adamw", package="schedulefree",
                  help=("Schedule-free AdamW: no learning-rate schedule to tune (use a constant one); two states like "
                        "AdamW's, and the run saves its averaged weights; needs the schedulefree package."),
                  states="schedule-free AdamW: z + v (no m) in the parameter dtype"),
    OptimizerInfo("galore_adamw", "galore_adamw", package="galore_torch",
                  help=("GaLore: AdamW states on a low-rank projection of each matrix's gradient, so full fine-tuning "
                        "needs far less optimizer memory; needs the galore-torch package."),
                  states="GaLore: AdamW m + v on the rank-r projected gradient of each matrix, plus the projection"),
    OptimizerInfo("apollo_adamw", "apollo_adamw", package="apollo_torch",
                  help=("APOLLO: AdamW-like updates scaled from a low-rank random projection of the gradient: close to "
                        "SGD's memory at AdamW's quality; needs the apollo-torch package."),
                  states="APOLLO: AdamW m + v on a rank-r random projection of each matrix's gradient (the full rank "
                         "even for a matrix smaller than it)"),
)}
OPTIMIZER = SimpleNamespace(**{n: n for n in OPTIMIZERS})


def methods_where(**flags: object) -> tuple[str, ...]:
    """Method names whose fields equal the given values, in catalog order."""
    return tuple(n for n, m in METHODS.items() if all(getattr(m, k) == v for k, v in flags.items()))
