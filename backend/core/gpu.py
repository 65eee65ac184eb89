"""The GPUs this machine has, through NVML (nvidia-ml-py): names, memory, bf16 support.

NVML answers without creating a CUDA context, so probing never takes GPU memory from a
training run. Every function is graceful: no driver, no GPU or no library means an empty list
or None, never an exception.
"""
from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass
from typing import Any, Optional

_LOCK = threading.Lock()
_INITIALISED: Optional[bool] = None


@dataclass
class GpuInfo:
    index: int
    name: str
    total_bytes: int
    free_bytes: int
    used_bytes: int
    bf16: Optional[bool]  # None when unknown (e.g. a hypothetical card)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _nvml():
    """The initialised pynvml module, or None when there is no usable NVIDIA driver."""
    global _INITIALISED
    try:
        import pynvml
    except Exception:  # noqa: BLE001 - the library itself is optional at runtime
        return None
    with _LOCK:
        if _INITIALISED is None:
            try:
                pynvml.nvmlInit()
                _INITIALISED = True
            except Exception:  # noqa: BLE001 - NVMLError_LibraryNotFound, DriverNotLoaded, ...
                _INITIALISED = False
    return pynvml if _INITIALISED else None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _supports_bf16(nvml: Any, handle: Any) -> Optional[bool]:
    try:
        major, _minor = nvml.nvmlDeviceGetCudaComputeCapability(handle)
    except Exception:  # noqa: BLE001
        return None
    return major >= 8  # Ampere and newer have native bf16


def visible_indices() -> Optional[list[int]]:
    """The GPU numbers CUDA_VISIBLE_DEVICES names, or None when it is unset or not plain numbers
    (UUIDs, MIG names): the GPUs this process is limited to, in the numbering NVML uses."""
    visible = [v.strip() for v in os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",") if v.strip()]
    if visible and all(v.isdigit() for v in visible):
        return [int(v) for v in visible]
    return None


def list_gpus() -> list[GpuInfo]:
    """Every GPU NVML sees, in NVML order; [] without a GPU or driver."""
    nvml = _nvml()
    if nvml is None:
        return []
    out: list[GpuInfo] = []
    try:
        count = nvml.nvmlDeviceGetCount()
    except Exception:  # noqa: BLE001
        return []
    for i in range(count):
        try:
            handle = nvml.nvmlDeviceGetHandleByIndex(i)
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            out.append(GpuInfo(index=i, name=_text(nvml.nvmlDeviceGetName(handle)),
                               total_bytes=int(mem.total), free_bytes=int(mem.free), used_bytes=int(mem.used),
                               bf16=_supports_bf16(nvml, handle)))
        except Exception:  # noqa: BLE001 - one broken device must not hide the others
            continue
    return out


def gpu_memory_used(index: Optional[int] = None) -> Optional[int]:
    """Bytes in use on GPU `index` (all GPUs summed when None); None without NVML."""
    nvml = _nvml()
    if nvml is None:
        return None
    try:
        indices = [index] if index is not None else range(nvml.nvmlDeviceGetCount())
        return int(sum(nvml.nvmlDeviceGetMemoryInfo(nvml.nvmlDeviceGetHandleByIndex(i)).used for i in indices))
    except Exception:  # noqa: BLE001
        return None


def hypothetical_gpus(count: int, memory_gb: float) -> list[GpuInfo]:
    """Cards that do not exist here, for "would it fit on N x G GB?" questions.

    Card sizes are sold in binary units (a "24 GB" card has 24 GiB), so GB here means GiB.
    """
    total = int(memory_gb * 2**30)
    return [GpuInfo(index=i, name=f"hypothetical {memory_gb:g} GB card", total_bytes=total, free_bytes=total,
                    used_bytes=0, bf16=None) for i in range(count)]
