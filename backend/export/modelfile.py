"""An Ollama Modelfile for an exported GGUF: the chat template in Ollama's Go-template form.

Ollama does not run Jinja, so the tokenizer's chat template is translated. Rather than parse the
Jinja, we render it on probe conversations and recognise the turn shape of the formats we know
(ChatML, Llama 3): `header-start ROLE header-end CONTENT turn-end`. A default system prompt
that the template inserts on its own becomes the Modelfile's SYSTEM line (Ollama adds it when a
conversation has none). `template_equivalence` then renders both templates on fixed
conversations and compares the text, so a translation that does not match is reported, and
`stop_equivalence` checks that the PARAMETER stop strings are what the template writes after an answer.

`render_go_template` is a small interpreter for exactly the Go-template subset we emit (range
over .Messages with an index, variable assignment, if/end, eq/ne/and/or/not/len/slice, fields,
trim markers); it exists so the translation can be checked without Ollama installed.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Optional

# name -> (header start, header end, turn end): one turn is start + role + end + content + turn end
CHAT_STYLES = {
    "chatml": ("<|im_start|>", "\n", "<|im_end|>\n"),
    "llama3": ("<|start_header_id|>", "<|end_header_id|>\n\n", "<|eot_id|>"),
}
PROBE = [{"role": "user", "content": "PROBE-USER-7"}]
CONVERSATIONS = [
    [{"role": "user", "content": "Hello! What is 2 + 2?"}],
    [{"role": "system", "content": "You answer in one word."},
     {"role": "user", "content": "Capital of France?"},
     {"role": "assistant", "content": "Paris."},
     {"role": "user", "content": "And of Italy?"}],
    [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello, how can I help?"},
     {"role": "user", "content": "Tell me a joke.\nA short one."}],
]


@dataclass
class Modelfile:
    text: str
    style: Optional[str]
    system: Optional[str]
    stops: list[str]
    notes: list[str]
    preamble: str = ""


def _render_hf(tok: Any, messages: list[dict[str, str]]) -> str:
    text = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    bos = getattr(tok, "bos_token", None)
    # llama.cpp adds BOS itself when the GGUF says add_bos_token; a template that also writes it
    # would otherwise count it twice.
    if bos and text.startswith(bos) and _tokenizer_adds_bos(tok):
        text = text[len(bos):]
    return text


def _tokenizer_adds_bos(tok: Any) -> bool:
    ids = tok("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and ids[0] == getattr(tok, "bos_token_id", None)


def _split_preamble(tok: Any, before: str, sys_open: str, turn_end: str) -> Optional[tuple[str, Optional[str]]]:
    """What precedes the first user turn: (literal preamble, default system prompt), or None if unknown.

    The preamble is a BOS the template writes and the tokenizer does not add on its own."""
    bos = getattr(tok, "bos_token", None)
    for pre in ("", bos) if bos else ("",):
        if not before.startswith(pre):
            continue
        rest = before[len(pre):]
        if not rest:
            return pre, None
        if rest.startswith(sys_open) and rest.endswith(turn_end):
            return pre, rest[len(sys_open):-len(turn_end)]
    return None


def detect_style(tok: Any) -> tuple[Optional[str], Optional[str], str]:
    """(style, default system prompt, preamble) of the tokenizer's chat template; style None if unknown."""
    if not getattr(tok, "chat_template", None):
        return None, None, ""
    try:
        text = _render_hf(tok, PROBE)
    except Exception:  # noqa: BLE001 - a template that cannot render a plain user turn is not ours to translate
        return None, None, ""
    for name, (start, end, turn_end) in CHAT_STYLES.items():
        user_turn = f"{start}user{end}{PROBE[0]['content']}{turn_end}"
        if user_turn not in text or not text.endswith(f"{start}assistant{end}"):
            continue
        found = _split_preamble(tok, text[:text.index(user_turn)], f"{start}system{end}", turn_end)
        if found is not None:
            return name, found[1], found[0]
    return None, None, ""


def go_template(style: str, preamble: str = "") -> str:
    start, end, turn_end = CHAT_STYLES[style]
    return (preamble + "{{- range $i, $_ := .Messages }}"
            "{{- $last := eq (len (slice $.Messages $i)) 1 }}"
            f"{start}{{{{ .Role }}}}{end}{{{{ .Content }}}}{turn_end}"
            f"{{{{ if and $last (ne .Role \"assistant\") }}}}{start}assistant{end}{{{{ end }}}}"
            "{{- end }}")


