"""Loading a dataset file, detecting its layout, and normalizing it to one of five shapes.

Normalized rows (what every later step sees):
  messages:          {"messages": [{"role": "system"|"user"|"assistant", "content": str}, ...]}
  prompt_completion: {"prompt": str, "completion": str}
  text:              {"text": str}
  preference:        {"prompt": str, "chosen": str, "rejected": str}
                     (conversational: prompt/chosen/rejected are message lists)
  kto:               {"prompt": str, "completion": str, "label": bool}

A mapping names, for each role a column can play, the column that plays it:
  messages, prompt, input (extra context appended to the prompt), completion, system,
  text, chosen, rejected, label.
File reading lives in backend.data.files. Every problem with a row becomes a RowError with its line (or row) number and field; bad
rows are skipped and counted unless the caller asks for strictness.
"""
from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Sequence

from backend.core.errors import UserError
from backend.data import reasoning, sources, tools
from backend.data.files import _Bad, Budget, RowError

FORMATS = ("messages", "prompt_completion", "text", "preference", "kto")
SOURCE_FORMATS = ("alpaca", "sharegpt", "openai", "columns")
MAPPING_ROLES = ("messages", "prompt", "input", "completion", "system", "text", "chosen", "rejected", "label",
                 "tools")


MESSAGE_KEYS = ("messages", "conversations", "conversation", "chat", "dialog", "dialogue", "turns")
PROMPT_KEYS = ("prompt", "instruction", "question", "query", "input", "user", "human", "request",
               "problem", "source")
COMPLETION_KEYS = ("completion", "response", "output", "answer", "reply", "target", "assistant",
                   "gpt", "solution")
TEXT_KEYS = ("text", "content", "document", "body", "passage", "story")
SYSTEM_KEYS = ("system", "system_prompt")
INPUT_KEYS = ("input", "context")     # the extra text an instruction row carries (alpaca, dolly)
PROSE_MEDIAN_CHARS = 20               # a left-out string column this long is prose, not a label
ROLE_NAMES = {"user": "user", "human": "user", "prompter": "user", "assistant": "assistant",
              "gpt": "assistant", "bot": "assistant", "model": "assistant", "chatgpt": "assistant",
              "system": "system", "tool": "tool", "function": "tool", "ipython": "tool",
              "function_call": "assistant", "tool_call": "assistant", "tool_calls": "assistant",
              "observation": "tool", "tool_response": "tool"}
TRUE_WORDS = {"true", "1", "yes", "y", "good", "desirable", "positive", "t"}
FALSE_WORDS = {"false", "0", "no", "n", "bad", "undesirable", "negative", "f"}


@dataclass
class LoadedDataset:
    path: str
    format: str
    source_format: str
    rows: Sequence[dict]   # a list, or a backend.data.rowstore.RowStore when the rows were spilled to disk
    columns: list[str]
    mapping: dict[str, str]
    errors: list[RowError]
    skipped: int
    lines: list[int] = field(default_factory=list)   # source line/row of each normalized row
    unit: str = "line"                                # "line" (jsonl, txt) or "row" (csv, parquet, json arrays)
    records: int = 0                                  # rows read from the file before normalizing
    total: Optional[int] = None                       # usable rows in the file (rows may hold only the first)
    complete: bool = True                             # False: rows holds a part of the file (see note)
    note: Optional[str] = None                        # why rows holds only a part of the file
    unused_columns: list[str] = field(default_factory=list)  # columns the mapping leaves out
    unused_text: list[str] = field(default_factory=list)     # ...of which hold prose the model never sees
    encoding: str = "utf-8"                           # the file's text encoding (backend.data.encodings)
    notices: list[str] = field(default_factory=list)  # sentences about how the file was read (its encoding)

    @property
    def row_count(self) -> int:
        """Usable rows in the whole file, kept or not."""
        return len(self.rows) if self.total is None else self.total

    def error_sentences(self, limit: int = 20) -> list[str]:
        return [e.sentence(self.path, self.unit) for e in self.errors[:limit]]

    def summary(self) -> dict[str, Any]:
        return {"format": self.format, "source_format": self.source_format, "rows": self.row_count,
                "rows_kept": len(self.rows), "complete": self.complete, "note": self.note,
                "columns": list(self.columns), "mapping": dict(self.mapping), "skipped": self.skipped,
                "unused_columns": list(self.unused_columns), "unused_text_columns": list(self.unused_text),
                "encoding": self.encoding, "notices": list(self.notices),
                "errors": [{"line": e.line, "field": e.field, "message": e.message} for e in self.errors]}


