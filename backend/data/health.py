"""Dataset health: duplicate and near-duplicate rows, empty answers, rows max length cuts, the language mix and
train/validation overlap (leakage), counted on normalized rows; and `drop_duplicates`, which writes a copy of a
file without them (the original is kept).

Exact duplicates compare a row's text after case folding and whitespace collapsing (a SHA-1 of it). Near
duplicates use MinHash over the word pairs of that text: NUM_PERM hash functions (a*x+b mod a prime over one
64-bit blake2b hash of each pair), banded for locality-sensitive lookup, and each candidate pair confirmed by
the exact Jaccard similarity of the two sets (NEAR_JACCARD or more), so a shared template phrase
("What is the capital of ...") is not a duplicate. The language of a row is a cheap guess: its script, and for
Latin script the language whose common words it uses most.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import unicodedata
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Iterable, Optional

import numpy as np

from backend.core.errors import UserError

SHINGLE = 2             # words per shingle
NUM_PERM = 64           # MinHash functions
BANDS = 16              # LSH bands of NUM_PERM // BANDS rows: pairs near NEAR_JACCARD meet in some band
NEAR_JACCARD = 0.8      # shingle-set similarity from which two rows are near duplicates
SHINGLE_CHARS = 20_000  # near duplicates compare a row's first 20,000 characters (bounded time and memory)
_PRIME = (1 << 61) - 1
_rng = np.random.default_rng(20240521)  # fixed: the same file gives the same answer on every run
_A = _rng.integers(1, 1 << 31, NUM_PERM, dtype=np.uint64)
_B = _rng.integers(0, 1 << 31, NUM_PERM, dtype=np.uint64)
_MASK32 = np.uint64((1 << 32) - 1)
_SPACES = re.compile(r"\s+")
_TOKENS = re.compile(r"\w+|[^\w\s]")


# ---------------------------------------------------------------- the text of a row

def row_parts(row: dict) -> tuple[str, list[str]]:
    """(prompt text, answers) of a normalized row: what the model reads, and what it is graded on."""
    if "messages" in row:
        prompt = [m.get("content") or "" for m in row["messages"] if m.get("role") != "assistant"]
        answers = [_answer_text(m) for m in row["messages"] if m.get("role") == "assistant"]
        return "\n".join(prompt), answers
    if "text" in row and len(row) == 1:
        return "", [row["text"]]
    if "chosen" in row:
        prompt = row.get("prompt") or ""
        if isinstance(prompt, list):
            prompt = "\n".join(m.get("content") or "" for m in prompt)
        chosen = row["chosen"]
        if isinstance(chosen, list):
            return prompt, [_answer_text(m) for m in chosen if m.get("role") == "assistant"]
        return prompt, [chosen]
    return str(row.get("prompt") or ""), [str(row.get("completion") or "")]


def _answer_text(message: dict) -> str:
    text = message.get("content") or ""
    if message.get("tool_calls"):  # a tool call is an answer too, even with no words
        text += json.dumps(message["tool_calls"], sort_keys=True, ensure_ascii=False)
    return text


def normalize(text: str) -> str:
    """Case-folded, NFKC, whitespace collapsed: two rows differing only there are the same row."""
    return _SPACES.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def row_text(row: dict) -> str:
    """The normalized text a row is compared by (prompt and answers, in order)."""
    prompt, answers = row_parts(row)
    return normalize("\n".join([prompt, *answers]))


def exact_key(text: str) -> bytes:
    return hashlib.sha1(text.encode("utf-8")).digest()


# ---------------------------------------------------------------- MinHash

def shingles(text: str) -> set[str]:
    """Word pairs (numbers and punctuation count as words): "2+3=5" and "2+4=6" share few, so templated rows
    that differ in their point are not near duplicates, while a long row with one word changed is."""
    words = _TOKENS.findall(text[:SHINGLE_CHARS])
    if len(words) < SHINGLE:
        return {" ".join(words)} if words else set()
    return {" ".join(words[i:i + SHINGLE]) for i in range(len(words) - SHINGLE + 1)}


def _hashes(grams: Iterable[str]) -> np.ndarray:
    return np.fromiter((int.from_bytes(hashlib.blake2b(g.encode("utf-8"), digest_size=8).digest(), "little")
                        & 0xFFFFFFFF for g in grams), dtype=np.uint64)


@dataclass
class Print:
    """A row's shingles as sorted unique 32-bit hashes, and their MinHash signature."""
    hashes: np.ndarray
    sig: np.ndarray