def stop_tokens(tok: Any, style: Optional[str]) -> list[str]:
    stops: list[str] = []
    if style:
        stops.append(CHAT_STYLES[style][2].strip())
    eos = getattr(tok, "eos_token", None)
    if eos:
        stops.append(eos)
    return list(dict.fromkeys(s for s in stops if s))


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def build_modelfile(tok: Any, gguf_name: str) -> Modelfile:
    style, system, preamble = detect_style(tok)
    stops = stop_tokens(tok, style)
    notes: list[str] = []
    lines = ["# Ollama Modelfile written by Fine-Tune Studio.", f"FROM ./{gguf_name}"]
    if style:
        lines.append(f'TEMPLATE """{go_template(style, preamble)}"""')
        if system:
            lines.append(f'SYSTEM """{system}"""')
    else:
        notes.append("The chat template is neither ChatML nor Llama 3, so the Modelfile has no TEMPLATE line; "
                     "Ollama then uses the template stored in the GGUF if it recognises it.")
    lines += [f"PARAMETER stop {_quote(s)}" for s in stops]
    return Modelfile("\n".join(lines) + "\n", style, system, stops, notes, preamble)


def ollama_model_name(stem: str) -> str:
    name = re.sub(r"[^a-z0-9._-]+", "-", stem.lower()).strip("-._")
    return name or "finetuned"


def render_ollama(modelfile: Modelfile, messages: list[dict[str, str]]) -> str:
    """The prompt Ollama builds: SYSTEM first when the conversation has no system message."""
    if modelfile.system and not any(m["role"] == "system" for m in messages):
        messages = [{"role": "system", "content": modelfile.system}] + list(messages)
    return render_go_template(go_template(modelfile.style, modelfile.preamble), {"Messages": messages})


def template_equivalence(tok: Any, modelfile: Modelfile) -> tuple[bool, str]:
    """Whether the Modelfile's template gives the tokenizer's prompt text on fixed conversations."""
    if not modelfile.style:
        return False, "no TEMPLATE was written"
    for conv in CONVERSATIONS:
        want, got = _render_hf(tok, conv), render_ollama(modelfile, conv)
        if want != got:
            at = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
            return False, (f"the Ollama template renders {got[max(0, at - 20):at + 20]!r} where the tokenizer's "
                           f"template gives {want[max(0, at - 20):at + 20]!r}")
    return True, ""


def stop_equivalence(tok: Any, modelfile: Modelfile) -> tuple[bool, str]:
    """Whether Ollama stops where the chat template ends an answer: on each fixed conversation
    answered once more, the text the template writes right after the answer must begin with one of
    the Modelfile's PARAMETER stop strings (otherwise Ollama would run on into a made-up next turn)."""
    answer = "PROBE-ANSWER-9"
    for conv in CONVERSATIONS:
        try:
            full = tok.apply_chat_template(conv + [{"role": "assistant", "content": answer}], tokenize=False)
        except Exception as e:  # noqa: BLE001 - a template that cannot render an answered turn
            return False, f"the chat template cannot render an answered conversation ({e})"
        after = full[full.rindex(answer) + len(answer):]
        if not any(after.startswith(stop) for stop in modelfile.stops):
            return False, (f"after an answer the chat template writes {after[:24]!r}, which begins with none of "
                           f"the Modelfile's stop strings {modelfile.stops}")
    return True, ""


# --- a tiny Go text/template interpreter (the subset emitted above) ---------------------------

_ACTION = re.compile(r"\{\{(-\s)?(.*?)(\s-)?\}\}", re.S)
_TOKEN = re.compile(r'\s*(\(|\)|"(?:[^"\\]|\\.)*"|[^\s()]+)')


def _parse(template: str) -> list[Any]:
    """Text and actions as a tree: ("text", s) | ("out", expr) | ("set", var, expr) | ("if"/"range", ...)."""
    items: list[tuple[str, str]] = []
    pos = 0
    for m in _ACTION.finditer(template):
        text = template[pos:m.start()]
        if m.group(1):
            text = text.rstrip()
        if items and items[-1][0] == "trim-next":
            items.pop()
            text = text.lstrip()
        items.append(("text", text))
        items.append(("action", m.group(2).strip()))
        if m.group(3):
            items.append(("trim-next", ""))
        pos = m.end()
    tail = template[pos:]
    if items and items[-1][0] == "trim-next":
        items.pop()
        tail = tail.lstrip()
    items.append(("text", tail))
    tree, rest = _block(items, 0)
    if rest != len(items):
        raise ValueError("unbalanced {{ end }} in template")
    return tree