# ---------------------------------------------------------------- detection

def _columns(records: Iterable[tuple[int, dict]], limit: int = 200) -> list[str]:
    cols: dict[str, None] = {}
    for n, (_, r) in enumerate(records):
        if n >= limit:
            break
        for k in r:
            cols.setdefault(k, None)
    return list(cols)


def _looks_like_conversation(value: Any) -> Optional[str]:
    """'openai' for role/content lists, 'sharegpt' for from/value lists, else None."""
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            return None
    if not isinstance(value, list) or not value or not all(isinstance(m, dict) for m in value):
        return None
    first = value[0]
    if "from" in first and "value" in first:
        return "sharegpt"
    if "role" in first and ("content" in first or "text" in first):
        return "openai"
    return None


def _pick(cols_lower: dict[str, str], names: Iterable[str], exclude: set[str] = frozenset()) -> Optional[str]:
    for n in names:
        col = cols_lower.get(n)
        if col and col not in exclude:
            return col
    return None


def detect_schema(records: list[tuple[int, dict]], columns: list[str]) -> tuple[str, str, dict[str, str]]:
    """(format, source_format, mapping) guessed from the column names and the first rows' values."""
    sample = [r for _, r in records[:50]]
    lower = {c.lower().strip(): c for c in columns}
    # Conversations: a known key first, then any column whose values look like one.
    conv_cols = [lower[k] for k in MESSAGE_KEYS if k in lower] + [
        c for c in columns if c.lower() not in MESSAGE_KEYS + ("chosen", "rejected", "prompt")]
    for col in conv_cols:
        kinds = [_looks_like_conversation(r.get(col)) for r in sample if r.get(col) is not None]
        if kinds and kinds[0]:
            mapping = {"messages": col}
            sys_col = _pick(lower, SYSTEM_KEYS)
            if sys_col:
                mapping["system"] = sys_col
            tools_col = _pick(lower, tools.TOOL_COLUMNS)
            if tools_col:
                mapping["tools"] = tools_col
            return "messages", kinds[0], mapping
    chosen, rejected = lower.get("chosen"), lower.get("rejected")
    if chosen and rejected:
        mapping = {"chosen": chosen, "rejected": rejected}
        prompt = _pick(lower, PROMPT_KEYS)
        if prompt:
            mapping["prompt"] = prompt
        conv = any(_looks_like_conversation(r.get(chosen)) for r in sample)
        return "preference", "preference_conversational" if conv else "preference", mapping
    label = lower.get("label") or lower.get("kto_label")
    prompt = _pick(lower, PROMPT_KEYS)
    completion = _pick(lower, COMPLETION_KEYS, exclude={prompt} if prompt else set())
    if label and prompt and completion:
        return "kto", "kto", {"prompt": prompt, "completion": completion, "label": label}
    if "instruction" in lower and completion:
        mapping = {"prompt": lower["instruction"], "completion": completion}
        # Alpaca calls the extra text 'input'; Databricks-Dolly (instruction/context/response/category)
        # calls it 'context'. Without it "Summarize this paragraph" would arrive without the paragraph.
        extra = _pick(lower, INPUT_KEYS, exclude={completion})
        if extra:
            mapping["input"] = extra
        sys_col = _pick(lower, SYSTEM_KEYS)
        if sys_col:
            mapping["system"] = sys_col
        dolly = extra is not None and extra.lower().strip() == "context"
        return "messages", "dolly" if dolly else "alpaca", mapping
    if "prompt" in lower and "completion" in lower:
        return "prompt_completion", "prompt_completion", {"prompt": lower["prompt"], "completion": lower["completion"]}
    if prompt and completion:
        mapping = {"prompt": prompt, "completion": completion}
        sys_col = _pick(lower, SYSTEM_KEYS)
        if sys_col:
            mapping["system"] = sys_col
        return "messages", "columns", mapping
    text = _pick(lower, TEXT_KEYS)
    if text:
        return "text", "text", {"text": text}
    strings = [c for c in columns
               if sum(isinstance(r.get(c), str) for r in sample) >= max(1, 0.5 * len(sample))
               and all(isinstance(r[c], str) for r in sample if r.get(c) is not None)]
    if len(columns) == 1 and strings:
        return "text", "text", {"text": strings[0]}
    if len(strings) == 2:
        # Two unnamed text columns: most often question then answer. Shown, and correctable.
        return "messages", "columns", {"prompt": strings[0], "completion": strings[1]}
    raise UserError(
        f"Could not tell what the columns {columns} hold. Expected one of: a 'messages' (or "
        "'conversations') list; instruction/input/output; prompt/completion (or question/answer, "
        "query/response, input/output); prompt/chosen/rejected; prompt/completion/label; or 'text'. "
        "Rename the columns, or set the mapping by hand.")


