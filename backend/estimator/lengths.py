"""The dataset's real token lengths, as the estimate uses them.

A batch is padded to its longest row (capped at max length), so the peak is set by the longest row
the data has, not by max length; with packing, rows are joined into sequences of up to max length
and the peak is the longest packed sequence. The Dataset tab measures the lengths (untruncated,
with the chosen template) and the Method tab passes them to `estimate(..., lengths=...)`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Sequence

from backend.data.packing import efficiency, padded_efficiency, plan_bins

SUGGEST_QUANTILE = 0.99   # a max length that keeps 99 % of the rows whole
ROUND_TO = 8              # suggested lengths are multiples of 8 (tensor-core friendly)


@dataclass(frozen=True)
class DataLengths:
    lengths: tuple[int, ...]   # untruncated token count per row (a sample of the rows is enough)
    total_rows: int = 0        # rows in the file (lengths may hold only the first few thousand)

    @classmethod
    def of(cls, lengths: Optional[Sequence[int]], total_rows: int = 0) -> Optional["DataLengths"]:
        """None when there is nothing measured: the estimate then assumes every row is max length."""
        clean = tuple(int(n) for n in (lengths or ()) if isinstance(n, (int, float)) and n > 0)
        return cls(clean, max(int(total_rows or 0), len(clean))) if clean else None

    @property
    def longest(self) -> int:
        return max(self.lengths)

    def quantile(self, q: float = SUGGEST_QUANTILE) -> int:
        ordered = sorted(self.lengths)
        return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]

    def sequence(self, max_length: int, packing: bool) -> tuple[int, str]:
        """(the longest sequence a batch will hold, the words that say where it comes from)."""
        if packing:
            capped = [min(n, max_length) for n in self.lengths]
            packed = max(sum(capped[i] for i in b) for b in plan_bins(capped, max_length))
            return packed, f"the longest packed sequence of the data, {packed} of max length {max_length}"
        seq = min(self.longest, max_length)
        if self.longest <= max_length:
            return seq, f"the data's longest row, {seq} tokens (max length {max_length})"
        return seq, f"max length {max_length} (the data's longest row, {self.longest} tokens, is cut)"

    def efficiency(self, max_length: int, packing: bool, batch_size: int = 1, padding_free: bool = False) -> float:
        """Real tokens per token slot: packed (best-fit-decreasing bins of max length), or padded per batch.

        Padding-free packing (flash attention's varlen path) has no slot that is not a real token.
        """
        capped = [min(n, max_length) for n in self.lengths]
        if packing:
            return 1.0 if padding_free else efficiency(capped, max_length)
        return padded_efficiency(capped, max_length, max(1, batch_size))

    def plan(self, cfg: Any, padding_free: bool = False) -> dict[str, Any]:
        """What one run trains on: real tokens and token slots per epoch and in all (the sample scaled to
        the file's rows), and the packing efficiency; `eta_seconds` turns it into time."""
        d, t = cfg.data, cfg.train
        eff = self.efficiency(d.max_length, d.packing, t.batch_size, padding_free)
        sample = sum(min(n, d.max_length) for n in self.lengths)
        real = int(round(sample * self.total_rows / len(self.lengths)))
        total = int(round(real * float(t.epochs)))
        if t.max_steps:  # a step budget: sequences per step x real tokens per sequence
            per_step = t.batch_size * t.gradient_accumulation * max(1, cfg.distributed.gpus * cfg.distributed.nodes)
            per_seq = d.max_length * eff if d.packing else sample / len(self.lengths)
            total = int(round(t.max_steps * per_step * per_seq))
        epochs = total / real if real else 0.0
        return {"rows": self.total_rows, "real_tokens_per_epoch": real, "efficiency": eff,
                "slots_per_epoch": int(round(real / eff)) if eff else real, "epochs": round(epochs, 4),
                "tokens_to_train": total, "slots_to_train": int(round(total / eff)) if eff else total}

    def suggested_max_length(self) -> int:
        """The data's p99 rounded up to a multiple of ROUND_TO (at least 8, the config's minimum)."""
        return max(8, int(math.ceil(self.quantile() / ROUND_TO) * ROUND_TO))


def lengths_from(stats: Optional[dict[str, Any]]) -> Optional[DataLengths]:
    """DataLengths from backend.data.templates.token_length_stats' dict (None when it has no rows)."""
    if not stats:
        return None
    return DataLengths.of(stats.get("lengths"), stats.get("total") or 0)


def eta_seconds(tokens_to_train: int, tokens_per_s: Optional[float], tokens_seen: int = 0,
                efficiency: Optional[float] = None, slot_rate: bool = False) -> Optional[float]:
    """Seconds left: the real tokens still to train over the measured rate (None when none is measured).

    The trainer measures real tokens per second (padding left out); a rate of token slots (a
    benchmark's padded batches, slot_rate=True) is turned into real tokens by the packing efficiency.
    """
    if not tokens_per_s or tokens_per_s <= 0:
        return None
    rate = tokens_per_s * (efficiency or 1.0) if slot_rate else tokens_per_s
    return max(0.0, (tokens_to_train - tokens_seen) / rate)
