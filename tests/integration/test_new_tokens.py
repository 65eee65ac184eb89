"""New special tokens (issue 22): a template's markers the tokenizer lacks are found, added as single ids, their
embedding rows grown and trained (LoRA: only those rows), and base + adapter reloads to the trained model in the
studio's own chat and merge load paths."""
from __future__ import annotations

import json
import pytest
import torch

from backend.core.config import ConfigError, RunConfig, validate_config
from backend.core.errors import UserError
from backend.core.models import load_causal_lm, load_model_config
from backend.data.special_tokens import missing_markers, training_tokenizer, with_tokens
from backend.data.templates import get_tokenizer
from backend.methods import count_parameters, exact_counts, load_trainable_model, validate_for_model
from backend.training.checks import data_problems

pytestmark = pytest.mark.timeout(300)
LLAMA3 = ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]


def run_cfg(model_dir, method: str = "lora", tokens=tuple(LLAMA3), **data) -> RunConfig:
    return RunConfig(model=str(model_dir), method={"name": method, "r": 4, "dropout": 0.0},
                     data={"template": "llama3", "add_special_tokens": list(tokens), **data},
                     train={"precision": "fp32", "gradient_checkpointing": False, "learning_rate": 1e-2,
                            "weight_decay": 0.0})


def test_detection_names_exactly_the_missing_markers(tiny_model_dir):
    tok = get_tokenizer(str(tiny_model_dir))  # SmolLM2's tokenizer: it has ChatML's markers, not Llama-3's
    assert missing_markers(tok, "llama3") == LLAMA3
    assert missing_markers(tok, "gemma") == ["<start_of_turn>", "<end_of_turn>"]
    assert missing_markers(tok, "chatml") == []
    assert missing_markers(tok, "auto") == []  # its own template writes <|im_start|>, which it has
    assert missing_markers(tok, "alpaca") == []
    added = with_tokens(tok, LLAMA3)
    assert missing_markers(added, "llama3") == []
    assert missing_markers(tok, "llama3") == LLAMA3  # the cached tokenizer itself is unchanged
    assert [len(added(m, add_special_tokens=False)["input_ids"]) for m in LLAMA3] == [1, 1, 1]


def _effective_rows(model) -> torch.Tensor:
    """The input embedding matrix the model uses (base rows with PEFT's trained token rows in place)."""
    emb = model.get_input_embeddings()
    with torch.no_grad():
        return emb(torch.arange(emb.weight.shape[0] if hasattr(emb, "weight") else
                                emb.token_adapter.base_layer.weight.shape[0]).unsqueeze(0))[0].clone()


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits.float()


def test_lora_trains_only_the_new_rows_and_reloads_in_chat_and_merge(tiny_model_dir, tmp_path, workspace):
    from backend.export.merge import merge_adapter
    from backend.inference.chat_worker import ChatEngine

    cfg = run_cfg(tiny_model_dir)
    tok = training_tokenizer(cfg)
    base_size = len(get_tokenizer(str(tiny_model_dir)))
    new_ids = tok.convert_tokens_to_ids(LLAMA3)
    assert new_ids == [base_size, base_size + 1, base_size + 2]
    model = load_trainable_model(cfg)
    start = _effective_rows(model)
    assert start.shape[0] == base_size + 3
    assert torch.allclose(start[new_ids], start[:base_size].mean(0).expand(3, -1), atol=1e-6)  # mean start
    # Only the three new rows and the LoRA factors train; the estimate's skeleton counts the same.
    assert count_parameters(model) == exact_counts(cfg)
    assert exact_counts(cfg)[0] - exact_counts(run_cfg(tiny_model_dir, tokens=()))[0] == 3 * 64

    text = "<|start_header_id|>user<|end_header_id|>\n\nHi there<|eot_id|><|start_header_id|>assistant<|end_header_id|>"
    ids = torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])
    assert set(new_ids) <= set(ids[0].tolist())
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    after = _effective_rows(model)
    assert not torch.allclose(after[new_ids], start[new_ids])  # the new rows learned
    assert torch.equal(after[:base_size], start[:base_size])  # every old row is the base's
    trained = _logits(model, ids)

    out = tmp_path / "adapter"
    model.save_pretrained(str(out))  # what the Trainer's save does for a PEFT model, then its tokenizer's
    tok.save_pretrained(str(out))
    from transformers import AutoTokenizer

    saved_tok = AutoTokenizer.from_pretrained(str(out))  # as chat, merge and evaluation read it
    assert [saved_tok.convert_tokens_to_ids(m) for m in LLAMA3] == new_ids
    assert saved_tok(text, add_special_tokens=False)["input_ids"] == ids[0].tolist()
    assert "<|start_header_id|>" in saved_tok.chat_template  # chat writes the markers the run trained with
    config = json.loads((out / "adapter_config.json").read_text())
    assert config["trainable_token_indices"] == new_ids
    # Only the trained rows are saved, not two copies of the grown embedding matrix.
    assert (out / "adapter_model.safetensors").stat().st_size < 100_000

    engine = ChatEngine(device="cpu")
    engine.load(adapter=str(out))
    assert engine.tokenizer(text, add_special_tokens=False)["input_ids"] == ids[0].tolist()
    assert torch.allclose(_logits(engine.model, ids), trained, atol=1e-4)

    merged = merge_adapter(out, tmp_path / "merged")
    merged_model = load_causal_lm(merged["out"], dtype=torch.float32)
    assert merged_model.get_input_embeddings().weight.shape[0] == base_size + 3
    assert torch.allclose(_logits(merged_model, ids), trained, atol=1e-4)


