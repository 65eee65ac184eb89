"""The optimizers the studio builds itself, and the parameter groups of per-group learning rates.

The Trainer builds the named optimizers of transformers (AdamW, Adafactor, bitsandbytes', schedule-free,
GaLore, APOLLO) from `TrainingArguments.optim`. This module builds the rest: Lion (written here, a few
lines), Muon (torch.optim.Muon for the hidden matrices, AdamW for everything else), and any optimizer
whose parameters need learning rates of their own: a separate embedding learning rate (continued
pre-training) and layer-wise learning-rate decay (full fine-tuning). The scheduler scales every group
by the same factor, so the ratios hold through warmup and decay.
"""
from __future__ import annotations

import importlib.util
from typing import Any, Iterable, Optional

import torch
from torch import nn

from backend.core.catalog import METHODS, OPTIMIZER, OPTIMIZERS
from backend.core.errors import UserError


def _closure_loss(closure: Any) -> Any:
    """The loss of an optimizer's optional closure, evaluated with gradients on (torch's step protocol)."""
    if closure is None:
        return None
    with torch.enable_grad():
        return closure()


class Lion(torch.optim.Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms"): the update is the sign of an
    interpolation of momentum and gradient, so it keeps one state per parameter (AdamW keeps two)."""

    def __init__(self, params: Iterable[Any], lr: float = 1e-4, betas: tuple[float, float] = (0.9, 0.99),
                 weight_decay: float = 0.0):
        if lr <= 0:
            raise ValueError(f"Lion needs a positive learning rate (got {lr})")
        super().__init__(params, {"lr": lr, "betas": betas, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = _closure_loss(closure)
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "exp_avg" not in state:
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                m = state["exp_avg"]
                # Decoupled weight decay, then the sign of the interpolated direction.
                p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(torch.lerp(p.grad, m, beta1).sign_(), alpha=-group["lr"])
                m.lerp_(p.grad, 1 - beta2)
        return loss


class Combined(torch.optim.Optimizer):
    """Several optimizers over disjoint parameters behaving as one for the Trainer and its scheduler:
    `param_groups` holds the parts' own group dicts, so the scheduler's learning rates reach them."""

    def __init__(self, parts: list[torch.optim.Optimizer]):
        self.parts = parts
        groups = [g for part in parts for g in part.param_groups]
        super().__init__(groups, dict(parts[-1].defaults))
        self.param_groups = groups  # the very dicts of the parts, not copies

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = _closure_loss(closure)
        for part in self.parts:
            part.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        for part in self.parts:
            part.zero_grad(set_to_none=set_to_none)

    @property
    def all_states(self) -> dict:
        """Every part's per-parameter state (the estimator's test counts these bytes)."""
        out: dict = {}
        for part in self.parts:
            out.update(part.state)
        return out

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [part.state_dict() for part in self.parts]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        for part, sd in zip(self.parts, state_dict["parts"]):
            part.load_state_dict(sd)


def optimizer_states(optimizer: torch.optim.Optimizer) -> dict:
    """parameter -> its state dict, whatever the optimizer (a Combined one included)."""
    return optimizer.all_states if isinstance(optimizer, Combined) else dict(optimizer.state)


# ---- which parameters get which learning rate ----------------------------------------------------

def _embedding_ids(model: nn.Module) -> set[int]:
    """Parameters of the input embeddings and the output head, PEFT's trainable copies of them included."""
    inner = model  # a PeftModel hands these calls down to the wrapped model
    ids: set[int] = set()
    names: set[str] = set()
    for module in (inner.get_input_embeddings(), inner.get_output_embeddings()):
        if module is None:
            continue
        ids.update(id(p) for p in module.parameters())
        for name, m in inner.named_modules():
            if m is module:
                names.add(name.rsplit(".", 1)[-1])
    for name, p in model.named_parameters():  # modules_to_save wraps the layer: match it by its name
        if any(f".{n}." in f".{name}" for n in names):
            ids.add(id(p))
    return ids


