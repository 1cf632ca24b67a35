"""``bench/vram/memory_history.py``: the peak of a recorded allocator trace and what was live at it."""

from __future__ import annotations

import gzip
import pickle
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench" / "vram"))

import memory_history as M  # noqa: E402

MODEL = {"filename": "/opt/torch/lib/site-packages/transformers/models/llama/modeling_llama.py", "line": 90,
         "name": "forward"}  # an environment folder named torch is not torch
PEFT = {"filename": "/x/dist-packages/peft/tuners/lora/layer.py", "line": 5, "name": "forward"}
TORCH = {"filename": "/x/site-packages/torch/nn/functional.py", "line": 7, "name": "linear"}
TORCH_RELATIVE = {"filename": "torch/nn/modules/module.py", "line": 3, "name": "_call_impl"}


def _trace() -> list[dict]:
    return [
        {"action": "segment_alloc", "addr": 0, "size": 1000},
        {"action": "alloc", "addr": 1, "size": 300, "frames": [TORCH, MODEL]},
        {"action": "alloc", "addr": 2, "size": 200, "frames": []},
        {"action": "free_requested", "addr": 1, "size": 300},
        {"action": "free_completed", "addr": 1, "size": 300},
        {"action": "alloc", "addr": 3, "size": 250, "frames": [TORCH, TORCH_RELATIVE, PEFT, MODEL]},
        {"action": "alloc", "addr": 4, "size": 150, "frames": [TORCH]},  # the peak: 200 + 250 + 150
        {"action": "segment_alloc", "addr": 9, "size": 500},
        {"action": "free_completed", "addr": 4, "size": 150},
        {"action": "segment_free", "addr": 9, "size": 500},
    ]


def test_the_peak_is_the_most_bytes_live_at_once_and_lists_who_holds_them():
    peak = M.replay(_trace())
    assert (peak["index"], peak["allocated"], peak["reserved"], peak["peak_reserved"]) == (6, 600, 1000, 1500)
    assert sorted(peak["live"].values()) == [
        (150, "torch/nn/functional.py:7 linear"),  # torch's own frame when nothing else asked
        (200, "<autograd engine: backward of built-in ops>"),
        (250, "tuners/lora/layer.py:5 forward"),
    ]
    deeper = M.replay(_trace(), depth=2)["live"]
    assert deeper[3] == (250, "tuners/lora/layer.py:5 forward < models/llama/modeling_llama.py:90 forward")


def test_the_report_reads_a_snapshot_file(tmp_path, capsys):
    path = tmp_path / "p.1.pickle.gz"
    path.write_bytes(gzip.compress(pickle.dumps({"device_traces": [_trace()], "segments": [
        {"total_size": 1000, "allocated_size": 450}]})))
    assert M.main([str(path)]) == 0
    out = capsys.readouterr().out
    assert "allocated peak 0.000 GiB at event 6" in out and "layer.py:5 forward < models/llama/modeling_llama.py:90" in out
    assert "1 segments" in out