def test_without_the_base_grown_the_adapter_does_not_load(tiny_model_dir, tmp_path):
    """The load paths' growth is what makes the adapter fit: PEFT alone refuses (or misreads) it."""
    from peft import PeftModel

    cfg = run_cfg(tiny_model_dir)
    model = load_trainable_model(cfg)
    out = tmp_path / "adapter"
    model.save_pretrained(str(out))
    base = load_causal_lm(str(tiny_model_dir), dtype=torch.float32)
    with pytest.raises(Exception):
        PeftModel.from_pretrained(base, str(out))(input_ids=torch.tensor([[len(get_tokenizer(str(tiny_model_dir)))]]))


def test_full_fine_tuning_grows_and_trains_every_row(tiny_model_dir):
    cfg = run_cfg(tiny_model_dir, method="full")
    model = load_trainable_model(cfg)
    emb = model.get_input_embeddings().weight
    assert emb.shape[0] == len(get_tokenizer(str(tiny_model_dir))) + 3 and emb.requires_grad
    assert count_parameters(model) == exact_counts(cfg)


def test_a_method_that_cannot_train_the_rows_is_refused_with_a_sentence(tiny_model_dir):
    cfg = run_cfg(tiny_model_dir, method="prompt_tuning")
    problems = validate_for_model(cfg, load_model_config(str(tiny_model_dir)))
    assert "Prompt tuning cannot train" in problems["data.add_special_tokens"]
    assert "LoRA" in problems["data.add_special_tokens"]
    assert "data.add_special_tokens" in data_problems(cfg)  # before a start, without the model's weights
    with pytest.raises(UserError, match="cannot train the embedding rows"):
        load_trainable_model(cfg)
    assert "data.add_special_tokens" not in validate_for_model(run_cfg(tiny_model_dir),
                                                               load_model_config(str(tiny_model_dir)))
    pissa = run_cfg(tiny_model_dir).model_copy(update={"method": RunConfig().method.model_copy(
        update={"name": "lora", "lora_init": "pissa"})})
    assert "keeps only the LoRA matrices" in data_problems(pissa)["data.add_special_tokens"]
    reward = run_cfg(tiny_model_dir).model_copy(update={"objective": "reward"})
    assert "reward model" in validate_for_model(reward, load_model_config(str(tiny_model_dir)))["data.add_special_tokens"]


def test_the_field_refuses_blank_padded_and_repeated_tokens():
    for bad in ([""], [" <x>"], ["<x>", "<x>"]):
        with pytest.raises(ConfigError) as e:
            validate_config({"data": {"add_special_tokens": bad}})
        assert "data.add_special_tokens" in e.value.fields
    assert validate_config({"data": {"add_special_tokens": ["<|eot_id|>"]}}).data.add_special_tokens == ["<|eot_id|>"]