def _layer_index(model: nn.Module) -> dict[int, int]:
    from backend.methods.skeleton import decoder_layers

    out: dict[int, int] = {}
    for i, layer in enumerate(decoder_layers(model)):
        for p in layer.parameters():
            out[id(p)] = i
    return out


def param_groups(model: nn.Module, cfg: Any) -> list[dict[str, Any]]:
    """The trainable parameters in groups of one learning rate and one weight decay.

    Embeddings and the head take `train.embedding_learning_rate` when set. With `train.layer_lr_decay`
    below 1, block i of L trains at lr x decay^(L-1-i): the top block at the full rate; the embeddings,
    below every block, at lr x decay^L (unless their own rate is set); the final norm and head at lr (an
    embedding tied to the head is the head too, so it keeps lr).
    Weight decay goes to matrices only (norms and biases keep theirs at 0, as the Trainer does)."""
    t = cfg.train
    emb = _embedding_ids(model) if t.embedding_learning_rate else set()
    decay = t.layer_lr_decay
    layers = _layer_index(model) if decay < 1 else {}
    depth = max(layers.values(), default=-1) + 1
    embeddings = _embedding_ids(model) if decay < 1 and not emb else emb
    groups: dict[tuple[float, float], list[nn.Parameter]] = {}
    for p in model.parameters():  # tied weights once
        if not p.requires_grad:
            continue
        lr = t.learning_rate
        if id(p) in emb:
            lr = t.embedding_learning_rate
        elif id(p) in layers:
            lr = t.learning_rate * decay ** (depth - 1 - layers[id(p)])
        elif decay < 1 and id(p) in embeddings and id(p) not in _output_ids(model):
            lr = t.learning_rate * decay ** depth
        wd = t.weight_decay if p.ndim >= 2 else 0.0
        groups.setdefault((lr, wd), []).append(p)
    return [{"params": ps, "lr": lr, "weight_decay": wd} for (lr, wd), ps in groups.items()]


def _output_ids(model: nn.Module) -> set[int]:
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {id(p) for p in head.parameters()} if head is not None else set()


# ---- building ------------------------------------------------------------------------------------

def optimizer_class(name: str) -> tuple[type, dict[str, Any]]:
    """The torch optimizer class behind a RunConfig optimizer name, plus kwargs it needs."""
    if name not in OPTIMIZERS:
        raise UserError(f"The optimizer '{name}' is not known; choose one of {', '.join(OPTIMIZERS)}.")
    if name == OPTIMIZER.adamw_torch:
        return torch.optim.AdamW, {}
    if name == OPTIMIZER.sgd:
        return torch.optim.SGD, {}
    if name == OPTIMIZER.adafactor:
        from transformers.optimization import Adafactor

        # A fixed learning rate, so the scheduler and LoRA+'s ratios apply as configured.
        return Adafactor, {"scale_parameter": False, "relative_step": False, "warmup_init": False}
    import bitsandbytes as bnb

    classes = {OPTIMIZER.adamw_8bit: bnb.optim.AdamW8bit, OPTIMIZER.paged_adamw_8bit: bnb.optim.PagedAdamW8bit,
               OPTIMIZER.paged_adamw_32bit: bnb.optim.PagedAdamW32bit}
    return classes[name], {}



def package_problem(name: str) -> Optional[str]:
    """A sentence when the optimizer needs a package this Python lacks (or a torch without Muon)."""
    info = OPTIMIZERS[name]
    if info.package and importlib.util.find_spec(info.package) is None:
        pip = info.package.replace("_", "-")
        return (f"The {name} optimizer needs the {pip} package, which is not installed here; install it "
                f"(pip install {pip}) or choose another optimizer such as adamw_torch.")
    if name == OPTIMIZER.muon and not hasattr(torch.optim, "Muon"):
        return (f"The muon optimizer needs torch.optim.Muon, which torch {torch.__version__} lacks; update torch "
                "or choose another optimizer.")
    return None