def format_for_mapping(mapping: dict[str, str]) -> str:
    if "messages" in mapping:
        return "messages"
    if "chosen" in mapping and "rejected" in mapping:
        return "preference"
    if "label" in mapping:
        return "kto"
    if "prompt" in mapping and "completion" in mapping:
        return "messages"
    if "text" in mapping:
        return "text"
    raise UserError(f"The mapping {mapping} does not name enough columns: give 'messages'; or 'prompt' and "
                    "'completion'; or 'chosen' and 'rejected'; or 'text'.")


REQUIRED = {"messages": ("messages",), "prompt_completion": ("prompt", "completion"), "text": ("text",),
            "preference": ("chosen", "rejected"), "kto": ("prompt", "completion", "label")}


def _resolve_layout(records, columns, mapping, fmt) -> tuple[str, str, dict[str, str]]:
    if fmt not in ("auto",) + FORMATS + SOURCE_FORMATS:
        raise UserError(f"Unknown dataset format '{fmt}'. Choose auto or one of: {', '.join(FORMATS)}.")
    if mapping:
        mapping = {k: v for k, v in mapping.items() if v}
        unknown = [k for k in mapping if k not in MAPPING_ROLES]
        if unknown:
            raise UserError(f"The mapping has unknown role(s) {unknown}; roles are: {', '.join(MAPPING_ROLES)}.")
        missing = [f"{k} -> '{v}'" for k, v in mapping.items() if v not in columns]
        if missing:
            raise UserError(f"The mapping names column(s) the file does not have ({', '.join(missing)}). "
                            f"The file's columns are: {', '.join(columns)}.")
        target = fmt if fmt in FORMATS else format_for_mapping(mapping)
        if fmt in SOURCE_FORMATS:
            target = "messages"
        need = [k for k in REQUIRED[target] if k not in mapping]
        if target == "messages" and "messages" not in mapping:
            need = [k for k in ("prompt", "completion") if k not in mapping]
        if need:
            raise UserError(f"For the {target} format the mapping must name the column for: {', '.join(need)}.")
        source = "columns"
        if "messages" in mapping:
            sample = [r.get(mapping["messages"]) for _, r in records[:20]]
            source = next((k for k in map(_looks_like_conversation, sample) if k), "openai")
        elif target != "messages":
            source = target
        return target, source, mapping
    found, source, found_map = detect_schema(records, columns)
    if fmt in ("auto", found) or (fmt in SOURCE_FORMATS and found == "messages"):
        return found, source, found_map
    # The user asked for a different target shape than detected: convert where it makes sense.
    if fmt == "messages" and found == "prompt_completion":
        return "messages", "columns", found_map
    if fmt == "prompt_completion" and found == "messages" and "prompt" in found_map:
        return "prompt_completion", source, found_map
    if fmt == "text" and found != "text":
        raise UserError(f"The file looks like {found} data, not plain text. Pick the 'text' column in "
                        "the mapping, or keep the format on auto.")
    raise UserError(f"The file looks like {found} data ({source}), which cannot be used as {fmt}. Keep the "
                    "format on auto, or set the mapping by hand.")


