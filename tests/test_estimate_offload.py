"""The estimate of ``gradient_checkpointing: offload``: the activation checkpoints leave the GPU except the ones in
transit (the top layer's on its way out; the layer recomputed and the ``OFFLOAD_PREFETCH`` fetched ahead of it),
their bytes go to the host-memory figure (per node: every process), ``check`` shows both, and a stage that fits
only by offloading is offered the change."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from ftplan.api import check_file
from ftplan.catalog import get_gpu, get_model
from ftplan.console import print_check
from ftplan.estimate import activations, stage as stage_estimate
from ftplan.estimate.constants import OFFLOAD_CACHED_INPUTS
from ftplan.estimate.host import PINNED_CHECKPOINTS
from ftplan.estimate.stage import estimate_training
from ftplan.schemas import SftStage
from ftplan.schemas.runtime_args import OFFLOAD_PREFETCH

ROOT = Path(__file__).resolve().parent.parent
SHAPE = get_model("llama-3.1-8b")
H100 = get_gpu("h100-sxm-80gb")
SEQ, MICRO = 4096, 4
CKPT_LAYER = MICRO * SEQ * SHAPE.hidden_size * 2
"""One layer's checkpoint: its input, bf16."""


def stage(gc, **kw) -> SftStage:
    return SftStage(id="sft", kind="sft", data="data", learning_rate=1e-4, adapter={"type": "lora"},
                    micro_batch=MICRO, gradient_checkpointing=gc, **kw)


def estimate(gc, device="cuda", world=1, **kw):
    return estimate_training(SHAPE, H100 if device == "cuda" else None, stage(gc, **kw), seq_len=SEQ,
                             world_size=world, device=device)


def held(gc, phase: str) -> int:
    """Bytes of activation checkpoints on the GPU in one phase of the step."""
    r = stage_estimate.resolve(SHAPE, stage(gc), seq_len=SEQ)
    phases = stage_estimate._phases(r, stage_estimate.states.compute(r), activations.compute(r),
                                    stage_estimate.logits.compute(r))
    [p] = [p for p in phases if p.name == phase]
    return sum(t.bytes for t in p.terms if t.name.startswith("activation checkpoints"))


def test_only_the_checkpoints_in_transit_stay_on_the_gpu():
    layers = SHAPE.num_layers
    for phase in ("loss forward", "loss backward", "backward through the top layer"):
        assert held(True, phase) == layers * CKPT_LAYER
    assert held(True, "backward through the bottom layer") == CKPT_LAYER
    assert held("offload", "loss forward") == held("offload", "loss backward") == CKPT_LAYER
    assert held("offload", "backward through the top layer") == (1 + OFFLOAD_PREFETCH) * CKPT_LAYER
    assert held("offload", "backward through the bottom layer") == CKPT_LAYER
    where = activations.checkpoints(stage_estimate.resolve(SHAPE, stage("offload"), seq_len=SEQ))
    assert (where.forward, where.top, where.bottom, where.host) == (1, 1 + OFFLOAD_PREFETCH, 1, layers)


def test_the_peak_falls_and_the_host_holds_every_layer_per_process():
    on, off = estimate(True), estimate("offload")
    layers = SHAPE.num_layers
    assert on.host_bytes is None and on.host_terms == ()
    assert off.host_bytes == layers * CKPT_LAYER
    [term] = off.host_terms
    assert term.name == PINNED_CHECKPOINTS and term.bytes == layers * CKPT_LAYER
    assert term.detail == f"{layers} layers × 16,384 tokens × 2 B × 4,096"
    # the peak moves from the top layer (every checkpoint) to the bottom one (its checkpoint and every gradient)
    assert on.notes[0] == "peak during: backward through the top layer"
    assert off.notes[0] == "peak during: backward through the bottom layer"
    grads = next(t.bytes for t in off.terms if t.name == "gradients")
    cache = next(t for t in off.terms if t.name == "offload copy blocks (allocator cache)")
    assert cache.bytes == OFFLOAD_CACHED_INPUTS * CKPT_LAYER and not any(t.name == cache.name for t in on.terms)
    assert on.peak_bytes - off.peak_bytes == (layers - 1) * CKPT_LAYER - grads - cache.bytes
    assert any("activation checkpoints offloaded to pinned host memory: 4.0 GiB per GPU" in n for n in off.notes)
    eight = estimate("offload", world=8)
    assert eight.host_bytes == 8 * layers * CKPT_LAYER  # one node, 8 processes
    assert eight.host_terms[0].detail.startswith("8 processes × ")