def needs_own_optimizer(cfg: Any) -> bool:
    """True when the Trainer's `optim` name cannot express the run's optimizer or learning rates."""
    t = cfg.train
    return OPTIMIZERS[t.optimizer].own or bool(t.embedding_learning_rate) or t.layer_lr_decay < 1


def build_optimizer(model: nn.Module, cfg: Any) -> torch.optim.Optimizer:
    """The run's optimizer over `param_groups` (Lion, Muon + AdamW, or a torch/bitsandbytes optimizer)."""
    name = cfg.train.optimizer
    problem = package_problem(name)
    if problem:
        raise UserError(problem)
    groups = param_groups(model, cfg)
    if not groups:
        raise UserError("No parameter of the model trains with this method, so there is nothing to optimize.")
    if name == OPTIMIZER.lion:
        return Lion(groups, lr=cfg.train.learning_rate)
    if name == OPTIMIZER.muon:
        return _muon(model, groups, cfg)
    if OPTIMIZERS[name].package:
        raise UserError(f"The {name} optimizer cannot be combined with an embedding learning rate or layer-wise "
                        "decay here; clear those two settings or choose adamw_torch.")
    cls, extra = optimizer_class(name)
    return cls(groups, lr=cfg.train.learning_rate, **extra)


def muon_takes(p: nn.Parameter, embeddings: set[int]) -> bool:
    """Muon orthogonalizes matrices: every trainable 2-D tensor but the embeddings and the head."""
    return p.ndim == 2 and id(p) not in embeddings


def _muon(model: nn.Module, groups: list[dict[str, Any]], cfg: Any) -> torch.optim.Optimizer:
    embeddings = _embedding_ids(model)
    muon_groups, adam_groups = [], []
    for g in groups:
        mine = [p for p in g["params"] if muon_takes(p, embeddings)]
        rest = [p for p in g["params"] if not muon_takes(p, embeddings)]
        if mine:
            muon_groups.append({**g, "params": mine})
        if rest:
            adam_groups.append({**g, "params": rest})
    parts: list[torch.optim.Optimizer] = []
    if muon_groups:
        # match_rms_adamw scales Muon's update to AdamW's size, so one learning rate serves both parts.
        parts.append(torch.optim.Muon(muon_groups, lr=cfg.train.learning_rate, adjust_lr_fn="match_rms_adamw"))
    if adam_groups:
        parts.append(torch.optim.AdamW(adam_groups, lr=cfg.train.learning_rate))
    return parts[0] if len(parts) == 1 else Combined(parts)


def validate_optimizer(cfg: Any) -> dict[str, str]:
    """Field -> sentence for optimizer settings that cannot train (no model weights needed)."""
    t = cfg.train
    out: dict[str, str] = {}
    problem = package_problem(t.optimizer)
    if problem:
        out["train.optimizer"] = problem
    method = METHODS[cfg.method.name]
    own_lr = bool(t.embedding_learning_rate) or t.layer_lr_decay < 1
    from backend.methods.registry import get_method

    if own_lr and get_method(cfg.method.name).optimizer is not None:
        out["train.embedding_learning_rate" if t.embedding_learning_rate else "train.layer_lr_decay"] = (
            f"{method.title} sets its own learning rates per parameter group, so an embedding learning rate or "
            "layer-wise decay cannot be added; clear them or choose LoRA.")
    elif OPTIMIZERS[t.optimizer].own and get_method(cfg.method.name).optimizer is not None:
        out["train.optimizer"] = (f"{method.title} builds its own optimizer; choose adamw_torch (or another "
                                  "Trainer optimizer) with it.")
    if t.layer_lr_decay < 1 and not method.trains_base:
        out["train.layer_lr_decay"] = (f"Layer-wise learning-rate decay is for methods that train the base "
                                       f"weights (full fine-tuning and its kin), not {method.title}; set it to 1.")
    if own_lr and OPTIMIZERS[t.optimizer].package:
        out["train.optimizer"] = (f"The {t.optimizer} optimizer is built by the Trainer with one learning rate; "
                                  "clear the embedding learning rate and layer-wise decay, or choose adamw_torch.")
    return out
