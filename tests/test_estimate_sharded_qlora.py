"""The estimator's sharded-QLoRA terms (``estimate/states.py``): what ZeRO-3 and FSDP2 do to a 4-bit base stored in the
compute dtype, each term from the libraries' behaviour (``tests/runtime/test_sharded_qlora.py`` runs it on the CPU).

* The packed codes (0.5 B per decoder linear parameter) are sharded 1/N; the NF4 quantization constants
  (``QuantState``, not parameters) stay whole on every GPU; ``offload_params`` moves the codes to the host, not the
  constants.
* FSDP2 gathers a unit at a time, prefetching the next: a decoder layer's 4-bit codes or the 16-bit embedding.
* Loading: under ZeRO-3 every GPU holds the whole 4-bit model before DeepSpeed partitions it (a peak of its own when
  it is the larger); under FSDP2 every process quantizes the whole base in host memory (a host-memory term, which
  the Slurm memory need follows).
* An unsharded QLoRA stage keeps the one 4.127-bit term it always had.
"""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from ftplan.api import check_file
from ftplan.catalog import get_gpu, get_model, param_counts
from ftplan.estimate import estimate_training, resolve, states
from ftplan.estimate.constants import NF4_BYTES_PER_PARAM, NF4_CODE_BYTES_PER_PARAM
from ftplan.schemas import SftStage

LLAMA70 = get_model("llama-3.1-70b")
P_LIN = LLAMA70.num_layers * param_counts(LLAMA70).per_layer_linear
P_REST = param_counts(LLAMA70).total - P_LIN
ROOT = Path(__file__).resolve().parent.parent


def qlora(distributed, **kw) -> SftStage:
    return SftStage.model_validate({"id": "sft", "kind": "sft", "data": "data", "learning_rate": 1e-4,
                                    "adapter": {"type": "qlora", "r": 16, "alpha": 32}, "distributed": distributed,
                                    **kw})


def terms(strategy, world: int, **kw) -> dict[str, int]:
    st = states.compute(resolve(LLAMA70, qlora(strategy, **kw), seq_len=1024, world_size=world))
    return {t.name: t.bytes for t in st.terms}


@pytest.mark.parametrize("strategy", ["zero3", "fsdp2"])
@pytest.mark.parametrize("world", [2, 8])
def test_the_codes_are_sharded_and_the_constants_are_not(strategy, world):
    got = terms(strategy, world)
    assert got["base weights (NF4)"] == int(P_LIN * NF4_CODE_BYTES_PER_PARAM / world)
    assert got["NF4 quantization constants"] == int(P_LIN * (NF4_BYTES_PER_PARAM - NF4_CODE_BYTES_PER_PARAM))
    assert got["embeddings, lm_head, norms (bf16)"] == P_REST * 2 // world


@pytest.mark.parametrize("strategy", ["none", "ddp", "zero2"])
def test_an_unsharded_4bit_base_keeps_its_one_term(strategy):
    got = terms(strategy, 1 if strategy == "none" else 2)
    assert got["base weights (NF4)"] == int(P_LIN * NF4_BYTES_PER_PARAM)
    assert "NF4 quantization constants" not in got


def test_offload_params_moves_the_codes_to_the_host_not_the_constants():
    r = resolve(LLAMA70, qlora({"strategy": "fsdp2", "offload_params": True}), seq_len=1024, world_size=2)
    st = states.compute(r)
    got = {t.name: t.bytes for t in st.terms}
    assert "base weights (NF4)" not in got and "NF4 quantization constants" in got
    codes = int(P_LIN * NF4_CODE_BYTES_PER_PARAM / 2)
    assert st.host >= codes + P_REST * 2 // 2


def test_fsdp2_gathers_the_16_bit_embedding_or_a_4bit_layer():
    """Llama-3.1-70B: the 16-bit embedding (2.1 GB) outweighs a 4-bit layer (0.43 GB); a shape with a small
    vocabulary gathers its layers instead."""
    got = terms("fsdp2", 2)
    assert got["FSDP2 unsharded units"] == 2 * param_counts(LLAMA70).embedding * 2
    tiny = states.compute(resolve(get_model("ftplan-tiny"), qlora("fsdp2"), seq_len=64, world_size=2))
    units = next(t for t in tiny.terms if t.name == "FSDP2 unsharded units")
    pc = param_counts(get_model("ftplan-tiny"))
    assert units.bytes == 2 * pc.embedding * 2  # 512 × 64 still outweighs a 4-bit layer of the tiny model
    wide = replace(LLAMA70, vocab_size=8192)
    narrow = states.compute(resolve(wide, qlora("fsdp2"), seq_len=1024, world_size=2))
    (units,) = [t for t in narrow.terms if t.name == "FSDP2 unsharded units"]
    assert "decoder layer's 4-bit codes" in units.detail
    assert units.bytes > 2 * int(param_counts(wide).per_layer_linear * NF4_CODE_BYTES_PER_PARAM)