def unused_columns(records: list[tuple[int, dict]], columns: list[str],
                   mapping: dict[str, str]) -> tuple[list[str], list[str]]:
    """(columns the mapping does not use, those of them that hold prose).

    Prose: mostly strings with a median length of PROSE_MEDIAN_CHARS or more; a short label such as
    Dolly's 'category' is listed as unused but is not prose the model should have seen."""
    used = set(mapping.values())
    left = [c for c in columns if c not in used]
    sample = [r for _, r in records[:200]]
    prose = []
    for col in left:
        values = [r.get(col) for r in sample if r.get(col) not in (None, "")]
        strings = sorted(len(v) for v in values if isinstance(v, str))
        if strings and len(strings) >= 0.5 * len(values) and strings[len(strings) // 2] >= PROSE_MEDIAN_CHARS:
            prose.append(col)
    return left, prose


# ---------------------------------------------------------------- normalization

def _text(value: Any, field: str, allow_empty: bool = False) -> str:
    if value is None:
        raise _Bad(field, "is missing or null. Fill it in, or remove the row.")
    if isinstance(value, bool):
        value = str(value).lower()
    if isinstance(value, (int, float)):
        value = str(value)
    if isinstance(value, list) and all(isinstance(p, dict) for p in value):
        # OpenAI content parts. Only text trains here: dropping an image part silently would train
        # "What is this?" to "A cat." without the picture, so a row with one is refused (and, with
        # skip_bad_rows, skipped and counted).
        other = sorted({str(p.get("type")) for p in value if p.get("type", "text") != "text"})
        if other:
            raise _Bad(field, f"holds {', '.join(repr(t) for t in other)} content parts: multimodal data "
                              "(images, audio) cannot train these text-only models. Remove those parts, or use a "
                              "text-only dataset.")
        value = "".join(str(p.get("text", "")) for p in value)
    if not isinstance(value, str):
        raise _Bad(field, f"is a {type(value).__name__}, but text was expected.")
    if not allow_empty and not value.strip():
        raise _Bad(field, "is empty. Fill it in, or remove the row.")
    return value


def _messages(value: Any, field: str, need_assistant: bool = True) -> list[dict[str, str]]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            raise _Bad(field, "is text, but a list of messages was expected.") from None
    if not isinstance(value, list) or not value:
        raise _Bad(field, "is not a non-empty list of messages (each {\"role\": ..., \"content\": ...}).")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise _Bad(field, f"message {i + 1} is a {type(m).__name__}, not an object with role and content.")
        role_raw = m.get("role", m.get("from", m.get("speaker")))
        role = ROLE_NAMES.get(str(role_raw).strip().lower()) if role_raw is not None else None
        if role is None:
            raise _Bad(field, f"message {i + 1} has the role {role_raw!r}; use system, user or assistant "
                              "(ShareGPT: system, human, gpt).")
        where = f"{field}[{i}]"
        try:
            special = tools.message(m, str(role_raw), role, lambda v: _text(v, f"{where}.content", allow_empty=True))
        except tools.BadTools as e:
            raise _Bad(field, f"message {i + 1}: {e}") from None
        if special is not None:  # a tool call or a tool result (backend.data.tools)
            out.append(special)
            continue
        content = m.get("content", m.get("value", m.get("text")))
        text = _text(content, f"{where}.content", allow_empty=True)
        # A separate reasoning field becomes a <think> block in front of the reply (backend.data.reasoning).
        out.append({"role": role, "content": reasoning.fold(m, text) if role == "assistant" else text})
    if need_assistant and not any(m["role"] == "assistant" and (m["content"].strip() or m.get("tool_calls"))
                                  for m in out):
        raise _Bad(field, "has no assistant turn with text, so there is nothing to learn from it. Add the "
                          "assistant's reply, or remove the row.")
    return out


def _label(value: Any, field: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in TRUE_WORDS | FALSE_WORDS:
        return value.strip().lower() in TRUE_WORDS
    raise _Bad(field, f"is {value!r}; a KTO label must be true or false (1/0, yes/no).")


def _split_shared_prefix(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    n = 0
    while n < min(len(chosen), len(rejected)) - 1 and chosen[n] == rejected[n]:
        n += 1
    return chosen[:n], chosen[n:], rejected[n:]


def normalize_record(rec: dict, fmt: str, mapping: dict[str, str]) -> dict:
    """One raw record -> one normalized row; raises _Bad naming the field."""
    m = mapping
    system = None
    if m.get("system") and rec.get(m["system"]) not in (None, ""):
        system = _text(rec.get(m["system"]), m["system"], allow_empty=True)
    if fmt == "text":
        return {"text": _text(rec.get(m["text"]), m["text"])}
    if fmt == "messages":
        if "messages" in m:
            msgs = _messages(rec.get(m["messages"]), m["messages"])
        else:
            prompt = _text(rec.get(m["prompt"]), m["prompt"])
            if m.get("input"):
                extra = rec.get(m["input"])
                if extra not in (None, "") and str(extra).strip():
                    prompt = f"{prompt}\n\n{_text(extra, m['input'])}"
            msgs = [{"role": "user", "content": prompt},
                    {"role": "assistant", "content": _text(rec.get(m["completion"]), m["completion"])}]
        if system is not None and not (msgs and msgs[0]["role"] == "system"):
            msgs = [{"role": "system", "content": system}] + msgs
        try:
            listed = tools.parse_tools(rec.get(m["tools"])) if m.get("tools") else None
        except tools.BadTools as e:
            raise _Bad(m["tools"], str(e)) from None
        return {"messages": msgs, "tools": listed} if listed else {"messages": msgs}
    if fmt == "prompt_completion":
        prompt = _text(rec.get(m["prompt"]), m["prompt"])
        if m.get("input"):
            extra = rec.get(m["input"])
            if extra not in (None, "") and str(extra).strip():
                prompt = f"{prompt}\n\n{_text(extra, m['input'])}"
        return {"prompt": prompt, "completion": _text(rec.get(m["completion"]), m["completion"])}
    if fmt == "kto":
        return {"prompt": _text(rec.get(m["prompt"]), m["prompt"]),
                "completion": _text(rec.get(m["completion"]), m["completion"]),
                "label": _label(rec.get(m["label"]), m["label"])}
    if fmt == "preference":
        ch, rj = rec.get(m["chosen"]), rec.get(m["rejected"])
        if _looks_like_conversation(ch) or _looks_like_conversation(rj):
            chosen = _messages(ch, m["chosen"])
            rejected = _messages(rj, m["rejected"])
            if m.get("prompt") and rec.get(m["prompt"]) not in (None, ""):
                p = rec.get(m["prompt"])
                prompt = (_messages(p, m["prompt"], need_assistant=False) if _looks_like_conversation(p)
                          else [{"role": "user", "content": _text(p, m["prompt"])}])
            else:
                prompt, chosen, rejected = _split_shared_prefix(chosen, rejected)
            return {"prompt": prompt, "chosen": chosen, "rejected": rejected}
        prompt = _text(rec.get(m["prompt"]), m["prompt"]) if m.get("prompt") else ""
        return {"prompt": prompt, "chosen": _text(ch, m["chosen"]), "rejected": _text(rj, m["rejected"])}
    raise UserError(f"Unknown dataset format '{fmt}'.")


def as_turns(value: Any, role: str) -> list[dict]:
    """A normalized row's prompt or answer as chat turns: a list of messages (copied), or one message of
    `role` holding the text; nothing for an empty value."""
    if isinstance(value, list):
        return [dict(m) for m in value]
    return [{"role": role, "content": value}] if value not in (None, "") else []


def with_system(turns: list[dict], system: Optional[str]) -> list[dict]:
    """The turns behind a system message, unless there is no system prompt or they start with their own."""
    if system and not (turns and turns[0]["role"] == "system"):
        return [{"role": "system", "content": system}] + turns
    return turns


DETECT_ROWS = 200          # records the layout is detected from (the columns of the first 200)
ERRORS_KEPT = 10_000       # problems listed; more are counted
DEFAULT_KEEP_MB = 64       # text of the rows a look (the Dataset tab, `ftstudio data inspect`) keeps
DEFAULT_LOOK_SECONDS = 600  # how long a look may read before it stops and says so


def keep_bytes() -> int:
    """How much row text a look keeps in memory (FTSTUDIO_DATA_KEEP_MB); later rows are checked and counted."""
    try:
        mb = float(os.environ.get("FTSTUDIO_DATA_KEEP_MB", DEFAULT_KEEP_MB))
    except ValueError:
        mb = DEFAULT_KEEP_MB
    return int(max(mb, 0.001) * 1024 * 1024)


def look_seconds() -> float:
    """How long a look may read (FTSTUDIO_DATA_SECONDS)."""
    try:
        s = float(os.environ.get("FTSTUDIO_DATA_SECONDS", DEFAULT_LOOK_SECONDS))
    except ValueError:
        s = DEFAULT_LOOK_SECONDS
    return s if s > 0 else DEFAULT_LOOK_SECONDS


def _row_chars(value: Any) -> int:
    """About how much text a normalized row holds (its strings' lengths)."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, dict):
        return sum(_row_chars(v) for v in value.values()) + 16
    if isinstance(value, list):
        return sum(_row_chars(v) for v in value) + 16
    return 8


def load_rows(path: str, mapping: dict[str, str] | None = None, format: str = "auto",
              skip_bad_rows: bool = True, keep_all: bool = True, budget: Optional[Budget] = None,
              spill: Optional[Path] = None) -> LoadedDataset:
    """Read, detect and normalize a dataset file. Raises UserError with a sentence when unusable.

    The file is read a record at a time and each record is normalized as it comes, so memory holds the
    normalized rows, not the file. With keep_all=False (a look at the data, not a training) only the first
    FTSTUDIO_DATA_KEEP_MB of row text is kept: every later row is still checked and counted (`total`), and
    the read stops after FTSTUDIO_DATA_SECONDS (or the `budget` given) with a note saying where.
    With `spill` (a folder; training uses it) the normalized rows go to a memory-mapped file there
    instead (`rowstore.RowStore`), so memory holds neither the file nor its rows."""
    if budget is None and not keep_all:
        budget = Budget(look_seconds())
    stream = sources.open_source(path, budget)  # a file, a folder, a save_to_disk folder or a hub id
    unit = stream.unit
    name = str(path)
    errors: list[RowError] = []
    bad = read_bad = read_ok = 0

    def problem(err: RowError) -> None:
        nonlocal bad
        bad += 1
        if len(errors) < ERRORS_KEPT:
            errors.append(err)

    head: list[tuple[int, dict]] = []
    items = iter(stream.items)
    for item in items:
        if isinstance(item, RowError):
            read_bad += 1
            problem(item)
            continue
        read_ok += 1
        head.append(item)
        if len(head) >= DETECT_ROWS:
            break
    if not head:
        if errors:
            raise UserError(f"No usable rows in {name}: every row has a problem. The first: "
                            f"{errors[0].sentence(name, unit)}")
        raise UserError(f"The dataset file {name} holds no rows (only blank lines). Add data, one row per line.")
    columns = _columns(head)
    fmt, source, mapping = _resolve_layout(head, columns, mapping, format)
    left, prose = unused_columns(head, columns, mapping)
    writer = None
    if spill is not None:
        from array import array

        from backend.data.rowstore import RowWriter

        writer = RowWriter(spill)
    rows: Any = writer if writer is not None else []
    lines: Any = array("q") if writer is not None else []
    usable = 0
    held, limit = 0, (None if keep_all else keep_bytes())

    def take(line: int, rec: dict) -> None:
        nonlocal usable, held
        try:
            row = normalize_record(rec, fmt, mapping)
        except _Bad as b:
            problem(RowError(line, b.field, b.message))
            return
        usable += 1
        if limit is not None:
            if held >= limit:
                return
            held += _row_chars(row)
        rows.append(row)
        lines.append(line)

    try:
        for line, rec in head:
            take(line, rec)
        del head
        for item in items:
            if isinstance(item, RowError):
                read_bad += 1
                problem(item)
            else:
                read_ok += 1
                take(*item)
    except BaseException:
        if writer is not None:
            writer.discard()
        raise
    if writer is not None:
        rows = writer.finish()  # an error below drops the store, and its file with it
    errors.sort(key=lambda e: e.line)
    if errors and not skip_bad_rows:
        more = f" ({bad - 1} more row(s) have problems too)" if bad > 1 else ""
        raise UserError(f"{errors[0].sentence(name, unit)}{more}. Fix the row, or turn on 'skip bad rows'.")
    if not usable:
        raise UserError(f"No usable rows in {name}: all {bad} row(s) have a problem. The first: "
                        f"{errors[0].sentence(name, unit)}")
    notes = []
    if len(rows) < usable:
        notes.append(f"{len(rows):,} of the {usable:,} usable rows are kept for viewing (the first "
                     f"{keep_bytes() / 2**20:,.0f} MB of text, FTSTUDIO_DATA_KEEP_MB); every row was checked")
    if budget is not None and budget.stopped:
        notes.append(budget.stopped)
    return LoadedDataset(path=name, format=fmt, source_format=source, rows=rows, columns=columns,
                         mapping=mapping, errors=errors, skipped=bad, lines=lines, unit=unit,
                         records=read_ok + read_bad, total=usable, complete=not notes,
                         note="; ".join(notes) + "." if notes else None,
                         unused_columns=left, unused_text=prose, encoding=stream.encoding,
                         notices=[n for n in (stream.notice(),) if n])


# ---------------------------------------------------------------- splitting

def split_sizes(n: int, validation_split: float) -> tuple[int, int]:
    """(training rows, validation rows) that split_rows makes of n rows."""
    if validation_split <= 0 or n < 2:
        return n, 0
    n_val = min(max(1, round(n * validation_split)), n - 1)  # keep at least one training row
    return n - n_val, n_val


def split_rows(rows: Sequence[dict], validation_split: float, seed: int) -> tuple[Sequence[dict], Sequence[dict]]:
    """Seeded shuffle, then hold out round(n * split) rows (at least one when asked and possible).

    Both parts keep the file's order. Rows on disk (a RowStore) split into two views of the same file,
    holding the same rows as a list would."""
    n = len(rows)
    n_val = split_sizes(n, validation_split)[1]
    if not n_val:
        return (rows if not isinstance(rows, list) else list(rows)), []
    order = list(range(n))
    random.Random(seed).shuffle(order)
    val_idx = set(order[:n_val])
    if not isinstance(rows, list) and hasattr(rows, "view"):
        return (rows.view([i for i in range(n) if i not in val_idx]), rows.view(sorted(val_idx)))
    train = [r for i, r in enumerate(rows) if i not in val_idx]
    val = [r for i, r in enumerate(rows) if i in val_idx]
    return train, val


def load_for_training(data_cfg: Any, seed: int, spill: Optional[Path] = None
                      ) -> tuple[LoadedDataset, Sequence[dict], Sequence[dict]]:
    """The training rows and validation rows a run uses: a separate file if set, else a seeded split.

    spill: a folder for the rows on disk (see load_rows); the run's memory then holds neither."""
    loaded = load_rows(data_cfg.path, data_cfg.mapping, data_cfg.format, data_cfg.skip_bad_rows, spill=spill)
    if data_cfg.validation_path:
        val = load_rows(data_cfg.validation_path, data_cfg.mapping, loaded.format, data_cfg.skip_bad_rows,
                        spill=spill)
        return loaded, loaded.rows, val.rows
    train, val = split_rows(loaded.rows, data_cfg.validation_split, seed)
    return loaded, train, val