def test_an_offloaded_stage_says_its_estimate_is_extrapolated():
    from ftplan.estimate.accuracy import accuracy_of

    text = accuracy_of("llama", "qlora", "sft", 2048, 1, offload=True).text()
    assert text.startswith("extrapolated: no compiled plan with offloaded checkpoints is measured yet")
    assert not accuracy_of("llama", "qlora", "sft", 2048, 1).text().startswith("extrapolated")


def test_on_the_cpu_offload_estimates_as_true():
    assert estimate("offload", device="cpu") == estimate(True, device="cpu")


def test_the_view_shows_the_host_memory(tmp_path):
    path = pipeline(tmp_path, micro_batch=8, gradient_checkpointing="offload")
    out = io.StringIO()
    print_check(check_file(path), Console(file=out, width=200), Console(file=io.StringIO()), verbose=True)
    text = out.getvalue()
    assert "+ host 4.0 GiB" in text  # the stage table's memory cell
    assert "  host memory 4.0 GiB per node:" in text
    assert f"    {PINNED_CHECKPOINTS} 4.0 GiB (32 layers × 16,384 tokens × 2 B × 4,096)" in text
    assert "activation checkpoints on the GPU (offloaded)" in text
    from ftplan.api import plan_files

    result = check_file(path)
    md = plan_files(result, "plan")["plan.md"]
    assert "gradient checkpointing offloaded to host memory" in md and "- host memory: 4.0 GiB" in md
    assert "activation checkpoints offloaded to pinned host memory: 4.0 GiB per GPU" in md


def test_a_stage_that_fits_only_offloaded_is_offered_offload(tmp_path):
    """8B QLoRA at 16k tokens × 4 on a 40 GB card: the checkpoints (16 GiB) decide; offloading them is the mildest
    change that fits, and the printed change, written into the file, passes ``check``."""
    path = pipeline(tmp_path, gpu="a100-sxm-40gb", max_seq_len=16384, micro_batch=4, adapter={"type": "qlora"})
    result = check_file(path)
    [d] = [d for d in result.diagnostics if d.code == "FT101"]
    offered = [n for n in d.notes if n.startswith("would fit")]
    assert offered[0].endswith(": gradient_checkpointing true → offload")
    assert "host memory 16.0 GiB per node" in offered[0]
    doc = yaml.safe_load(path.read_text())
    doc["stages"][1]["gradient_checkpointing"] = "offload"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    after = check_file(path)
    assert after.ok and after.estimates["sft"].verdict == "fits"
    assert after.estimates["sft"].host_bytes == 32 * 4 * 16384 * 4096 * 2


def pipeline(tmp_path: Path, *, gpu: str = "h100-sxm-80gb", max_seq_len: int = 2048, **sft) -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    shutil.copy(ROOT / "examples" / "data" / "support-chat.jsonl", tmp_path / "data" / "chat.jsonl")
    doc = {"name": "t", "model": {"base": "meta-llama/Llama-3.1-8B-Instruct", "revision": "0" * 40},
           "hardware": {"gpu": gpu},
           "stages": [{"id": "data", "kind": "data", "max_seq_len": max_seq_len,
                       "datasets": [{"path": "data/chat.jsonl", "format": "sharegpt"}]},
                      {"id": "sft", "kind": "sft", "data": "data", "learning_rate": 1e-4, "adapter": {"type": "lora"},
                       **sft}]}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


@pytest.mark.parametrize("gc", [True, False, "offload"])
def test_the_setting_reads_back_from_yaml(gc, tmp_path):
    result = check_file(pipeline(tmp_path, gradient_checkpointing=gc))
    assert result.ok
    assert result.ctx.pipeline.stages[1].gradient_checkpointing == gc
