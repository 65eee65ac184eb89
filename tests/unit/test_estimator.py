"""estimate(): exact counts from the meta skeleton, sharding, fit and suggestions, speed."""
import time

import pytest

from backend.core.config import RunConfig
from backend.estimator import estimate
from backend.core.gpu import GpuInfo


@pytest.fixture(scope="module")
def llama7b():
    from transformers import LlamaConfig
    return LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                       num_key_value_heads=32, vocab_size=32000, max_position_embeddings=4096)


def run_config(name="lora", **sections):
    data = {"model": "owner/name", "method": {"name": name}}
    for key, value in sections.items():
        if key == "method":
            data["method"].update(value)
        else:
            data[key] = value
    return RunConfig.model_validate(data)


def test_lora_r8_qkvo_on_a_7b_llama_counts_8388608_trainable(llama7b):
    cfg = run_config(method={"r": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]})
    est = estimate(cfg, gpus=[], model_config=llama7b)
    assert est.trainable_params == 8_388_608
    assert est.total_params == 6_738_415_616 + 8_388_608


def test_prefix_tuning_20_tokens_on_40_layers_of_4096_counts_6553600():
    from transformers import LlamaConfig
    mc = LlamaConfig(hidden_size=4096, intermediate_size=11008, num_hidden_layers=40, num_attention_heads=32,
                     num_key_value_heads=32, vocab_size=32000)
    est = estimate(run_config("prefix_tuning", method={"num_virtual_tokens": 20}), gpus=[], model_config=mc)
    assert est.trainable_params == 6_553_600


def test_full_fine_tuning_7b_bf16_keeps_fp32_master_weights_and_fp32_adam_states(llama7b):
    est = estimate(run_config("full", train={"precision": "bf16", "optimizer": "adamw_torch"}), gpus=[],
                   model_config=llama7b)
    n = 6_738_415_616
    assert est.terms_bytes["weights"] == 4 * n     # fp32 master weights (nothing stays frozen)
    assert est.terms_bytes["gradients"] == 4 * n   # gradients in the parameter dtype
    assert est.terms_bytes["optimizer"] == 8 * n   # torch AdamW: m and v in the parameter dtype (fp32)
    assert "8 B/param" in est.formulas["optimizer"] and "12 B/param with the fp32 master" in est.formulas["optimizer"]
    assert [(p["dtype"], p["bytes_per_param"]) for p in est.dtypes["optimizer"]] == [("fp32", 8.0)]
    assert est.dtypes["weights"][0]["what"].endswith("(fp32 master copy)")
    assert est.total_bytes > est.allocated_bytes > est.terms_bytes["weights"] + est.terms_bytes["optimizer"]


def test_full_fine_tuning_7b_pure_bf16_halves_weights_gradients_and_states(llama7b):
    est = estimate(run_config("full", train={"precision": "bf16", "pure_bf16": True}), gpus=[], model_config=llama7b)
    n = 6_738_415_616
    assert (est.terms_bytes["weights"], est.terms_bytes["gradients"], est.terms_bytes["optimizer"]) == (2 * n, 2 * n, 4 * n)
    assert "pure bf16" in est.formulas["optimizer"]
    assert est.dtypes["optimizer"][0]["dtype"] == "bf16"


@pytest.mark.parametrize("method", ["lora", "dora"])
def test_trainable_count_on_the_tiny_model_equals_peft(tiny_model_dir, method):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    cfg = run_config(method, model=str(tiny_model_dir),
                     method={"r": 4, "target_modules": ["q_proj", "v_proj", "down_proj"]})
    est = estimate(cfg, gpus=[])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj", "down_proj"],
                                                  use_dora=method == "dora", task_type="CAUSAL_LM"))
    trainable, total = peft_model.get_nb_trainable_parameters()
    assert (est.trainable_params, est.total_params) == (trainable, total)


