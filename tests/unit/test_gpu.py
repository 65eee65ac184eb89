"""The NVML probe: real values when a GPU is there, an empty answer (never an exception) when not."""
import types

import pytest

import backend.core.gpu as gpu


@pytest.fixture()
def fresh(monkeypatch):
    monkeypatch.setattr(gpu, "_INITIALISED", None)
    yield gpu


def fake_nvml(fail_init=False):
    mem = types.SimpleNamespace(total=80 * 2**30, free=70 * 2**30, used=10 * 2**30)

    class NVMLError(Exception):
        pass

    def init():
        if fail_init:
            raise NVMLError("Driver Not Loaded")

    return types.SimpleNamespace(
        nvmlInit=init, nvmlDeviceGetCount=lambda: 2, nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetMemoryInfo=lambda h: mem, nvmlDeviceGetName=lambda h: b"NVIDIA H100 80GB HBM3",
        nvmlDeviceGetCudaComputeCapability=lambda h: (9, 0) if h == 0 else (7, 5))


def test_no_driver_means_no_gpus_and_no_exception(fresh, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pynvml", fake_nvml(fail_init=True))
    assert fresh.list_gpus() == []
    assert fresh.gpu_memory_used() is None
    assert fresh.gpu_memory_used(0) is None


def test_gpus_are_listed_with_memory_and_bf16_support(fresh, monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "pynvml", fake_nvml())
    gpus = fresh.list_gpus()
    assert [g.index for g in gpus] == [0, 1]
    assert gpus[0].name == "NVIDIA H100 80GB HBM3"
    assert (gpus[0].total_bytes, gpus[0].free_bytes, gpus[0].used_bytes) == (80 * 2**30, 70 * 2**30, 10 * 2**30)
    assert gpus[0].bf16 is True and gpus[1].bf16 is False
    assert fresh.gpu_memory_used(1) == 10 * 2**30
    assert fresh.gpu_memory_used() == 20 * 2**30
    assert gpus[0].to_json()["name"] == "NVIDIA H100 80GB HBM3"


def test_hypothetical_cards_use_binary_gigabytes():
    cards = gpu.hypothetical_gpus(2, 24)
    assert len(cards) == 2 and cards[1].free_bytes == 24 * 2**30 and cards[0].bf16 is None


def test_the_real_probe_never_raises():
    assert isinstance(gpu.list_gpus(), list)


@pytest.mark.gpu
def test_a_real_gpu_is_seen_with_plausible_memory():
    gpus = gpu.list_gpus()
    assert gpus and gpus[0].total_bytes > 2**30 and 0 <= gpus[0].free_bytes <= gpus[0].total_bytes
