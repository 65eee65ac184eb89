"""The fine-tuning methods: a registry of MethodSpecs and the model plumbing they share.

Importing this package registers every method of backend.core.catalog (one module per family);
a new method is a catalog entry plus a `register(...)` call in its family's module.
"""
from backend.methods.registry import METHODS, MethodSpec, always_mergeable, complete_model, get_method, register
from backend.methods.skeleton import build_meta_model, count_parameters, decoder_layers, linear_layer_names
from backend.methods.loading import (
    apply_method, cast_for_training, create_optimizer, exact_counts, load_dtype, load_trainable_model,
    optimizer_class,
)
from backend.methods.validation import bitsandbytes_problem, validate_for_model
from backend.methods.inspect import ModelInfo, inspect_model, target_shortcuts

# Method modules register themselves on import; the order here is the order the UI lists them.
from backend.methods import full as _full  # noqa: E402,F401
from backend.methods import lora as _lora  # noqa: E402,F401
from backend.methods import reparam as _reparam  # noqa: E402,F401
from backend.methods import orthogonal as _orthogonal  # noqa: E402,F401
from backend.methods import additive as _additive  # noqa: E402,F401
from backend.methods import adapters as _adapters  # noqa: E402,F401
from backend.methods import prompt as _prompt  # noqa: E402,F401
from backend.methods import selective as _selective  # noqa: E402,F401
from backend.methods.hooks import method_callbacks, save_trained  # noqa: E402

__all__ = [
    "METHODS", "MethodSpec", "register", "get_method", "always_mergeable", "complete_model",
    "build_meta_model", "count_parameters", "decoder_layers", "linear_layer_names",
    "apply_method", "cast_for_training", "create_optimizer", "exact_counts", "load_dtype", "load_trainable_model", "optimizer_class",
    "bitsandbytes_problem", "validate_for_model",
    "ModelInfo", "inspect_model", "target_shortcuts", "method_callbacks", "save_trained",
]
