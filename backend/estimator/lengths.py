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

from backend.data.packing import plan_bins

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

    def suggested_max_length(self) -> int:
        """The data's p99 rounded up to a multiple of ROUND_TO (at least 8, the config's minimum)."""
        return max(8, int(math.ceil(self.quantile() / ROUND_TO) * ROUND_TO))


def lengths_from(stats: Optional[dict[str, Any]]) -> Optional[DataLengths]:
    """DataLengths from backend.data.templates.token_length_stats' dict (None when it has no rows)."""
    if not stats:
        return None
    return DataLengths.of(stats.get("lengths"), stats.get("total") or 0)