def test_a_directory_holding_only_config_json_is_enough(tmp_path):
    from transformers import LlamaConfig
    LlamaConfig(hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
                vocab_size=1000).save_pretrained(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["config.json"]
    est = estimate(run_config("full", model=str(tmp_path)), gpus=[])
    assert est.trainable_params == est.total_params > 0
    assert all(v > 0 for k, v in est.terms_bytes.items())


def test_zero3_over_8_gpus_divides_weights_gradients_and_optimizer(llama7b):
    one = estimate(run_config("full"), gpus=[], model_config=llama7b)
    eight = estimate(run_config("full", distributed={"gpus": 8, "strategy": "zero3"}), gpus=[], model_config=llama7b)
    # DeepSpeed casts the module to bf16 (its fp32 master copy lives in the optimizer), so the model's
    # fp32 master weights of the single-GPU plan become 2 B per parameter, divided over 8 GPUs.
    for term in ("weights", "gradients"):
        assert eight.terms_bytes[term] == pytest.approx(one.terms_bytes[term] / 2 / 8, abs=1)
    # DeepSpeed keeps fp32 Adam states + fp32 master weights for bf16 parameters: 12 B / 8 GPUs.
    assert eight.terms_bytes["optimizer"] == pytest.approx(12 * 6_738_415_616 / 8, abs=1)
    zero1 = estimate(run_config("full", distributed={"gpus": 8, "strategy": "zero1"}), gpus=[], model_config=llama7b)
    assert zero1.terms_bytes["weights"] == eight.terms_bytes["weights"] * 8  # ZeRO-1 does not shard weights


def test_qlora_stores_the_base_in_4_bit_and_upcasts_the_rest_to_fp32(llama7b):
    lora = estimate(run_config("lora"), gpus=[], model_config=llama7b)
    qlora = estimate(run_config("qlora", method={"double_quant": False}), gpus=[], model_config=llama7b)
    assert qlora.trainable_params == lora.trainable_params
    embed_and_head = 2 * 32000 * 4096
    norms = 65 * 4096
    linear = 6_738_415_616 - embed_and_head - norms
    adapters = lora.trainable_params * 4
    expected = linear // 2 + 4 * (linear // 64) + 4 * (embed_and_head + norms) + adapters
    assert qlora.terms_bytes["weights"] == expected


def test_8bit_optimizer_needs_less_than_adamw(llama7b):
    adamw = estimate(run_config("full", train={"optimizer": "adamw_torch"}), gpus=[], model_config=llama7b)
    eight = estimate(run_config("full", train={"optimizer": "adamw_8bit"}), gpus=[], model_config=llama7b)
    assert eight.terms_bytes["optimizer"] < adamw.terms_bytes["optimizer"] / 1.9


def test_gradient_checkpointing_and_batch_change_activations(llama7b):
    base = dict(data={"max_length": 1024})
    off = estimate(run_config(train={"gradient_checkpointing": False, "batch_size": 4}, **base), gpus=[],
                   model_config=llama7b)
    on = estimate(run_config(train={"gradient_checkpointing": True, "batch_size": 4}, **base), gpus=[],
                  model_config=llama7b)
    small = estimate(run_config(train={"gradient_checkpointing": False, "batch_size": 1}, **base), gpus=[],
                     model_config=llama7b)
    assert on.terms_bytes["activations"] < off.terms_bytes["activations"] / 4
    assert small.terms_bytes["activations"] == pytest.approx(off.terms_bytes["activations"] / 4, rel=0.02)
    assert small.terms_bytes["logits"] < off.terms_bytes["logits"]


def test_prompt_tuning_lengthens_the_sequence(llama7b):
    few = estimate(run_config("prompt_tuning", method={"num_virtual_tokens": 8}), gpus=[], model_config=llama7b)
    many = estimate(run_config("prompt_tuning", method={"num_virtual_tokens": 256}), gpus=[], model_config=llama7b)
    assert many.terms_bytes["activations"] > few.terms_bytes["activations"]
    assert many.terms_bytes["logits"] > few.terms_bytes["logits"]


def test_no_gpu_means_fits_is_unknown_and_a_note_says_so(llama7b):
    est = estimate(run_config(), gpus=[], model_config=llama7b)
    assert est.fits is None and est.headroom_bytes is None
    assert any("No GPU" in n for n in est.notes)
    assert est.suggestions == []


def test_a_4gb_card_is_too_small_for_7b_and_suggestions_are_ranked(llama7b):
    cfg = run_config("full", train={"gradient_checkpointing": False, "batch_size": 8}, data={"max_length": 1024})
    est = estimate(cfg, gpu_count=1, gpu_memory_gb=4, model_config=llama7b)
    assert est.fits is False and est.headroom_bytes < 0
    assert est.gpus[0]["total_bytes"] == 4 * 2**30
    assert len(est.suggestions) >= 4
    assert all("saves" in s for s in est.suggestions)
    joined = " ".join(est.suggestions)
    for words in ("gradient checkpointing", "QLoRA", "8-bit", "batch size", "ZeRO-3"):
        assert words in joined

    def saving(sentence):
        number, unit = sentence.split("saves ")[1].split(" ")[:2]
        return float(number) * {"GiB": 2**30, "MiB": 2**20, "KiB": 2**10, "B": 1}[unit.rstrip(")")]
    savings = [saving(s) for s in est.suggestions if not s.startswith("All of these")]
    assert savings == sorted(savings, reverse=True)
    # Nothing alone fits on 4 GB, so the combination is offered last.
    assert est.suggestions[-1].startswith("All of these")


def test_a_large_hypothetical_card_fits_with_headroom(llama7b):
    est = estimate(run_config("qlora"), gpu_count=1, gpu_memory_gb=24, model_config=llama7b)
    assert est.fits is True and est.headroom_bytes > 0 and est.suggestions == []


def test_real_gpus_are_judged_by_free_memory(llama7b):
    gpus = [GpuInfo(0, "busy", 80 * 2**30, 2 * 2**30, 78 * 2**30, True),
            GpuInfo(1, "idle", 80 * 2**30, 79 * 2**30, 1 * 2**30, True)]
    est = estimate(run_config("qlora"), gpus=gpus, model_config=llama7b)
    assert est.fits is True and est.per_gpu[0]["index"] == 1
    two = estimate(run_config("qlora", distributed={"gpus": 2}), gpus=gpus, model_config=llama7b)
    assert two.fits is False


def test_bf16_on_a_gpu_without_it_is_noted(llama7b):
    old = [GpuInfo(0, "T4", 16 * 2**30, 15 * 2**30, 2**30, False)]
    est = estimate(run_config("qlora", train={"precision": "bf16"}), gpus=old, model_config=llama7b)
    assert any("bf16" in n for n in est.notes)


def test_to_json_has_the_design_keys(llama7b):
    data = estimate(run_config(), gpus=[], model_config=llama7b).to_json()
    for key in ("terms_bytes", "total_bytes", "trainable_params", "total_params", "gpus", "fits", "suggestions",
                "allocated_bytes", "formulas", "notes"):
        assert key in data
    assert set(data["terms_bytes"]) == {"weights", "gradients", "optimizer", "activations", "logits", "overhead"}
    assert set(data["formulas"]) == set(data["terms_bytes"])
    import json
    json.dumps(data)


def test_repeated_estimates_take_under_100_ms(llama7b):
    cfg = run_config()
    estimate(cfg, gpus=[], model_config=llama7b)  # first call builds the skeleton
    start = time.perf_counter()
    for alpha in (8.0, 16.0, 32.0, 64.0, 128.0):
        changed = cfg.model_copy(update={"method": cfg.method.model_copy(update={"alpha": alpha})})
        estimate(changed, gpus=[], model_config=llama7b)
    assert (time.perf_counter() - start) / 5 < 0.1


def _saved_tensor_bytes(model, ids):
    """Bytes autograd saves for backward in one forward (parameters and logits' loss copies excluded)."""
    import torch

    params = {p.data_ptr() for p in model.parameters()}
    seen = {}

    def pack(t):
        if t.data_ptr() not in params and (t.dim() == 0 or t.shape[-1] != model.config.vocab_size):
            seen[(t.data_ptr(), t.untyped_storage().nbytes())] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(input_ids=ids, labels=ids)
    return sum(seen.values())


@pytest.mark.parametrize("name,method", [
    ("full", {}),
    ("lora", {"r": 8, "target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"], "dropout": 0.05}),
    ("lora", {"r": 8, "target_modules": "all-linear", "dropout": 0.0}),
])
def test_activation_formula_tracks_the_tensors_autograd_saves(name, method):
    """A CPU check of the per-block formula's structure (fp32, SDPA); the GPU benchmark calibrates it."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    from backend.methods import apply_method

    mc = LlamaConfig(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=4,
                     num_key_value_heads=4, vocab_size=1000, max_position_embeddings=1024)
    mc._attn_implementation = "sdpa"
    cfg = run_config(name, method=method, data={"max_length": 128},
                     train={"batch_size": 2, "precision": "fp32", "gradient_checkpointing": False})
    est = estimate(cfg, gpus=[], model_config=mc)
    torch.manual_seed(0)
    model = apply_method(AutoModelForCausalLM.from_config(mc, attn_implementation="sdpa"), cfg)
    model.train()
    measured = _saved_tensor_bytes(model, torch.randint(0, 1000, (2, 128)))
    assert measured == pytest.approx(est.terms_bytes["activations"], rel=0.15)


def test_sft_uses_the_fused_head_and_orpo_the_full_logits(llama7b):
    base = dict(method={"name": "lora"}, data={"max_length": 2048}, train={"batch_size": 8})
    sft = estimate(run_config(**base), gpus=[], model_config=llama7b)
    orpo = estimate(run_config(objective="orpo", **base), gpus=[], model_config=llama7b)
    full_logits = 8 * 2048 * llama7b.vocab_size * 2  # the bf16 logits alone, before any fp32 copy
    assert orpo.terms_bytes["logits"] > 4 * full_logits
    assert sft.terms_bytes["logits"] < full_logits / 1.5
    assert "chunked LM head" in sft.formulas["logits"]


# ---------------------------------------------------------------- one unit, real row lengths

def test_every_number_in_the_estimate_is_in_binary_units_and_savings_are_against_the_headline(llama7b):
    cfg = run_config("full", train={"gradient_checkpointing": False, "batch_size": 8}, data={"max_length": 1024})
    est = estimate(cfg, gpu_count=1, gpu_memory_gb=4, model_config=llama7b)
    text = " ".join([*est.suggestions, *est.formulas.values()])
    assert " GB" not in text and " MB" not in text and " kB" not in text
    headline = f"{est.total_bytes / 2**30:.2f} GiB"
    for s in est.suggestions:
        assert f"of the {headline} needed" in s, s


def test_the_estimate_sizes_the_batch_by_the_datas_longest_row_and_says_so(llama7b):
    from backend.estimator import DataLengths

    cfg = run_config("lora", train={"batch_size": 16}, data={"max_length": 2048})
    blind = estimate(cfg, gpus=[], model_config=llama7b)
    short = estimate(cfg, gpus=[], model_config=llama7b, lengths=DataLengths.of([20, 35, 61, 40]))
    assert short.terms_bytes["activations"] < blind.terms_bytes["activations"] / 20
    assert "the data's longest row, 61 tokens (max length 2048)" in short.formulas["activations"]
    assert "16 x 61 tokens" in short.formulas["activations"]
    assert "no data lengths measured" in blind.formulas["activations"]


def test_with_packing_the_estimate_uses_the_longest_packed_sequence(llama7b):
    from backend.estimator import DataLengths

    lengths = DataLengths.of([100] * 50)
    assert lengths.sequence(512, packing=True) == (500, "the longest packed sequence of the data, 500 of max length 512")
    assert DataLengths.of([30, 30]).sequence(512, packing=True)[0] == 60  # all rows fit in one sequence
    cfg = run_config("lora", data={"max_length": 512, "packing": True})
    est = estimate(cfg, gpus=[], model_config=llama7b, lengths=lengths)
    assert "longest packed sequence of the data, 500" in est.formulas["activations"]


def test_the_max_length_suggestion_comes_from_the_datas_p99(llama7b):
    from backend.estimator import DataLengths

    lengths = DataLengths.of(list(range(1, 1001)))  # p99 = 990 -> 992 as a multiple of 8
    assert lengths.quantile() == 990 and lengths.suggested_max_length() == 992
    cfg = run_config("full", train={"gradient_checkpointing": False, "batch_size": 8}, data={"max_length": 4096})
    est = estimate(cfg, gpu_count=1, gpu_memory_gb=4, model_config=llama7b, lengths=lengths)
    joined = " ".join(est.suggestions)
    assert "Set max length from 4096 to 992 tokens (99% of the rows are at most 990 tokens)" in joined
    assert "Shorten sequences from 4096 to 2048" not in joined
