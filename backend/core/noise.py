"""Messages that are known to be harmless, kept out of what a user reads.

At the source: `quiet_known_noise()` (called first by the training subprocess and the studio's
launcher) filters them out of logging and warnings before the libraries that emit them are imported.
In the Train tab's log box: `readable_log()` drops the same lines from older logs and folds a
traceback into one sentence, the full text staying in train.log for whoever needs the details.
"""
from __future__ import annotations

import logging
import re
import warnings

# (logger name, message start): library log lines that say nothing a user can act on.
KNOWN_LOG_NOISE = (
    # bitsandbytes' optional CPU kernel from the hub; its own fallback is used, training is unaffected.
    ("bitsandbytes", "Failed to load CPU gemm_4bit_forward from kernels-community"),
)
# Patterns of whole lines in train.log that are the same noise (printed before the filter existed,
# or by a library that writes to stderr directly).
NOISE_LINE = re.compile(r"Failed to load CPU gemm_4bit_forward from kernels-community|FutureWarning:|"
                        r"^\s*warnings\.warn\(")
TRACEBACK_START = "Traceback (most recent call last):"


class _DropKnown(logging.Filter):
    def __init__(self, starts: tuple[str, ...]):
        super().__init__()
        self.starts = starts

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # noqa: BLE001 - a malformed record is not ours to judge
            return True
        return not message.startswith(self.starts)


_INSTALLED = False


def quiet_known_noise() -> None:
    """Filter the known-harmless library messages (idempotent).

    FutureWarnings are deprecation notices addressed to the authors of the libraries' callers, not
    to someone fine-tuning a model; they are dropped in the processes a user watches."""
    global _INSTALLED
    if _INSTALLED:
        return
    _INSTALLED = True
    by_logger: dict[str, list[str]] = {}
    for name, start in KNOWN_LOG_NOISE:
        by_logger.setdefault(name, []).append(start)
    for name, starts in by_logger.items():
        drop = _DropKnown(tuple(starts))
        # A filter on a logger applies to its own records only, not its children's: attach to the
        # handlers' path too, through a filter on every logger under the name as they are made.
        logging.getLogger(name).addFilter(drop)
        for child in ("backends.cpu.ops", "backends.cpu", "backends"):
            logging.getLogger(f"{name}.{child}").addFilter(drop)
    warnings.filterwarnings("ignore", category=FutureWarning)


def readable_log(text: str) -> str:
    """A log's text without the known noise, each traceback folded into one sentence."""
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.strip() == TRACEBACK_START:
            j = i + 1
            # The traceback's body is indented; its last line (the exception) is not.
            while j < len(lines) and (lines[j].startswith((" ", "\t")) or not lines[j].strip()):
                j += 1
            last = lines[j].strip() if j < len(lines) else ""
            out.append(f"[details: a traceback of {j - i + 1} lines ending in '{last[:160]}' is in train.log]")
            i = j + 1
            continue
        if not NOISE_LINE.search(line):
            out.append(line)
        i += 1
    return "\n".join(out)