def fingerprint(text: str) -> Print:
    x = np.unique(_hashes(shingles(text)))
    if not x.size:
        return Print(x.astype(np.uint32), np.zeros(NUM_PERM, dtype=np.uint64))
    # NUM_PERM minimum hashes (32-bit values, so a*x+b stays within 64 bits).
    sig = ((np.outer(_A, x) + _B[:, None]) % np.uint64(_PRIME) & _MASK32).min(axis=1)
    return Print(x.astype(np.uint32), sig)


def jaccard(a: np.ndarray, b: np.ndarray) -> float:
    if not a.size and not b.size:
        return 1.0
    both = np.intersect1d(a, b, assume_unique=True).size
    return both / (a.size + b.size - both)


INDEX_MB = 512  # shingle hashes an index keeps for exact checks; past it, the signature estimates similarity


class NearIndex:
    """Rows added one at a time; `match` finds an earlier row at NEAR_JACCARD or more (banded MinHash, then
    the exact Jaccard of the candidates' shingle hashes). Past INDEX_MB of hashes (a very large file), the
    share of equal MinHash values estimates the similarity instead, so memory holds 512 bytes a row."""

    def __init__(self) -> None:
        self.buckets: list[dict[bytes, list[int]]] = [{} for _ in range(BANDS)]
        self.prints: dict[int, Print] = {}
        self.held = 0

    def _bands(self, sig: np.ndarray) -> list[bytes]:
        rows = NUM_PERM // BANDS
        return [sig[b * rows:(b + 1) * rows].tobytes() for b in range(BANDS)]

    def match(self, fp: Print) -> Optional[int]:
        seen: set[int] = set()
        for band, key in zip(self.buckets, self._bands(fp.sig)):
            for other in band.get(key, ()):
                if other in seen:
                    continue
                seen.add(other)
                known = self.prints[other]
                similar = (jaccard(fp.hashes, known.hashes) if known.hashes is not None
                           else float(np.mean(fp.sig == known.sig)))
                if similar >= NEAR_JACCARD:
                    return other
        return None

    def add(self, i: int, fp: Print) -> None:
        if self.held + fp.hashes.nbytes > INDEX_MB * 2**20:
            fp = Print(None, fp.sig)  # type: ignore[arg-type]
        else:
            self.held += fp.hashes.nbytes
        self.prints[i] = fp
        for band, key in zip(self.buckets, self._bands(fp.sig)):
            band.setdefault(key, []).append(i)


# ---------------------------------------------------------------- language

_STOPWORDS = {
    "en": "the and is are of to in that it for with you this what how was be on not".split(),
    "de": "der die das und ist nicht ein eine ich sie es mit zu den von auf für wie".split(),
    "fr": "le la les et est des une un que pas pour dans qui sur vous avec ce il".split(),
    "es": "el la los las y es que en un una por para con no se del como qué".split(),
    "it": "il lo la gli le e è che di un una per non con sono della come".split(),
    "pt": "o a os as e é que de um uma para com não do da em como".split(),
    "nl": "de het een en is van dat niet ik je met op te zijn wat hoe".split(),
}
_WORD = re.compile(r"[^\W\d_]+", re.UNICODE)
_SCRIPTS = (("zh/ja", ("CJK", "HIRAGANA", "KATAKANA")), ("ko", ("HANGUL",)), ("ru/uk", ("CYRILLIC",)),
            ("ar", ("ARABIC",)), ("el", ("GREEK",)), ("he", ("HEBREW",)), ("hi", ("DEVANAGARI",)),
            ("th", ("THAI",)))


@lru_cache(maxsize=65536)
def _script(ch: str) -> str:
    name = unicodedata.name(ch, "")
    for lang, marks in _SCRIPTS:
        if name.startswith(marks):
            return lang
    return "latin" if "LATIN" in name else "other"


def language(text: str) -> str:
    """A guess at the row's language: 'en', 'de', ... for Latin script (by common words), a script's
    languages otherwise ('ru/uk', 'zh/ja'), 'other' when neither says, 'none' without letters."""
    sample = text[:2000]
    if sample.isascii():  # the common case, without a look at each letter
        if not any(ch.isalpha() for ch in sample):
            return "none"
        counts: Counter = Counter(latin=1)
    else:
        counts = Counter(_script(ch) for ch in sample if ch.isalpha())
        if not counts:
            return "none"
    script, n = counts.most_common(1)[0]
    if script != "latin":
        return script
    words = Counter(w.casefold() for w in _WORD.findall(text[:2000]))
    scores = {lang: sum(words[w] for w in stop) for lang, stop in _STOPWORDS.items()}
    best = max(scores, key=scores.get)
    return best if scores[best] > 0 else "other"


# ---------------------------------------------------------------- the report