def test_zero3_loads_the_whole_4bit_model_on_every_gpu():
    """On 24 GB cards the load is the peak, and over the card; on 80 GB cards it is under the training step."""
    small = estimate_training(LLAMA70, get_gpu("rtx-4090"), qlora("zero3"), seq_len=1024, world_size=2)
    assert small.verdict == "oom" and small.notes[0].startswith("peak during: model load")
    assert small.terms[0].name == "whole 4-bit model (loading, before ZeRO-3 partitions it)"
    assert small.terms[0].bytes == int(P_LIN * NF4_BYTES_PER_PARAM) + P_REST * 2
    big = estimate_training(LLAMA70, get_gpu("h100-sxm-80gb"), qlora("zero3", micro_batch=16), seq_len=4096,
                            world_size=2)
    assert big.notes[0].startswith("peak during: ") and "model load" not in big.notes[0]
    assert any(n.startswith("model load: ") and "below the training step's peak" in n for n in big.notes)
    assert states.model_load(resolve(LLAMA70, qlora("fsdp2"), seq_len=1024, world_size=2)) == ()


def test_fsdp2_loads_the_4bit_model_in_every_process_host_memory():
    """Counted in the stage's host memory, beside the offloaded shards: accelerate keeps the loaded copy until every
    layer is sharded, and with ``offload_params`` the shards land in host memory meanwhile."""
    est = estimate_training(LLAMA70, get_gpu("rtx-4090"), qlora({"strategy": "fsdp2", "offload_params": True}),
                            seq_len=1024, world_size=2)
    r = resolve(LLAMA70, qlora("fsdp2"), seq_len=1024, world_size=2)
    each = states.host_load(r)
    assert each > int(P_LIN * NF4_BYTES_PER_PARAM) + P_REST * 2  # plus the 16-bit weight being quantized
    assert any(n.startswith("loading: every process quantizes the whole base in host memory") for n in est.notes)
    host = {t.name: t.bytes for t in est.host_terms}
    assert host["4-bit base quantized at load"] == 2 * each
    assert est.host_bytes == sum(host.values())
    assert states.host_load(resolve(LLAMA70, qlora("zero3"), seq_len=1024, world_size=2)) == 0


def test_slurm_memory_counts_every_process_load(tmp_path):
    """The Slurm memory need: FSDP2 QLoRA's host load is the estimate's host figure (nothing added on top); ZeRO-3
    QLoRA loads the whole 16-bit base through every process (no ``zero.Init`` for a 4-bit model), as ZeRO-2 does."""
    from ftplan.jobs import RUNTIME_PROCESS_BYTES, loaded_weights, memory_need, stage_resources

    (tmp_path / "data").mkdir()
    shutil.copy(ROOT / "examples" / "data" / "support-chat.jsonl", tmp_path / "data")
    got = {}
    for strategy in ("fsdp2", "zero3", "zero2"):
        doc = {"name": "t", "model": {"base": "meta-llama/Llama-3.1-70B", "architecture": "llama-3.1-70b"},
               "hardware": {"gpu": "h100-sxm-80gb", "gpus_per_node": 4, "slurm": {"partition": "gpu"}},
               "stages": [{"id": "data", "kind": "data", "max_seq_len": 1024,
                           "datasets": [{"path": "data/support-chat.jsonl", "format": "sharegpt"}]},
                          {"id": "sft", "kind": "sft", "data": "data", "learning_rate": 1e-4,
                           "adapter": {"type": "qlora"}, "distributed": strategy}]}
        (tmp_path / f"{strategy}.yaml").write_text(yaml.safe_dump(doc))
        result = check_file(tmp_path / f"{strategy}.yaml")
        res = stage_resources(result.ctx, 1, result.estimates["sft"])
        got[strategy] = loaded_weights(result.ctx, 1, res)
        if strategy == "fsdp2":
            each = states.host_load(resolve(LLAMA70, qlora("fsdp2"), seq_len=1024, world_size=4))
            assert res.host_bytes == 4 * each and got[strategy] == (0, "")
            assert memory_need(result.ctx, 1, res) == 4 * each + 4 * RUNTIME_PROCESS_BYTES
    assert got["zero3"] == got["zero2"]  # every process loads the whole 16-bit base either way
    assert got["zero3"][0] == 4 * param_counts(LLAMA70).total * 2


def test_the_sharded_qlora_example_fits_two_24gb_cards():
    """``examples/llama3-70b-qlora-2x24gb-fsdp.yaml``: the FSDP-QLoRA recipe checks clean and fits."""
    result = check_file(ROOT / "examples" / "llama3-70b-qlora-2x24gb-fsdp.yaml")
    assert result.ok, [d.message for d in result.diagnostics if d.severity.value == "error"]
    est = result.estimates["sft"]
    assert est.verdict == "fits" and est.capacity_bytes == get_gpu("rtx-4090").memory_mib << 20
    assert any(n.startswith("loading: every process quantizes") for n in est.notes)
