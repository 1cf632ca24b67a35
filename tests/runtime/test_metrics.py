"""Stage metrics: which GPU the memory figures are read from."""

from __future__ import annotations

import pytest

from ftplan.schemas.runtime_args import RuntimeArgs

CPU_PROMISE = {"device": "cpu", "world_size": 1, "num_machines": 1, "distributed_type": "NO", "precision": "fp32",
               "attention": "sdpa", "kernels": "none"}


CUDA_PROMISE = {**CPU_PROMISE, "device": "cuda", "precision": "bf16"}


def _args(promise: dict = CUDA_PROMISE) -> RuntimeArgs:
    return RuntimeArgs.model_validate({
        "pipeline": "t", "model": {"base": "base"}, "output_dir": "out/prep", "promise": promise,
        "stage": {"id": "prep", "kind": "data", "max_seq_len": 64, "datasets": [{"path": "d.jsonl", "format": "text"}]},
    })


class _FakeCuda:
    """Stands in for torch.cuda on this GPU-less machine; records the device each query names."""

    def __init__(self):
        self.devices: list = []
        self.initialised = False

    def _seen(self, device=None):
        assert self.initialised, "a CUDA query before torch.cuda.init()"
        self.devices.append(device)

    def init(self):
        self.initialised = True

    def reset_peak_memory_stats(self, device=None):
        self._seen(device)

    def mem_get_info(self, device=None):
        self._seen(device)
        return 60 * 2**30, 80 * 2**30

    def max_memory_allocated(self, device=None):
        self._seen(device)
        return 2**30

    def max_memory_reserved(self, device=None):
        self._seen(device)
        return 2**30

    def get_device_name(self, device=None):
        self._seen(device)
        return "GPU"


def test_recorder_reads_the_local_rank_gpu_not_gpu_0(monkeypatch):
    """Under `accelerate launch` the recorder starts before the process selects its GPU; every query must name
    LOCAL_RANK's GPU, or each rank opens a CUDA context on GPU 0 and reports GPU 0's memory."""
    import torch

    from ftplan_runtime import metrics

    fake = _FakeCuda()
    monkeypatch.setattr(metrics, "_cuda_ready", lambda: True)
    for name in ("init", "reset_peak_memory_stats", "mem_get_info", "max_memory_allocated", "max_memory_reserved",
                 "get_device_name"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    monkeypatch.setenv("LOCAL_RANK", "1")
    rec = metrics.StageRecorder(_args())
    rec.sample()
    mem = rec.memory()
    assert fake.devices and all(d == 1 for d in fake.devices), fake.devices
    assert mem["device_used_peak_gib"] == pytest.approx(20.0)


def test_a_cpu_stage_on_a_gpu_machine_leaves_cuda_alone(monkeypatch):
    """The data, merge and GGUF stages run on the CPU: on a GPU machine their recorder must not initialise CUDA
    (a context it never uses) and reports no GPU figures."""
    import torch

    from ftplan_runtime import metrics

    fake = _FakeCuda()
    monkeypatch.setattr(metrics, "_cuda_ready", lambda: True)
    for name in ("init", "reset_peak_memory_stats", "mem_get_info", "max_memory_allocated", "max_memory_reserved",
                 "get_device_name"):
        monkeypatch.setattr(torch.cuda, name, getattr(fake, name))
    mem = metrics.StageRecorder(_args(CPU_PROMISE)).memory()
    assert not fake.initialised and fake.devices == []
    assert mem["device_used_peak_gib"] is None and mem["gpu_name"] is None
