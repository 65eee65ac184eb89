"""Resident memory of this process, as the benches report it."""
from __future__ import annotations

import resource


def resident_bytes(field: str = "VmHWM") -> int:
    """This process's peak (VmHWM) or current (VmRSS) resident bytes.

    Not getrusage's ru_maxrss where /proc can say: Linux carries that across exec, so a stage the
    bench starts with subprocess (vfork + exec) would report at least its parent's peak, not its own.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