@dataclass
class Health:
    rows: int = 0
    duplicates: int = 0                 # rows that repeat an earlier row exactly (after normalizing)
    near_duplicates: int = 0            # rows within NEAR_JACCARD of an earlier row, not exact repeats
    empty_answers: int = 0              # empty or whitespace answers: kept turns, and rows skipped for it
    answers_cut: int = 0                # rows whose answer max length cuts part of
    prompts_too_long: int = 0           # rows whose prompt alone fills max length (nothing left to grade)
    length_rows: int = 0                # rows the two counts above were measured on
    languages: dict[str, int] = field(default_factory=dict)
    leakage: Optional[int] = None       # validation rows that repeat (or nearly) a training row
    validation_rows: Optional[int] = None
    duplicate_rows: list[int] = field(default_factory=list)       # indexes of the exact repeats
    near_duplicate_rows: list[int] = field(default_factory=list)  # indexes of the near repeats
    examples: list[tuple[int, int]] = field(default_factory=list)  # (repeat, the row it repeats), a few

    def as_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "duplicates": self.duplicates, "near_duplicates": self.near_duplicates,
                "empty_answers": self.empty_answers, "answers_cut": self.answers_cut,
                "prompts_too_long": self.prompts_too_long, "length_rows": self.length_rows,
                "languages": dict(self.languages), "leakage": self.leakage,
                "validation_rows": self.validation_rows,
                "duplicate_examples": [list(p) for p in self.examples]}

    def sentences(self) -> list[str]:
        """One sentence per problem found (nothing when healthy)."""
        out = []
        if self.duplicates:
            out.append(f"{self.duplicates} row(s) repeat an earlier row exactly (ignoring case and spaces).")
        if self.near_duplicates:
            out.append(f"{self.near_duplicates} row(s) are near duplicates of an earlier row (about "
                       f"{NEAR_JACCARD:.0%} or more of their text shared).")
        if self.empty_answers:
            out.append(f"{self.empty_answers} row(s) have an empty or whitespace-only answer.")
        if self.answers_cut:
            out.append(f"{self.answers_cut} row(s) have their answer cut by max length (the end is not learned).")
        if self.prompts_too_long:
            out.append(f"{self.prompts_too_long} row(s) have a prompt longer than max length: nothing of their "
                       "answer is left, so they do not train.")
        if len([k for k, n in self.languages.items() if k != "none" and n >= max(1, 0.05 * self.rows)]) > 1:
            mix = ", ".join(f"{k} {n}" for k, n in sorted(self.languages.items(), key=lambda kv: -kv[1]))
            out.append(f"The rows mix languages ({mix}); check that this is intended.")
        if self.leakage:
            out.append(f"{self.leakage} of the {self.validation_rows} validation row(s) repeat a training row "
                       "(leakage): the validation loss will look better than it is.")
        return out


def find_duplicates(rows: list[dict], near: bool = True) -> tuple[list[int], list[int], list[tuple[int, int]]]:
    """(exact repeats, near repeats, a few (repeat, original) pairs): indexes into rows; the first of each
    group is never listed."""
    first: dict[bytes, int] = {}
    index = NearIndex()
    exact, near_rows, examples = [], [], []
    for i, row in enumerate(rows):
        text = row_text(row)
        key = exact_key(text)
        if key in first:
            exact.append(i)
            if len(examples) < 5:
                examples.append((i, first[key]))
            continue
        first[key] = i
        if not near:
            continue
        fp = fingerprint(text)
        other = index.match(fp)
        if other is not None:
            near_rows.append(i)
            if len(examples) < 5:
                examples.append((i, other))
            continue
        index.add(i, fp)
    return exact, near_rows, examples


def leaked(train: list[dict], validation: list[dict]) -> int:
    """Validation rows equal to, or near, a training row."""
    keys = set()
    index = NearIndex()
    for i, row in enumerate(train):
        text = row_text(row)
        keys.add(exact_key(text))
        index.add(i, fingerprint(text))
    n = 0
    for row in validation:
        text = row_text(row)
        if exact_key(text) in keys:
            n += 1
            continue
        if index.match(fingerprint(text)) is not None:
            n += 1
    return n


def _empty_answers(rows: list[dict], errors: Iterable[Any], mapping: dict[str, str]) -> int:
    kept = sum(1 for r in rows if any(not a.strip() for a in row_parts(r)[1]))
    answer_cols = {mapping.get(k) for k in ("completion", "chosen", "rejected", "messages", "text")} - {None}
    skipped = sum(1 for e in errors
                  if (e.field in answer_cols and "is empty" in e.message) or "no assistant turn with text" in e.message)
    return kept + skipped


