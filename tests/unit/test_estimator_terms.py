"""Published worked figures (7B full fine-tuning, LoRA parameter counts, ...), reproduced by the estimator's own term functions."""
import pytest

from backend.estimator import terms as T

GB = 10**9


def test_7b_full_bf16_adamw_is_14_14_56_gb_in_the_seed_convention():
    # Seed: weights BF16 7B x 2 B, gradients BF16 7B x 2 B, optimizer states FP32 7B x 8 B (m + v).
    p = 7_000_000_000
    assert T.weight_bytes(p, "bf16") == 14 * GB
    assert T.gradient_bytes(p, "bf16") == 14 * GB
    assert T.optimizer_bytes(p, "adamw_torch", state_dtype="fp32") == 56 * GB


def test_torch_adamw_states_follow_the_parameter_dtype_and_master_copy_adds_fp32():
    p = 7_000_000_000
    assert T.optimizer_bytes(p, "adamw_torch", state_dtype="bf16") == 28 * GB
    assert T.optimizer_bytes(p, "adamw_torch", state_dtype="fp32", master_copy=True) == 84 * GB


def test_70b_fp16_with_fp32_adam_m_and_v_is_140_140_280_280_gb():
    p = 70_000_000_000
    states = T.optimizer_state_breakdown(p, "adamw_torch", state_dtype="fp32")
    assert (T.weight_bytes(p, "fp16"), T.gradient_bytes(p, "fp16"), states["m"], states["v"]) == (
        140 * GB, 140 * GB, 280 * GB, 280 * GB)


def test_lora_r8_on_qkvo_of_a_32_layer_4096_model_is_8388608():
    assert 4 * 32 * T.lora_params(4096, 4096, 8) == 8_388_608


def test_lora_r16_on_a_1024x4096_matrix_is_81920():
    assert T.lora_params(4096, 1024, 16) == 81_920


def test_prefix_tuning_20_tokens_4096_wide_40_layers_is_6553600():
    assert T.prefix_params(20, 4096, 40) == 6_553_600


def test_nf4_7b_is_3_5_gb_of_codes_plus_fp32_scale_per_64():
    p = 7_000_000_000
    assert T.nf4_bytes(p, double_quant=False) == 3_500_000_000 + 4 * 109_375_000  # seed: 3.5 + 0.44 GB
    dq = T.nf4_bytes(p, double_quant=True)
    # double quantization: 8-bit absmax per 64 + fp32 per 256 blocks -> about 0.127 bit/weight of scales
    assert 3_500_000_000 + 109_375_000 < dq < 3_500_000_000 + 109_375_000 + 2_000_000
    assert T.weight_bytes(p, "nf4", double_quant=True) == dq


def test_8bit_adamw_keeps_small_tensors_in_32_bit():
    assert T.optimizer_tensor_bytes(4095, (4095,), 2, "adamw_8bit") == 8 * 4095
    big = T.optimizer_tensor_bytes(4096 * 4096, (4096, 4096), 2, "adamw_8bit")
    assert big == 2 * (4096 * 4096 + 4 * 4096 * 4096 // 256)


def test_adafactor_factors_matrices_into_rows_and_columns():
    assert T.adafactor_bytes((1024, 4096), 4) == (1024 + 4096) * 4
    assert T.adafactor_bytes((4096,), 4) == 4096 * 4


def test_logits_cost_between_10_and_16_bytes_per_element():
    b, s, v = 2, 512, 32_000
    per = T.logits_bytes(b, s, v, "bf16") / (b * s * v)
    assert 10 <= per <= 16


def test_sharding_divides_optimizer_then_gradients_then_weights():
    assert T.shard(800, "optimizer", "zero1", 8) == 100
    assert T.shard(800, "gradients", "zero1", 8) == 800
    assert T.shard(800, "gradients", "zero2", 8) == 100
    assert T.shard(800, "weights", "zero2", 8) == 800
    assert T.shard(800, "weights", "zero3", 8) == 100
    assert T.shard(800, "weights", "fsdp", 8) == 100
    assert T.shard(800, "weights", "ddp", 8) == 800


def test_peak_counts_the_larger_of_backward_and_optimizer_step():
    assert T.peak_bytes(10, 5, 20, activations=30) == 60
    assert T.peak_bytes(10, 50, 20, activations=30, step_temporaries=5) == 85
    assert T.peak_bytes(10, 5, 20, activations=30, gradients_during_backward=True) == 65


def test_gradient_checkpointing_shrinks_activations():
    per_layer = T.layer_activation_bytes_per_token(4096, 11008, 4096, 32, 2048, 2, base_trainable=True)
    full = 32 * 2048 * per_layer
    ckpt = T.checkpointed_activation_bytes(32, 2048, 4096, 2, 2048 * per_layer)
    assert ckpt < full / 5


def test_eager_attention_adds_score_memory():
    kw = dict(base_trainable=True)
    sdpa = T.layer_activation_bytes_per_token(4096, 11008, 4096, 32, 2048, 2, attn_implementation="sdpa", **kw)
    eager = T.layer_activation_bytes_per_token(4096, 11008, 4096, 32, 2048, 2, attn_implementation="eager", **kw)
    assert eager - sdpa == pytest.approx((4 + 2) * 32 * 2048)


def test_the_chunked_head_on_a_cpu_counts_the_torch_fallbacks_fp32_tile_temporaries():
    from backend.estimator.terms import HEAD_FALLBACK_TILE_BYTES, fused_head_bytes

    gpu = fused_head_bytes(2, 65, 49152, 64, 2, False, 2)
    cpu = fused_head_bytes(2, 65, 49152, 64, 2, False, 2, device="cpu")
    assert cpu - gpu == 2 * 64 * 32768 * HEAD_FALLBACK_TILE_BYTES


def test_an_fp32_head_takes_its_accumulator_as_the_gradient():
    from backend.estimator.terms import fused_head_bytes

    v, h = 1000, 64
    fp32 = fused_head_bytes(1, 9, v, h, 2, True, 4) - fused_head_bytes(1, 9, v, h, 2, False, 4)
    bf16 = fused_head_bytes(1, 9, v, h, 2, True, 2) - fused_head_bytes(1, 9, v, h, 2, False, 2)
    assert (fp32, bf16) == (4 * v * h, 6 * v * h)


def test_issue_22_optimizers_state_bytes_per_tensor():
    from backend.estimator import terms as T

    shape, pb = (4096, 11008), 2
    numel = 4096 * 11008
    adamw = T.optimizer_tensor_bytes(numel, shape, pb, "adamw_torch")
    assert T.optimizer_tensor_bytes(numel, shape, pb, "lion") * 2 == adamw
    assert T.optimizer_tensor_bytes(numel, shape, pb, "muon") * 2 == adamw          # a matrix: one momentum
    assert T.optimizer_tensor_bytes(4096, (4096,), pb, "muon") == 2 * 4096 * pb     # a norm: AdamW's two
    assert T.optimizer_tensor_bytes(numel, shape, pb, "schedule_free_adamw") == adamw
    # GaLore: m + v of the rank-128 projection (128 x 11008) plus the projection (4096 x 128): far below AdamW.
    galore = T.optimizer_tensor_bytes(numel, shape, pb, "galore_adamw")
    assert galore == (2 * 128 * 11008 + 128 * 4096) * pb and galore < adamw / 10
