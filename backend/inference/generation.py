"""Greedy answers to many prompts at once, rendered with the run's chat template.

The evaluation report and the red-team set both need "what does this model answer to these prompts",
deterministically, so a score moves only when the model does. Prompts are padded on the left (a
decoder continues from the last position), in batches, with a progress callback after each batch.
"""
from __future__ import annotations

from typing import Callable, Optional

ProgressFn = Callable[[int, int], None]


def render_prompts(tokenizer, jinja: Optional[str], conversations: list[list[dict]],
                   system_prompt: Optional[str] = None) -> list[str]:
    """Each conversation (ending on the user's turn) as the text the model continues."""
    texts = []
    for msgs in conversations:
        if system_prompt and not (msgs and msgs[0]["role"] == "system"):
            msgs = [{"role": "system", "content": system_prompt}] + list(msgs)
        texts.append(tokenizer.apply_chat_template(msgs, chat_template=jinja, tokenize=False,
                                                   add_generation_prompt=True))
    return texts


def greedy_answers(model, tokenizer, texts: list[str], device: str, max_new_tokens: int,
                   batch_size: int = 8, progress: Optional[ProgressFn] = None) -> list[str]:
    """Greedy continuations of `texts`, in their order."""
    import torch

    answers: list[str] = []
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    try:
        for start in range(0, len(texts), max(1, batch_size)):
            chunk = texts[start:start + max(1, batch_size)]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            with torch.no_grad():
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
            new = out[:, enc["input_ids"].shape[1]:]
            answers.extend(tokenizer.decode(row, skip_special_tokens=True).strip() for row in new)
            if progress is not None:
                progress(len(answers), len(texts))
    finally:
        tokenizer.padding_side = side
    return answers
