"""Task metrics: how close a model's answers are to the reference answers of held-out rows.

Pure functions over strings (no model): `score_rows` takes the answers and references and returns the
aggregate of each chosen metric plus each row's scores. BLEU and chrF come from sacrebleu and ROUGE-L
from rouge-score (both work offline); exact match, token F1 and accuracy are defined here because they
are a normaliser and a comparison.

The optional extractor (a regular expression) applies to the answer-level metrics (exact match, token
F1, accuracy): its first group, or the whole match, is the answer. A reference the pattern does not match
is taken whole; an answer it does not match is empty, so a model that drops the format scores 0.
ROUGE-L, BLEU and chrF compare the whole texts.
"""
from __future__ import annotations

import collections
import re
import string
from dataclasses import dataclass
from typing import Any, Callable, Optional

from backend.core.errors import UserError


@dataclass(frozen=True)
class MetricInfo:
    name: str
    title: str
    help: str
    scale: float          # the best score (1 for shares, 100 for sacrebleu's scores)
    answer_level: bool    # uses the extracted answer rather than the whole text


METRICS: dict[str, MetricInfo] = {m.name: m for m in (
    MetricInfo("exact_match", "exact match", "share of rows whose normalised answer equals the reference", 1.0, True),
    MetricInfo("token_f1", "token F1", "word overlap (F1) between normalised answer and reference", 1.0, True),
    MetricInfo("rouge_l", "ROUGE-L", "longest common subsequence F-measure (rouge-score)", 1.0, False),
    MetricInfo("bleu", "BLEU", "corpus BLEU, 0-100 (sacrebleu)", 100.0, False),
    MetricInfo("chrf", "chrF", "character n-gram F-score, 0-100 (sacrebleu)", 100.0, False),
    MetricInfo("accuracy", "accuracy", "share of correct labels, with a confusion table (classification-like "
                                       "answers)", 1.0, True),
)}
DEFAULT_METRICS = ("exact_match", "token_f1", "rouge_l")
MAX_CONFUSION_LABELS = 12
OTHER_LABEL = "(other)"

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def parse_metric_names(text: Any) -> list[str]:
    """'exact_match, rouge_l' or a list -> validated names in order; an unknown name is a sentence."""
    items = text if isinstance(text, (list, tuple)) else str(text or "").split(",")
    names = [str(n).strip().lower().replace("-", "_") for n in items if str(n).strip()]
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise UserError(f"Unknown metric {', '.join(unknown)}; choose from {', '.join(METRICS)}.")
    return list(dict.fromkeys(names)) or list(DEFAULT_METRICS)


def compile_extractor(pattern: Optional[str]) -> Optional[re.Pattern]:
    if not pattern:
        return None
    try:
        return re.compile(pattern, re.DOTALL)
    except re.error as e:
        raise UserError(f"The answer extractor {pattern!r} is not a valid regular expression ({e}).") from None


def extract(text: str, pattern: Optional[re.Pattern], is_reference: bool) -> str:
    if pattern is None:
        return text
    m = pattern.search(text or "")
    if m is None:
        return text if is_reference else ""
    return m.group(1) if m.groups() and m.group(1) is not None else m.group(0)


def normalise(text: str) -> str:
    """Lower case, no punctuation, no English articles, single spaces (the SQuAD convention)."""
    text = (text or "").lower().translate(_PUNCT)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match(answer: str, reference: str) -> float:
    return float(normalise(answer) == normalise(reference))


def token_f1(answer: str, reference: str) -> float:
    a, r = normalise(answer).split(), normalise(reference).split()
    if not a or not r:
        return float(a == r)
    common = sum((collections.Counter(a) & collections.Counter(r)).values())
    if common == 0:
        return 0.0
    precision, recall = common / len(a), common / len(r)
    return 2 * precision * recall / (precision + recall)


def _rouge_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def confusion_table(labels: list[str], predictions: list[str]) -> dict[str, Any]:
    """Counts of (reference label, predicted label). Predictions outside the reference labels are
    '(other)'; with more distinct labels than a table can show, only the commonest are kept."""
    common = [lab for lab, _ in collections.Counter(labels).most_common(MAX_CONFUSION_LABELS)]
    known = set(common)
    counts: dict[str, dict[str, int]] = {lab: {} for lab in common}
    for ref, pred in zip(labels, predictions):
        if ref not in known:
            continue
        col = pred if pred in known else OTHER_LABEL
        counts[ref][col] = counts[ref].get(col, 0) + 1
    columns = common + ([OTHER_LABEL] if any(OTHER_LABEL in row for row in counts.values()) else [])
    return {"labels": columns, "counts": counts, "distinct_reference_labels": len(set(labels)),
            "truncated": len(set(labels)) > len(common)}


def score_rows(metric_names: list[str], answers: list[str], references: list[str],
               extractor: Optional[re.Pattern] = None) -> dict[str, Any]:
    """{'metrics': {name: aggregate}, 'rows': [{name: score}], 'extracted': [answer], 'confusion': ...}."""
    if len(answers) != len(references):
        raise ValueError("answers and references differ in length")
    got = [extract(a, extractor, False) for a in answers]
    want = [extract(r, extractor, True) for r in references]
    per_row: list[dict[str, float]] = [{} for _ in answers]
    aggregate: dict[str, float] = {}
    pairwise: dict[str, Callable[[str, str], float]] = {"exact_match": exact_match, "token_f1": token_f1,
                                                        "accuracy": exact_match}
    for name in metric_names:
        if name in pairwise:
            vals = [pairwise[name](g, w) for g, w in zip(got, want)]
        elif name == "rouge_l":
            scorer = _rouge_scorer()
            vals = [scorer.score(r, a)["rougeL"].fmeasure for a, r in zip(answers, references)]
        elif name in ("bleu", "chrf"):
            import sacrebleu

            sentence = sacrebleu.sentence_bleu if name == "bleu" else sacrebleu.sentence_chrf
            corpus = sacrebleu.corpus_bleu if name == "bleu" else sacrebleu.corpus_chrf
            vals = [sentence(a, [r]).score for a, r in zip(answers, references)]
            aggregate[name] = round(corpus(answers, [references]).score, 4) if answers else 0.0
        else:
            raise UserError(f"Unknown metric {name}; choose from {', '.join(METRICS)}.")
        for row, v in zip(per_row, vals):
            row[name] = round(float(v), 4)
        if name not in aggregate:
            aggregate[name] = round(sum(vals) / len(vals), 4) if vals else 0.0
    out: dict[str, Any] = {"metrics": aggregate, "rows": per_row, "extracted": got}
    if "accuracy" in metric_names:
        out["confusion"] = confusion_table([normalise(w) for w in want], [normalise(g) for g in got])
    return out


def row_change(metric: str, base: dict[str, float], other: dict[str, float]) -> float:
    """How much a row's headline score moved from the base (negative: it got worse)."""
    return round(float(other.get(metric, 0.0)) - float(base.get(metric, 0.0)), 4)
