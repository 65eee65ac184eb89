"""Packing: several encoded rows in one sequence of at most `capacity` tokens, without cross-talk.

A packed sequence carries `position_ids` that restart at 0 for every row and no attention
mask. transformers' mask builders (sdpa, eager, flex) and its flash-attention varlen path read
a restart of the positions as a sequence boundary, so a token attends only to earlier tokens
of its own row, and each row trains at the positions it would have alone. The label of every
row's first token is masked: otherwise the previous row's last token would be graded on
predicting it. With those two rules the loss of a pack equals the token-weighted loss of its
rows (tests/unit/test_packing_isolation.py checks it, and that rows cannot see each other).

Bins are planned best-fit-decreasing over the whole dataset: longest row first, each into the
fullest bin it still fits. The same plan serves the preview and training.
"""
from __future__ import annotations

import bisect
from typing import Iterable, Optional

IGNORE = -100


def plan_bins(lengths: list[int], capacity: int) -> list[list[int]]:
    """Row indices per packed sequence (best-fit-decreasing); a row longer than capacity sits alone.

    The free space of the open bins is kept as a sorted list of distinct values (at most
    capacity + 1 of them) with the bins having each, so a row finds its best bin by bisection.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-min(lengths[i], capacity), i))
    bins: list[list[int]] = []
    free_values: list[int] = []            # sorted distinct free spaces of the open bins
    by_free: dict[int, list[int]] = {}     # free space -> bin numbers with it
    for i in order:
        n = max(1, min(lengths[i], capacity))
        k = bisect.bisect_left(free_values, n)
        if k < len(free_values):
            free = free_values[k]
            b = by_free[free].pop()
            if not by_free[free]:
                del by_free[free]
                free_values.pop(k)
        else:
            free, b = capacity, len(bins)
            bins.append([])
        bins[b].append(i)
        left = free - n
        if left > 0:
            if left not in by_free:
                bisect.insort(free_values, left)
                by_free[left] = []
            by_free[left].append(b)
    for b in bins:
        b.sort()
    return bins


def efficiency(lengths: list[int], capacity: int, bins: Optional[list[list[int]]] = None) -> float:
    """Real tokens per token slot of the packed sequences (1.0 = every sequence full)."""
    if not lengths:
        return 0.0
    bins = plan_bins(lengths, capacity) if bins is None else bins
    real = sum(min(n, capacity) for n in lengths)
    return round(real / (len(bins) * capacity), 4)


def padded_efficiency(lengths: list[int], capacity: int, batch_size: int) -> float:
    """Real tokens per slot without packing: each batch pads to its longest row."""
    if not lengths:
        return 0.0
    cut = [min(n, capacity) for n in lengths]
    slots = sum(max(cut[i:i + batch_size]) * len(cut[i:i + batch_size]) for i in range(0, len(cut), batch_size))
    return round(sum(cut) / slots, 4)


def bin_of(lengths: list[int], capacity: int, index: int) -> list[int]:
    for b in plan_bins(lengths, capacity):
        if index in b:
            return b
    raise IndexError(index)


def join(encoded: list[dict]) -> dict:
    """One packed sequence: input_ids, labels (each row's first masked), position_ids, segment of each token."""
    out: dict[str, list] = {"input_ids": [], "labels": [], "position_ids": [], "segment": []}
    for seg, e in enumerate(encoded):
        ids = list(e["input_ids"])
        labels = list(e.get("labels", ids))
        if labels:
            labels[0] = IGNORE  # a row's first token is never predicted, alone or packed
        out["input_ids"].extend(ids)
        out["labels"].extend(labels)
        out["position_ids"].extend(range(len(ids)))
        out["segment"].extend([seg] * len(ids))
    return out


def pack(encoded: list[dict], capacity: int, bins: Optional[list[list[int]]] = None) -> list[dict]:
    """Packed sequences (input_ids, labels, position_ids, segment) in plan order."""
    if bins is None:
        bins = plan_bins([len(e["input_ids"]) for e in encoded], capacity)
    return [join([encoded[i] for i in b]) for b in bins]


def chunk_stream(encoded: Iterable[dict], capacity: int) -> list[dict]:
    """Plain-text pretraining: the documents as one stream cut into full blocks (the last may be short).

    A document keeps its own positions and sees only itself: a piece that starts a block starts
    again at position 0, like a row of its own. Each block also lists the document of each
    segment (`rows`) and the index of the piece's first token in its document (`first`).
    """
    out: list[dict] = []

    def fresh() -> dict:
        return {**join([]), "rows": [], "first": []}

    cur = fresh()
    for doc, e in enumerate(encoded):
        ids, labels = list(e["input_ids"]), list(e.get("labels", e["input_ids"]))
        s = 0
        while s < len(ids):
            room = capacity - len(cur["input_ids"])
            piece, plab = ids[s:s + room], labels[s:s + room]
            plab[0] = IGNORE
            seg = len(cur["rows"])
            cur["input_ids"].extend(piece)
            cur["labels"].extend(plab)
            cur["position_ids"].extend(range(len(piece)))
            cur["segment"].extend([seg] * len(piece))
            cur["rows"].append(doc)
            cur["first"].append(s)
            s += len(piece)
            if len(cur["input_ids"]) == capacity:
                out.append(cur)
                cur = fresh()
    if cur["input_ids"]:
        out.append(cur)
    return out


class PackedCollator:
    """Batches packed sequences with no attention mask, so the position restarts confine attention.

    flatten=True (padding-free; for flash attention's varlen path): the whole batch is one row
    and there is no pad token at all. Otherwise each pack is a row padded to the longest; the
    padding is a segment of its own (positions from 0, labels masked), so no real token sees it.
    """

    def __init__(self, pad_token_id: int, flatten: bool = False):
        self.pad_token_id = int(pad_token_id)
        self.flatten = flatten

    def __call__(self, features: list[dict]) -> dict:
        import torch

        keys = ("input_ids", "labels", "position_ids")
        # transformers reads restarting positions as boundaries only without a cache, and a model
        # in eval mode makes one unless told not to (TRL's training loss already says so).
        if self.flatten:
            row = {k: [x for f in features for x in f[k]] for k in keys}
            return {**{k: torch.tensor([row[k]], dtype=torch.long) for k in keys}, "use_cache": False}
        longest = max(len(f["input_ids"]) for f in features)
        batch: dict[str, list] = {k: [] for k in keys}
        for f in features:
            pad = longest - len(f["input_ids"])
            batch["input_ids"].append(list(f["input_ids"]) + [self.pad_token_id] * pad)
            batch["labels"].append(list(f["labels"]) + [IGNORE] * pad)
            batch["position_ids"].append(list(f["position_ids"]) + list(range(pad)))
        return {**{k: torch.tensor(v, dtype=torch.long) for k, v in batch.items()}, "use_cache": False}