def length_problems(tokenizer, rows: list[dict], data_cfg: Any, limit: Optional[int] = None) -> tuple[int, int, int]:
    """(answers cut, prompts too long, rows measured) with the training's own labels (encode_full)."""
    from backend.data.templates import IGNORE, encode_full

    cap = int(data_cfg.max_length)
    cut = too_long = 0
    sample = rows if limit is None else rows[:limit]
    for r in sample:
        e = encode_full(tokenizer, r, data_cfg)
        if len(e.input_ids) <= cap:
            continue
        graded = [i for i, x in enumerate(e.labels) if x != IGNORE and i > 0]
        if not graded:
            continue
        if graded[0] >= cap:
            too_long += 1
        elif graded[-1] >= cap:
            cut += 1
    return cut, too_long, len(sample)


def check(rows: list[dict], errors: Iterable[Any] = (), mapping: Optional[dict[str, str]] = None,
          tokenizer=None, data_cfg: Any = None, validation: Optional[list[dict]] = None,
          length_limit: Optional[int] = None) -> Health:
    """The health of normalized rows: duplicates, empty answers, lengths (with a tokenizer), languages and,
    given the validation rows, leakage."""
    h = Health(rows=len(rows))
    exact, near, h.examples = find_duplicates(rows)
    h.duplicates, h.near_duplicates = len(exact), len(near)
    h.duplicate_rows, h.near_duplicate_rows = exact, near
    h.empty_answers = _empty_answers(rows, errors, mapping or {})
    if tokenizer is not None and data_cfg is not None:
        h.answers_cut, h.prompts_too_long, h.length_rows = length_problems(tokenizer, rows, data_cfg, length_limit)
    h.languages = dict(Counter(language("\n".join([p, *a])) for p, a in map(row_parts, rows)).most_common())
    if validation is not None:
        h.validation_rows = len(validation)
        h.leakage = leaked(rows, validation)
    return h


# ---------------------------------------------------------------- dropping duplicates

def dedup_path(path: str, out_dir: Optional[str] = None) -> Path:
    """Where the copy without duplicates goes: beside the file (or in out_dir), '<name>.dedup.jsonl'."""
    p = Path(path)
    stem = p.name[:-len(p.suffix)] if p.suffix else p.name
    return Path(out_dir or p.parent) / f"{stem}.dedup.jsonl"


def drop_duplicates(path: str, out: str, mapping: Optional[dict[str, str]] = None, format: str = "auto",
                    near: bool = True) -> dict[str, Any]:
    """Write the file's records as JSON Lines without the rows that repeat (or nearly repeat) an earlier one.

    Every row of the file is read again (not only the rows a look keeps) and the records are written as they
    were read, with their own columns, so the same mapping reads the copy. Rows that do not normalize are
    left out too (they would be skipped anyway). The original file is never touched."""
    from backend.data.files import RowError, _Bad
    from backend.data.sources import open_source
    from backend.data.records import DETECT_ROWS, _columns, _resolve_layout, normalize_record

    hub = path.startswith("hf://")
    src, dest = (path if hub else Path(path).resolve()), Path(out)
    if not hub and dest.resolve() == src:
        raise UserError(f"The copy without duplicates would overwrite {src}; choose another output file.")
    stream = open_source(str(src))
    head: list[tuple[int, dict]] = []
    items = iter(stream.items)
    for item in items:
        if not isinstance(item, RowError):
            head.append(item)
            if len(head) >= DETECT_ROWS:
                break
    if not head:
        raise UserError(f"No usable rows in {src}, so there is nothing to de-duplicate.")
    fmt, _, mapping = _resolve_layout(head, _columns(head), mapping, format)
    first: set[bytes] = set()
    index = NearIndex()
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(f".{dest.name}.part")
    fh = open(part, "w", encoding="utf-8")
    kept = exact = near_n = bad = 0

    def take(rec: dict) -> None:
        nonlocal kept, exact, near_n, bad
        try:
            row = normalize_record(rec, fmt, mapping)
        except _Bad:
            bad += 1
            return
        text = row_text(row)
        key = exact_key(text)
        if key in first:
            exact += 1
            return
        first.add(key)
        if near:
            fp = fingerprint(text)
            if index.match(fp) is not None:
                near_n += 1
                return
            index.add(kept, fp)
        kept += 1
        fh.write(json.dumps(rec, ensure_ascii=False, default=str) + "\n")

    try:
        with fh:  # written a row at a time, then renamed: the copy never holds half a file under its name
            for _, rec in head:
                take(rec)
            del head[:]
            for item in items:
                if isinstance(item, RowError):
                    bad += 1
                else:
                    take(item[1])
        os.replace(part, dest)
    except BaseException:
        part.unlink(missing_ok=True)
        raise
    return {"path": str(dest), "source": str(src), "rows": kept, "duplicates_dropped": exact,
            "near_duplicates_dropped": near_n, "bad_rows_dropped": bad}

