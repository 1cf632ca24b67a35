"""bf16 promise on a GPU that only emulates bf16 (compute capability < 8: T4, V100)."""

from __future__ import annotations

import pytest

from ftplan.schemas.runtime_args import Promise

torch = pytest.importorskip("torch")


def _fake_gpu(monkeypatch, capability: tuple[int, int], name: str) -> list:
    """Stand in for a CUDA GPU on this GPU-less machine; returns the device indices the capability was read for."""
    seen: list = []

    def capability_of(device=None):
        seen.append(device)
        return capability

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", capability_of)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    monkeypatch.setattr(torch.version, "hip", None)
    return seen


def _bf16_on_gpu() -> Promise:
    return Promise(device="cuda", world_size=2, num_machines=1, distributed_type="MULTI_GPU", precision="bf16",
                   attention="sdpa", kernels="none")


def test_emulated_bf16_is_refused(monkeypatch):
    """torch.cuda.is_bf16_supported() says True on a T4 (it counts emulation), so the check let a bf16 plan run
    emulated on a card without bf16 units."""
    from ftplan_runtime.preflight import PreflightError, check_device

    seen = _fake_gpu(monkeypatch, (7, 5), "Tesla T4")
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(PreflightError, match="Tesla T4, which does not support bf16"):
        check_device(_bf16_on_gpu())
    assert seen == [1]  # this process's GPU, not GPU 0


def test_ampere_or_newer_passes(monkeypatch):
    from ftplan_runtime.preflight import check_device

    _fake_gpu(monkeypatch, (9, 0), "NVIDIA H100")
    check_device(_bf16_on_gpu())
