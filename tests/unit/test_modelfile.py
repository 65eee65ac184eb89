"""The Ollama Modelfile: its Go template renders the same prompt text as the tokenizer's Jinja template."""
from __future__ import annotations

import pytest

from backend.export.modelfile import (CONVERSATIONS, build_modelfile, ollama_model_name, render_go_template,
                                    render_ollama, stop_equivalence, template_equivalence)

LLAMA3_TEMPLATE = (
    "{% for message in messages %}{% if loop.index0 == 0 %}{{ bos_token }}{% endif %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
FIXED = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is GGUF?"},
         {"role": "assistant", "content": "A file format."}, {"role": "user", "content": "Who reads it?"}]


@pytest.fixture(scope="module")
def tok(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture()
def llama3_tok(tiny_model_dir):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    t.chat_template = LLAMA3_TEMPLATE
    return t


def test_chatml_modelfile_renders_the_tokenizers_prompt(tok):
    mf = build_modelfile(tok, "tiny.gguf")
    assert mf.style == "chatml"
    assert render_ollama(mf, FIXED) == tok.apply_chat_template(FIXED, add_generation_prompt=True, tokenize=False)
    assert template_equivalence(tok, mf) == (True, "")
    assert 'PARAMETER stop "<|im_end|>"' in mf.text and "FROM ./tiny.gguf" in mf.text


def test_default_system_prompt_becomes_the_system_line(tok):
    mf = build_modelfile(tok, "tiny.gguf")
    assert mf.system == "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    assert f'SYSTEM """{mf.system}"""' in mf.text
    no_system = [{"role": "user", "content": "Hi"}]
    want = tok.apply_chat_template(no_system, add_generation_prompt=True, tokenize=False)
    assert render_ollama(mf, no_system) == want
    assert want.startswith("<|im_start|>system\nYou are a helpful")


def test_llama3_template_keeps_a_bos_the_tokenizer_does_not_add(llama3_tok):
    mf = build_modelfile(llama3_tok, "m.gguf")
    assert mf.style == "llama3" and mf.system is None
    assert mf.stops == ["<|eot_id|>", "<|im_end|>"]
    hf = llama3_tok.apply_chat_template(FIXED, add_generation_prompt=True, tokenize=False)
    assert hf.startswith(llama3_tok.bos_token) and mf.preamble == llama3_tok.bos_token
    assert render_ollama(mf, FIXED) == hf
    assert template_equivalence(llama3_tok, mf) == (True, "")


def test_llama3_template_drops_the_bos_llama_cpp_adds(llama3_tok, monkeypatch):
    import backend.export.modelfile as modelfile

    # Llama 3's tokenizer adds BOS itself (add_bos_token in the GGUF); llama.cpp does the same,
    # so the Ollama template must not write it a second time.
    monkeypatch.setattr(modelfile, "_tokenizer_adds_bos", lambda tok: True)
    mf = build_modelfile(llama3_tok, "m.gguf")
    assert mf.style == "llama3" and mf.preamble == ""
    hf = llama3_tok.apply_chat_template(FIXED, add_generation_prompt=True, tokenize=False)
    assert render_ollama(mf, FIXED) == hf[len(llama3_tok.bos_token):]
    assert template_equivalence(llama3_tok, mf) == (True, "")


def test_template_mismatch_is_reported(tok):
    mf = build_modelfile(tok, "tiny.gguf")
    mf.system = "A different default prompt"
    ok, why = template_equivalence(tok, mf)
    assert not ok and "A different default" in why


def test_unknown_chat_format_gets_no_template_line_and_a_note(tiny_model_dir):
    from transformers import AutoTokenizer

    t = AutoTokenizer.from_pretrained(str(tiny_model_dir))
    t.chat_template = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    mf = build_modelfile(t, "m.gguf")
    assert mf.style is None and "TEMPLATE" not in mf.text and mf.notes
    assert template_equivalence(t, mf)[0] is False


def test_go_template_subset_renderer():
    data = {"Messages": [{"Role": "user", "Content": "a"}, {"Role": "assistant", "Content": "b"}]}
    tpl = ("{{- range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}[{{ .Role }}:{{ .Content }}]"
           "{{ if and $last (ne .Role \"user\") }}<last>{{ else }},{{ end }}{{ end }}")
    assert render_go_template(tpl, data) == "[user:a],[assistant:b]<last>"
    assert render_go_template("x  \n {{- .A -}} \n y", {"A": 1}) == "x1y"
    assert render_go_template("{{ range .Messages }}{{ .Role }}{{ else }}none{{ end }}", {"Messages": []}) == "none"
    with pytest.raises(ValueError):
        render_go_template("{{ if .A }}open", {"A": 1})


def test_every_probe_conversation_matches(tok):
    mf = build_modelfile(tok, "x.gguf")
    for conv in CONVERSATIONS:
        assert render_ollama(mf, conv) == tok.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)


def test_ollama_model_name_is_safe():
    assert ollama_model_name("run-3.q8_0") == "run-3.q8_0"
    assert ollama_model_name("My Run (v2)") == "my-run-v2"
    assert ollama_model_name("???") == "finetuned"


def test_stop_strings_end_answers_where_the_template_does(tok, llama3_tok):
    assert any(m["role"] == "system" for conv in CONVERSATIONS for m in conv)   # system-prompt conversations
    assert any(sum(m["role"] == "user" for m in conv) > 1 for conv in CONVERSATIONS)  # and multi-turn ones
    for t in (tok, llama3_tok):
        mf = build_modelfile(t, "m.gguf")
        assert stop_equivalence(t, mf) == (True, "")
    mf = build_modelfile(llama3_tok, "m.gguf")
    mf.stops = ["<|im_end|>"]  # the tokenizer's EOS only: Ollama would run past <|eot_id|>
    ok, why = stop_equivalence(llama3_tok, mf)
    assert not ok and "'<|eot_id|>'" in why
