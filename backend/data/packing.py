"""Packing: joining encoded rows into sequences of at most `capacity` tokens.

Rows are packed greedily in their order (a row that does not fit closes the sequence and
starts the next one), so the Dataset tab can show exactly which rows share a sequence
with a given row by looking at lengths alone. Written by hand because it must be the
same plan for the preview and for training; it is a dozen lines.
"""
from __future__ import annotations


def plan_bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """Row indices per packed sequence, in row order. A row longer than capacity sits alone."""
    bins: list[list[int]] = []
    used = capacity + 1
    for i, n in enumerate(lengths):
        n = min(n, capacity)
        if used + n > capacity:
            bins.append([])
            used = 0
        bins[-1].append(i)
        used += n
    return bins


def bin_of(lengths: list[int], capacity: int, index: int) -> list[int]:
    for b in plan_bins(lengths, capacity):
        if index in b:
            return b
    raise IndexError(index)


def join(encoded: list[dict]) -> dict:
    """Concatenate encoded rows; `segments` records (row position, start, end) of each."""
    out = {"input_ids": [], "attention_mask": [], "labels": []}
    segments = []
    for pos, e in enumerate(encoded):
        start = len(out["input_ids"])
        for k in out:
            out[k].extend(e[k])
        segments.append((pos, start, len(out["input_ids"])))
    out["segments"] = segments
    return out


def pack(encoded: list[dict], capacity: int) -> list[dict]:
    """Packed sequences (input_ids, attention_mask, labels) in plan order."""
    lengths = [len(e["input_ids"]) for e in encoded]
    packed = []
    for b in plan_bins(lengths, capacity):
        j = join([encoded[i] for i in b])
        j.pop("segments")
        packed.append(j)
    return packed


def chunk_stream(encoded: list[dict], capacity: int) -> list[dict]:
    """Plain-text pretraining: one token stream cut into full blocks (the last may be short)."""
    stream = join(encoded)
    out = []
    for s in range(0, len(stream["input_ids"]), capacity):
        out.append({k: stream[k][s:s + capacity] for k in ("input_ids", "attention_mask", "labels")})
    return out