def test_a_training_run_saves_the_grown_tokenizer_and_a_small_adapter(tiny_model_dir, tmp_path):
    """Through the runner's subprocess: the trainer's tokenizer, dataset and saves all carry the added tokens."""
    from transformers import AutoTokenizer

    from backend.inference.chat_worker import ChatEngine
    from backend.runs import rundir, runner

    data = tmp_path / "chats.jsonl"
    data.write_text("".join(json.dumps({"messages": [{"role": "user", "content": f"Count to {i}."},
                                                     {"role": "assistant", "content": "1 2 3"}]}) + "\n"
                            for i in range(6)))
    cfg = run_cfg(tiny_model_dir, path=str(data), validation_split=0.0, max_length=64).model_copy(
        update={"train": RunConfig().train.model_copy(update={
            "precision": "fp32", "gradient_checkpointing": False, "learning_rate": 1e-2, "max_steps": 3,
            "batch_size": 2, "gradient_accumulation": 1, "save_steps": 2, "warmup_ratio": 0.0})})
    run_dir = runner.start_run(tmp_path / "ws", cfg)
    status = runner.wait_for_run(run_dir, timeout=400)
    assert status["state"] == "completed", (status, (run_dir / "train.log").read_text()[-3000:])

    adapter = rundir.adapter_dir(run_dir)
    tok = AutoTokenizer.from_pretrained(str(adapter))
    base_size = len(get_tokenizer(str(tiny_model_dir)))
    assert [tok.convert_tokens_to_ids(m) for m in LLAMA3] == [base_size, base_size + 1, base_size + 2]
    assert (adapter / "adapter_model.safetensors").stat().st_size < 100_000
    for checkpoint in (run_dir / "checkpoints").glob("checkpoint-*"):  # the Trainer's saves are small too
        assert (checkpoint / "adapter_model.safetensors").stat().st_size < 100_000

    engine = ChatEngine(device="cpu")
    engine.load(adapter=str(run_dir))
    rows = _effective_rows(engine.model)
    base = load_causal_lm(str(tiny_model_dir), dtype=torch.float32).get_input_embeddings().weight.detach()
    assert torch.equal(rows[:base_size], base)
    assert not torch.allclose(rows[base_size:], base.mean(0).expand(3, -1), atol=1e-4)  # they trained


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_the_estimate_counts_the_token_rows_memory_as_the_traced_step_does(tiny_model_dir, precision):
    """The closed form's added-token term against a traced step (fake tensors) of the same run; without the term the
    closed form is about 20-40% short on the tiny model."""
    from backend.estimator.precise import compare

    cfg = RunConfig.model_validate({"model": str(tiny_model_dir), "method": {"name": "lora"},
                                    "train": {"batch_size": 4, "gradient_checkpointing": False, "precision": precision},
                                    "data": {"max_length": 128, "add_special_tokens": LLAMA3}})
    result = compare(cfg)
    assert abs(result["closed_vs_precise_error"]) <= 0.05, result
    from backend.estimator import estimate

    assert "added-token rows" in estimate(cfg, gpu_memory_gb=80).formulas["activations"]


def test_an_untied_head_trains_its_new_rows_too_and_reloads(tiny_model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from backend.methods.tokens import fit_base_to_adapter

    untied = tmp_path / "untied"
    m = AutoModelForCausalLM.from_pretrained(str(tiny_model_dir))
    m.config.tie_word_embeddings = False
    m.lm_head.weight = torch.nn.Parameter(m.model.embed_tokens.weight.detach().clone() * 1.5)
    m.save_pretrained(str(untied))
    get_tokenizer(str(tiny_model_dir)).save_pretrained(str(untied))
    cfg = run_cfg(untied, tokens=LLAMA3[:2])
    model = load_trainable_model(cfg)
    trained_rows = [n for n, p in model.named_parameters() if p.requires_grad and "trainable_tokens" in n]
    assert len(trained_rows) == 2 and any("lm_head" in n for n in trained_rows)  # the head writes the new tokens
    assert count_parameters(model) == exact_counts(cfg)
    n = len(get_tokenizer(str(tiny_model_dir)))
    ids = torch.tensor([[10, n, 20, n + 1, 30]])
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    trained = _logits(model, ids)
    model.save_pretrained(str(tmp_path / "adapter"))
    base = load_causal_lm(str(untied), dtype=torch.float32)
    reloaded = PeftModel.from_pretrained(fit_base_to_adapter(base, tmp_path / "adapter"), str(tmp_path / "adapter"))
    assert torch.allclose(_logits(reloaded, ids), trained, atol=1e-5)


def test_combining_an_adapter_with_added_tokens_is_refused(tiny_model_dir, tmp_path):
    from backend.export.merge import combine_adapters

    folders = []
    for i in range(2):
        folder = tmp_path / f"a{i}"
        load_trainable_model(run_cfg(tiny_model_dir)).save_pretrained(str(folder))
        folders.append(folder)
    with pytest.raises(UserError, match="added tokens"):
        combine_adapters(folders, [0.5, 0.5], out_dir=tmp_path / "combined")