def _block(items: list[tuple[str, str]], i: int) -> tuple[list[Any], int]:
    out: list[Any] = []
    while i < len(items):
        kind, body = items[i]
        if kind == "text":
            if body:
                out.append(("text", body))
            i += 1
            continue
        word = body.split(None, 1)[0] if body else ""
        if word in ("end", "else"):
            return out, i
        if word in ("if", "range"):
            inner, j = _block(items, i + 1)
            other: list[Any] = []
            if j < len(items) and items[j][1] == "else":
                other, j = _block(items, j + 1)
            if j >= len(items) or items[j][1] != "end":
                raise ValueError(f"{{{{ {word} }}}} without {{{{ end }}}}")
            out.append((word, body[len(word):].strip(), inner, other))
            i = j + 1
            continue
        m = re.match(r"(\$\w+)\s*:?=\s*(.*)$", body, re.S)
        out.append(("set", m.group(1), m.group(2)) if m else ("out", body))
        i += 1
    return out, i


def _tokens(expr: str) -> list[str]:
    return [t for t in _TOKEN.findall(expr) if t.strip()]


def _field(value: Any, name: str) -> Any:
    return value.get(name, value.get(name.lower())) if isinstance(value, dict) else getattr(value, name)


_FUNCS = {
    "eq": lambda a, *b: any(a == x for x in b), "ne": lambda a, b: a != b,
    "and": lambda *a: next((x for x in a if not x), a[-1]), "or": lambda *a: next((x for x in a if x), a[-1]),
    "not": lambda a: not a, "len": len, "slice": lambda s, i=0, j=None: s[i:j],
}


def _eval(tokens: list[str], scope: dict[str, Any]) -> Any:
    def operand(i: int) -> tuple[Any, int]:
        t = tokens[i]
        if t == "(":
            depth, j = 1, i + 1
            while depth:
                depth += {"(": 1, ")": -1}.get(tokens[j], 0)
                j += 1
            return _eval(tokens[i + 1:j - 1], scope), j
        if t.startswith('"'):
            return bytes(t[1:-1], "utf-8").decode("unicode_escape"), i + 1
        if re.fullmatch(r"-?\d+", t):
            return int(t), i + 1
        if t.startswith("$"):
            head, *fields = t.split(".")
            value = scope["$root"] if head == "$" else scope[head]
        elif t.startswith("."):
            value, fields = scope["."], [f for f in t.split(".") if f]
        else:
            raise ValueError(f"unknown name {t!r} in template")
        for f in fields:
            value = _field(value, f)
        return value, i + 1

    if tokens and tokens[0] in _FUNCS:
        args, i = [], 1
        while i < len(tokens):
            value, i = operand(i)
            args.append(value)
        return _FUNCS[tokens[0]](*args)
    value, i = operand(0)
    if i != len(tokens):
        raise ValueError(f"cannot evaluate {' '.join(tokens)!r}")
    return value


def _exec(nodes: list[Any], scope: dict[str, Any], out: list[str]) -> None:
    for node in nodes:
        kind = node[0]
        if kind == "text":
            out.append(node[1])
        elif kind == "out":
            value = _eval(_tokens(node[1]), scope)
            out.append("" if value is None else str(value))
        elif kind == "set":
            scope[node[1]] = _eval(_tokens(node[2]), scope)
        elif kind == "if":
            _exec(node[2] if _eval(_tokens(node[1]), scope) else node[3], dict(scope), out)
        elif kind == "range":
            m = re.match(r"(?:(\$\w+)\s*,\s*(\$\w+)\s*:=\s*)?(.*)$", node[1], re.S)
            seq = _eval(_tokens(m.group(3)), scope)
            if not seq:
                _exec(node[3], dict(scope), out)
            for i, item in enumerate(seq or []):
                inner = dict(scope, **{".": item})
                if m.group(1):
                    inner[m.group(1)], inner[m.group(2)] = i, item
                _exec(node[2], inner, out)


def render_go_template(template: str, data: dict[str, Any]) -> str:
    out: list[str] = []
    _exec(_parse(template), {".": data, "$root": data}, out)
    return "".join(out)
